"""Drawing functions of gan_monitor.report.pictures, checked pixel by pixel against
independent brute-force versions."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gan_monitor.dissection.results import LayerDissection
from gan_monitor.report.pictures import (
    CATEGORY_COLORS,
    images_to_uint8,
    interpretable_units_table,
    mask_outline,
    to_chw,
    top_units_grid,
    unit_caption,
    unit_row,
    units_per_concept_chart,
)


def brute_outline(mask: np.ndarray) -> np.ndarray:
    """Inside pixels with an 8-neighbour (inside the image) that is outside the mask."""
    h, w = mask.shape
    out = np.zeros_like(mask)
    for y in range(h):
        for x in range(w):
            if not mask[y, x]:
                continue
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    yy, xx = y + dy, x + dx
                    if 0 <= yy < h and 0 <= xx < w and not mask[yy, xx]:
                        out[y, x] = True
    return out


def test_mask_outline_matches_brute_force():
    g = torch.Generator().manual_seed(0)
    masks = torch.rand(4, 13, 11, generator=g) > 0.45
    masks[3] = True  # full mask: no outline, the border is not "outside"
    got = mask_outline(masks).numpy()
    for i in range(4):
        np.testing.assert_array_equal(got[i], brute_outline(masks[i].numpy()))
    assert not got[3].any()


def test_images_to_uint8_range_and_layout():
    x = torch.tensor([-1.0, 0.0, 1.0, 2.0]).view(1, 1, 2, 2).expand(1, 3, 2, 2)
    u = images_to_uint8(x)
    assert u.shape == (1, 2, 2, 3) and u.dtype == np.uint8
    assert u[0, :, :, 0].tolist() == [[0, 128], [255, 255]]
    with pytest.raises(ValueError, match=r"\[N, 3, H, W\]"):
        images_to_uint8(torch.zeros(2, 1, 4, 4))


def test_unit_row_draws_outline_and_dims_outside():
    k, h, w, scale, gap = 3, 8, 8, 2, 2
    images = torch.full((k, 3, h, w), 0.6)
    masks = torch.zeros(k, h, w, dtype=torch.bool)
    masks[:, 2:6, 3:7] = True
    row = np.asarray(unit_row(images, masks, "unit 3 tree IoU 0.40", scale=scale, dim=0.5, gap=gap))
    assert row.shape[1] == k * w * scale + (k - 1) * gap
    caption_h = row.shape[0] - h * scale
    base = round((0.6 + 1) * 127.5)  # 204
    big = masks[0].repeat_interleave(scale, 0).repeat_interleave(scale, 1).numpy()
    outline = brute_outline(big)
    for i in range(k):
        x0 = i * (w * scale + gap)
        pic = row[caption_h:, x0:x0 + w * scale]
        assert (pic[outline] == [255, 255, 0]).all()
        assert (pic[big & ~outline] == base).all()
        assert (pic[~big] == round(base * 0.5)).all()
    assert (row[:caption_h] < 100).any(), "caption text missing"
    with pytest.raises(ValueError, match="same"):
        unit_row(images, masks[:2], "x")


def test_unit_caption():
    assert unit_caption(12, "tree", 0.3141) == "unit 12 tree IoU 0.31"
    assert unit_caption(12, "tree", 0.3141, cutoff=0.05) == "unit 12 tree IoU 0.31"
    assert unit_caption(3, "sky", 0.0498, cutoff=0.05) == "unit 3 sky IoU 0.049 (below cutoff 0.05)"


def test_top_units_grid_stacks_rows():
    r1 = unit_row(torch.zeros(2, 3, 4, 4), torch.ones(2, 4, 4, dtype=torch.bool), "a", scale=1)
    r2 = unit_row(torch.zeros(3, 3, 4, 4), torch.ones(3, 4, 4, dtype=torch.bool), "b", scale=1)
    grid = top_units_grid([r1, r2], title="t", gap=4)
    assert grid.width == max(r1.width, r2.width)
    assert grid.height == 18 + r1.height + r2.height + 4
    empty = top_units_grid([], title="layer1")
    assert empty.width > 0 and to_chw(empty).shape[0] == 3


def bar_lengths(img: np.ndarray, color) -> list[int]:
    """Lengths of the horizontal runs of ``color``, one per bar (top to bottom)."""
    hit = (img == np.array(color, dtype=np.uint8)).all(axis=2)
    lengths, prev = [], 0
    for y in range(hit.shape[0]):
        n = int(hit[y].sum())
        if n and not prev:
            lengths.append(n)
        prev = n
    return lengths


def test_units_per_concept_chart_bar_lengths_and_colors():
    counts = {"tree": 8, "cloud": 4, "window": 2}
    cats = {"tree": "object", "cloud": "object", "window": "part"}
    img = np.asarray(units_per_concept_chart(counts, cats, title="layer3", max_bar=200))
    # object bars: 200 and 100 px long, plus the legend swatch (11 px); part bar 50 px
    assert bar_lengths(img, CATEGORY_COLORS["object"]) == [200, 100, 11]
    assert bar_lengths(img, CATEGORY_COLORS["part"]) == [50, 11]
    chw = to_chw(units_per_concept_chart({}, {}, title="empty"))
    assert chw.dtype == np.uint8 and chw.shape[0] == 3


def make_layer(unit_iou, labels, cutoff=0.05):
    concepts = ["-", "sky", "tree", "window"]
    categories = ["-", "material", "object", "part"]
    u = len(unit_iou)
    unit_iou = torch.tensor(unit_iou)
    label_index = torch.tensor(labels)
    iou = torch.zeros(u, len(concepts))
    iou[torch.arange(u), label_index] = unit_iou
    return LayerDissection(
        layer="layer2", concepts=concepts, categories=categories,
        thresholds=torch.linspace(0.5, 1.0, u), iou=iou, label_index=label_index,
        unit_iou=unit_iou, interpretable=unit_iou >= cutoff,
        topk=torch.zeros(u, 2, dtype=torch.long), topk_values=torch.zeros(u, 2),
        settings={"cutoff": cutoff, "threshold": "quantile"},
    )


def test_interpretable_units_table_rows_in_iou_order():
    ld = make_layer([0.10, 0.01, 0.30, 0.07], [2, 1, 3, 2])
    text = interpretable_units_table(ld)
    rows = [line for line in text.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert [int(r.split("|")[1]) for r in rows] == [2, 0, 3]
    assert "| 2 | window | part | 0.300 |" in rows[0]
    assert "3 of 4 units interpretable" in text and "2 concepts" in text
    assert "quantile" in text
    assert interpretable_units_table(ld, max_rows=1).count("\n| 2 |") == 1
    assert "2 more" in interpretable_units_table(ld, max_rows=1)
    assert "No interpretable units" in interpretable_units_table(make_layer([0.0, 0.01], [1, 2]))


def test_top_unit_examples_match_a_direct_forward_pass():
    from torch import nn

    from gan_monitor.core.inputs import index_inputs
    from gan_monitor.report.unit_examples import top_unit_examples

    torch.manual_seed(0)
    gen = nn.Sequential(nn.Linear(6, 4 * 4 * 4), nn.Unflatten(1, (4, 4, 4)),
                        nn.Sequential(nn.Conv2d(4, 5, 3, padding=1), nn.BatchNorm2d(5), nn.Dropout(0.5)),
                        nn.Upsample(scale_factor=4), nn.Conv2d(5, 3, 1), nn.Tanh())
    gen.train()
    inputs = torch.randn(10, 6, generator=torch.Generator().manual_seed(1))
    u = 5
    ld = make_layer([0.02, 0.3, 0.01, 0.2, 0.04], [1, 2, 1, 3, 2])
    ld.layer = "2"
    ld.thresholds = torch.tensor([0.0, 0.1, -0.2, 0.3, 0.05])
    ld.topk = torch.tensor([[9, 2, 4], [3, 3, 0], [1, 5, 7], [8, 6, 2], [0, 1, 2]])[:u]
    examples = top_unit_examples(gen, inputs, ld, 3, 2)
    assert [e[0] for e in examples] == [1, 3, 4]  # best IoU first, also below the cutoff
    assert gen.training and gen[2][1].training  # modes restored
    gen.eval()
    with torch.no_grad():
        feats = gen[:3](inputs)
        images = gen(inputs)
    for unit, imgs, masks in examples:
        idx = ld.topk[unit, :2]
        torch.testing.assert_close(imgs, images[idx])
        up = F.interpolate(feats[idx, unit:unit + 1], size=(16, 16), mode="bilinear", align_corners=False)[:, 0]
        expected = up > ld.thresholds[unit]
        assert masks.dtype == torch.bool and masks.shape == (2, 16, 16)
        assert (masks == expected).float().mean() > 0.99  # equal up to float ties at the threshold
    assert top_unit_examples(gen, inputs, ld, [], 2) == []
    d = {"z": inputs, "flag": "x"}
    assert torch.equal(index_inputs(d, torch.tensor([3, 1]))["z"], inputs[[3, 1]])
    assert index_inputs(d, torch.tensor([0]))["flag"] == "x"


def test_artifact_examples_are_the_highest_fid_units_top_pool_images():
    from torch import nn

    from gan_monitor.fid.unit_fid import UnitFID
    from gan_monitor.report.unit_examples import artifact_examples, unit_examples

    torch.manual_seed(0)
    gen = nn.Sequential(nn.Linear(4, 3 * 4 * 4), nn.Unflatten(1, (3, 4, 4)), nn.BatchNorm2d(3), nn.Tanh())
    gen.train()
    inputs = torch.randn(12, 4, generator=torch.Generator().manual_seed(2))
    topk = torch.randint(0, 12, (5, 4), generator=torch.Generator().manual_seed(3))
    result = UnitFID(layer="2", fid=torch.tensor([3.0, 9.0, 1.0, 7.0, 5.0], dtype=torch.float64), topk=topk,
                     topk_values=torch.zeros(5, 4), pool=12, k=4, extractor="pixels", real_count=10, seed=0,
                     pool_fid=1.0, inputs=inputs)
    examples = artifact_examples(gen, result, n_units=3, n_images=2)
    assert [u for u, _, _ in examples] == [1, 3, 4]  # highest FID first
    assert gen.training
    gen.eval()
    with torch.no_grad():
        images = gen(inputs)
    for unit, imgs, masks in examples:
        torch.testing.assert_close(imgs, images[topk[unit, :2]])
        assert masks is None
    assert len(artifact_examples(gen, result, n_units=2, n_images=9)[0][1]) == 4  # at most k images
    with pytest.raises(ValueError, match="pass inputs="):
        artifact_examples(gen, UnitFID(**{**result.__dict__, "inputs": None}))
    with pytest.raises(ValueError, match="thresholds"):
        unit_examples(gen, inputs, topk, [0], 1, layer="2")
