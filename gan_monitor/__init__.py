"""gan_monitor: GAN Dissection (Bau et al., ICLR 2019) for everyday GAN training.

The public API, imported lazily (``import gan_monitor`` stays cheap):

* dissection: ``dissect``, ``DissectionOptions``, threshold modes ``Quantile`` and ``IQR``,
  ``DissectionResult`` / ``LayerDissection``, ``upsample``;
* tracing and editing layers: ``Trace``, ``Edit``, ``layer_names``;
* segmenters: ``Segmenter`` (the protocol), ``ColorSegmenter``, ``HFSegmenter``,
  ``PartSegmenter``, ``load_segmenter_spec``;
* interventions: ``ace``, ``causal_units``; FID: ``per_unit_fid``, ``artifact_ablation``;
* training: ``DissectionMonitor`` (Lightning callback) with ``UnitFIDOptions``,
  ``AceOptions``, ``PictureOptions`` and ``SignalOptions``;
* training signals: ``ConceptStats`` (concept statistics of real or generated images).
* reports: ``write_report(result, generator, folder)`` (the HTML report with unit pictures).

Where each stage lives: README "Layout"; the method: docs/method.md.
"""
from __future__ import annotations

__version__ = "0.2.0"

_LAZY = {
    "dissect": "gan_monitor.dissection.pipeline",
    "DissectionResult": "gan_monitor.dissection.pipeline",
    "LayerDissection": "gan_monitor.dissection.pipeline",
    "Trace": "gan_monitor.core.tracing",
    "Edit": "gan_monitor.core.tracing",
    "Segmenter": "gan_monitor.segmenters.base",
    "DissectionMonitor": "gan_monitor.callbacks.dissection_monitor",
    "DissectionMonitorPL": "gan_monitor.callbacks.dissection_monitor",
    "upsample": "gan_monitor.dissection.pipeline",
    "layer_names": "gan_monitor.core.tracing",
    "per_unit_fid": "gan_monitor.fid.unit_fid",
    "artifact_ablation": "gan_monitor.fid.unit_fid",
    "ace": "gan_monitor.interventions.ace",
    "causal_units": "gan_monitor.interventions.causal_units",
    "ColorSegmenter": "gan_monitor.segmenters.color",
    "HFSegmenter": "gan_monitor.segmenters.huggingface",
    "PartSegmenter": "gan_monitor.segmenters.parts",
    "load_segmenter_spec": "gan_monitor.segmenters.specs",
    "DissectionOptions": "gan_monitor.dissection.options",
    "Quantile": "gan_monitor.dissection.thresholds.modes",
    "IQR": "gan_monitor.dissection.thresholds.modes",
    "UnitFIDOptions": "gan_monitor.callbacks.unit_fid",
    "AceOptions": "gan_monitor.callbacks.ace",
    "PictureOptions": "gan_monitor.callbacks.context",
    "SignalOptions": "gan_monitor.callbacks.training_signals",
    "ConceptStats": "gan_monitor.signals.concept_stats",
    "write_report": "gan_monitor.report.full_report",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'gan_monitor' has no attribute {name!r}")


__all__ = ["__version__", *_LAZY]
