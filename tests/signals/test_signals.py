"""Training signals (gan_monitor.signals): concept statistics, divergence, diversity, units over time."""
from __future__ import annotations

import math

import pytest
import torch
from planted_world import CONCEPTS, PlantedGenerator, PlantedSegmenter

from gan_monitor.core.errors import SignalError
from gan_monitor.core.inputs import make_inputs
from gan_monitor.dissection.concept_counts import SampleCounter, count_labels
from gan_monitor.dissection.pipeline import dissect
from gan_monitor.dissection.results import DissectionResult, LayerDissection
from gan_monitor.signals import (
    ConceptStats,
    UnitTimeline,
    compare_concepts,
    dissection_signals,
    js_divergence,
    load_or_compute,
    real_concept_stats,
    sample_diversity,
    toyworld_real_stats,
)
from gan_monitor.signals.checkpoint_steps import BATCHES_AXIS, GLOBAL_STEP_AXIS, monitor_batches, timeline_step
from gan_monitor.toyworld import CONCEPT_NAMES
from gan_monitor.toyworld.scenes import render_scenes


def brute_force(maps: torch.Tensor, n_concepts: int) -> tuple[list[int], list[int]]:
    """Per concept: (image, pixel) positions showing it in any channel, and images showing it."""
    pixels, images = [0] * n_concepts, [0] * n_concepts
    for b in range(maps.shape[0]):
        seen = set()
        for y in range(maps.shape[-2]):
            for x in range(maps.shape[-1]):
                here = {int(v) for v in maps[b, :, y, x].tolist()}
                for c in here:
                    pixels[c] += 1
                seen |= here
        for c in seen:
            images[c] += 1
    return pixels, images


def test_concept_counts_equal_a_brute_force_count_on_planted_label_maps():
    g = torch.Generator().manual_seed(3)
    maps = torch.randint(0, 7, (9, 2, 6, 5), generator=g)
    maps[:, 1][torch.rand(9, 6, 5, generator=g) < 0.5] = 0  # a sparse second channel (parts)
    maps[2, 1] = maps[2, 0]  # the same concept named twice at one pixel counts once
    maps[4] = 0
    maps[4, 0, 0, 0] = 6  # concept 6 in image 4 at one pixel only
    pixels, images = count_labels(maps, 7)
    want_pixels, want_images = brute_force(maps, 7)
    assert pixels.tolist() == want_pixels and images.tolist() == want_images
    # batches add up: any split gives the same counts
    stats = ConceptStats.from_label_maps([maps[:4], maps[4:5], maps[5:]], CONCEPTS)
    assert stats.pixel_counts == want_pixels and stats.image_counts == want_images and stats.images == 9
    assert stats.pixel_fraction()["window"] == pytest.approx(want_pixels[6] / (9 * 30))
    assert stats.presence()["window"] == pytest.approx(want_images[6] / 9)


def test_divergence_is_zero_for_identical_and_reacts_to_a_missing_concept():
    real = ConceptStats(CONCEPTS, [0, 500, 100, 200, 150, 50, 0], [0, 10, 8, 9, 7, 3, 0], 10, 100)
    assert compare_concepts(real, real).js_divergence == 0.0
    same_shape = ConceptStats(CONCEPTS, [0, 1000, 200, 400, 300, 100, 0], [0, 20, 16, 18, 14, 6, 0], 20, 100)
    c = compare_concepts(real, same_shape)
    assert c.js_divergence == pytest.approx(0.0, abs=1e-12) and c.under_generated == []
    # the generator never draws trees (concept 3): divergence, ratio 0, under-generated, presence gap
    missing = ConceptStats(CONCEPTS, [0, 500, 100, 0, 150, 50, 0], [0, 10, 8, 0, 7, 3, 0], 10, 100)
    c = compare_concepts(real, missing)
    p = [500, 100, 200, 150, 50, 0]
    q = [500, 100, 0, 150, 50, 0]
    sp, sq = sum(p), sum(q)
    want = 0.0
    for a, b in zip(p, q):
        a, b = a / sp, b / sq
        m = (a + b) / 2
        want += 0.5 * (a * math.log2(a / m) if a else 0) + 0.5 * (b * math.log2(b / m) if b else 0)
    assert c.js_divergence == pytest.approx(want, rel=1e-12) and c.js_divergence > 0.05
    assert c.ratio["tree"] == 0.0 and c.under_generated == ["tree"]
    assert c.presence_gap["tree"] == pytest.approx(0.9)
    assert c.mean_presence_gap == pytest.approx(0.9 / 6)
    assert js_divergence([1, 0], [0, 1]) == pytest.approx(1.0)
    with pytest.raises(SignalError, match="segmenter"):
        compare_concepts(real, ConceptStats(["-", "a"], [0, 1], [0, 1], 1, 1))


def _dissect(generator, batch_size, n=24):
    return dissect(generator, "features", PlantedSegmenter(multilabel=True), n=n, seed=2, batch_size=batch_size,
                   topk=2)


def test_dissection_stores_generated_statistics_batch_independent_and_in_json():
    g = PlantedGenerator()
    a, b = _dissect(g, 5), _dissect(g, 24)
    assert a.sample_stats == b.sample_stats  # exact, floats included
    # brute force on the same images' label maps
    z = make_inputs(g, 24, 2)
    with torch.no_grad():
        maps = PlantedSegmenter(multilabel=True).segment(g(z))
    pixels, images = brute_force(maps, len(CONCEPTS))
    assert a.sample_stats["pixel_counts"] == pixels and a.sample_stats["image_counts"] == images
    back = DissectionResult.from_json(a.to_json())
    assert back.sample_stats == a.sample_stats
    old = a.to_dict()
    del old["sample_stats"]  # results written before this version still read
    assert DissectionResult.from_dict(old).sample_stats is None


def test_diversity_is_batch_size_independent_and_flags_a_collapsed_generator():
    counter_a, counter_b = SampleCounter(3), SampleCounter(3)
    images = torch.rand(10, 3, 4, 4, generator=torch.Generator().manual_seed(0)) * 2 - 1
    seg = torch.randint(1, 3, (10, 4, 4), generator=torch.Generator().manual_seed(1))
    for i in range(0, 10, 3):
        counter_a.update(images[i:i + 3], seg[i:i + 3])
    counter_b.update(images, seg)
    d_a, d_b = counter_a.as_dict(["-", "a", "b"]), counter_b.as_dict(["-", "a", "b"])
    assert d_a == d_b
    quantised = torch.round(images.double() * 4096) / 4096
    assert d_a["pixel_diversity"] == pytest.approx(float(quantised.std(0).mean()), rel=1e-9)

    big = torch.rand(5, 3, 70, 66, generator=torch.Generator().manual_seed(4)) * 2 - 1  # pooled to 64 x 64
    pooled_a, pooled_b = SampleCounter(3), SampleCounter(3)
    for i in range(5):
        pooled_a.update(big[i:i + 1], torch.ones(1, 70, 66))
    pooled_b.update(big, torch.ones(5, 70, 66))
    assert pooled_a.value_sum.shape == (3, 64, 64) and pooled_a.as_dict(["-", "a", "b"]) == pooled_b.as_dict(
        ["-", "a", "b"])

    class Collapsed(PlantedGenerator):
        def forward(self, z):
            return super().forward(torch.zeros_like(z[:1]).expand_as(z).contiguous() + 0 * z)

    varied = sample_diversity(_dissect(PlantedGenerator(), 8))
    collapsed = sample_diversity(_dissect(Collapsed(), 8))
    assert not varied.collapsed and varied.pixel_diversity > 0.05 and varied.presence_entropy > 1
    assert collapsed.collapsed and collapsed.pixel_diversity == 0.0 and collapsed.presence_entropy == 0.0


def _layer(labels, interpretable, concepts=("-", "sky", "tree", "house")):
    u = len(labels)
    index = torch.tensor([list(concepts).index(x) for x in labels])
    return LayerDissection(layer="l", concepts=list(concepts), categories=["-"] * len(concepts),
                           thresholds=torch.zeros(u), iou=torch.zeros(u, len(concepts)), label_index=index,
                           unit_iou=torch.zeros(u), interpretable=torch.tensor(interpretable),
                           topk=torch.zeros(u, 1, dtype=torch.long), topk_values=torch.zeros(u, 1))


def test_churn_and_emergence_on_a_scripted_sequence_of_dissections():
    script = [
        (0, ["sky", "sky", "tree", "house"], [False, False, False, False]),
        (100, ["sky", "tree", "tree", "house"], [True, False, True, False]),
        (200, ["sky", "house", "tree", "house"], [True, True, False, False]),  # unit 1 gained, 2 lost
        (300, ["tree", "house", "tree", "sky"], [True, True, False, True]),  # unit 0 sky->tree, 3 gained
    ]
    timeline, seen = UnitTimeline(), []
    for step, labels, interp in script:
        seen.append(timeline.update(DissectionResult({"l": _layer(labels, interp)}), step))
    assert seen[0] == {}
    assert seen[1] == {"l": {"label_churn": 0, "units_gained": 2, "units_lost": 0}}
    assert seen[2] == {"l": {"label_churn": 0, "units_gained": 1, "units_lost": 1}}
    assert seen[3] == {"l": {"label_churn": 1, "units_gained": 1, "units_lost": 0}}
    assert timeline.first_steps == {"l": {"sky": 100, "tree": 100, "house": 200}}
    restored = UnitTimeline()
    restored.load_state_dict(timeline.state_dict())
    assert restored.first_steps == timeline.first_steps and restored.previous == timeline.previous


def test_real_statistics_from_a_dataloader_are_cached_with_metadata(tmp_path):
    seg = PlantedSegmenter(multilabel=True)
    g = PlantedGenerator()
    with torch.no_grad():
        images = g(make_inputs(g, 12, 4))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(images), batch_size=5)
    stats = real_concept_stats(loader, seg, max_images=11)
    want_pixels, want_images = brute_force(seg.segment(images[:11]), len(CONCEPTS))
    assert stats.pixel_counts == want_pixels and stats.image_counts == want_images and stats.images == 11
    assert stats.metadata["segmenter"] == "PlantedSegmenter" and stats.metadata["image_size"] == [32, 32]
    calls = []

    def compute():
        calls.append(1)
        return stats

    path = tmp_path / "real.json"
    first = load_or_compute(path, compute, expect={"segmenter": "PlantedSegmenter"})
    again = load_or_compute(path, compute, expect={"segmenter": "PlantedSegmenter"})
    assert len(calls) == 1 and again == first
    load_or_compute(path, compute, expect={"segmenter": "Other"})  # metadata differs: recomputed
    assert len(calls) == 2
    with pytest.raises(SignalError, match="images must yield"):
        real_concept_stats([torch.zeros(2, 4)], seg)
    # a dissection against these real statistics: the signals' scalars
    signals = dissection_signals(_dissect(g, 8), stats)
    scalars = signals.scalars()
    assert 0 <= scalars["gan_monitor/signals/concept_js_divergence"] < 0.1
    assert set(signals.record()) >= {"diversity", "js_divergence", "ratio", "under_generated"}


def test_checkpoint_axis_uses_the_monitors_batch_counter():
    ckpt = {"global_step": 200, "callbacks": {"DissectionMonitor{'layers': ['a']}": {"batches_seen": 100},
                                              "ModelCheckpoint{...}": {"best_model_score": 1.0}}}
    assert monitor_batches(ckpt) == 100 and timeline_step(ckpt, 200) == (100, BATCHES_AXIS)
    assert timeline_step({"global_step": 200}, 200) == (200, GLOBAL_STEP_AXIS)
    assert monitor_batches({"callbacks": {"DissectionMonitor{}": {"batches_seen": "x"}}}) is None


def test_toyworld_real_statistics_count_the_scenes():

    stats = toyworld_real_stats(6, seed=3, size=32, segmenter="exact")
    _, labels = render_scenes(6, seed=3, size=32)
    assert stats.pixel_counts == torch.bincount(labels.flatten(), minlength=len(CONCEPT_NAMES)).tolist()
    assert stats.image_counts == [int((labels == c).flatten(1).any(1).sum()) for c in range(len(CONCEPT_NAMES))]
    assert stats.metadata["image_size"] == [32, 32] and stats.metadata["segmenter"] == "exact scene labels"
