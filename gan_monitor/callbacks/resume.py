"""The monitor's identity in checkpoints, and resuming under a changed configuration.

Lightning finds a callback's state in a checkpoint by ``state_key``. The monitor's key
names its whole configuration (the keys of release 0.1, so old checkpoints still resume),
so a resume with another ``n``, ``seed``, threshold or schedule would not find it and the
history, the batch counter and the last logged step would be lost silently.

:func:`find_earlier_state` finds the monitor's own earlier state in that case: a
``DissectionMonitor`` state in the checkpoint for the same layers and generator that no
other monitor of this Trainer claims. :func:`adopt_earlier_state` keeps its batch counter,
history and last step (so no step is ever logged twice) while the held-out sample follows
the new configuration, records the change in ``sample_changes`` and warns once with what
changed and from which step the new settings apply.
"""
from __future__ import annotations

import ast
import copy
import warnings
from typing import Any

from gan_monitor.callbacks.context import describe_generator
from gan_monitor.core.held_out import checksum
from gan_monitor.dissection.thresholds.modes import IQR, Quantile

__all__ = ["monitor_config", "parse_state_key", "find_earlier_state", "adopt_earlier_state", "KEY_PREFIX"]

KEY_PREFIX = "DissectionMonitor"
# IQR fields as the 0.1 monitor's dissect_options named them (kept in state_key, so that
# checkpoints written by 0.1 resume with their monitor state)
_IQR_KEYS = {"n": "iqr_n", "levels": "iqr_levels", "max_fraction": "iqr_max_fraction", "min_lift": "iqr_min_lift",
             "subsample": "iqr_subsample"}


def monitor_config(monitor) -> dict[str, Any]:
    """The configuration that names a monitor's checkpoint state (its ``state_key``)."""
    t = monitor.options.threshold
    extra: dict[str, Any] = {}
    if isinstance(t, IQR):
        options = [(_IQR_KEYS[k], getattr(t, k)) for k in _IQR_KEYS if getattr(t, k) != getattr(IQR(), k)]
        if t.inputs is not None:
            options.append(("iqr_inputs", checksum(t.inputs)))
        extra = {"options": sorted(options)} if options else {}
    if monitor.options.image_range != (-1.0, 1.0):
        extra["image_range"] = monitor.options.image_range
    return dict(layers=list(monitor.layers), generator=describe_generator(monitor.generator), n=monitor.sample.n,
                seed=monitor.sample.seed, threshold=t.name, quantile=t.q if isinstance(t, Quantile) else t.fallback,
                iou=monitor.options.iou, cutoff=monitor.options.cutoff,
                every_n_steps=monitor.every_n_steps, every_n_epochs=monitor.every_n_epochs, **extra)


def parse_state_key(key: Any) -> dict[str, Any] | None:
    """The configuration written in a monitor's ``state_key``; None for other callbacks' keys."""
    if not isinstance(key, str) or not key.startswith(KEY_PREFIX + "{"):
        return None
    try:
        config = ast.literal_eval(key[len(KEY_PREFIX):])
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return None
    return config if isinstance(config, dict) else None


def _same_monitor(config: dict[str, Any], layers: list[str], generator: str) -> bool:
    return list(config.get("layers", [])) == list(layers) and config.get("generator") == generator


def find_earlier_state(monitor, trainer, checkpoint: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """``(key, state)`` of this monitor's state saved under another configuration, or None
    (exact key present, nothing matching, or an ambiguous match, which is warned about)."""
    states = checkpoint.get("callbacks") or {}
    own = monitor.state_key
    if own in states:
        return None
    claimed = {getattr(cb, "state_key", None) for cb in getattr(trainer, "callbacks", [])}
    generator = describe_generator(monitor.generator)
    candidates = [k for k in states
                  if k not in claimed and (c := parse_state_key(k)) is not None
                  and _same_monitor(c, monitor.layers, generator)]
    if not candidates:
        return None
    rivals = [cb for cb in getattr(trainer, "callbacks", [])
              if cb is not monitor and getattr(cb, "state_key", None) not in states
              and parse_state_key(getattr(cb, "state_key", None)) is not None
              and _same_monitor(parse_state_key(cb.state_key), monitor.layers, generator)]
    if len(candidates) > 1 or rivals:
        warnings.warn(
            f"DissectionMonitor(layers={monitor.layers}): the checkpoint holds {len(candidates)} monitor state(s) "
            f"for these layers under other settings and this Trainer has {1 + len(rivals)} monitor(s) for them, so "
            "none is resumed (history and batch counter start again); resume with the settings of the checkpointed "
            "run to continue its history.", stacklevel=3)
        return None
    return candidates[0], states[candidates[0]]


def _changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    keys = list(new) + [k for k in old if k not in new]
    return [f"{k} {old.get(k)!r} -> {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)]


def adopt_earlier_state(monitor, key: str, state: dict[str, Any]) -> dict[str, Any]:
    """The state to load into ``monitor`` from its earlier ``state`` saved under ``key``:
    counters and history kept, the held-out sample from the new settings; warns once."""
    state = copy.deepcopy(state)
    old = state.get("config") or parse_state_key(key) or {}
    new = monitor_config(monitor)
    changes = _changes(old, new)
    saved_sample = state.get("inputs") or {}
    sample_changed = (saved_sample.get("n"), saved_sample.get("seed")) != (monitor.sample.n, monitor.sample.seed)
    last_step = state.get("last_step")
    if sample_changed:
        state["inputs"] = {"n": monitor.sample.n, "seed": monitor.sample.seed, "checksum": None}
        state.setdefault("sample_changes", []).append({
            "after_step": last_step, "from": {"n": saved_sample.get("n"), "seed": saved_sample.get("seed")},
            "to": {"n": monitor.sample.n, "seed": monitor.sample.seed}})
    where = ("from the first dissection of this run" if last_step is None else
             f"from the next dissection, logged at a step after {last_step} (the last one logged; "
             f"{len(state.get('history', []))} earlier history entries kept)")
    what = "; ".join(changes) or "the checkpoint's key"
    sample = (f" The held-out sample is now n={monitor.sample.n}, seed={monitor.sample.seed}: points before and after "
              "that step are on different samples (see monitor.sample_changes)." if sample_changed else "")
    warnings.warn(
        f"DissectionMonitor(layers={monitor.layers}) resumed its own state saved under other settings ({what}); "
        f"batch counter ({state.get('batches_seen', 0)}) and history are kept and the new settings apply {where}."
        f"{sample} Lightning's 'Please add the following callbacks' message refers to this state.",
        stacklevel=3)
    return state
