"""iqr mode's main-sample tally (``thresholds.sparse_tally.tally_above``, issue 16): the
same integer counts as thresholding a dense ``upsample``, checked against a brute force
on small random inputs with ties at the thresholds, on every path (the block search, its
dense fallback, the compiled ``gm_count_above``)."""
from __future__ import annotations

import pytest
import torch

import gan_monitor.dissection.upsample_blocks as blocks
from gan_monitor.core import native
from gan_monitor.dissection.tally import LayerTally
from gan_monitor.dissection.thresholds import kernels, sparse_tally
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
@pytest.mark.parametrize("path", ["search", "search-dense-fallback", "compiled", "compiled-unit-by-unit",
                                  "compiled-from-upsampled"])
@pytest.mark.parametrize("seed", [0, 1])
def test_tally_above_equals_dense_brute_force(depth, path, seed, monkeypatch):
    acts, seg, thresholds = world(seed, depth)
    if path.startswith("compiled"):
        if kernels.count_above() is None:
            pytest.skip(f"no compiled kernel here: {native.status(kernels.SOURCE)}")
        if path == "compiled-unit-by-unit":
            monkeypatch.setattr(sparse_tally, "GROUP_VALUES", 1)  # one unit per kernel call
        if path == "compiled-from-upsampled":  # as if the rows' arithmetic could not be reproduced
            monkeypatch.setattr(kernels, "rows_arithmetic", lambda *args: None)
        else:
            assert kernels.rows_arithmetic(4, 5, (12, 10)) is not None  # the rows kernel is what runs
    else:
        monkeypatch.setattr(kernels, "ENABLED", False)
    if path == "search-dense-fallback":  # as if upsample's rounding could not be reproduced: dense collection
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


def test_a_refused_batch_warns_and_is_counted_by_the_search(monkeypatch):
    acts, seg, thresholds = world(0, 1)
    expected = LayerTally(thresholds, CATS)
    expected.update(acts, seg[:, 0])
    def gm_count_above(*args):  # a kernel that refuses its input
        return 2

    monkeypatch.setattr(kernels, "count_above", lambda: gm_count_above)
    monkeypatch.setattr(kernels, "count_above_rows", lambda: gm_count_above)
    tally = LayerTally(thresholds, CATS)
    try:
        with pytest.warns(RuntimeWarning, match="gm_count_above refused"):
            tally_above(tally, acts, tally.encode(seg[:, 0]))
    finally:
        kernels.reset()
    for name in ("intersection", "active", "active_in_category", "label_pixels", "pixels"):
        assert torch.equal(getattr(tally, name), getattr(expected, name)), name


def test_the_compiled_count_refuses_a_label_out_of_range():
    kernel = kernels.count_above()
    if kernel is None:
        pytest.skip(f"no compiled kernel here: {native.status(kernels.SOURCE)}")
    values = torch.ones(1, 1, 4)
    labels = torch.tensor([[[1, 2, 9, 0]]], dtype=torch.int32)  # 9: beyond 4 concepts
    per_image, intersection = torch.zeros(1, dtype=torch.int64), torch.zeros(4, dtype=torch.int64)
    threshold = torch.zeros(1)  # kept alive while the kernel reads it
    args = (values.data_ptr(), 1, 1, 4, threshold.data_ptr(), labels.data_ptr(), 1, 4,
            per_image.data_ptr(), intersection.data_ptr())
    assert kernel(*args) == 2
    labels[0, 0, 2] = 3
    intersection.zero_()
    per_image.zero_()
    assert kernel(*args) == 0
    assert intersection.tolist() == [1, 1, 1, 1] and per_image.tolist() == [4]
