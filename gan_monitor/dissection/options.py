"""The settings of one dissection, validated once and shared by ``dissect``, the
``DissectionMonitor``, the ``gan-monitor dissect`` command and the demo.

>>> DissectionOptions(threshold="iqr").threshold
IQR(levels=100, max_fraction=0.2, min_lift=2.0, n=None, subsample=65536, fallback=0.01)
>>> DissectionOptions(image_range=(0, 255)).image_range
(0.0, 255.0)
>>> DissectionOptions(cutoff=2)
Traceback (most recent call last):
...
ValueError: cutoff must lie in [0, 1] (an IoU: a unit is interpretable when its IoU >= cutoff), got 2.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gan_monitor.core.validation import choice, fraction, positive_int, value_range
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
        image_range: ``(low, high)`` of the generator's output images (default ``(-1, 1)``,
            a tanh output); other ranges, e.g. ``(0, 1)`` or ``(0, 255)``, are mapped linearly to
            [-1, 1] before segmenting. A dissection refuses images far outside the declared
            range and warns when a first batch in [-1, 1] has no negative pixel at all.
        allow_nondeterministic: a dissection first runs the first held-out inputs twice
            (``gan_monitor.core.determinism``) and refuses a generator whose images differ
            (e.g. StyleGAN noise drawn fresh at every call); True warns instead and goes on.
        memory_budget: bytes a dissection may spend caching a held-out sample's featuremaps
            (``None``: ``thresholds.streaming.default_memory_budget``, a quarter of the
            host's or the CUDA device's total memory, at most 1 GiB). Above it, an exact streaming path
            regenerates the held-out inputs instead (same results, memory independent of n; quantile
            mode and iqr mode's level sample alike).
    """

    threshold: Quantile | IQR | str = "quantile"
    iou: str = "plain"
    cutoff: float = 0.05
    topk: int = 8
    batch_size: int = 32
    image_range: tuple[float, float] = (-1.0, 1.0)
    allow_nondeterministic: bool = False
    memory_budget: int | None = None

    def __post_init__(self):
        object.__setattr__(self, "threshold", as_threshold(self.threshold))
        choice("iou", self.iou, IOU_VARIANTS)
        object.__setattr__(self, "cutoff", fraction(
            "cutoff", self.cutoff, closed=True, meaning="an IoU: a unit is interpretable when its IoU >= cutoff"))
        positive_int("topk", self.topk)
        positive_int("batch_size", self.batch_size)
        object.__setattr__(self, "image_range", value_range("image_range", self.image_range))
        positive_int("memory_budget (bytes)", self.memory_budget, allow_none=True)
        if not isinstance(self.allow_nondeterministic, bool):
            raise TypeError("allow_nondeterministic must be True or False (True: warn instead of refusing a generator "
                            f"that gives different images for the same inputs), got {self.allow_nondeterministic!r}.")

    def settings(self) -> dict[str, Any]:
        """The part of ``DissectionResult.settings`` these options decide."""
        out = {**self.threshold.settings(), "iou": self.iou, "cutoff": self.cutoff, "topk": self.topk}
        if self.image_range != (-1.0, 1.0):
            out["image_range"] = list(self.image_range)
        return out
