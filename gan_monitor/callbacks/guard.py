"""How the callback runs monitoring work inside a training run (shared by the
dissection, per-unit FID and causal-effect schedules).

* The work runs under ``torch.random.fork_rng``: whatever it draws, training's random
  stream is unchanged.
* A failure warns once per kind of work, is counted, and training goes on; in strict
  mode it is raised instead.
* Every kind of work logs on Lightning's own logging axis (:func:`logging_step`).
"""
from __future__ import annotations

import warnings
from typing import Any, Callable

import torch

__all__ = ["GuardedWork", "logging_step"]


def logging_step(trainer, batches_seen: int, after_batch: bool) -> int:
    """Step on Lightning's logging axis: batches that stepped (what ``self.log`` uses;
    with manual optimisation ``trainer.global_step`` counts two optimizer steps per GAN
    batch), counting the current batch in ``on_train_batch_end``. Falls back to the
    monitor's own batch counter."""
    loop = getattr(getattr(trainer, "fit_loop", None), "epoch_loop", None)
    step = getattr(loop, "_batches_that_stepped", None)
    return batches_seen if step is None else int(step) + int(after_batch)


class GuardedWork:
    """Runs one kind of monitoring work (``what``, e.g. "dissection") with the
    warn-once-or-strict policy. ``failures`` counts the failed runs."""

    def __init__(self, what: str, later: str = "later failures"):
        self.what, self.later = what, later
        self.failures = 0
        self._warned = False

    @staticmethod
    def counted(attribute: str = "_guard") -> property:
        """A ``failures`` property for an owner that keeps its GuardedWork in ``attribute``."""
        def get(owner) -> int:
            return getattr(owner, attribute).failures

        def set_(owner, value: int) -> None:
            getattr(owner, attribute).failures = int(value)

        return property(get, set_, doc="Failed runs (kept in checkpoints).")

    def run(self, work: Callable[[], Any], *, step: int, device: torch.device, strict: bool,
            what: str | None = None) -> tuple[bool, Any]:
        """``(True, work())`` on success; ``(False, None)`` after a failure (raised when
        ``strict``). ``what`` names this run in the warning (default: the instance's)."""
        try:
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                return True, work()
        except Exception as err:
            if strict:
                raise
            self.failures += 1
            if not self._warned:
                self._warned = True
                warnings.warn(
                    f"gan_monitor: {what or self.what} at step {step} failed ({type(err).__name__}: {err}). "
                    f"Training continues without it; {self.later} are not reported. "
                    "Pass strict=True to DissectionMonitor to raise instead.",
                    stacklevel=3,
                )
            return False, None
