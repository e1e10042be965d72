"""All training signals of one dissection, as tagged scalars (the names the loggers and
``trainer.callback_metrics`` get) and as a JSON-ready record for the monitor's ``history``.

Tags (``PREFIX`` = ``gan_monitor/signals``):

* with real statistics: ``concept_js_divergence``, ``presence_gap`` (mean absolute),
  ``under_generated`` (how many concepts), ``ratio/<concept>`` (generated / real pixel fraction);
* always: ``pixel_diversity``, ``presence_entropy``, ``collapsed`` (1.0 when marked);
* from the second dissection on: ``<layer>/label_churn``, ``<layer>/units_gained``,
  ``<layer>/units_lost``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gan_monitor.signals.compare import ConceptComparison, compare_concepts
from gan_monitor.signals.concept_stats import ConceptStats
from gan_monitor.signals.diversity import Diversity, sample_diversity

__all__ = ["PREFIX", "signal_tag", "DissectionSignals", "dissection_signals"]

PREFIX = "gan_monitor/signals"


def signal_tag(name: str) -> str:
    """``gan_monitor/signals/<name>``."""
    return f"{PREFIX}/{name}"


@dataclass
class DissectionSignals:
    """The signals of one dissection (module docstring)."""

    diversity: Diversity
    comparison: ConceptComparison | None = None
    changes: dict[str, dict[str, int]] = field(default_factory=dict)

    def scalars(self) -> dict[str, float]:
        out = {signal_tag(k): v for k, v in self.diversity.scalars().items()}
        if self.comparison is not None:
            out.update({signal_tag(k): v for k, v in self.comparison.scalars().items()})
            out.update({signal_tag(f"ratio/{c}"): float(r) for c, r in self.comparison.ratio.items()})
        for layer, numbers in self.changes.items():
            out.update({signal_tag(f"{layer}/{k}"): float(v) for k, v in numbers.items()})
        return out

    def record(self) -> dict[str, Any]:
        """What the monitor keeps in ``history`` (``signals``)."""
        out: dict[str, Any] = {"diversity": self.diversity.to_dict()}
        if self.comparison is not None:
            c = self.comparison
            out.update(js_divergence=c.js_divergence, presence_gap=c.mean_presence_gap,
                       under_generated=list(c.under_generated), ratio={k: round(v, 6) for k, v in c.ratio.items()})
        if self.changes:
            out["units"] = {k: dict(v) for k, v in self.changes.items()}
        return out


def dissection_signals(result, real: ConceptStats | None = None, changes: dict | None = None, *,
                       under_ratio: float = 0.5, min_pixel_diversity: float = 0.02) -> DissectionSignals:
    """The signals of ``result`` (a ``DissectionResult`` with ``sample_stats``) against ``real``."""
    comparison = None
    if real is not None:
        comparison = compare_concepts(real, ConceptStats.from_result(result), under_ratio=under_ratio)
    return DissectionSignals(sample_diversity(result, min_pixel_diversity), comparison, dict(changes or {}))
