"""The settings of one dissection, validated once and shared by ``dissect``, the
``DissectionMonitor``, the ``gan-monitor dissect`` command and the demo.

>>> DissectionOptions(threshold="iqr").threshold
IQR(levels=100, max_fraction=0.2, min_lift=2.0, n=None, subsample=65536, fallback=0.01)
>>> DissectionOptions(cutoff=2)
Traceback (most recent call last):
...
ValueError: cutoff must lie in [0, 1] (an IoU: a unit is interpretable when its IoU >= cutoff), got 2.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gan_monitor.core.validation import choice, fraction, positive_int
from gan_monitor.dissection.thresholds.modes import IQR, Quantile, as_threshold

__all__ = ["DissectionOptions", "IOU_VARIANTS"]

#: ``plain``: union over all images; ``category``: the unit's part of the union only in
#: images where some concept of the concept's category is present (the 2019 code).
IOU_VARIANTS = ("plain", "category")


@dataclass(frozen=True)
class DissectionOptions:
    """What to measure (not where or on which inputs).

    Args:
        threshold: ``"quantile"``, ``"iqr"``, :class:`Quantile` or :class:`IQR`.
        iou: ``"plain"`` or ``"category"`` (see ``IOU_VARIANTS``).
        cutoff: a unit is interpretable when the IoU of its label is >= ``cutoff``.
        topk: top-activating held-out samples kept per unit.
        batch_size: samples per forward pass (results do not depend on it).
    """

    threshold: Quantile | IQR | str = "quantile"
    iou: str = "plain"
    cutoff: float = 0.05
    topk: int = 8
    batch_size: int = 32

    def __post_init__(self):
        object.__setattr__(self, "threshold", as_threshold(self.threshold))
        choice("iou", self.iou, IOU_VARIANTS)
        object.__setattr__(self, "cutoff", fraction(
            "cutoff", self.cutoff, closed=True, meaning="an IoU: a unit is interpretable when its IoU >= cutoff"))
        positive_int("topk", self.topk)
        positive_int("batch_size", self.batch_size)

    def settings(self) -> dict[str, Any]:
        """The part of ``DissectionResult.settings`` these options decide."""
        return {**self.threshold.settings(), "iou": self.iou, "cutoff": self.cutoff, "topk": self.topk}
