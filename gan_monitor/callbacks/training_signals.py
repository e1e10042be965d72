"""Training signals of the :class:`~gan_monitor.callbacks.dissection_monitor.DissectionMonitor`
(``DissectionMonitor(..., signals=SignalOptions(...))``; docs/method.md, "Training signals").

After every dissection, from the labels and images the dissection already has
(``DissectionResult.sample_stats``): the generated-vs-real concept statistics, the sample
diversity (a collapsed generator is warned about and its dissection marked ``collapsed`` in
``history``) and the units' label churn since the previous dissection
(:func:`gan_monitor.signals.summary.dissection_signals`). Logged at the dissection's step
(training batches, the monitor's x-axis):

* scalars ``gan_monitor/signals/...`` to every logger, and into ``trainer.callback_metrics``
  on every rank, so that ``ModelCheckpoint(monitor="gan_monitor/signals/concept_js_divergence",
  mode="min")`` or ``EarlyStopping`` can use them;
* the paired real-vs-generated bar chart (``gan_monitor/signals/concept_bars``) and the tables
  ``concept_table``, ``first_interpretable`` to TensorBoard, W&B and MLflow loggers
  (:class:`gan_monitor.report.loggers.MediaLogger`); other loggers get the scalars and one warning.
"""
from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from gan_monitor.callbacks.failure_policy import FailurePolicy
from gan_monitor.core.errors import SignalError
from gan_monitor.report.loggers import MediaLogger
from gan_monitor.report.signals_view import signal_media
from gan_monitor.signals.concept_stats import ConceptStats
from gan_monitor.signals.summary import dissection_signals
from gan_monitor.signals.units_over_time import UnitTimeline

__all__ = ["SignalOptions", "SignalSchedule"]


@dataclass(frozen=True)
class SignalOptions:
    """What the monitor's training signals compare with and when they warn.

    Args:
        real_stats: the real images' concept statistics (a :class:`~gan_monitor.signals.ConceptStats`,
            the path of a file written by ``ConceptStats.save``, or a callable returning one, called
            once at the first dissection, e.g. ``gan_monitor.signals.toyworld_real_stats``). None:
            no generated-vs-real comparison (diversity and unit churn are still logged).
        under_ratio: a concept is under-generated when generated / real pixel fraction < this.
        min_pixel_diversity: a dissection whose held-out images' mean per-pixel standard deviation
            is below this is marked collapsed (and warned about).
        log_images: send the bar chart and tables to loggers that take them.
    """

    real_stats: ConceptStats | str | Path | Callable[[], ConceptStats] | None = None
    under_ratio: float = 0.5
    min_pixel_diversity: float = 0.02
    log_images: bool = True

    def __post_init__(self):
        rs = self.real_stats
        if rs is not None and not isinstance(rs, (ConceptStats, str, Path)) and not callable(rs):
            raise SignalError(f"SignalOptions(real_stats) must be ConceptStats, a file path or a callable, "
                              f"got {type(rs).__name__}.")
        for name in ("under_ratio", "min_pixel_diversity"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise SignalError(f"SignalOptions({name}) must be a number >= 0, got {value!r}.")


class SignalSchedule:
    """The monitor's training signals (module docstring); off when ``options`` is None."""

    def __init__(self, options: SignalOptions | None, strict: bool = False):
        if options is not None and not isinstance(options, SignalOptions):
            raise TypeError(f"signals must be a SignalOptions(...) or None, got {type(options).__name__}.")
        self.options = options
        self.timeline = UnitTimeline()
        self.media = MediaLogger()
        self._policy = FailurePolicy("training signals", strict=strict)
        self._real: ConceptStats | None = None
        self._warned_collapse = False

    @property
    def enabled(self) -> bool:
        return self.options is not None

    def real_stats(self) -> ConceptStats | None:
        """The real statistics (loaded or computed on first use)."""
        rs = self.options.real_stats if self.options is not None else None
        if self._real is None and rs is not None:
            if isinstance(rs, ConceptStats):
                self._real = rs
            elif isinstance(rs, (str, Path)):
                self._real = ConceptStats.load(rs)
            else:
                self._real = rs()
                if not isinstance(self._real, ConceptStats):
                    raise SignalError(f"SignalOptions(real_stats) returned {type(self._real).__name__}, "
                                      "not ConceptStats.")
        return self._real

    def after_dissection(self, trainer, result, step: int) -> dict[str, Any]:
        """Compute, log and return (for the history entry) the signals of ``result``."""
        if not self.enabled or result is None:
            return {}
        device = torch.device("cpu")
        ok, record = self._policy.run(lambda: self._signals(trainer, result, int(step)), step=step, device=device)
        return record if ok else {}

    def _signals(self, trainer, result, step: int) -> dict[str, Any]:
        started = time.perf_counter()
        opts = self.options
        changes = self.timeline.update(result, step)
        signals = dissection_signals(result, self.real_stats(), changes, under_ratio=opts.under_ratio,
                                     min_pixel_diversity=opts.min_pixel_diversity)
        scalars = signals.scalars()
        metrics = getattr(trainer, "callback_metrics", None)
        if isinstance(metrics, dict):  # every rank: checkpoint callbacks read them there
            for name, value in scalars.items():
                metrics[name] = torch.tensor(float(value))
        collapsed = signals.diversity.collapsed
        if collapsed and not self._warned_collapse:
            self._warned_collapse = True
            warnings.warn(f"gan_monitor: the held-out images at step {step} are nearly identical (pixel diversity "
                          f"{signals.diversity.pixel_diversity:.4f} < {opts.min_pixel_diversity}); the generator "
                          "may have collapsed, and such a dissection calls almost every unit interpretable. "
                          "The dissection is marked collapsed in history.", stacklevel=2)
        if getattr(trainer, "is_global_zero", True):
            self._log(trainer, signals, scalars, step)
        record = {"signals": dict(signals.record(), seconds=round(time.perf_counter() - started, 3))}
        if collapsed:
            record["collapsed"] = True
        return record

    def _log(self, trainer, signals, scalars, step: int) -> None:
        loggers = list(getattr(trainer, "loggers", []) or [])
        for logger in loggers:
            logger.log_metrics(dict(scalars), step=step)
            logger.save()
        if not (self.options.log_images and loggers):
            return
        images, tables = signal_media(signals, step, first_steps=self.timeline.first_steps)
        self.media.log(loggers, step, images, tables)

    def state_dict(self) -> dict[str, Any]:
        return {"timeline": self.timeline.state_dict(), "failures": self._policy.failures}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        state = state or {}
        self.timeline.load_state_dict(state.get("timeline"))
        self._policy.failures = int(state.get("failures", 0))
