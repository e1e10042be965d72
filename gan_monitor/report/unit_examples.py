"""Pictures of units: re-run the generator on a unit's top-activating held-out
inputs and compute where the unit is "on" (its thresholded, upsampled featuremap).

The dissection keeps, per unit, the indices of its top-activating samples
(``LayerDissection.topk``) and its threshold; this module turns those into
``(unit, images, masks)`` triples that :mod:`gan_monitor.report.pictures` draws.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

__all__ = ["top_unit_examples"]


def top_unit_examples(
    generator: nn.Module,
    inputs: Any,
    layer_dissection,
    units: int | Sequence[int],
    k: int,
    *,
    device: torch.device | str | None = None,
) -> list[tuple[int, torch.Tensor, torch.Tensor]]:
    """``[(unit, images [k, 3, H, W], masks [k, H, W]), ...]`` for the given units
    (or, given an int, the best that many units by IoU: interpretable ones first,
    then the closest to the cutoff).

    ``images`` are the generator's outputs for the unit's ``k`` top-activating
    held-out samples (ranked by the unit's max activation, as recorded by the
    dissection); ``masks`` are where the unit's featuremap, upsampled bilinearly
    to the image size, exceeds the unit's dissection threshold. Runs under
    ``no_grad`` in eval mode, restoring every submodule's mode; all on CPU output.
    """
    from gan_monitor.dissection.upsample import upsample
    from gan_monitor.core.inputs import call_generator, index_inputs, move_inputs
    from gan_monitor.core.tracing import Trace, eval_mode

    ld = layer_dissection
    if isinstance(units, int):
        units = ld.ranked_units(only_interpretable=False)[: max(0, units)]
    units = [int(u) for u in units]
    if not units:
        return []
    k = min(int(k), ld.topk.shape[1])
    if k < 1:
        raise ValueError("the dissection kept no top images (topk=0); re-run it with topk >= 1.")
    wanted = ld.topk[units, :k]  # [len(units), k] sample indices
    index, position = torch.unique(wanted.flatten(), return_inverse=True)
    position = position.view(len(units), k)
    batch = move_inputs(index_inputs(inputs, index), device)
    with eval_mode(generator), torch.no_grad(), Trace(generator, ld.layer, detach=True) as trace:
        images = call_generator(generator, batch)
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(
            "the generator must return images [N, 3, H, W] to draw unit pictures, got "
            f"{tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__}."
        )
    feats = trace[ld.layer]
    size = tuple(images.shape[-2:])
    out = []
    for row, u in enumerate(units):
        pos = position[row].to(feats.device)
        fmap = upsample(feats[pos, u: u + 1].float(), size)[:, 0]  # [k, H, W]
        masks = fmap > ld.thresholds[u].to(fmap.device)
        out.append((u, images[pos].detach().float().cpu(), masks.cpu()))
    return out
