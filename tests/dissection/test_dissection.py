"""dissect() end to end: brute-force agreement, batching invariance, errors, contract."""
from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from gan_monitor import dissect
from gan_monitor.dissection.results import DissectionResult
from gan_monitor.dissection.thresholds.modes import IQR, Quantile
from gan_monitor.dissection.upsample import upsample

from planted_world import CATEGORIES, CONCEPTS, PlantedGenerator, PlantedSegmenter

torch.set_num_threads(1)

SMALL = {"planted": 10, "sky": 2, "noise": 10, "phantom": 2, "antisky": 1, "sparse": 2, "dead": 1}


def latents(g, n, seed=0):
    return torch.randn(n, g.latent_dim, generator=torch.Generator().manual_seed(seed))


def brute_force(generator, segmenter, z, quantile, variant):
    """Dense upsampled activations, a sort per unit, one-hot concept masks."""
    with torch.no_grad():
        feats = generator.features(z)
        seg = segmenter.segment(generator(z))
    seg = seg if seg.dim() == 4 else seg[:, None]
    n, _, height, width = seg.shape
    dense = upsample(feats, (height, width))  # upsample itself is checked against a brute force in test_tallies
    per_unit = dense.transpose(0, 1).reshape(dense.shape[1], -1)
    k = math.ceil(quantile * per_unit.shape[1])  # pixels above the threshold (q * P is not an integer here)
    assert k != quantile * per_unit.shape[1]
    thresholds = per_unit.sort(dim=1, descending=True).values[:, k]
    on = (dense > thresholds.view(1, -1, 1, 1)).double()
    onehot = torch.stack([(seg == c).any(1) for c in range(len(CONCEPTS))], 1).double()
    inter = torch.einsum("nuhw,nchw->uc", on, onehot)
    label = onehot.sum((0, 2, 3))
    if variant == "plain":
        active = on.sum((0, 2, 3))[:, None].expand(-1, len(CONCEPTS))
    else:
        active = torch.zeros_like(inter)
        shows = onehot.amax((2, 3))  # [N, C] concept present in image
        for c in range(1, len(CONCEPTS)):
            same = [j for j in range(1, len(CONCEPTS)) if CATEGORIES[j] == CATEGORIES[c]]
            images = shows[:, same].amax(1) > 0
            active[:, c] = on[images].sum((0, 2, 3))
    iou = inter / (active + label - inter).clamp(min=1)
    iou[:, 0] = 0
    return thresholds, iou.float(), feats


@pytest.mark.parametrize("multilabel", [False, True])
@pytest.mark.parametrize("variant", ["plain", "category"])
def test_iou_matches_brute_force_exactly(multilabel, variant):
    g, s = PlantedGenerator(SMALL), PlantedSegmenter(multilabel)
    z = latents(g, 40)
    result = dissect(g, "features", s, inputs=z, iou=variant, threshold=Quantile(0.02), batch_size=16)
    ld = result["features"]
    thresholds, iou, feats = brute_force(g, s, z, 0.02, variant)
    assert torch.equal(ld.thresholds, thresholds)
    assert torch.equal(ld.iou, iou)
    best = iou[:, 1:].argmax(1) + 1
    assert torch.equal(ld.label_index, best)
    assert torch.equal(ld.unit_iou, iou.gather(1, best[:, None]).flatten())
    assert torch.equal(ld.interpretable, ld.unit_iou >= 0.05)
    peak = feats.flatten(2).amax(2)  # [N, U]
    assert torch.equal(ld.topk_values, peak.T.sort(dim=1, descending=True, stable=True).values[:, :8])
    assert ld.settings["iou"] == variant and ld.settings["n"] == 40


@pytest.mark.parametrize("threshold", [Quantile(), IQR(n=50)])
def test_results_do_not_depend_on_batch_size(threshold):
    g, s = PlantedGenerator(SMALL), PlantedSegmenter(True)
    sizes = (1, 7, 64) if threshold == Quantile() else (7, 64)
    results = [dissect(g, ["features"], s, n=70, seed=5, threshold=threshold, batch_size=b).to_dict()
               for b in sizes]
    for other in results[1:]:
        assert other == results[0]


def test_several_layers_share_one_pass_and_json_round_trip(tmp_path):
    g, s = PlantedGenerator(SMALL), PlantedSegmenter()
    calls = []
    original = s.segment
    s.segment = lambda images: calls.append(len(images)) or original(images)
    # `scene` outputs label maps [N, 3, 32, 32]: a 4-D tensor, so it can be dissected too
    result = dissect(g, ["features", "scene"], s, n=30, batch_size=10, iou="category", topk=3)
    assert calls == [10, 10, 10]  # one segmentation per batch for both layers
    assert set(result) == {"features", "scene"}
    path = tmp_path / "d.json"
    result.to_json(path)
    back = DissectionResult.from_json(path)
    assert back.to_dict() == result.to_dict()
    assert json.loads(path.read_text())["schema_version"] >= 1
    ld = back["features"]
    assert ld.topk.shape == (len(g.units), 3)
    summary = ld.summary
    for key in ("units", "interpretable_units", "concept_diversity", "mean_iou", "per_category", "units_per_concept"):
        assert key in summary
    assert len(ld.labels) == len(g.units) and all(label in CONCEPTS for label in ld.labels)


def test_eval_mode_restored_and_global_rng_untouched():
    g, s = PlantedGenerator(SMALL), PlantedSegmenter()
    g.train()
    g.flat.eval()
    flags = {name: m.training for name, m in g.named_modules()}
    seen = []
    g.features.register_forward_hook(lambda m, i, o: seen.append(m.training))
    state = torch.get_rng_state()
    dissect(g, "features", s, n=20, threshold=IQR(n=20))
    assert torch.equal(torch.get_rng_state(), state)
    assert seen and not any(seen)  # ran in eval mode
    assert {name: m.training for name, m in g.named_modules()} == flags


class Conditional(nn.Module):
    """Takes (z, offset) or z=..., offset=...: checks the calling conventions."""

    def __init__(self):
        super().__init__()
        self.g = PlantedGenerator(SMALL)

    def forward(self, z, offset):
        return self.g(z + 0 * offset[:, None])


def test_tuple_dict_inputs_and_input_fn():
    model, s = Conditional(), PlantedSegmenter()
    z = latents(model.g, 12)
    offset = torch.zeros(12)
    a = dissect(model, "g.features", s, inputs=(z, offset), batch_size=5)
    b = dissect(model, "g.features", s, inputs={"z": z, "offset": offset}, batch_size=4)
    c = dissect(model, "g.features", s, n=12, seed=9, input_fn=lambda n, gen: (
        torch.randn(n, model.g.latent_dim, generator=gen), torch.zeros(n)))
    d = dissect(model.g, "features", s, n=12, seed=9)  # default input_fn: latent_dim
    assert a.to_dict()["layers"] == b.to_dict()["layers"]
    assert torch.equal(c["g.features"].iou, d["features"].iou)
    assert a.settings["inputs"] == "given" and d.settings["inputs"] == "drawn"


class BadSegmenter(PlantedSegmenter):
    def __init__(self, mode):
        super().__init__()
        self.mode = mode

    def segment(self, images):
        seg = super().segment(images)
        if self.mode == "count":
            return seg[:-1]
        if self.mode == "range":
            return seg + 5
        if self.mode == "empty":
            seg[3] = 0
            return seg
        if self.mode == "size":
            return seg[..., : 32 - (len(seg) % 2), :]
        return seg


@pytest.mark.parametrize("mode,message", [
    ("count", "maps for"), ("range", "concept index range"), ("empty", r"no concept at all .*\[3\]"),
    ("size", "same size"),
])
def test_bad_segmentations_get_clear_errors(mode, message):
    g = PlantedGenerator(SMALL)
    with pytest.raises(ValueError, match=message):
        dissect(g, "features", BadSegmenter(mode), inputs=latents(g, 9), batch_size=4)


def test_bad_layers_and_activations_get_clear_errors():
    g, s = PlantedGenerator(SMALL), PlantedSegmenter()
    with pytest.raises(KeyError, match="no layer named 'layer9'.*features"):
        dissect(g, "layer9", s, n=4)
    with pytest.raises(ValueError, match="spatial featuremaps"):
        dissect(g, "flat", s, n=4)
    nan = PlantedGenerator(SMALL, nan_units=(3, 11))
    with pytest.raises(ValueError, match=r"NaN/inf activations in units \[3, 11\]"):
        dissect(nan, "features", s, n=4)
    with pytest.raises(ValueError, match="threshold"):
        dissect(g, "features", s, n=4, threshold="median")
    with pytest.raises(ValueError, match=r"Quantile\(q\) must lie in \(0, 1\)"):
        dissect(g, "features", s, n=4, threshold=Quantile(1.5))
    with pytest.raises(TypeError, match="not a segmenter"):
        dissect(g, "features", object(), n=4)
    with pytest.raises(ValueError, match="input_fn"):
        dissect(nn.Sequential(nn.ReLU()), "0", s, n=4)
