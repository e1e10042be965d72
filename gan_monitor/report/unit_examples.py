"""Pictures of units: generate again the held-out samples a unit ranks highest and,
for a dissected layer, compute where the unit is "on" in them.

A dissection keeps, per unit, the indices of its top-activating held-out samples
(``LayerDissection.topk``) and its threshold ``t_u``; per-unit FID keeps the indices of
the pool images each unit activates most on (``UnitFID.topk``). :func:`unit_examples`
turns such an index table into ``(unit, images, masks)`` triples that
:mod:`gan_monitor.report.pictures` draws; the mask of unit u is
``upsample(featuremap_u) > t_u`` (``docs/method.md`` §2 and §3), the same test the
dissection counted.
"""
from __future__ import annotations

from contextlib import nullcontext
from typing import Any, Sequence

import torch
from torch import nn

from gan_monitor.core.inputs import call_generator, index_inputs, move_inputs
from gan_monitor.core.tracing import Trace, eval_mode
from gan_monitor.dissection.results import LayerDissection
from gan_monitor.dissection.upsample import upsample
from gan_monitor.fid.unit_fid import UnitFID

__all__ = ["unit_examples", "top_unit_examples", "artifact_examples"]

Example = tuple[int, torch.Tensor, "torch.Tensor | None"]


def unit_examples(
    generator: nn.Module,
    inputs: Any,
    top_samples: torch.Tensor,
    units: Sequence[int],
    k: int,
    *,
    layer: str | None = None,
    thresholds: torch.Tensor | None = None,
    device: torch.device | str | None = None,
) -> list[Example]:
    """``[(unit, images [k, 3, H, W], masks [k, H, W] or None), ...]`` for ``units``.

    Args:
        generator: maps ``inputs`` (indexed along dim 0) to images ``[N, 3, H, W]``.
        top_samples: long ``[U, K]``, row u = indices into ``inputs`` of unit u's top
            samples, best first; the first ``k`` (``k <= K``) of each row are drawn.
        layer, thresholds: the dissected layer and its per-unit thresholds ``[U]``: the
            masks are where the unit's featuremap, upsampled bilinearly to the image
            size, exceeds its threshold. Without ``layer`` the masks are None.

    Each distinct sample is generated once, in one pass, under ``no_grad`` in eval mode
    (every submodule's mode is restored); images and masks are returned on the CPU.
    """
    if layer is not None and thresholds is None:
        raise ValueError(f"masks of layer {layer!r} need its thresholds; pass thresholds=.")
    units = [int(u) for u in units]
    if not units or k < 1:
        return []
    wanted = top_samples[units, :k]  # [len(units), k] sample indices
    index, position = torch.unique(wanted.flatten(), return_inverse=True)
    position = position.view(len(units), -1)
    batch = move_inputs(index_inputs(inputs, index), device)
    tracing = Trace(generator, layer, detach=True) if layer is not None else nullcontext()
    with eval_mode(generator), torch.no_grad(), tracing as trace:
        images = call_generator(generator, batch)
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(
            "the generator must return images [N, 3, H, W] to draw unit pictures, got "
            f"{tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__}."
        )
    images = images.detach().float()
    out: list[Example] = []
    for row, unit in enumerate(units):
        rows = position[row].to(images.device)
        masks = None
        if layer is not None:
            featuremaps = trace[layer]
            upsampled = upsample(featuremaps[rows.to(featuremaps.device), unit: unit + 1].float(),
                                 tuple(images.shape[-2:]))[:, 0]
            masks = (upsampled > thresholds[unit].to(upsampled.device)).cpu()
        out.append((unit, images[rows].cpu(), masks))
    return out


def top_unit_examples(
    generator: nn.Module,
    inputs: Any,
    layer_dissection: LayerDissection,
    units: int | Sequence[int],
    k: int,
    *,
    device: torch.device | str | None = None,
) -> list[tuple[int, torch.Tensor, torch.Tensor]]:
    """:func:`unit_examples` of a dissected layer: ``[(unit, images [k, 3, H, W], masks [k, H, W])]``
    for the given units (or, given an int, the best that many units by IoU: interpretable
    ones first, then the closest to the cutoff), from the ``k`` held-out samples each unit
    activates most on (ranked by its max activation), masks outlining where it is on."""
    ld = layer_dissection
    if isinstance(units, int):
        units = ld.ranked_units(only_interpretable=False)[: max(0, units)]
    if not len(units):
        return []
    k = min(int(k), ld.topk.shape[1])
    if k < 1:
        raise ValueError("the dissection kept no top images (topk=0); re-run it with topk >= 1.")
    return unit_examples(generator, inputs, ld.topk, units, k, layer=ld.layer, thresholds=ld.thresholds,
                         device=device)


def artifact_examples(generator: nn.Module, result: UnitFID, n_units: int = 8, n_images: int = 5,
                      inputs: Any = None, device=None) -> list[tuple[int, torch.Tensor, None]]:
    """:func:`unit_examples` of per-unit FID: ``[(unit, images [n_images, 3, H, W], None)]`` for
    the ``n_units`` highest-FID units, their top-activating pool images generated again from
    the pool's inputs (``result.inputs`` unless ``inputs`` is given)."""
    inputs = result.inputs if inputs is None else inputs
    if inputs is None:
        raise ValueError("the UnitFID result holds no pool inputs (loaded from JSON?); pass inputs=.")
    return unit_examples(generator, inputs, result.topk, result.artifact_units(n_units),
                         min(int(n_images), result.k), device=device)
