"""How units settle over training (paper Fig. 18): per dissection, compared with the previous one,

* ``label_churn``: units interpretable in both whose label changed;
* ``units_gained`` / ``units_lost``: units that became / stopped being interpretable;

and, per concept, the first step at which some unit of a layer was interpretable with that
label (``first_steps``). :class:`UnitTimeline` keeps what this needs between dissections (the
previous labels, the first steps) and round-trips through a checkpoint (``state_dict``).
"""
from __future__ import annotations

from typing import Any, Mapping

__all__ = ["snapshot", "unit_changes", "UnitTimeline"]


def snapshot(result) -> dict[str, dict[str, list]]:
    """``{layer: {"labels": [...], "interpretable": [...]}}`` of a ``DissectionResult``."""
    return {layer: {"labels": ld.labels, "interpretable": [bool(x) for x in ld.interpretable.tolist()]}
            for layer, ld in result.items()}


def unit_changes(before: Mapping[str, Any], after: Mapping[str, Any]) -> dict[str, dict[str, int]]:
    """Per layer of ``after`` (snapshots), ``label_churn``, ``units_gained`` and ``units_lost``
    since ``before``; a layer that ``before`` lacks (or with another unit count) counts every
    interpretable unit as gained."""
    out = {}
    for layer, now in after.items():
        labels, interp = now["labels"], now["interpretable"]
        prev = before.get(layer)
        if prev is None or len(prev["labels"]) != len(labels):
            out[layer] = {"label_churn": 0, "units_gained": sum(interp), "units_lost": 0}
            continue
        churn = sum(1 for a, b, x, y in zip(prev["labels"], labels, prev["interpretable"], interp) if x and y and a != b)
        gained = sum(1 for x, y in zip(prev["interpretable"], interp) if y and not x)
        lost = sum(1 for x, y in zip(prev["interpretable"], interp) if x and not y)
        out[layer] = {"label_churn": churn, "units_gained": gained, "units_lost": lost}
    return out


class UnitTimeline:
    """Follows units across a run's dissections (module docstring)."""

    def __init__(self):
        self.previous: dict[str, Any] | None = None
        self.first_steps: dict[str, dict[str, int]] = {}  # {layer: {concept: step}}

    def update(self, result, step: int) -> dict[str, dict[str, int]]:
        """Record ``result`` (dissected at ``step``); the changes since the previous one
        (empty for the first dissection)."""
        now = snapshot(result)
        changes = unit_changes(self.previous, now) if self.previous is not None else {}
        for layer, units in now.items():
            first = self.first_steps.setdefault(layer, {})
            for label, ok in zip(units["labels"], units["interpretable"]):
                if ok and label not in first:
                    first[label] = int(step)
        self.previous = now
        return changes

    def state_dict(self) -> dict[str, Any]:
        return {"previous": self.previous, "first_steps": {k: dict(v) for k, v in self.first_steps.items()}}

    def load_state_dict(self, state: Mapping[str, Any] | None) -> None:
        state = state or {}
        self.previous = state.get("previous")
        self.first_steps = {k: dict(v) for k, v in (state.get("first_steps") or {}).items()}
