"""gan_monitor: GAN Dissection (Bau et al., ICLR 2019) for everyday GAN training."""
from __future__ import annotations

__version__ = "0.1.0"

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
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'gan_monitor' has no attribute {name!r}")


__all__ = ["__version__", *_LAZY]
