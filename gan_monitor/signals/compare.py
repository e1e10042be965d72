"""Generated vs real concept statistics: what the generator under-produces (Bau et al., ICCV
2019; docs/method.md, "Training signals").

* ``ratio[c]`` = generated pixel fraction / real pixel fraction (concepts absent from the
  real images get no ratio);
* ``js_divergence``: Jensen-Shannon divergence (base 2, in [0, 1]) between the concept pixel
  distributions (each concept's share of all labelled pixels, the unlabelled index 0 left
  out); 0 when the distributions are identical, 1 when they share no concept;
* ``presence_gap[c]`` = real presence - generated presence (fraction of images showing
  ``c``; positive: the generator draws it in fewer images) and their mean absolute value;
* ``under_generated``: concepts with ``ratio < under_ratio`` (default 0.5) among those
  covering at least ``min_real_fraction`` of the real pixels.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from gan_monitor.core.errors import SignalError
from gan_monitor.signals.concept_stats import ConceptStats

__all__ = ["ConceptComparison", "compare_concepts", "js_divergence"]


def js_divergence(p: list[float], q: list[float]) -> float:
    """Jensen-Shannon divergence (bits) of two non-negative weight vectors, each normalised;
    0 when both are empty."""
    sp, sq = float(sum(p)), float(sum(q))
    if sp <= 0 and sq <= 0:
        return 0.0
    if sp <= 0 or sq <= 0:
        return 1.0
    total = 0.0
    for a, b in zip(p, q):
        a, b = a / sp, b / sq
        m = (a + b) / 2
        if a > 0:
            total += 0.5 * a * math.log2(a / m)
        if b > 0:
            total += 0.5 * b * math.log2(b / m)
    return min(max(total, 0.0), 1.0)


@dataclass
class ConceptComparison:
    """Generated vs real concept statistics (module docstring)."""

    concepts: list[str]
    real_fraction: dict[str, float]
    generated_fraction: dict[str, float]
    real_presence: dict[str, float]
    generated_presence: dict[str, float]
    ratio: dict[str, float]
    presence_gap: dict[str, float]
    js_divergence: float
    mean_presence_gap: float
    under_generated: list[str] = field(default_factory=list)

    def scalars(self) -> dict[str, float]:
        """The summary numbers (keys without prefix)."""
        return {"concept_js_divergence": self.js_divergence, "presence_gap": self.mean_presence_gap,
                "under_generated": float(len(self.under_generated))}

    def table(self) -> tuple[list[str], list[list[Any]]]:
        """``(columns, rows)``: one row per concept."""
        columns = ["concept", "real_pixels", "generated_pixels", "ratio", "real_presence", "generated_presence",
                   "under_generated"]
        rows = [[c, round(self.real_fraction[c], 5), round(self.generated_fraction[c], 5),
                 None if c not in self.ratio else round(self.ratio[c], 4), round(self.real_presence[c], 4),
                 round(self.generated_presence[c], 4), c in self.under_generated] for c in self.concepts]
        return columns, rows

    def to_dict(self) -> dict[str, Any]:
        return {"js_divergence": self.js_divergence, "mean_presence_gap": self.mean_presence_gap,
                "under_generated": list(self.under_generated), "ratio": dict(self.ratio),
                "presence_gap": dict(self.presence_gap), "real_fraction": dict(self.real_fraction),
                "generated_fraction": dict(self.generated_fraction)}


def compare_concepts(real: ConceptStats, generated: ConceptStats, *, under_ratio: float = 0.5,
                     min_real_fraction: float = 1e-3) -> ConceptComparison:
    """Compare ``generated`` with ``real`` statistics (same concept list, same segmenter)."""
    if list(real.concepts) != list(generated.concepts):
        raise SignalError(
            f"the real statistics name {len(real.concepts)} concepts ({', '.join(real.concepts[1:6])}, ...) and the "
            f"dissection's segmenter {len(generated.concepts)} ({', '.join(generated.concepts[1:6])}, ...); compute "
            "the real statistics with the segmenter the monitor uses.")
    if not real.images:
        raise SignalError("the real concept statistics count no images.")
    concepts = list(real.concepts[1:])
    rf, gf = real.pixel_fraction(), generated.pixel_fraction()
    rp, gp = real.presence(), generated.presence()
    ratio = {c: gf[c] / rf[c] for c in concepts if rf[c] > 0}
    gap = {c: rp[c] - gp[c] for c in concepts}
    under = [c for c in concepts if rf[c] >= min_real_fraction and ratio.get(c, 1.0) < under_ratio]
    return ConceptComparison(
        concepts=concepts, real_fraction=rf, generated_fraction=gf, real_presence=rp, generated_presence=gp,
        ratio=ratio, presence_gap=gap,
        js_divergence=js_divergence(real.pixel_counts[1:], generated.pixel_counts[1:]),
        mean_presence_gap=sum(abs(v) for v in gap.values()) / len(gap) if gap else 0.0,
        under_generated=under)
