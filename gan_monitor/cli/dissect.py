"""Dissect saved checkpoints, outside training.

Examples:
  gan-monitor dissect runs/demo/version_0/checkpoints/last.ckpt --layers layer2,layer3 --out dissect/
  gan-monitor dissect ckpts/*.ckpt --layers layer3 --out timeline/ --n 500 --threshold iqr
  gan-monitor dissect g.pt --generator-factory mypkg.models:make_generator --layers block4 \\
      --segmenter mypkg.seg:load --out dissect/
  gan-monitor report dissect/          # then open dissect/index.html
  gan-monitor dissect ckpts/*.ckpt --layers layer3 --out timeline/ --devices 4 --device cuda
  torchrun --nnodes 2 --nproc-per-node 8 --rdzv-endpoint HOST:29500 -m gan_monitor.cli.main \
      dissect ckpts/*.ckpt --layers layer3 --out timeline/ --device cuda

Writes, under --out: per checkpoint a folder <name>/ with dissection.json (the
Python API's DissectionResult.to_json) and unit pictures; tensorboard/ with event
files (the callback's tags, x-axis = the checkpoint's training step); summary.csv
(one row per checkpoint and layer, also printed) and timeline.json (the index
`gan-monitor report` reads).

Exit codes: 0 done, 1 error (one line; --debug shows the traceback), 2 bad usage.
"""
from __future__ import annotations

from gan_monitor.core.errors import CommandError

import argparse
import csv
import io
import json
import re
import sys
from pathlib import Path
from typing import Any, Sequence

__all__ = ["add_arguments", "run", "dissect_checkpoints", "load_segmenter_spec", "CommandError"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoints", nargs="+", type=Path, metavar="CKPT",
                   help="Lightning .ckpt files or generator state dicts (several: a timeline)")
    p.add_argument("--layers", required=True, help="comma-separated generator layers, e.g. layer2,layer3")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--module", default="gan_monitor.toyworld.gan:ToyGAN",
                   help="LightningModule class of .ckpt files (default: the toy GAN)")
    p.add_argument("--generator-factory", default=None, metavar="pkg.mod:function",
                   help="function building the generator, for plain state dicts")
    p.add_argument("--generator-attr", default="generator",
                   help="attribute of the LightningModule holding the generator (default generator)")
    p.add_argument("--n", "--samples", dest="n", type=int, default=1000,
                   help="held-out samples (default 1000; under torchrun write --samples: torchrun takes --n for itself)")
    p.add_argument("--seed", type=int, default=0, help="seed of the held-out latents (default 0)")
    p.add_argument("--threshold", choices=("quantile", "iqr"), default="quantile",
                   help="threshold mode (default quantile)")
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
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="load with weights_only=False (only for files you trust: unpickling can run code)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--debug", action="store_true", help="show tracebacks")


def load_segmenter_spec(spec: str, device: str = "cpu"):
    """A --segmenter spec -> a segmenter on ``device`` (forms: gan_monitor.segmenters.specs)."""
    from gan_monitor.segmenters import specs as segmenter_specs

    try:
        return segmenter_specs.load_segmenter_spec(spec, device)
    except (ValueError, ImportError, OSError) as err:
        raise CommandError(f"--segmenter {spec}: {err}") from err


def _folder_name(path: Path, used: set[str]) -> str:
    base = re.sub(r"[^A-Za-z0-9_.=-]+", "_", path.stem) or "checkpoint"
    name, i = base, 1
    while name in used:
        i += 1
        name = f"{base}_{i}"
    used.add(name)
    return name


def _write_unit_pictures(generator, inputs, result, folder: Path, images: int, device) -> dict[str, Any]:
    """One PNG per unit (top images, mask outlined) under ``folder/units/<layer>/``."""
    from gan_monitor.report import pictures as visualize
    from gan_monitor.report.unit_examples import top_unit_examples

    index: dict[str, Any] = {}
    for layer, ld in result.items():
        sub = folder / "units" / re.sub(r"[^A-Za-z0-9_.-]+", "_", layer)
        sub.mkdir(parents=True, exist_ok=True)
        cutoff = ld.settings.get("cutoff")
        labels = ld.labels
        for u, imgs, masks in top_unit_examples(generator, inputs, ld, list(range(ld.num_units)), images,
                                                device=device):
            caption = visualize.unit_caption(u, labels[u], float(ld.unit_iou[u]), cutoff)
            visualize.unit_row(imgs, masks, caption).save(sub / f"unit_{u}.png")
        index[layer] = sub.relative_to(folder).as_posix()
    return index


def summary_rows(name: str, step: int | None, result) -> list[dict[str, Any]]:
    rows = []
    for layer, ld in result.items():
        s = ld.summary
        row = {"checkpoint": name, "step": "" if step is None else step, "layer": layer, "units": s["units"],
               "interpretable_units": s["interpretable_units"], "concept_diversity": s["concept_diversity"],
               "mean_iou": round(s["mean_iou"], 4)}
        row.update({f"units_{cat}": n for cat, n in s["per_category"].items()})
        rows.append(row)
    return rows


def dissect_checkpoints(checkpoints: Sequence[Path], layers: Sequence[str], out: Path, *,
                        module: str = "gan_monitor.toyworld.gan:ToyGAN", generator_factory=None,
                        generator_attr: str = "generator", n: int = 1000, seed: int = 0,
                        threshold: str = "quantile", cutoff: float = 0.05, segmenter: str = "toyworld",
                        device: str = "cpu", batch_size: int = 32, images: int = 5, trust: bool = False,
                        progress: bool = True, echo=print, comm=None) -> dict[str, Any]:
    """Dissect each checkpoint; write JSON, pictures, TensorBoard events, summary.csv, timeline.json.

    ``comm``: a ``gan_monitor.core.distributed`` communicator; every rank dissects its share of
    the held-out samples and rank 0 writes the outputs (the same as one process)."""
    from tqdm.auto import tqdm

    from gan_monitor.core.checkpoints import CheckpointError, load_generator
    from gan_monitor.dissection.pipeline import dissect
    from gan_monitor.core.distributed import RankFailure, SingleProcess, run_phase
    from gan_monitor.core.inputs import make_inputs
    from gan_monitor.report.tensorboard import DissectionWriter
    from gan_monitor.core.tracing import layer_names

    comm = comm if comm is not None else SingleProcess()
    lead = comm.rank == 0

    def load():
        try:
            loaded = [load_generator(p, module=module, generator_factory=generator_factory,
                                     generator_attr=generator_attr, trust=trust, device=device) for p in checkpoints]
        except CheckpointError as err:
            raise CommandError(str(err)) from err
        for item in loaded:
            unknown = [name for name in layers if name not in layer_names(item.generator)]
            if unknown:
                raise CommandError(f"{item.path}: the generator has no layer(s) {', '.join(unknown)}; "
                                   f"available: {', '.join(layer_names(item.generator))}.")
        return loaded, load_segmenter_spec(segmenter, device)

    loaded, seg = _unwrapped(run_phase, comm, "loading", load)
    # a timeline is ordered by training step; plain state dicts keep their command-line order
    order = sorted(range(len(loaded)), key=lambda i: (loaded[i].step is None, loaded[i].step or 0, i))
    logger, writer = None, DissectionWriter(top_units=8)
    if lead:
        out.mkdir(parents=True, exist_ok=True)
        from lightning.pytorch.loggers import TensorBoardLogger

        logger = TensorBoardLogger(str(out), name="tensorboard", version="", default_hp_metric=False)
    used: set[str] = set()
    entries, rows = [], []
    for rank, i in enumerate(tqdm(order, desc="checkpoints", disable=not progress or len(order) < 2 or not lead)):
        item = loaded[i]
        name = _folder_name(item.path, used)
        folder = out / name
        try:
            result = dissect(item.generator, list(layers), seg, n=n, seed=seed, threshold=threshold,
                             cutoff=cutoff, batch_size=batch_size, device=device, topk=max(1, images),
                             progress=progress, distributed=comm)
        except (KeyError, ValueError, TypeError, RankFailure) as err:
            raise CommandError(f"{item.path}: {str(err).strip()}") from err
        result.settings["checkpoint"] = str(item.path)
        result.settings["step"] = item.step
        step = item.step if item.step is not None else rank

        def write():
            if not lead:
                return {}
            folder.mkdir(parents=True, exist_ok=True)
            result.to_json(folder / "dissection.json")
            inputs = make_inputs(item.generator, n, seed)
            pictures = _write_unit_pictures(item.generator, inputs, result, folder, images, device)
            examples = {layer: _top_examples(item.generator, inputs, ld, device) for layer, ld in result.items()}
            writer.write([logger], result, step, examples)
            return pictures

        pictures = _unwrapped(run_phase, comm, "writing", write)
        entries.append({"name": name, "checkpoint": str(item.path), "step": item.step, "x": step,
                        "json": f"{name}/dissection.json", "unit_pictures": {k: f"{name}/{v}" for k, v in pictures.items()}})
        rows.extend(summary_rows(name, item.step, result))
    if lead:
        logger.experiment.close()
        with open(out / "timeline.json", "w", encoding="utf-8") as f:
            json.dump({"layers": list(layers), "checkpoints": entries,
                       "settings": {"n": n, "seed": seed, "threshold": threshold, "cutoff": cutoff,
                                    "segmenter": segmenter, "module": module, "generator_factory": generator_factory}},
                      f, indent=1)
        table = _csv(rows)
        (out / "summary.csv").write_text(table, encoding="utf-8")
        echo(table.rstrip())
        echo(f"wrote {len(entries)} dissection(s) to {out}; TensorBoard: tensorboard --logdir {out / 'tensorboard'}; "
             f"HTML: gan-monitor report {out}")
    return {"out": str(out), "checkpoints": entries, "rows": rows}


def _unwrapped(run_phase, comm, what, work):
    """``run_phase``, turning a failure into a one-line ``CommandError``."""
    from gan_monitor.core.distributed import RankFailure

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


def _top_examples(generator, inputs, ld, device):
    from gan_monitor.report.unit_examples import top_unit_examples

    return top_unit_examples(generator, inputs, ld, 8, 5, device=device)


def _csv(rows: list[dict[str, Any]]) -> str:
    fields: list[str] = []
    for row in rows:
        fields.extend(k for k in row if k not in fields)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields, restval=0, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def run(args: argparse.Namespace) -> int:
    from gan_monitor.cli.main import UsageError

    for name in ("n", "batch_size", "images"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be a positive integer, got {getattr(args, name)}.")
    layers = [s.strip() for s in args.layers.split(",") if s.strip()]
    if not layers:
        raise UsageError("--layers needs at least one layer name, e.g. --layers layer2,layer3.")
    if args.devices < 1:
        raise UsageError(f"--devices must be a positive number of processes, got {args.devices}.")
    if args.timeout <= 0:
        raise UsageError(f"--timeout must be a positive number of seconds, got {args.timeout}.")
    options = dict(module=args.module, generator_factory=args.generator_factory, generator_attr=args.generator_attr,
                   n=args.n, seed=args.seed, threshold=args.threshold, cutoff=args.cutoff, segmenter=args.segmenter,
                   batch_size=args.batch_size, images=args.images, trust=args.trust_checkpoint,
                   progress=not args.no_progress)
    try:
        import torch

        from gan_monitor.core import launch

        torch.device(args.device)
        work = (args.checkpoints, layers, args.out, options)
        if launch.torchrun_world_size() > 1:  # started by torchrun: this process is one rank
            status, message = launch.join_torchrun(_dissect_rank, args.device, args=work, timeout=args.timeout)
        elif args.devices > 1:
            status, message = launch.spawn(_dissect_rank, args.devices, args.device, args=work,
                                           timeout=args.timeout)[0]
        else:
            status, message = 0, ""
            dissect_checkpoints(args.checkpoints, layers, args.out, device=args.device, **options)
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
