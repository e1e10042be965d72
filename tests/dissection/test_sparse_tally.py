"""iqr mode's main-sample tally (``thresholds.sparse_tally.tally_above``, issue 16): the
same integer counts as thresholding a dense ``upsample``, checked against a brute force
on small random inputs with ties at the thresholds."""
from __future__ import annotations

import pytest
import torch

import gan_monitor.dissection.upsample_blocks as blocks
from gan_monitor.dissection.tally import LayerTally
from gan_monitor.dissection.thresholds.sparse_tally import tally_above
from gan_monitor.dissection.upsample import upsample

torch.set_num_threads(1)
CATS = ["-", "material", "object", "object", "part", "part"]


def brute_counts(acts, seg, thresholds):
    """Counts from dense 0/1 masks, pixel by pixel: intersection [U, C] (a concept shown
    in several maps at a pixel counts once; column 0 zero), active [U],
    active_in_category [U, K] (K = material, object, part), label_pixels [C]."""
    n, depth, height, width = seg.shape
    on = upsample(acts.float(), (height, width)) > thresholds.view(1, -1, 1, 1)  # [N, U, H, W]
    c = len(CATS)
    shown = torch.stack([(seg == k).any(1) for k in range(c)], 1)  # [N, C, H, W]
    inter = torch.einsum("nuhw,nchw->uc", on.long(), shown.long())
    inter[:, 0] = 0
    names = ["material", "object", "part"]
    image_shows = torch.stack([torch.stack([shown[i, k].any() for k in range(c)]) for i in range(n)])  # [N, C]
    per_image = on.long().sum((2, 3))  # [N, U]
    in_category = torch.zeros(acts.shape[1], len(names), dtype=torch.long)
    for j, name in enumerate(names):
        images = torch.zeros(n, dtype=torch.bool)
        for k in range(1, c):
            if CATS[k] == name:
                images |= image_shows[:, k]
        in_category[:, j] = per_image[images].sum(0)
    label = shown.long().sum((0, 2, 3))
    label[0] = 0
    return inter, per_image.sum(0), in_category, label


def world(seed, depth, shape=(4, 5), size=(12, 10), n=9, units=5):
    gen = torch.Generator().manual_seed(seed)
    acts = torch.randn(n, units, *shape, generator=gen) * 2
    acts[:, 1] = torch.relu(acts[:, 1])  # ties at zero
    acts[:, 2] = torch.round(acts[:, 2])  # few distinct values: many pixels equal a threshold
    seg = torch.randint(0, len(CATS), (n, depth, *size), generator=gen)
    dense = upsample(acts, size).transpose(0, 1).flatten(1)  # [U, N*H*W]
    # thresholds that are upsampled values themselves (ties decided exactly), one at zero, one above all
    pick = torch.tensor([0.7, 0.5, 0.9, 0.95, 0.3])
    thresholds = torch.stack([dense[u].sort().values[int(pick[u] * (dense.shape[1] - 1))] for u in range(units)])
    thresholds[1] = 0.0
    thresholds[4] = dense[4].max()  # nothing above
    return acts, seg, thresholds


@pytest.mark.parametrize("depth", [1, 2])
@pytest.mark.parametrize("fallback", [False, True])
@pytest.mark.parametrize("seed", [0, 1])
def test_tally_above_equals_dense_brute_force(depth, fallback, seed, monkeypatch):
    acts, seg, thresholds = world(seed, depth)
    if fallback:  # as if upsample's rounding could not be reproduced: dense collection
        monkeypatch.setattr(blocks, "_ARITHMETIC", {(4, 5, 12, 10, "cpu"): None})
    inter, active, in_category, label = brute_counts(acts, seg, thresholds)
    sparse, dense = LayerTally(thresholds, CATS), LayerTally(thresholds, CATS)
    for lo, hi in ((0, 4), (4, 9)):  # two batches
        part = seg[lo:hi] if depth > 1 else seg[lo:hi, 0]
        tally_above(sparse, acts[lo:hi], sparse.encode(part))
        dense.update(acts[lo:hi], part)
    assert active.sum() > 0 and inter.sum() > 0  # the check is not vacuous
    assert torch.equal(sparse.intersection, inter)
    assert torch.equal(sparse.active, active)
    assert torch.equal(sparse.active_in_category, in_category)
    assert torch.equal(sparse.label_pixels, label)
    for name in ("intersection", "active", "active_in_category", "label_pixels", "images_with_concept",
                 "pixels_in_category", "pixels", "images"):
        assert torch.equal(getattr(sparse, name), getattr(dense, name)), name


def test_tally_above_refuses_mismatched_featuremaps():
    acts, seg, thresholds = world(0, 1)
    tally = LayerTally(thresholds, CATS)
    with pytest.raises(ValueError, match="featuremaps"):
        tally_above(tally, acts[:, :3], tally.encode(seg[:, 0]))
