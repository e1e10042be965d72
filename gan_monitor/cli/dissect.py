"""Dissect saved checkpoints, outside training.

Examples:
  gan-monitor dissect runs/demo/version_0/checkpoints/last.ckpt --layers layer2,layer3 --out dissect/
  gan-monitor dissect ckpts/*.ckpt --layers layer3 --out timeline/ --n 500 --threshold iqr
  gan-monitor dissect g.pt --generator-factory mypkg.models:make_generator --layers block4 \\
      --segmenter mypkg.seg:load --out dissect/
  gan-monitor report dissect/          # then open dissect/index.html
  gan-monitor dissect ckpts/*.ckpt --layers layer3 --out timeline/ --real-stats toyworld
  gan-monitor dissect ckpts/*.ckpt --layers layer3 --out timeline/ --devices 4 --device cuda
  torchrun --nnodes 2 --nproc-per-node 8 --rdzv-endpoint HOST:29500 -m gan_monitor.cli.main \
      dissect ckpts/*.ckpt --layers layer3 --out timeline/ --device cuda

Writes, under --out: per checkpoint a folder <name>/ with dissection.json (the
Python API's DissectionResult.to_json) and unit pictures; tensorboard/ with event
files (the callback's tags; x-axis = the monitor's batch counter saved in the
checkpoint, as the callback's curves, else the checkpoint's global_step; the text tag
gan_monitor/x_axis says which); summary.csv
(one row per checkpoint and layer, also printed) and timeline.json (the index
`gan-monitor report` reads). Every file is written atomically; run.json says "running"
until the end, so an interrupted run never looks finished (`report` and `compare`
refuse it): run the same command again to complete it (finished checkpoints are kept).
An --out folder that holds a run with other settings is refused unless --overwrite
(which replaces it whole); the same settings with more checkpoints extend it.

Exit codes: 0 done, 1 error (one line; --debug shows the traceback), 2 bad usage.
"""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from tqdm.auto import tqdm

from gan_monitor.cli.options import (
    add_generator_arguments,
    add_iou_argument,
    add_memory_arguments,
    add_threshold_argument,
    checked,
    dissection_options,
    load_input_fn,
    memory_size,
)
from gan_monitor.core import launch
from gan_monitor.core.checkpoints import load_generator
from gan_monitor.core.distributed import SingleProcess, run_phase
from gan_monitor.core.errors import (
    CheckpointError,
    CommandError,
    RankFailure,
    UsageError,
)
from gan_monitor.core.inputs import make_inputs
from gan_monitor.core.tracing import layer_names, unknown_layers
from gan_monitor.core.validation import checked_device, positive_float, positive_int
from gan_monitor.dissection.options import DissectionOptions
from gan_monitor.dissection.pipeline import dissect
from gan_monitor.report.full_report import write_unit_pictures
from gan_monitor.report.loggers import MediaLogger
from gan_monitor.report.run_record import checkpoint_key, file_stamp, prepare_run, run_settings
from gan_monitor.report.signals_view import signal_media
from gan_monitor.report.store import (
    TENSORBOARD,
    CheckpointEntry,
    OutputFolder,
    summary_rows,
)
from gan_monitor.report.tensorboard import DissectionWriter
from gan_monitor.segmenters import specs as segmenter_specs
from gan_monitor.signals.checkpoint_steps import with_monitor_axis
from gan_monitor.signals.concept_stats import ConceptStats, toyworld_real_stats
from gan_monitor.signals.summary import dissection_signals
from gan_monitor.signals.units_over_time import UnitTimeline

__all__ = ["add_arguments", "run", "dissect_checkpoints", "load_segmenter_spec"]

# The TensorBoard unit grid: the best GRID_UNITS units of a layer, GRID_IMAGES images each
# (the DissectionMonitor's defaults).
GRID_UNITS, GRID_IMAGES = 8, 5
# --real-stats toyworld: this many procedural scenes (their own seed, not the training
# scenes') through the toy segmenter (the demo's --signals uses the same).
REAL_SCENES, REAL_SEED = 1000, 777


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoints", nargs="+", type=Path, metavar="CKPT",
                   help="Lightning .ckpt files or generator state dicts (several: a timeline)")
    p.add_argument("--layers", required=True, help="comma-separated generator layers, e.g. layer2,layer3")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    add_generator_arguments(p)  # --module, --generator-factory, --generator-attr, --input-fn
    p.add_argument("--n", "--samples", dest="n", type=int, default=1000,
                   help="held-out samples (default 1000; under torchrun write --samples: torchrun takes --n for itself)")
    p.add_argument("--seed", type=int, default=0, help="seed of the held-out latents (default 0)")
    add_threshold_argument(p)
    add_iou_argument(p)
    p.add_argument("--cutoff", type=float, default=0.05, help="IoU from which a unit is interpretable")
    p.add_argument("--segmenter", default="toyworld",
                   help="'toyworld' (shipped toy segmenter), 'color' (basic colour terms), 'ade20k:PATH_OR_HUB_ID' "
                        "(transformers ADE20K model, e.g. ade20k:nvidia/segformer-b0-finetuned-ade-512-512), "
                        "'hf:PATH_OR_HUB_ID' (any transformers segmentation model) or pkg.mod:function returning "
                        "a segmenter; append +parts for object parts (tree-t, tree-b, tree-l, tree-r)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--batch-size", type=int, default=32, help="batch size (default 32)")
    p.add_argument("--devices", type=int, default=1,
                   help="processes that share each dissection (one GPU each with --device cuda, gloo on CPU); "
                        "the outputs equal one process's. Under torchrun each process is one rank (default 1)")
    p.add_argument("--timeout", type=float, default=1800.0,
                   help="seconds a process waits for the others before the run fails (default 1800)")
    p.add_argument("--images", type=int, default=5, help="top images per unit picture (default 5)")
    add_memory_arguments(p)  # --memory-budget, --allow-nondeterministic
    p.add_argument("--real-stats", default=None, metavar="PATH|toyworld",
                   help="concept statistics of real images (a file written by ConceptStats.save, or 'toyworld' "
                        "for the procedural scenes): adds the generated-vs-real training signals to the outputs")
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="load with weights_only=False (only for files you trust: unpickling can run code)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an --out folder that holds another run (without it such a folder is refused; "
                        "a run with the same settings completes or extends the folder)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--debug", action="store_true", help="show tracebacks")


def load_segmenter_spec(spec: str, device: str = "cpu"):
    """A --segmenter spec -> a segmenter on ``device`` (forms: gan_monitor.segmenters.specs)."""
    try:
        return segmenter_specs.load_segmenter_spec(spec, device)
    except (ValueError, ImportError, OSError) as err:
        raise CommandError(f"--segmenter {spec}: {err}") from err


def load_real_stats(spec: str | None, segmenter: str) -> ConceptStats | None:
    """``--real-stats``: None, ``toyworld`` (the procedural scenes, toy segmenter) or a file."""
    if spec is None:
        return None
    if spec == "toyworld":
        if segmenter.split("+")[0] != "toyworld":
            raise CommandError(f"--real-stats toyworld is measured with the toy segmenter, not --segmenter {segmenter}; "
                               "give a file written by ConceptStats.save with your segmenter instead.")
        return toyworld_real_stats(REAL_SCENES, seed=REAL_SEED)
    try:
        return ConceptStats.load(spec)
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise CommandError(f"--real-stats {spec}: cannot read ConceptStats from it ({err}); write them with "
                           "gan_monitor.signals.real_concept_stats(...).save(PATH), or pass --real-stats toyworld.") from err


def _write_outputs(store: OutputFolder, entry: CheckpointEntry, generator, result, options: DissectionOptions,
                   n: int, seed: int, device, writer: DissectionWriter, logger, input_fn=None) -> None:
    """dissection.json, one PNG per unit (its top images, mask outlined) and the TensorBoard
    events of one checkpoint; each unit's top images are generated once for both."""
    store.write_dissection(entry, result)
    inputs = make_inputs(generator, n, seed, input_fn=input_fn)  # the dissection's held-out inputs
    grid_examples = {}
    for layer, examples in write_unit_pictures(store, entry, generator, result, inputs, options.topk,
                                               device=device).items():
        by_unit = {unit: (images, masks) for unit, images, masks in examples}
        grid_examples[layer] = [(u, by_unit[u][0][:GRID_IMAGES], by_unit[u][1][:GRID_IMAGES])
                                for u in result[layer].ranked_units(only_interpretable=False)[:GRID_UNITS]]
    writer.write([logger], result, int(entry.x), grid_examples)


def dissect_checkpoints(checkpoints: Sequence[Path], layers: Sequence[str], out: Path, *,
                        module: str = "gan_monitor.toyworld.gan:ToyGAN", generator_factory=None,
                        generator_attr: str = "generator", n: int = 1000, seed: int = 0,
                        threshold: Any = "quantile", iou: str = "plain", cutoff: float = 0.05,
                        segmenter: str = "toyworld", device: str = "cpu", batch_size: int = 32, images: int = 5,
                        trust: bool = False, progress: bool = True, echo: Callable[[str], Any] = print,
                        real_stats: str | None = None, input_fn: str | None = None, comm=None, overwrite: bool = False,
                        memory_budget: int | None = None, allow_nondeterministic: bool = False,
                        command: str = "") -> dict[str, Any]:
    """Dissect each checkpoint; write JSON, pictures, TensorBoard events, summary.csv, timeline.json
    (the layout of :mod:`gan_monitor.report.store`) and run.json (:mod:`gan_monitor.report.run_record`:
    a folder of another run is refused unless ``overwrite``; one of a run with the same settings is
    completed or extended, its finished checkpoints kept; ``command`` is the rerun hint).

    ``comm``: a ``gan_monitor.core.distributed`` communicator; every rank dissects its share of
    the held-out samples and rank 0 writes the outputs (the same as one process)."""
    options = DissectionOptions(threshold=threshold, iou=iou, cutoff=cutoff, topk=images, batch_size=batch_size,
                                memory_budget=memory_budget, allow_nondeterministic=allow_nondeterministic)
    comm = comm if comm is not None else SingleProcess()
    lead = comm.rank == 0

    def load():
        try:
            loaded = [with_monitor_axis(load_generator(p, module=module, generator_factory=generator_factory,
                                                       generator_attr=generator_attr, trust=trust, device=device),
                                        trust) for p in checkpoints]  # step: the monitor's batches when saved
        except CheckpointError as err:
            raise CommandError(str(err)) from err
        for item in loaded:
            unknown = unknown_layers(item.generator, layers)  # "block:0", "act#1" allowed
            if unknown:
                raise CommandError(f"{item.path}: the generator has no layer(s) {', '.join(unknown)}; "
                                   f"available: {', '.join(layer_names(item.generator))}.")
        real = load_real_stats(real_stats, segmenter) if lead else None  # only rank 0 writes the signals
        return loaded, load_segmenter_spec(segmenter, device), real, load_input_fn(input_fn)

    loaded, seg, real, draw = _unwrapped(comm, "loading", load)
    timeline = UnitTimeline()
    # a timeline is ordered by training step; plain state dicts keep their command-line order
    order = sorted(range(len(loaded)), key=lambda i: (loaded[i].step is None, loaded[i].step or 0, i))
    xs = [loaded[i].step if loaded[i].step is not None else position for position, i in enumerate(order)]
    store, writer, logger = OutputFolder(out), DissectionWriter(top_units=GRID_UNITS), None
    record, fresh = _unwrapped(comm, "preparing --out", lambda: prepare_run(
        out, run_settings(module=module, generator_factory=generator_factory, generator_attr=generator_attr, n=n,
                          seed=seed, threshold=options.threshold, iou=options.iou, cutoff=options.cutoff,
                          segmenter=segmenter, images=images, real_stats=real_stats, input_fn=input_fn),
        overwrite=overwrite, command=command, checkpoints=[item.path for item in loaded]) if lead else (None, True))
    # checkpoints a run with the same settings already finished here (the same on every rank)
    skip = torch.zeros(len(order), dtype=torch.uint8)
    if lead:
        skip = torch.tensor([record.done_entry(checkpoint_key(loaded[i].path)) is not None for i in order],
                            dtype=torch.uint8)
    skip = comm.broadcast(skip).bool().tolist()
    if lead:
        store.reserve_names(d["name"] for d in record.done)
        # Lightning takes seconds to import; only this command needs it (for its TensorBoardLogger)
        from lightning.pytorch.loggers import TensorBoardLogger

        # completing a run: events an interrupted run left at or after the next step are hidden
        # (all of them when it finished no checkpoint)
        todo = [x for x, done in zip(xs, skip) if not done]
        purge = None if fresh or not todo or min(todo) <= max(record.done_xs(), default=-1) else int(min(todo))
        purge = 0 if not fresh and not record.done else purge
        logger = TensorBoardLogger(str(out), name=TENSORBOARD, version="", default_hp_metric=False,
                                   **({"purge_step": purge} if purge is not None else {}))
        if fresh:  # on disk at once: a run completing this one does not write it again (text is never purged)
            axes = sorted({getattr(item, "axis", "") for item in loaded})
            logger.experiment.add_text("gan_monitor/x_axis", "x-axis of these charts: " + "; ".join(axes), 0)
            logger.experiment.flush()
    entries, rows = [], []
    for position, i in enumerate(tqdm(order, desc="checkpoints", disable=not progress or len(order) < 2 or not lead)):
        item = loaded[i]
        if skip[position]:  # finished by an earlier run of this command
            if lead:
                entry = store.adopt_entry(record.done_entry(checkpoint_key(item.path)))
                timeline.update(entry.result, int(entry.x))
                entries.append(entry)
            continue
        entry = store.new_entry(item.path, step=item.step, x=xs[position])
        try:
            result = dissect(item.generator, list(layers), seg, n=n, seed=seed, input_fn=draw,
                             threshold=options.threshold, iou=options.iou, cutoff=options.cutoff,
                             batch_size=options.batch_size, device=device, topk=options.topk, progress=progress,
                             distributed=comm, memory_budget=options.memory_budget,
                             allow_nondeterministic=options.allow_nondeterministic)
        except (KeyError, ValueError, TypeError, RankFailure) as err:
            raise CommandError(f"{item.path}: {str(err).strip()}") from err
        result.settings["checkpoint"] = str(item.path)
        result.settings["step"] = item.step
        result.settings["step_axis"] = item.axis
        if input_fn is not None:
            result.settings["input_fn"] = input_fn  # the --input-fn spec, for the report and a rerun
        def write():
            if lead:
                if getattr(result, "sample_stats", None):  # generated-vs-real, diversity, unit churn
                    signals = dissection_signals(result, real, timeline.update(result, int(entry.x)))
                    result.settings["signals"] = signals.record()
                _write_outputs(store, entry, item.generator, result, options, n, seed, device, writer, logger,
                               input_fn=draw)
                if "signals" in result.settings:
                    logger.log_metrics(signals.scalars(), step=int(entry.x))
                    images, tables = signal_media(signals, int(entry.x), axis=item.axis,
                                                  first_steps=timeline.first_steps)
                    MediaLogger().log([logger], int(entry.x), images, tables)

        _unwrapped(comm, "writing", write)
        if lead:
            logger.experiment.flush()  # its events are on disk before the checkpoint counts as done
            record.add_done(checkpoint_key(item.path), entry, file_stamp(item.path))
        entries.append(entry)
    if lead:
        logger.experiment.close()
        entries = record.all_entries(store, entries)  # with checkpoints an earlier run added
        rows = [row for e in entries for row in summary_rows(e.result, e.name, e.step)]
        store.write_timeline(layers, entries, {
            "n": n, "seed": seed, "threshold": options.threshold.name, "iou": options.iou, "cutoff": options.cutoff,
            "segmenter": segmenter, "module": module, "generator_factory": generator_factory,
            "real_stats": real_stats, "input_fn": input_fn})
        table = store.write_summary(rows)
        record.finish()  # last: only now does the folder read as finished
        echo(table.rstrip())
        if any(skip):
            echo(f"kept {sum(skip)} checkpoint(s) already dissected in {out} with these settings "
                 "(add --overwrite to dissect everything again)")
        echo(f"wrote {len(entries)} dissection(s) to {out}; TensorBoard: tensorboard --logdir "
             f"{shlex.quote(str(out / TENSORBOARD))}; HTML: gan-monitor report {shlex.quote(str(out))}")
    return {"out": str(out), "checkpoints": [e.to_dict() for e in entries], "rows": rows}


def _unwrapped(comm, what: str, work):
    """``run_phase``, turning a failure into a one-line ``CommandError``."""
    try:
        return run_phase(comm, what, work)
    except RankFailure as err:
        messages = set(err.failed.values())
        if len(err.failed) == comm.world_size and len(messages) == 1:  # e.g. a bad argument: as in one process
            raise CommandError(messages.pop().removeprefix("CommandError: ")) from err
        raise CommandError(str(err)) from err


def _dissect_rank(comm, device, checkpoints, layers, out, options):
    """One rank of ``--devices N`` (run by ``launch``): its exit status and error line."""
    try:
        dissect_checkpoints(checkpoints, layers, out, device=str(device), comm=comm, **options)
    except CommandError as err:
        return 1, " ".join(str(err).split())
    return 0, ""


def _rerun_command(args: argparse.Namespace) -> str:
    """This command line (what to run again to complete an interrupted run), without --overwrite."""
    parser = getattr(args, "_parser", None)
    words = ["gan-monitor", "dissect", *map(str, args.checkpoints)]
    for action in getattr(parser, "_actions", []):
        value = getattr(args, action.dest, None)
        if not action.option_strings or action.dest in ("overwrite", "help") or value == action.default:
            continue
        words += [action.option_strings[0]] + ([] if action.nargs == 0 else [str(value)])
    return shlex.join(words)


def run(args: argparse.Namespace) -> int:
    checked("--n", positive_int, args.n)
    options = dissection_options(threshold=args.threshold, iou=args.iou, cutoff=args.cutoff, topk=args.images,
                                 batch_size=args.batch_size, allow_nondeterministic=args.allow_nondeterministic,
                                 memory_budget=None if args.memory_budget is None else memory_size(args.memory_budget))
    layers = [s.strip() for s in args.layers.split(",") if s.strip()]
    if not layers:
        raise UsageError("--layers needs at least one layer name, e.g. --layers layer2,layer3.")
    checked("--devices", positive_int, args.devices)
    checked("--timeout", positive_float, args.timeout)
    settings = dict(module=args.module, generator_factory=args.generator_factory, generator_attr=args.generator_attr,
                    n=args.n, seed=args.seed, threshold=options.threshold.name, iou=options.iou,
                    cutoff=options.cutoff, segmenter=args.segmenter, batch_size=options.batch_size,
                    images=options.topk, trust=args.trust_checkpoint, progress=not args.no_progress,
                    real_stats=args.real_stats, input_fn=args.input_fn, overwrite=args.overwrite,
                    memory_budget=options.memory_budget, allow_nondeterministic=options.allow_nondeterministic,
                    command=_rerun_command(args))
    try:
        checked_device("--device", args.device)
    except ValueError as err:
        raise UsageError(str(err)) from err
    if args.real_stats not in (None, "toyworld") and not Path(args.real_stats).is_file():
        raise UsageError(f"--real-stats {args.real_stats}: no such file; give a file written by ConceptStats.save, "
                         "or --real-stats toyworld.")
    try:
        if args.out.exists() and not args.out.is_dir():
            raise CommandError(f"--out {args.out} is an existing file; give a folder (it is created if missing).")
        work = (args.checkpoints, layers, args.out, settings)
        if launch.torchrun_world_size() > 1:  # started by torchrun: this process is one rank
            status, message = launch.join_torchrun(_dissect_rank, args.device, args=work, timeout=args.timeout)
        elif args.devices > 1:
            status, message = launch.spawn(_dissect_rank, args.devices, args.device, args=work,
                                           timeout=args.timeout)[0]
        else:
            status, message = 0, ""
            dissect_checkpoints(args.checkpoints, layers, args.out, device=args.device, **settings)
        if status:
            raise CommandError(message)
    except Exception as err:
        if args.debug:
            raise
        kind = getattr(err, "kind", type(err).__name__)  # launch.LaunchError: the failing rank's error type
        message = " ".join(str(err).split()) if isinstance(err, CommandError) else \
            f"{kind}: {' '.join(str(err).split())} (re-run with --debug for the traceback)"
        print(f"gan-monitor dissect: error: {message}", file=sys.stderr)
        return 1
    return 0
