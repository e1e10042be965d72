"""Overhead of the DissectionMonitor on the demo's training, in one run.

    python bench/monitor_overhead.py                 # ~2 x 2.5 minutes on 2 cores
    python bench/monitor_overhead.py --fraction 1    # the demo's full length, twice

The demo (``gan-monitor demo``) trains ``ToyGAN`` for a time budget and dissects
every N batches, N chosen so that ``--points`` dissections fit. This bench
measures the demo's speed (pilot batches), plans the demo's schedule for
``--demo-minutes``, then trains the same ``ToyGAN`` for ``--fraction`` of the
planned batches twice: without and with the monitor at the demo's default
settings (TensorBoard logger in both), and prints the ratio of the training wall
times (goal <= 1.05). On a shared machine other processes' load changes between
the two runs and dominates the ratio; compare several runs. Both runs dissect on the same schedule as the demo, so a
short run (which has relatively more dissections: the one at step 0 weighs more)
overestimates the full demo's overhead; the extrapolation to the full demo
from the measured per-dissection time is printed too.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout's gan_monitor, not an installed one

import lightning.pytorch as pl  # noqa: E402
import torch  # noqa: E402
from lightning.pytorch.loggers import TensorBoardLogger  # noqa: E402

from gan_monitor.cli.demo import DEFAULTS, make_monitor, plan_schedule, seconds_per_batch  # noqa: E402
from gan_monitor.toyworld.gan import ToyGAN  # noqa: E402
from gan_monitor.toyworld.segmenter import load_segmenter  # noqa: E402


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--demo-minutes", type=float, default=DEFAULTS["minutes"])
    p.add_argument("--fraction", type=float, default=0.25, help="share of the demo's batches per run")
    p.add_argument("--threads", type=int, default=DEFAULTS["threads"])
    args = p.parse_args(argv)
    if not 0 < args.fraction <= 1:
        p.error("--fraction must be in (0, 1]")

    torch.set_num_threads(args.threads)
    segmenter = load_segmenter()
    per_batch = seconds_per_batch(dict(ToyGAN().hparams))
    expected, every = plan_schedule(args.demo_minutes * 60, per_batch, DEFAULTS["points"])
    batches = max(2 * every, int(round(args.fraction * expected)))

    class Clock(pl.Callback):  # first in the list: starts before the monitor's on_train_start
        def on_train_start(self, trainer, pl_module):
            self.start = time.perf_counter()

        def on_train_end(self, trainer, pl_module):
            self.seconds = time.perf_counter() - self.start

    def train(with_monitor: bool, root: str) -> tuple[object, object]:
        pl.seed_everything(DEFAULTS["seed"], verbose=False)
        clock = Clock()
        callbacks = [clock]
        monitor = None
        if with_monitor:
            monitor = make_monitor(segmenter, every)
            callbacks.append(monitor)
        pl.Trainer(max_steps=2 * batches, accelerator="cpu", callbacks=callbacks,
                   logger=TensorBoardLogger(root, name="with" if with_monitor else "without"),
                   log_every_n_steps=10, enable_checkpointing=False, enable_progress_bar=False,
                   enable_model_summary=False).fit(ToyGAN(data_seed=DEFAULTS["seed"]))
        return clock, monitor

    with tempfile.TemporaryDirectory() as root:
        without, _ = train(False, root)
        with_, monitor = train(True, root)
    t_without, t_with = without.seconds, with_.seconds
    dissections = [h["seconds"] for h in monitor.history]
    per_dissection = sum(dissections) / max(1, len(dissections))
    full_demo_dissections = 1 + expected // every
    extrapolated = 1 + full_demo_dissections * per_dissection / (expected * t_without / batches)
    report = {
        "threads": args.threads,
        "pilot_seconds_per_batch": round(per_batch, 3),
        "demo_minutes": args.demo_minutes,
        "demo_planned_batches": expected,
        "every_n_steps": every,
        "monitor": {k: DEFAULTS[k] for k in ("layers", "n", "threshold", "iqr_n", "quantile", "iou", "cutoff")},
        "batches_per_run": batches,
        "seconds_without_monitor": round(t_without, 2),
        "seconds_with_monitor": round(t_with, 2),
        "dissections": len(dissections),
        "seconds_per_dissection": round(per_dissection, 2),
        "ratio": round(t_with / t_without, 4),
        "extrapolated_full_demo_ratio": round(extrapolated, 4),
    }
    print(json.dumps(report, indent=2))
    print(f"\nmonitor overhead: {t_with:.1f} s / {t_without:.1f} s = {t_with / t_without:.3f} "
          f"(goal <= 1.05); full demo extrapolated: {extrapolated:.3f}")
    return report


if __name__ == "__main__":
    main()
