"""gan_monitor: GAN Dissection (Bau et al., ICLR 2019) for everyday GAN training."""
from __future__ import annotations

__version__ = "0.1.0"

_LAZY = {
    "dissect": "gan_monitor.dissection",
    "DissectionResult": "gan_monitor.dissection",
    "LayerDissection": "gan_monitor.dissection",
    "Trace": "gan_monitor.tracing",
    "Edit": "gan_monitor.tracing",
    "Segmenter": "gan_monitor.segmenters",
    "DissectionMonitor": "gan_monitor.callback",
    "DissectionMonitorPL": "gan_monitor.callback",
    "upsample": "gan_monitor.dissection",
    "layer_names": "gan_monitor.tracing",
    "per_unit_fid": "gan_monitor.fid",
    "artifact_ablation": "gan_monitor.fid",
    "ace": "gan_monitor.intervention",
    "causal_units": "gan_monitor.causal",
    "ColorSegmenter": "gan_monitor.color_segmenter",
    "HFSegmenter": "gan_monitor.hf_segmenter",
    "PartSegmenter": "gan_monitor.parts",
    "load_segmenter_spec": "gan_monitor.segmenter_specs",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'gan_monitor' has no attribute {name!r}")


__all__ = ["__version__", *_LAZY]
