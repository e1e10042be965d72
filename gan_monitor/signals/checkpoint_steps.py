"""One x-axis for the callback's curves and a timeline of saved checkpoints.

The :class:`~gan_monitor.callbacks.dissection_monitor.DissectionMonitor` logs at training
batches; a Lightning checkpoint's ``global_step`` counts optimizer steps (two per batch for
a GAN under manual optimisation). A checkpoint written with a monitor carries the monitor's
batch counter in its callback state (``checkpoint["callbacks"]["DissectionMonitor{...}"]
["batches_seen"]``); :func:`monitor_batches` reads it, :func:`timeline_step` picks the axis.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch

__all__ = ["BATCHES_AXIS", "GLOBAL_STEP_AXIS", "monitor_batches", "timeline_step", "with_monitor_axis"]

BATCHES_AXIS = "training batches (the DissectionMonitor's batch counter, as its TensorBoard curves)"
GLOBAL_STEP_AXIS = "optimizer steps (the checkpoint's global_step)"


def monitor_batches(checkpoint: Mapping[str, Any]) -> int | None:
    """The training batches a ``DissectionMonitor`` had seen when ``checkpoint`` (a loaded
    Lightning checkpoint dict) was saved, or None when it holds no monitor state. Several
    monitors count the same batches; the largest count is returned."""
    callbacks = checkpoint.get("callbacks") if isinstance(checkpoint, Mapping) else None
    if not isinstance(callbacks, Mapping):
        return None
    counts = [int(state["batches_seen"]) for key, state in callbacks.items()
              if str(key).startswith("DissectionMonitor") and isinstance(state, Mapping)
              and isinstance(state.get("batches_seen"), int)]
    return max(counts) if counts else None


def timeline_step(checkpoint: Mapping[str, Any], global_step: int | None) -> tuple[int | None, str]:
    """``(step, axis)``: the monitor's batch counter when the checkpoint has one, else ``global_step``."""
    batches = monitor_batches(checkpoint)
    if batches is not None:
        return batches, BATCHES_AXIS
    return global_step, GLOBAL_STEP_AXIS


def with_monitor_axis(loaded, trust: bool = False):
    """A ``core.checkpoints.LoadedGenerator`` whose ``step`` is the monitor's batch counter when
    its file has one (the file is read again, ``weights_only`` unless ``trust``); the axis in
    words is set as ``loaded.axis``. Files that cannot be read again keep their step."""
    axis, blob = GLOBAL_STEP_AXIS, None
    for mmap in (True, False):  # memory-mapped: the tensors of a large file are not read again
        try:
            blob = torch.load(Path(loaded.path), map_location="cpu", weights_only=not trust, mmap=mmap)
            break
        except Exception:  # the generator loaded already; a second read failing only loses the axis
            continue
    if isinstance(blob, Mapping) and loaded.step is not None:
        loaded.step, axis = timeline_step(blob, loaded.step)
    loaded.axis = axis if loaded.step is not None else "checkpoint order (the file has no training step)"
    return loaded
