"""Units left out of labelling (``dissect(exclude_units=...)``).

An excluded unit is still thresholded and tallied (its IoU and label are reported as
for any unit) but it is never *interpretable*. The typical use is the paper's filter of
unrealistic units (S-6.3, docs/method.md §7): a segmenter misfires on the artifacts such
units draw, so a high IoU there means little. The caller decides which units to leave
out, e.g. from per-unit FIDs::

    from gan_monitor.fid.unit_fid import unrealistic_units
    exclude = {"layer4": unrealistic_units(fids, max_fid, n_units)}

A layer's entry is a bool mask ``[U]`` (True = excluded) or a sequence of unit indices.

>>> exclusion_masks({"layer4": [0, 2]}, {"layer4": 4, "layer5": 2})
{'layer4': tensor([ True, False,  True, False]), 'layer5': tensor([False, False])}
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch

__all__ = ["check_exclude_units", "exclusion_masks"]


def check_exclude_units(exclude_units: Any, layers: Sequence[str]) -> dict[str, torch.Tensor]:
    """``exclude_units`` checked against the dissected ``layers`` (before any work):
    ``{layer: 1-D bool mask or int64 indices}``; an empty dict for ``None``."""
    if exclude_units is None:
        return {}
    if not isinstance(exclude_units, Mapping):
        raise TypeError("exclude_units must be a dict {layer: bool mask [U] or unit indices}, "
                        f"got {type(exclude_units).__name__}.")
    unknown = [name for name in exclude_units if name not in layers]
    if unknown:
        raise ValueError(f"exclude_units names layer(s) {unknown} that are not dissected; "
                         f"the dissected layers are {list(layers)}.")
    checked = {}
    for name, value in exclude_units.items():
        try:
            t = value.detach().cpu() if isinstance(value, torch.Tensor) else torch.as_tensor(value)
        except (TypeError, ValueError, RuntimeError) as err:
            raise TypeError(f"exclude_units[{name!r}] must be a bool mask [U] or unit indices, "
                            f"got {type(value).__name__}.") from err
        if t.numel() == 0:
            t = torch.zeros(0, dtype=torch.long)
        if t.dim() != 1:
            raise ValueError(f"exclude_units[{name!r}] must be one-dimensional (a bool mask [U] or a list of unit "
                             f"indices), got shape {tuple(t.shape)}.")
        if t.dtype != torch.bool and (t.is_floating_point() or t.is_complex()):
            raise TypeError(f"exclude_units[{name!r}] must be a bool mask [U] or integer unit indices, "
                            f"got values of type {t.dtype}.")
        checked[name] = t if t.dtype == torch.bool else t.long()
    return checked


def exclusion_masks(checked: Mapping[str, Any], units: Mapping[str, int]) -> dict[str, torch.Tensor]:
    """Bool ``[U]`` per layer of ``units`` (``{layer: number of units}``): True where the
    unit is excluded. ``checked``: the output of ``check_exclude_units`` (or its input)."""
    if not all(isinstance(v, torch.Tensor) for v in checked.values()):
        checked = check_exclude_units(dict(checked), list(units))
    masks = {}
    for name, n_units in units.items():
        value = checked.get(name)
        mask = torch.zeros(n_units, dtype=torch.bool)
        if value is None:
            pass
        elif value.dtype == torch.bool:
            if value.numel() != n_units:
                raise ValueError(f"exclude_units[{name!r}] is a mask of {value.numel()} entries, but layer {name!r} "
                                 f"has {n_units} units; give one bool per unit.")
            mask = value.clone()
        else:
            bad = value[(value < 0) | (value >= n_units)].tolist()
            if bad:
                raise IndexError(f"exclude_units[{name!r}] has unit indices {bad[:10]} out of range: layer {name!r} "
                                 f"has {n_units} units (0..{n_units - 1}).")
            mask[value] = True
        masks[name] = mask
    return masks
