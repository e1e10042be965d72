"""Train a toy GAN on the procedural scenes with the DissectionMonitor on, for a
bounded time, and watch interpretable units emerge. ``--arch`` picks the generator
family: ``progan`` (default), ``stylegan`` or ``pix2pix`` (``demo_families``: the
model, default layers and held-out inputs of each).

Writes TensorBoard logs and checkpoints under --out (a new version_N folder per
run), prints the `tensorboard --logdir` command to follow along, and at the end a
table per layer of interpretable units, concept diversity and mean IoU at the
first and the last dissection.

The dissection schedule adapts to the machine: the speed of the run's first
batches sets N, and the monitor dissects every N batches so that about --points
dissections (after the one at step 0) fit into the time budget.
"""
from __future__ import annotations

import argparse
import shlex
import copy
import json
import logging
import os
import time
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, Sequence

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger

from gan_monitor.callbacks.context import PictureOptions
from gan_monitor.callbacks.dissection_monitor import DissectionMonitor
from gan_monitor.callbacks.training_signals import SignalOptions
from gan_monitor.cli.demo_families import (
    ARCHS,
    checkpoint_input_fn,
    family,
    generator_attr,
    layer_list,
    make_model,
    monitor_input_fn,
    unknown_layers,
)
from gan_monitor.cli.dissect import REAL_SCENES, REAL_SEED, dissect_checkpoints
from gan_monitor.cli.options import add_iou_argument, add_threshold_argument, checked
from gan_monitor.core.errors import UsageError
from gan_monitor.core.tracing import layer_names
from gan_monitor.core.validation import fraction, positive_int
from gan_monitor.dissection.thresholds.modes import IQR, Quantile
from gan_monitor.report.html import build_report
from gan_monitor.signals.concept_stats import toyworld_real_stats
from gan_monitor.toyworld.gan import ToyGAN
from gan_monitor.toyworld.segmenter import load_segmenter

__all__ = ["DEFAULTS", "add_arguments", "run", "run_demo", "plan_schedule", "make_monitor",
           "seconds_per_batch", "format_table", "demo_threshold"]

# Chosen so that dissections cost <= ~5% of the training time on 2 CPU cores while
# giving 6+ points on the curves in 10 minutes (see bench/monitor_overhead.py).
# iqr mode (ICLR 2019 default): with quantile mode's fixed top 1% a unit can reach
# IoU 0.05 only with concepts covering <= ~20% of the image, and in
# 10 minutes of toy training most units stay just below the cutoff (docs/method.md §3).
DEFAULTS: dict[str, Any] = dict(
    minutes=10.0, out="runs/demo", layers=("layer2", "layer3"), n=50, points=5,
    threshold="iqr", iqr_n=25, quantile=0.01, iou="plain", cutoff=0.05, seed=0, threads=2,
)


# Kept from the time budget for what the trainer's clock does not count: rendering the
# training scenes, the last checkpoint, the final table and the report of the last
# checkpoint (about 12 s at the defaults).
_RESERVE_SECONDS = 35.0
# The schedule is planned from the speed of batches _WARMUP.._WARMUP+_MEASURE of the run.
_WARMUP, _MEASURE = 5, 25


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = DEFAULTS
    p.add_argument("--minutes", type=float, default=d["minutes"],
                   help=f"wall-clock budget of the whole demo (default {d['minutes']:g})")
    p.add_argument("--out", type=Path, default=Path(d["out"]), help=f"log folder (default {d['out']})")
    p.add_argument("--arch", choices=ARCHS, default="progan",
                   help="generator family: progan (default), stylegan (mapping network, modulated convolutions, "
                        "fixed noise as inputs) or pix2pix (U-Net conditioned on held-out label maps)")
    p.add_argument("--layers", nargs="+", default=None,
                   help=f"generator layers to dissect (default {' '.join(d['layers'])}; stylegan: "
                        f"{' '.join(family('stylegan').layers)}; pix2pix: {' '.join(family('pix2pix').layers)})")
    p.add_argument("--n", type=int, default=d["n"], help=f"held-out samples (default {d['n']})")
    p.add_argument("--points", type=int, default=d["points"],
                   help=f"dissections to aim for after the first (default {d['points']})")
    p.add_argument("--every-n-steps", type=int, default=None,
                   help="dissect every this many training batches (default: from --points)")
    p.add_argument("--max-batches", type=int, default=None, help="stop after this many batches")
    add_threshold_argument(p, default=d["threshold"])
    p.add_argument("--iqr-n", type=int, default=d["iqr_n"],
                   help=f"iqr mode: size of the separate sample that picks the levels (default {d['iqr_n']})")
    p.add_argument("--quantile", type=float, default=d["quantile"],
                   help=f"top fraction of pixels a unit is 'on' in quantile mode (default {d['quantile']})")
    add_iou_argument(p, default=d["iou"])
    p.add_argument("--cutoff", type=float, default=d["cutoff"],
                   help=f"IoU from which a unit counts as interpretable (default {d['cutoff']})")
    p.add_argument("--seed", type=int, default=d["seed"], help=f"training seed (default {d['seed']})")
    p.add_argument("--threads", type=int, default=d["threads"],
                   help=f"torch CPU threads (default {d['threads']})")
    p.add_argument("--signals", action="store_true",
                   help="also log the training signals: generated-vs-real concept statistics (real: 1000 "
                        "procedural scenes through the toy segmenter), sample diversity, unit churn")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    if args.minutes <= 0:
        raise UsageError(f"--minutes must be positive, got {args.minutes}.")
    for name in ("n", "iqr_n", "points", "every_n_steps", "max_batches", "threads"):
        if getattr(args, name) is not None:
            checked(f"--{name.replace('_', '-')}", positive_int, getattr(args, name))
    checked("--quantile", fraction, args.quantile)
    checked("--cutoff", fraction, args.cutoff, closed=True)
    try:
        run_demo(
            minutes=args.minutes, out=args.out, layers=args.layers, arch=args.arch, n=args.n, points=args.points,
            every_n_steps=args.every_n_steps, max_batches=args.max_batches,
            threshold=args.threshold, iqr_n=args.iqr_n, quantile=args.quantile, iou=args.iou, cutoff=args.cutoff,
            seed=args.seed, threads=args.threads, progress=not args.no_progress, signals=args.signals,
        )
    except ValueError as err:  # e.g. an unknown layer name: the message lists the valid ones
        raise UsageError(str(err)) from err
    return 0


def seconds_per_batch(hparams: dict, batches: int = 6) -> float:
    """Median time of a training batch of a throwaway ToyGAN with the given settings
    (a pilot for bench/monitor_overhead.py)."""
    hp = dict(hparams, num_scenes=max(2 * hparams["batch_size"], 64))
    times: list[float] = []

    class Clock(pl.Callback):
        def on_train_batch_start(self, *a):
            self.t0 = time.perf_counter()

        def on_train_batch_end(self, *a):
            times.append(time.perf_counter() - self.t0)

    quiet = logging.getLogger("lightning.pytorch")
    level = quiet.level
    quiet.setLevel(logging.WARNING)
    with torch.random.fork_rng(devices=[]):
        pl.Trainer(max_steps=2 * batches, logger=False, enable_checkpointing=False,
                   enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
                   callbacks=[Clock()]).fit(ToyGAN(**hp))
    quiet.setLevel(level)
    return sorted(times[1:])[len(times[1:]) // 2]


def plan_schedule(seconds: float, per_batch: float, points: int,
                  max_batches: int | None = None, margin: float = 1.2) -> tuple[int, int]:
    """``(expected batches, every_n_steps)``: how many batches fit into ``seconds``
    (keeping 5% for the dissections, and ``margin`` for a machine whose load changes)
    and the interval giving ``points`` dissections."""
    expected = max(1, int(0.95 * seconds / (per_batch * margin)))
    if max_batches is not None:
        expected = min(expected, int(max_batches))
    return expected, max(1, expected // max(1, int(points)))


def demo_threshold(threshold: str = DEFAULTS["threshold"], iqr_n: int = DEFAULTS["iqr_n"],
                   quantile: float = DEFAULTS["quantile"]) -> Quantile | IQR:
    """The threshold object of the demo's flags: ``Quantile(quantile)``, or ``IQR`` on a
    separate sample of ``iqr_n`` with ``quantile`` as the fallback level."""
    return IQR(n=iqr_n, fallback=quantile) if threshold == "iqr" else Quantile(quantile)


def make_monitor(segmenter, every_n_steps: int, *, layers: Sequence[str] = DEFAULTS["layers"],
                 n: int = DEFAULTS["n"], seed: int = DEFAULTS["seed"],
                 threshold: str = DEFAULTS["threshold"], iqr_n: int = DEFAULTS["iqr_n"],
                 quantile: float = DEFAULTS["quantile"], iou: str = DEFAULTS["iou"],
                 cutoff: float = DEFAULTS["cutoff"], signals: bool = False, generator: str = "generator",
                 input_fn: Callable | None = None) -> DissectionMonitor:
    """The demo's DissectionMonitor on ``ToyGAN.generator`` (also used by the overhead bench;
    ``generator``, ``input_fn``: another family's, ``demo_families``).
    ``signals``: log the training signals against the toy world's real statistics."""
    return DissectionMonitor(list(layers), segmenter, generator=generator, every_n_steps=every_n_steps,
                             input_fn=input_fn,
                             n=n, seed=seed, threshold=demo_threshold(threshold, iqr_n, quantile), iou=iou,
                             cutoff=cutoff, batch_size=100, pictures=PictureOptions(top_units=8, top_images=5),
                             signals=SignalOptions(real_stats=real_scene_stats) if signals else None)


def real_scene_stats():
    """The toy world's real concept statistics the demo compares with (``--signals``; the same
    as ``gan-monitor dissect --real-stats toyworld``), computed at the first dissection."""
    return toyworld_real_stats(REAL_SCENES, seed=REAL_SEED)


def run_demo(
    *,
    minutes: float = DEFAULTS["minutes"],
    out: str | Path = DEFAULTS["out"],
    layers: Sequence[str] | None = None,
    arch: str = "progan",
    n: int = DEFAULTS["n"],
    points: int = DEFAULTS["points"],
    every_n_steps: int | None = None,
    max_batches: int | None = None,
    threshold: str = DEFAULTS["threshold"],
    iqr_n: int = DEFAULTS["iqr_n"],
    quantile: float = DEFAULTS["quantile"],
    iou: str = DEFAULTS["iou"],
    cutoff: float = DEFAULTS["cutoff"],
    seed: int = DEFAULTS["seed"],
    threads: int = DEFAULTS["threads"],
    progress: bool = True,
    gan_kwargs: dict | None = None,
    echo: Callable[[str], None] = print,
    signals: bool = False,
) -> dict[str, Any]:
    """Run the demo; returns the log folder, the monitor's history and timings.
    ``arch``: ``progan``, ``stylegan`` or ``pix2pix``; ``layers`` default to the family's."""
    start = time.perf_counter()
    torch.set_num_threads(int(threads))
    out = Path(out)
    layers = list(family(arch).layers if layers is None else layers)
    pl.seed_everything(seed, verbose=False)
    model = make_model(arch, seed, gan_kwargs)
    attr = generator_attr(model)
    unknown = unknown_layers(getattr(model, attr), layers)
    if unknown:
        raise ValueError(f"the toy {arch} generator has no layer(s) {unknown}; its blocks are "
                         f"{layer_list(getattr(model, attr))} (any of: "
                         f"{', '.join(layer_names(getattr(model, attr)))}).")
    segmenter = load_segmenter()

    budget = minutes * 60.0
    replan = None
    if every_n_steps is None and max_batches is not None and max_batches < _WARMUP + _MEASURE:
        every_n_steps = max(1, int(max_batches) // max(1, points))
    if every_n_steps is None:  # set from this run's own speed after its first batches
        replan = _Replan(start + budget - _RESERVE_SECONDS, points, max_batches, echo)
    monitor = make_monitor(segmenter, every_n_steps or 10**9, layers=layers, n=n, seed=seed,
                           threshold=threshold, iqr_n=iqr_n, quantile=quantile, iou=iou, cutoff=cutoff,
                           signals=signals, generator=attr, input_fn=monitor_input_fn(arch, model))
    if replan is not None:
        replan.monitor = monitor
    logger = TensorBoardLogger(str(out), name="", default_hp_metric=False)
    echo(f"gan-monitor demo: logs and checkpoints in {logger.log_dir}")
    echo(f"  follow along with:  tensorboard --logdir {shlex.quote(str(out))}")
    remaining = max(1.0, budget - (time.perf_counter() - start) - _RESERVE_SECONDS)
    trainer = pl.Trainer(
        max_time=timedelta(seconds=remaining),
        max_steps=-1 if max_batches is None else 2 * int(max_batches),  # 2 optimizer steps per batch
        max_epochs=-1, accelerator="cpu", logger=logger, log_every_n_steps=10,
        callbacks=[c for c in (replan, monitor, ModelCheckpoint(save_last=True)) if c is not None],
        enable_progress_bar=progress, enable_model_summary=False,
    )
    t_fit = time.perf_counter()
    trainer.fit(model)
    fit_seconds = time.perf_counter() - t_fit
    batches = monitor.batches_seen
    dissect_seconds = sum(h.get("seconds", 0.0) for h in monitor.history)
    echo("")
    echo(format_table(monitor.history, monitor))
    echo(f"\n{batches} batches in {fit_seconds:.0f} s of training; {len(monitor.history)} dissections "
         f"took {dissect_seconds:.1f} s ({100 * dissect_seconds / max(fit_seconds, 1e-9):.1f}% of it).")
    if monitor.failures:
        echo(f"warning: {monitor.failures} dissection(s) failed; see the warning above.")
    echo(f"TensorBoard:  tensorboard --logdir {shlex.quote(str(out))}")
    summary = {
        "log_dir": logger.log_dir, "history": copy.deepcopy(monitor.history), "batches": batches,
        "fit_seconds": fit_seconds, "dissect_seconds": dissect_seconds,
        "every_n_steps": monitor.every_n_steps, "checkpoint_dir": os.path.join(logger.log_dir, "checkpoints"),
        "total_seconds": time.perf_counter() - start,
        "settings": {"arch": arch, "generator_attr": attr, "layers": list(layers), "n": n, "seed": seed,
                     "threshold": threshold,
                     "iqr_n": iqr_n if threshold == "iqr" else None,
                     "quantile": quantile, "iou": iou, "cutoff": cutoff, "threads": threads,
                     "signals": bool(signals)},
    }
    usable, spec = checkpoint_input_fn(arch, model)
    summary["settings"]["input_fn"] = spec
    summary["report"] = _report_last_checkpoint(summary, echo, progress) if usable else None
    if not usable:
        echo("(no report of the last checkpoint: the demo's input functions fit its default image and latent sizes)")
    with open(os.path.join(logger.log_dir, "demo_summary.json"), "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=1)
    return summary


def _report_last_checkpoint(summary: dict[str, Any], echo, progress: bool) -> str | None:
    """Dissect the run's last checkpoint (``gan-monitor dissect``, with the monitor's
    settings) and write its HTML report."""
    last = Path(summary["checkpoint_dir"]) / "last.ckpt"
    if not last.is_file():
        return None
    st = summary["settings"]
    out = Path(summary["log_dir"]) / "dissect_last"
    dissect_checkpoints([last], st["layers"], out, n=st["n"], seed=st["seed"],
                        module=family(st.get("arch", "progan")).module,
                        generator_attr=st.get("generator_attr", "generator"), input_fn=st.get("input_fn"),
                        threshold=demo_threshold(st["threshold"], st["iqr_n"], st["quantile"]), iou=st["iou"],
                        cutoff=st["cutoff"], progress=progress, echo=lambda line: None,
                        real_stats="toyworld" if st.get("signals") else None)
    page = build_report(out)
    echo(f"HTML report of the last checkpoint:  {page}")
    return str(page)


class _Replan(pl.Callback):
    """Sets the monitor's ``every_n_steps`` from the speed of this run's first batches,
    so that ``points`` dissections fit before ``deadline`` (a ``perf_counter`` time)."""

    def __init__(self, deadline: float, points: int, max_batches: int | None, echo):
        self.deadline, self.points, self.max_batches, self.echo = deadline, points, max_batches, echo
        self.monitor = None
        self.batches = 0
        self.t0 = 0.0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.batches += 1
        if self.batches == _WARMUP:
            self.t0 = time.perf_counter()
        elif self.batches == _WARMUP + _MEASURE:
            now = time.perf_counter()
            per_batch = (now - self.t0) / _MEASURE
            more, _ = plan_schedule(self.deadline - now, per_batch, 1, margin=1.1)
            total = self.batches + more
            if self.max_batches is not None:
                total = min(total, int(self.max_batches))
            self.monitor.every_n_steps = max(self.batches + 1, total // max(1, self.points))
            self.echo(f"\ngan-monitor demo: {per_batch:.2f} s per batch, ~{total} batches fit; "
                      f"dissecting every {self.monitor.every_n_steps} batches.")


def format_table(history: Sequence[dict], monitor) -> str:
    """Per layer: interpretable units, concept diversity and mean IoU at the first and
    the last dissection, with the settings the numbers came from (``monitor``: its
    ``threshold`` object, ``iou``, ``cutoff``, ``n`` and ``seed``)."""
    threshold = monitor.threshold
    if isinstance(threshold, Quantile):
        mode = f"quantile (unit on in its top {100 * threshold.q:g}% of pixels)"
    else:
        mode = (f"iqr (each unit's level maximises the information quality ratio with its "
                f"best concept, chosen on a separate sample of {threshold.n or monitor.n})")
    head = (f"Dissection on {monitor.n} held-out samples (seed {monitor.seed}); threshold mode: {mode}; "
            f"IoU: {monitor.iou}; interpretable = IoU >= {monitor.cutoff:g}.")
    if not history:
        return head + "\nNo dissection completed."
    first, last = history[0], history[-1]
    rows = [head, f"first dissection at step {first['step']}, last at step {last['step']} "
                  f"({len(history)} dissections)", ""]
    cols = ("interpretable units", "concept diversity", "mean IoU")
    rows.append(f"{'layer':<10} {'units':>5}  " + "  ".join(f"{c:>21}" for c in cols))
    for layer in first["layers"]:
        a, b = first["layers"][layer], last["layers"][layer]
        cells = [f"{a['interpretable_units']:>4d} -> {b['interpretable_units']:<4d}",
                 f"{a['concept_diversity']:>4d} -> {b['concept_diversity']:<4d}",
                 f"{a['mean_iou']:.3f} -> {b['mean_iou']:.3f}"]
        rows.append(f"{layer:<10} {a['units']:>5}  " + "  ".join(f"{c:>21}" for c in cells))
    js = [(h["step"], h["signals"]["js_divergence"]) for h in history if "js_divergence" in h.get("signals", {})]
    if js:
        rows.append("concept JS divergence (generated vs real), by step: "
                    + ", ".join(f"{step}: {value:.4f}" for step, value in js))
    return "\n".join(rows)

