"""What happens when monitoring work fails during training: by default it warns once,
is counted, and training goes on; with ``strict=True`` the error is raised.

* The work runs under ``torch.random.fork_rng``: whatever it draws, training's random
  stream is unchanged.
* The first failure of each kind of work (the dissection, the per-unit FID, the causal
  effects: one :class:`FailurePolicy` each) warns; later ones are only counted
  (``failures``, kept in checkpoints).
* Under DDP every rank warns, not rank 0 only: a dissection that fails on one rank is
  abandoned on every rank, and each rank's log says which rank failed and why. That is
  why this is not ``lightning_utilities``' ``WarningCache``/``rank_zero_warn`` (rank 0
  only, and once per message text, while every message here names its step).
"""
from __future__ import annotations

import warnings
from typing import Any, Callable

import torch

__all__ = ["FailurePolicy", "CountsFailures"]


class FailurePolicy:
    """Runs one kind of monitoring work (``what``, e.g. "dissection") under the
    warn-once-or-strict policy.

    Args:
        what: names the work in the warning.
        strict: raise the error instead of warning.
        later: what the warning says is no longer reported after a failure.
    """

    def __init__(self, what: str, *, strict: bool = False, later: str = "later failures"):
        self.what, self.strict, self.later = what, bool(strict), later
        self.failures = 0
        self._warned = False

    def run(self, work: Callable[[], Any], *, step: int, device: torch.device,
            what: str | None = None) -> tuple[bool, Any]:
        """``(True, work())`` on success; ``(False, None)`` after a failure (raised when
        ``strict``). ``what`` names this run in the warning (default: the policy's)."""
        try:
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                return True, work()
        except Exception as err:
            if self.strict:
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


class CountsFailures:
    """Mixin for the schedules: ``failures``, the number of failed runs of their
    ``_policy`` (a :class:`FailurePolicy`), readable and settable (kept in checkpoints)."""

    _policy: FailurePolicy

    @property
    def failures(self) -> int:
        """Failed runs (kept in checkpoints)."""
        return self._policy.failures

    @failures.setter
    def failures(self, value: int) -> None:
        self._policy.failures = int(value)
