"""pix2pix circularity (gan_monitor.dissection.input_reference): dissecting against the
conditioning label map as well as the segmented output tells units that copy the input
from units that generate. A planted conditional generator: unit 0 copies input concept
"a", unit 1 draws a "c" square that is in no input map, unit 2 is a fixed pattern."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from gan_monitor import dissect
from gan_monitor.core.input_factories import one_hot_maps
from gan_monitor.dissection.input_reference import (
    dissect_input_reference,
    input_vs_output,
    one_hot_labels,
)
from gan_monitor.dissection.thresholds.modes import Quantile
from gan_monitor.toyworld.pix2pix import ToyPix2PixGenerator, pix2pix_inputs
from gan_monitor.toyworld.segmenter import load_segmenter

torch.set_num_threads(1)
S = 16
CONCEPTS, CATEGORIES = ["-", "a", "b", "c"], ["-", "stuff", "stuff", "thing"]
SQUARE = (slice(4, 12), slice(4, 12))  # where the generator draws "c": 25 % of the image


def planted_inputs(n, gen):
    """One-hot maps [n, 4, S, S]: an 8x8 "a" rectangle at a random place, "b" elsewhere."""
    labels = torch.full((n, S, S), 2, dtype=torch.long)
    corners = torch.randint(0, S - 8 + 1, (n, 2), generator=gen)
    for i, (y, x) in enumerate(corners.tolist()):
        labels[i, y:y + 8, x:x + 8] = 1
    return one_hot_maps(labels, len(CONCEPTS))


class Features(nn.Module):
    def forward(self, onehot):
        ramp = torch.linspace(0, 1e-3, S * S).view(1, S, S)  # breaks ties, never reorders 0/1 levels
        square = torch.zeros(1, S, S)
        square[0][SQUARE] = 1.0
        checker = ((torch.arange(S).view(-1, 1) + torch.arange(S)) % 2).float().view(1, S, S)
        units = [onehot[:, 1] + ramp, (square + ramp).expand(onehot.shape[0], -1, -1),
                 (checker + ramp).expand(onehot.shape[0], -1, -1)]
        return torch.stack(units, 1)


class PlantedPix2Pix(nn.Module):
    """Paints each input label in its colour (a red, b green) and a blue "c" square on top."""

    def __init__(self):
        super().__init__()
        self.features = Features()
        self.scale = nn.Parameter(torch.ones(()))  # gives the module a device

    def forward(self, onehot):
        feats = self.features(onehot)
        rgb = torch.stack([onehot[:, 1], onehot[:, 2], feats[:, 1].round()], 1)
        rgb[:, :2] = rgb[:, :2] * (1 - rgb[:, 2:3])  # the square covers whatever the input asked for
        return (rgb * 2 - 1) * self.scale


class ColourSegmenter:
    concepts, categories = CONCEPTS, CATEGORIES

    def segment(self, images):
        return images.argmax(1, keepdim=True) + 1  # red a, green b, blue c


def brute_iou(unit_maps, concept_maps, q):
    """IoU of the top-q pixels of one unit (over the sample) with a concept's pixels."""
    flat = unit_maps.flatten()
    k = int(torch.ceil(torch.tensor(q * flat.numel())))
    threshold = flat.sort(descending=True).values[k]
    on = unit_maps > threshold
    return float((on & concept_maps).sum() / (on | concept_maps).sum())


def test_planted_copy_and_generate_units_are_told_apart():
    g, seg = PlantedPix2Pix(), ColourSegmenter()
    args = dict(n=24, seed=1, threshold=Quantile(0.2), batch_size=8, cutoff=0.3)
    both = input_vs_output(g, "features", seg, input_fn=planted_inputs, **args)["features"]
    assert both.kind == ["copies input", "generates", "neither"]
    assert both.units("copies input") == [0] and both.units("generates") == [1]
    names = both.concepts
    assert names[int(both.input.label_index[0])] == "a" and names[int(both.output.label_index[1])] == "c"
    # brute force on the same held-out inputs
    onehot = planted_inputs(24, torch.Generator().manual_seed(1))
    with torch.no_grad():
        feats, images = g.features(onehot), g(onehot)
    input_labels, output_labels = onehot.argmax(1), seg.segment(images)[:, 0]
    for unit, concept, labels, ld in [(0, 1, input_labels, both.input), (0, 1, output_labels, both.output),
                                      (1, 3, output_labels, both.output), (1, 1, input_labels, both.input),
                                      (1, 2, input_labels, both.input)]:
        expected = brute_iou(feats[:, unit], labels == concept, 0.2)
        assert abs(float(ld.iou[unit, concept]) - expected) < 1e-6, (unit, concept)
    assert float(both.input.unit_iou[0]) > float(both.output.unit_iou[0])  # the square hides part of "a"
    assert float(both.output.unit_iou[1]) > 0.7 and float(both.input.unit_iou[1]) < 0.4  # best input match: "b"
    assert float(both.input_iou_same_concept[1]) == 0.0  # "c" is never in an input map
    summary = both.summary()
    assert summary["counts"] == {"copies input": 1, "generates": 1, "neither": 1}
    assert summary["units"][1]["output_label"] == "c" and summary["units"][0]["input_label"] == "a"


def test_input_reference_settings_and_errors():
    g, seg = PlantedPix2Pix(), ColourSegmenter()
    result = dissect_input_reference(g, ["features"], seg, input_fn=planted_inputs, n=8, batch_size=8)
    assert result.settings["reference"] == "input" and result["features"].settings["reference"] == "input"
    assert result.layers["features"].layer == "features" and g.training  # the generator's mode is restored
    with pytest.raises(ValueError, match="input_fn="):
        dissect_input_reference(g, "features", seg, n=8)
    with pytest.raises(TypeError, match="input_labels"):
        one_hot_labels(torch.zeros(2, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="segmenter knows 4 concepts"):
        dissect_input_reference(g, "features", seg, input_fn=planted_inputs, n=4,
                                input_labels=lambda batch: batch.argmax(1) + 3)


def test_toy_pix2pix_dissected_against_its_input_map():
    torch.manual_seed(0)
    g, seg = ToyPix2PixGenerator(image_size=32, channels=(8, 16, 16, 16)), load_segmenter()
    both = input_vs_output(g, ["down1", "up1"], seg, input_fn=pix2pix_inputs(32), n=8, batch_size=8)
    plain = dissect(g, ["down1"], seg, input_fn=pix2pix_inputs(32), n=8, batch_size=8)
    assert torch.equal(both["down1"].output.iou, plain["down1"].iou)  # the usual dissection, unchanged
    for name in ("down1", "up1"):
        units = g.featuremap_shapes()[name][0]
        assert len(both[name].kind) == units and both[name].input.iou.shape == (units, len(seg.concepts))
        assert torch.isfinite(both[name].input.iou).all()
    # the input reference really is the label map: its concept statistics are the input's
    counts = torch.bincount(pix2pix_inputs(32)(8, torch.Generator().manual_seed(0)).argmax(1).flatten(),
                            minlength=len(seg.concepts))
    ref = dissect_input_reference(g, "down1", seg, input_fn=pix2pix_inputs(32), n=8, batch_size=8)
    assert ref.sample_stats is not None
    stats = ref.sample_stats
    assert stats["pixel_counts"] == counts.tolist() and stats["images"] == 8
