"""How each unit's threshold is chosen: small option objects, one per mode.

>>> Quantile(0.01)
Quantile(q=0.01)
>>> as_threshold("iqr") == IQR()
True
>>> as_threshold(IQR(n=50)).n
50

* :class:`Quantile` (the PNAS 2020 default): ``t_u`` is the exact top-``q`` quantile of
  unit u's upsampled activations over every pixel of the held-out sample.
* :class:`IQR` (the ICLR 2019 default for GANs): on a separate held-out sample, among
  ``levels`` top fractions log-spaced from 1e-3 to ``max_fraction``, each unit takes the
  level whose 2x2 table with its best concept has the highest information quality ratio
  (docs/method.md §3).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gan_monitor.core.validation import fraction, positive_float, positive_int

__all__ = ["Quantile", "IQR", "as_threshold", "THRESHOLD_MODES", "IQR_SEED_OFFSET"]

#: Names accepted wherever a threshold mode is given as a string (API, callback, CLI).
THRESHOLD_MODES = ("quantile", "iqr")
#: The iqr-mode held-out sample is drawn with seed + IQR_SEED_OFFSET.
IQR_SEED_OFFSET = 1_000_003


@dataclass(frozen=True)
class Quantile:
    """Threshold each unit at its exact top-``q`` quantile (``q=0.01``: top 1 % of pixels)."""

    q: float = 0.01
    name = "quantile"

    def __post_init__(self):
        object.__setattr__(self, "q", fraction("Quantile(q)", self.q, meaning="0.01 = top 1% of each unit's pixels"))

    def settings(self) -> dict[str, Any]:
        return {"threshold": self.name, "quantile": self.q}


@dataclass(frozen=True)
class IQR:
    """Choose each unit's level by the information quality ratio on a separate sample.

    Args:
        levels: number of candidate levels (top fractions log-spaced from 1e-3).
        max_fraction: the largest candidate top fraction (keeps levels in the top of each
            unit's distribution; 0.2 = top 20 %).
        min_lift: a level/concept pair counts only where ``P(concept | unit on) >=
            min_lift * P(concept)`` (positive association).
        n: size of the separate iqr sample (default: the main sample's ``n``).
        inputs: the separate sample itself (generator inputs), instead of drawing it.
        subsample: pixels per unit, seeded, from which the candidate levels are read.
        fallback: for a unit associated with no concept, the top fraction whose level is used.
    """

    levels: int = 100
    max_fraction: float = 0.2
    min_lift: float = 2.0
    n: int | None = None
    inputs: Any = field(default=None, compare=False, repr=False)
    subsample: int = 65536
    fallback: float = 0.01
    name = "iqr"

    def __post_init__(self):
        positive_int("IQR(levels)", self.levels)
        object.__setattr__(self, "max_fraction", fraction("IQR(max_fraction)", self.max_fraction))
        object.__setattr__(self, "min_lift", positive_float("IQR(min_lift)", self.min_lift, allow_zero=True))
        positive_int("IQR(n)", self.n, allow_none=True)
        positive_int("IQR(subsample)", self.subsample)
        object.__setattr__(self, "fallback", fraction("IQR(fallback)", self.fallback))
        if self.max_fraction <= 1e-3:
            raise ValueError(f"IQR(max_fraction) must exceed the smallest level 1e-3, got {self.max_fraction}.")

    def settings(self) -> dict[str, Any]:
        return {"threshold": self.name, "quantile": self.fallback}


def as_threshold(value: Any) -> Quantile | IQR:
    """A threshold mode from ``"quantile"``, ``"iqr"``, :class:`Quantile` or :class:`IQR`."""
    if isinstance(value, (Quantile, IQR)):
        return value
    if value == "quantile":
        return Quantile()
    if value == "iqr":
        return IQR()
    raise ValueError(f"threshold must be 'quantile', 'iqr', Quantile(q) or IQR(...); got {value!r}.")
