"""Tallies, upsampling and thresholds against brute-force versions written here."""
from __future__ import annotations

import doctest
import math
from fractions import Fraction

import pytest
import torch
import torch.nn.functional as F

import gan_monitor.dissection.tally as tallies
import gan_monitor.dissection.upsample as upsample_module
import gan_monitor.dissection.upsample_blocks as blocks
from gan_monitor.dissection.tally import LayerTally, category_index, encode_segmentation
from gan_monitor.dissection.thresholds.iqr import LevelTally, score_levels
from gan_monitor.dissection.thresholds.quantile import collect_above_floors, interpolate_at
from gan_monitor.dissection.thresholds.top_values import TopValues, quantile_rank
from gan_monitor.dissection.top_samples import TopSamples
from gan_monitor.dissection.upsample import upsample
from gan_monitor.dissection.upsample_blocks import fused_sum

torch.set_num_threads(1)


def brute_upsample(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Pixel-by-pixel bilinear interpolation, centres aligned, border clamped."""
    n, u, h, w = x.shape
    out = torch.zeros(n, u, height, width, dtype=torch.float64)
    xd = x.double()
    for i in range(height):
        sy = min(max((i + 0.5) * h / height - 0.5, 0.0), h - 1.0)
        y0 = int(math.floor(sy)); y1 = min(y0 + 1, h - 1); fy = sy - y0
        for j in range(width):
            sx = min(max((j + 0.5) * w / width - 0.5, 0.0), w - 1.0)
            x0 = int(math.floor(sx)); x1 = min(x0 + 1, w - 1); fx = sx - x0
            top = xd[:, :, y0, x0] * (1 - fx) + xd[:, :, y0, x1] * fx
            bottom = xd[:, :, y1, x0] * (1 - fx) + xd[:, :, y1, x1] * fx
            out[:, :, i, j] = top * (1 - fy) + bottom * fy
    return out


@pytest.mark.parametrize("shape,size", [((3, 4), (12, 16)), ((5, 7), (13, 10)), ((8, 8), (32, 32)), ((4, 4), (4, 4))])
def test_upsample_matches_brute_force_and_interpolate(shape, size):
    x = torch.randn(2, 3, *shape, generator=torch.Generator().manual_seed(1))
    up = upsample(x, size)
    assert up.shape == (2, 3, *size)
    assert torch.allclose(up.double(), brute_upsample(x, *size), atol=1e-5)
    ref = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    assert torch.allclose(up, ref, atol=1e-5)


def brute_kth_largest(values: torch.Tensor, rank: int) -> torch.Tensor:
    return values.sort(dim=1, descending=True).values[:, rank - 1]


@pytest.mark.parametrize("batch", [1, 3, 16])
def test_top_values_exact_with_ties_and_any_batching(batch):
    gen = torch.Generator().manual_seed(2)
    data = torch.randn(40, 5, 64, generator=gen)
    data[:, 1] = torch.relu(data[:, 1] - 1.5)  # mostly exact zeros: ties at the answer
    data[:, 2] = torch.round(data[:, 2] * 2)  # few distinct values
    data[:, 3] = 0.0  # dead unit
    flat = data.transpose(0, 1).reshape(5, -1)
    for q in (0.01, 0.1, 0.3):
        rank = quantile_rank(q, flat.shape[1]) + 1
        tv = TopValues(5, rank)
        for i in range(0, 40, batch):
            tv.update(data[i:i + batch])
        assert torch.equal(tv.result(), brute_kth_largest(flat, rank))


def test_top_values_merge_equals_whole():
    data = torch.randn(30, 4, 100, generator=torch.Generator().manual_seed(3))
    rank = 77
    a, b = TopValues(4, rank), TopValues(4, rank)
    for i in range(0, 12, 4):
        a.update(data[i:i + 4])
    for i in range(12, 30, 5):
        b.update(data[i:i + 5])
    a.merge(b)
    assert torch.equal(a.result(), brute_kth_largest(data.transpose(0, 1).reshape(4, -1), rank))


def test_quantile_rank_is_exact_for_round_numbers():
    assert quantile_rank(0.01, 307200) == 3072
    assert quantile_rank(0.01, 100) == 1
    assert quantile_rank(0.5, 3) == 2


CATS = ["-", "material", "object", "object", "part"]


def random_world(n=10, units=6, h=4, w=4, size=12, depth=1, seed=0):
    gen = torch.Generator().manual_seed(seed)
    acts = torch.randn(n, units, h, w, generator=gen)
    seg = torch.randint(0, len(CATS), (n, depth, size, size), generator=gen)
    seg[:, 0, 0, 0] = 1  # every image shows some concept
    return acts, (seg[:, 0] if depth == 1 else seg)


def brute_tally(acts, seg, thresholds, categories):
    """Dense masks: intersections, unions (plain and category-restricted), IoU."""
    seg = seg if seg.dim() == 4 else seg[:, None]
    n, _, height, width = seg.shape
    c = len(categories)
    on = brute_upsample(acts, height, width).float() > thresholds.view(1, -1, 1, 1)  # [N,U,H,W]
    concept = torch.stack([(seg == k).any(1) for k in range(c)], 1)  # [N,C,H,W]
    inter = torch.einsum("nuhw,nchw->uc", on.double(), concept.double())
    active = on.double().sum((0, 2, 3))
    label = concept.double().sum((0, 2, 3))
    present = concept.any(3).any(2)  # [N, C]
    cat_union = torch.zeros(on.shape[1], c, dtype=torch.float64)
    for k in range(1, c):
        images = torch.zeros(n, dtype=torch.bool)
        for j in range(1, c):
            if categories[j] == categories[k]:
                images |= present[:, j]
        cat_union[:, k] = on[images].double().sum((0, 2, 3)) + label[k] - inter[:, k]
    plain = inter / (active[:, None] + label[None] - inter).clamp(min=1)
    category = inter / cat_union.clamp(min=1)
    plain[:, 0] = 0
    category[:, 0] = 0
    inter[:, 0] = 0  # column 0 (no concept) is not tallied
    return inter.long(), plain.float(), category.float()


@pytest.mark.parametrize("depth", [1, 3])
def test_layer_tally_matches_dense_brute_force(depth):
    acts, seg = random_world(depth=depth)
    thresholds = torch.tensor([0.0, 0.5, -0.3, 1.0, 2.0, 9.0])
    tally = LayerTally(thresholds, CATS)
    tally.update(acts, seg)
    inter, plain, category = brute_tally(acts, seg, thresholds, CATS)
    assert torch.equal(tally.intersection, inter)
    assert torch.equal(tally.iou("plain"), plain)
    assert torch.equal(tally.iou("category"), category)
    assert int(tally.images) == acts.shape[0]


def test_two_halves_sum_to_whole():
    acts, seg = random_world(n=14, depth=3)
    thresholds = torch.linspace(-1, 1, 6)
    whole, first, second = (LayerTally(thresholds, CATS) for _ in range(3))
    whole.update(acts, seg)
    first.update(acts[:5], seg[:5])
    second.update(acts[5:], seg[5:])
    first.merge_state(second)
    for name in ("intersection", "active", "active_in_category", "label_pixels", "pixels_in_category",
                 "images_with_concept", "pixels", "images"):
        assert torch.equal(getattr(first, name), getattr(whole, name)), name
    assert torch.equal(first.iou("category"), whole.iou("category"))


def test_multilabel_counts_a_repeated_concept_once():
    seg = torch.zeros(1, 2, 2, 2, dtype=torch.long)
    seg[0, 0] = torch.tensor([[1, 2], [0, 3]])
    seg[0, 1] = torch.tensor([[1, 4], [0, 0]])  # concept 1 twice at pixel (0,0)
    names, cat = category_index(CATS)
    enc = encode_segmentation(seg, len(CATS), cat, len(names))
    counts = torch.zeros(len(CATS) + 1)
    counts.index_add_(0, enc.concept_ids.flatten(), enc.onehot.sum(1).flatten())
    assert counts[:len(CATS)].tolist() == [0, 1, 1, 1, 1]
    assert enc.present[0].tolist() == [False, True, True, True, True]
    assert enc.category_present[0].tolist() == [True, True, True]


def test_top_samples_ranked_by_max_with_stable_ties():
    acts = torch.randn(20, 3, 2, 2, generator=torch.Generator().manual_seed(4))
    acts[:, 2] = 1.0  # all tied: lowest sample indices first
    top = TopSamples(3, 5)
    for i in range(0, 20, 6):
        top.update(acts[i:i + 6], i)
    peak = acts.flatten(2).amax(2)
    for u in range(2):
        assert top.indices[u].tolist() == peak[:, u].argsort(descending=True)[:5].tolist()
    assert top.indices[2].tolist() == [0, 1, 2, 3, 4]


def brute_iqr(inter, active, label, total):
    p = torch.tensor([[inter, active - inter], [label - inter, total - active - label + inter]], dtype=torch.float64) / total
    pa, ps = p.sum(1), p.sum(0)
    mi = sum(float(p[i, j] * math.log(p[i, j] / (pa[i] * ps[j]))) for i in range(2) for j in range(2) if p[i, j] > 0)
    h = -sum(float(p[i, j] * math.log(p[i, j])) for i in range(2) for j in range(2) if p[i, j] > 0)
    return mi / h if h > 0 else 0.0


@pytest.mark.parametrize("variant", ["plain", "category"])
def test_level_tally_scores_every_level_like_brute_force(variant):
    acts, seg = random_world(n=8, depth=1, seed=5)
    levels = torch.stack([torch.linspace(-0.5, 1.5, 5)] * acts.shape[1])
    levels[2] = torch.tensor([0.0, 0.0, 0.2, 0.9, 0.9])  # repeated levels are allowed
    tally = LevelTally(levels, CATS)
    tally.update(acts[:3], seg[:3])
    tally.update(acts[3:], seg[3:])
    scores = score_levels(tally, variant, min_lift=0.0)
    for j in range(levels.shape[1]):
        dense = LayerTally(levels[:, j], CATS)
        dense.update(acts, seg)
        assert torch.allclose(scores["iou"][:, :, j].float(), dense.iou(variant), atol=1e-6)
        union = dense.union(variant)
        for u in range(acts.shape[1]):
            for c in range(1, len(CATS)):
                i = int(dense.intersection[u, c])
                lab = int(dense.label_pixels[c])
                a = int(union[u, c]) - lab + i
                if variant == "plain":
                    total = int(dense.pixels)
                else:
                    total = int(dense.pixels_in_category[dense.concept_category[c]])
                assert scores["iqr"][u, c, j].item() == pytest.approx(brute_iqr(i, a, lab, total), abs=1e-9)


def test_iqr_guard_zeroes_negative_association():
    acts = torch.zeros(4, 1, 2, 2)
    acts[:, 0, 0, :] = 1.0  # unit on in the top half
    seg = torch.ones(4, 2, 2, dtype=torch.long)
    seg[:, 1, :] = 2  # concept 1 top, concept 2 bottom: unit anti-correlated with 2
    tally = LevelTally(torch.tensor([[0.5]]), CATS)
    tally.update(acts, seg)
    iqr = score_levels(tally, "plain")["iqr"]
    assert iqr[0, 1, 0] == pytest.approx(1.0)
    assert iqr[0, 2, 0] == 0.0


@pytest.mark.parametrize("shape,size", [((5, 7), (13, 10)), ((8, 8), (32, 32))])
def test_interpolate_at_positions_matches_upsample(shape, size):
    x = torch.randn(3, 4, *shape, generator=torch.Generator().manual_seed(6))
    positions = torch.randint(size[0] * size[1], (3, 50), generator=torch.Generator().manual_seed(7))
    dense = upsample(x, size).flatten(2)
    expected = dense.gather(2, positions[:, None, :].expand(-1, 4, -1))
    assert torch.allclose(interpolate_at(x, positions, size), expected, atol=1e-5)


def test_collect_keeps_exactly_the_pixels_above_the_floor():
    x = torch.randn(6, 3, 4, 4, generator=torch.Generator().manual_seed(8))
    floors = torch.tensor([0.5, 1.0, 9.0])
    kept = collect_above_floors([x[:2], x[2:]], (8, 8), floors)
    dense = upsample(x, (8, 8)).flatten(2)  # [N, U, P]
    for u in range(3):
        image, pixel = (dense[:, u] > floors[u]).nonzero(as_tuple=True)
        expect = sorted((image * 64 + pixel).tolist())
        got = sorted(kept.positions_of(u).long().tolist())
        assert got == expect
    rank = 5
    t, exact = kept.kth_largest(rank)
    for u in range(2):
        assert exact[u] and t[u] == dense[:, u].flatten().sort(descending=True).values[rank - 1]
    assert not exact[2]


@pytest.mark.parametrize("per_image_limit", [None, 0])
def test_add_active_counts_listed_pixels_like_brute_force(per_image_limit, monkeypatch):
    if per_image_limit is not None:  # force the path for many (unit, image) pairs
        monkeypatch.setattr(tallies, "CHUNK_ELEMENTS", per_image_limit)
    gen = torch.Generator().manual_seed(11)
    n, depth, pixels, units = 5, 2, 30, 4
    labels = torch.randint(0, len(CATS), (n, depth, pixels), generator=gen).to(torch.uint8)
    labels = tallies.dedupe_labels(labels)  # a concept repeated at a pixel counts once
    present = torch.zeros(n, len(CATS), dtype=torch.bool)
    for c in range(1, len(CATS)):
        present[:, c] = (labels == c).flatten(1).any(1)
    names, index = category_index(CATS)
    shows = torch.stack([present[:, 1:][:, index[1:] == k].any(1) for k in range(len(names))], 1)
    on = torch.rand(units, n, pixels, generator=gen) > 0.7
    unit, image, pixel = on.nonzero(as_tuple=True)
    tally = LayerTally(torch.zeros(units), CATS)
    tally.add_active(unit, image * pixels + pixel, labels, shows)
    for u in range(units):
        assert tally.active[u] == on[u].sum()
        for k in range(len(names)):
            assert tally.active_in_category[u, k] == on[u][shows[:, k]].sum()
        for c in range(1, len(CATS)):
            assert tally.intersection[u, c] == (on[u] & (labels == c).any(1)).sum()


def _round_to_float32(x) -> float:
    """Exact rational ``x`` rounded once to float32 (nearest, ties to even)."""
    guess = torch.tensor(float(x), dtype=torch.float32)
    near = [torch.nextafter(guess, torch.tensor(-math.inf)), guess, torch.nextafter(guess, torch.tensor(math.inf))]
    best = min(near, key=lambda c: (abs(Fraction(float(c)) - x), int(c.view(torch.int32)) & 1))
    return float(best)


def test_fused_sum_rounds_once_like_a_fused_multiply_add():
    gen = torch.Generator().manual_seed(12)
    p = torch.randn(3000, generator=gen) * torch.logspace(-3, 3, 3000)
    b = torch.randn(3000, generator=gen)
    wb = torch.rand(3000, generator=gen)
    p[:1000] = (b[:1000] * wb[:1000]).neg() * 0.999  # cancellation
    got = fused_sum(p, b, wb)
    for i in range(0, 3000, 7):
        exact = Fraction(float(p[i])) + Fraction(float(b[i])) * Fraction(float(wb[i]))
        assert float(got[i]) == _round_to_float32(exact)


@pytest.mark.parametrize("shape,size", [((8, 8), (64, 64)), ((16, 16), (64, 64)), ((5, 7), (13, 10)),
                                        ((6, 6), (6, 6)), ((9, 4), (5, 3))])
@pytest.mark.parametrize("dense", [False, True])
def test_collect_kth_and_above_are_exact_on_every_path(shape, size, dense, monkeypatch):
    if dense:  # as if upsample's rounding could not be reproduced: the dense fallback
        monkeypatch.setattr(blocks, "_ARITHMETIC", {(*shape, *size, "cpu"): None})
    gen = torch.Generator().manual_seed(13)
    x = torch.randn(12, 4, *shape, generator=gen) * 3
    x[:, 1] = torch.relu(x[:, 1])  # ties at zero
    x[:, 2] = torch.round(x[:, 2])  # few distinct values
    dense_maps = upsample(x, size).flatten(2)  # [N, U, P]
    per_unit = dense_maps.transpose(0, 1).flatten(1)
    floors = torch.stack([per_unit[u].kthvalue(int(per_unit.shape[1] * f)).values
                          for u, f in enumerate([0.9, 0.5, 0.95, 0.7])])
    kept = collect_above_floors([x[:5], x[5:]], size, floors)
    pixels = size[0] * size[1]
    for u in range(4):
        image, pixel = (dense_maps[:, u] > floors[u]).nonzero(as_tuple=True)
        assert sorted(kept.positions_of(u).tolist()) == sorted((image * pixels + pixel).tolist())
    for rank in (1, 7, 40):
        t, exact = kept.kth_largest(rank)
        for u in range(4):
            if exact[u]:
                assert t[u] == per_unit[u].sort(descending=True).values[rank - 1]
        level = torch.where(exact, t, torch.full_like(t, math.inf))
        got = {(int(u), int(p)) for units, pos in kept.above(level) for u, p in zip(units, pos)}
        want = {(u, int(p)) for u in range(4) if exact[u]
                for p in (dense_maps[:, u].flatten() > level[u]).nonzero().flatten()}
        assert got == want


def test_upsample_docstring_example_runs():
    result = doctest.testmod(upsample_module)
    assert result.attempted >= 2 and result.failed == 0


@pytest.mark.parametrize("word", [1, 4, 8])
def test_words_above_and_greater_match_a_brute_force(word):
    from gan_monitor.dissection.thresholds.level_counts import greater, words_above

    g = torch.Generator().manual_seed(word)
    up = torch.randn(64 * word, generator=g)
    lowest = float(up[5])
    up[::7] = lowest  # ties: equal is not above
    up[3] = -0.0
    expected = [i for i in range(up.numel() // word) if bool((up[i * word:(i + 1) * word] > lowest).any())]
    assert words_above(up, lowest, word).tolist() == expected
    other = torch.randn(up.numel(), generator=g)
    other[::5] = up[::5]
    assert torch.equal(greater(up, other), torch.tensor([a > b for a, b in zip(up.tolist(), other.tolist())]))
    assert torch.equal(greater(up, lowest), torch.tensor([a > lowest for a in up.tolist()]))


@pytest.mark.parametrize("size, ranks", [(50, [0, 3, 3, 49]), (1000, [0, 10, 200, 999]), (7, [6])])
def test_largest_at_reads_order_statistics_like_a_full_sort(size, ranks):
    from gan_monitor.dissection.thresholds.iqr import largest_at

    g = torch.Generator().manual_seed(size)
    values = torch.round(torch.randn(6, size, generator=g) * 3) / 3  # heavy ties
    values[0] = 0.0
    index = torch.tensor(ranks)
    expected = values.sort(dim=1, descending=True).values[:, index]
    assert torch.equal(largest_at(values, index), expected)
    assert torch.equal(largest_at(values.double(), index), expected.double())  # the torch.topk path
