"""Tallying a batch at known thresholds by upsampling only where a unit can be on
(iqr mode's main-sample pass; docs/method.md §3-§4).

``LayerTally.update`` upsamples every unit densely and multiplies the 0/1 masks with a
one-hot of the labels. When the thresholds are known before the pass (iqr mode), the
"on" pixels can instead be found with ``quantile.collect_above_floors`` (only the output
blocks whose raw 2x2 neighbourhood exceeds the threshold are upsampled; decisions near
the threshold use the exact value ``upsample`` gives) and counted sparsely with
``LayerTally.add_active``. The integer counts, hence IoU and labels, are identical.
"""
from __future__ import annotations

import torch

from gan_monitor.dissection.tally import EncodedSegmentation, LayerTally
from gan_monitor.dissection.thresholds.quantile import collect_above_floors

__all__ = ["tally_above"]


def tally_above(tally: LayerTally, acts: torch.Tensor, encoded: EncodedSegmentation) -> None:
    """``tally.update(acts, encoded)`` computed sparsely: same counts, bit for bit.

    ``acts``: raw featuremaps ``[B, U, h, w]``; ``encoded``: their segmentations
    (``LayerTally.encode``)."""
    if acts.dim() != 4 or acts.shape[1] != tally.n_units or acts.shape[0] != len(encoded):
        raise ValueError(f"tally_above expects featuremaps [{len(encoded)}, {tally.n_units}, h, w] "
                         f"(one per segmentation), got {tuple(acts.shape)}.")
    thresholds = tally.thresholds.to(acts.device).float()
    if acts.shape[0]:
        kept = collect_above_floors([acts], encoded.size, thresholds)
        for units, positions in kept.above(thresholds):
            tally.add_active(units, positions, encoded.labels, encoded.category_present)
    tally.add_images(encoded)
