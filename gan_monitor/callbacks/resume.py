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
changed and from which step the new settings apply. When none of the checkpoint's monitor
states is its own (e.g. other layers), :func:`continued_counters` still continues the batch
counter and the logging steps (the history starts anew, with one warning).
"""
from __future__ import annotations

import ast
import copy
import warnings
from typing import Any

from gan_monitor.callbacks.context import describe_generator
from gan_monitor.core.held_out import checksum
from gan_monitor.dissection.thresholds.modes import IQR, Quantile

__all__ = ["monitor_config", "parse_state_key", "find_earlier_state", "adopt_earlier_state", "continued_counters",
           "restore_under_other_settings", "KEY_PREFIX"]

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


def _candidates(monitor, trainer, states: dict) -> tuple[list[str], list]:
    """Unclaimed monitor states in ``states`` for the monitor's layers and generator, and the
    other monitors of the Trainer that could claim them too."""
    if monitor.state_key in states:
        return [], []
    claimed = {getattr(cb, "state_key", None) for cb in getattr(trainer, "callbacks", [])}
    generator = describe_generator(monitor.generator)
    candidates = [k for k in states
                  if k not in claimed and (c := parse_state_key(k)) is not None
                  and _same_monitor(c, monitor.layers, generator)]
    rivals = [cb for cb in getattr(trainer, "callbacks", [])
              if cb is not monitor and getattr(cb, "state_key", None) not in states
              and parse_state_key(getattr(cb, "state_key", None)) is not None
              and _same_monitor(parse_state_key(cb.state_key), monitor.layers, generator)]
    return candidates, rivals


def find_earlier_state(monitor, trainer, checkpoint: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """``(key, state)`` of this monitor's state saved under another configuration, or None
    (exact key present, nothing matching, or an ambiguous match, which is warned about)."""
    states = checkpoint.get("callbacks") or {}
    candidates, rivals = _candidates(monitor, trainer, states)
    if not candidates:
        return None
    if len(candidates) > 1 or rivals:
        warnings.warn(
            f"DissectionMonitor(layers={monitor.layers}): the checkpoint holds {len(candidates)} monitor state(s) "
            f"for these layers under other settings and this Trainer has {1 + len(rivals)} monitor(s) for them, so "
            "none is resumed (the history starts again; the batch counter and logging steps continue); resume with "
            "the settings of the checkpointed run to continue its history.", stacklevel=3)
        return None
    return candidates[0], states[candidates[0]]


def continued_counters(monitor, checkpoint: dict[str, Any], warn: bool = True) -> tuple[int, int | None] | None:
    """``(batches_seen, last_step)`` to continue from when the checkpoint holds monitor
    states but none of this monitor's (e.g. other layers): the training-batch counter is the
    same for every monitor, and the largest logged step is where logging must continue
    after. None when the checkpoint holds no monitor state or this monitor's own."""
    states = checkpoint.get("callbacks") or {}
    if monitor.state_key in states:
        return None
    others = [(k, v) for k, v in states.items() if parse_state_key(k) is not None and isinstance(v, dict)]
    if not others:
        return None
    batches = max(int(v.get("batches_seen", 0)) for _, v in others)
    steps = [v["last_step"] for _, v in others if v.get("last_step") is not None]
    last = max(steps) if steps else None
    if warn:
        layers = sorted({tuple(parse_state_key(k).get("layers", [])) for k, _ in others})
        warnings.warn(
            f"DissectionMonitor(layers={monitor.layers}): the checkpoint holds no state of this monitor (it holds "
            f"monitor state(s) for layers {[list(x) for x in layers]}); its history starts here, while the batch "
            f"counter continues at {batches}" + (f" and dissections are logged after step {last}" if last is not None
                                                 else "") + ".", stacklevel=3)
    return batches, last


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


def restore_under_other_settings(monitor, trainer, checkpoint: dict[str, Any]) -> None:
    """The monitor's ``on_load_checkpoint``: when the checkpoint lacks its exact ``state_key``,
    load its own state saved under other settings, or at least continue the batch counter
    and the logging steps of the monitors saved in it (Lightning then loads nothing)."""
    earlier = find_earlier_state(monitor, trainer, checkpoint)
    if earlier is not None:
        monitor.load_state_dict(adopt_earlier_state(monitor, *earlier))
        return
    ambiguous = bool(_candidates(monitor, trainer, checkpoint.get("callbacks") or {})[0])  # already warned
    counters = continued_counters(monitor, checkpoint, warn=not ambiguous)
    if counters is not None:
        monitor.batches_seen, monitor.last_step = counters
