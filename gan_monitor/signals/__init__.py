"""Training signals computed from what a dissection already has (docs/method.md, "Training
signals"): concept statistics of generated vs real images (:mod:`.concept_stats`,
:mod:`.compare`), sample diversity and collapse (:mod:`.diversity`), how units settle over
training (:mod:`.units_over_time`), all of one dissection together (:mod:`.summary`) and the
x-axis of saved checkpoints (:mod:`.checkpoint_steps`).

Sits above ``gan_monitor.dissection`` and below ``gan_monitor.report`` and ``gan_monitor.callbacks``.
"""
from gan_monitor.signals.compare import ConceptComparison, compare_concepts, js_divergence
from gan_monitor.signals.concept_stats import ConceptStats, load_or_compute, real_concept_stats, toyworld_real_stats
from gan_monitor.signals.diversity import Diversity, sample_diversity
from gan_monitor.signals.summary import DissectionSignals, dissection_signals
from gan_monitor.signals.units_over_time import UnitTimeline, snapshot, unit_changes

__all__ = ["ConceptStats", "real_concept_stats", "toyworld_real_stats", "load_or_compute", "ConceptComparison",
           "compare_concepts", "js_divergence", "Diversity", "sample_diversity", "DissectionSignals",
           "dissection_signals", "UnitTimeline", "snapshot", "unit_changes"]
