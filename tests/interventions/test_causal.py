"""causal_units (Eq. 5-6), contextual insertion and tracing on a generator with known causal units."""
from __future__ import annotations

import pytest
import torch

import gan_monitor
from gan_monitor.core.inputs import make_inputs
from gan_monitor.interventions.ace import insertion_values
from gan_monitor.interventions.causal_units import _candidates, causal_units
from gan_monitor.interventions.effects import contextual_insertion, trace_effects

from intervention_world import DECOY, DOOR, TREE, CausalGenerator, CausalSegmenter, SegmentOnly


@pytest.fixture(scope="module")
def world():
    return CausalGenerator(), CausalSegmenter()


def test_optimisation_ranks_causal_units_above_high_iou_decoys(world):
    g, s = world
    iou = torch.full((20,), 0.05)
    iou[DECOY] = 1.0  # the decoys copy the tree units exactly but nothing reads them
    iou[TREE] = 0.5
    result = gan_monitor.causal_units(g, "features", "tree", segmenter=s, n=32, iou=iou, epochs=5, lr=0.05,
                                      locations=4, top_n=4, eval_n=32)
    assert torch.equal(result.initial, iou / 1.0)
    assert sorted(result.ranking[:4]) == TREE
    assert result.coefficients[TREE].min() > result.coefficients[DECOY].max() + 0.2
    assert ((result.coefficients >= 0) & (result.coefficients <= 1)).all()
    assert result.sets["iou"] == DECOY and result.sets["causal"] == result.ranking[:4]
    removed = result.fractions_removed()
    assert removed["causal"] >= 0.9 and abs(removed["iou"]) < 0.02 and removed["random"] < 0.5
    assert removed["causal"] == pytest.approx(
        gan_monitor.ace(g, "features", result.ranking[:4], "tree", segmenter=s, n=32, seed=2).fraction_removed)
    assert result.losses[-1] < result.losses[0]


def test_optimisation_leaves_the_generator_untouched(world):
    g, s = world
    g.train()
    result = causal_units(g, "features", "tree", segmenter=s, n=16, epochs=1, evaluate=False)
    assert g.training and result.evaluation == {} and len(result.ranking) == 20
    assert all(p.grad is None for p in g.parameters())


def test_causal_units_bad_inputs(world):
    g, s = world
    with pytest.raises(TypeError, match="no `probabilities\\(images\\)`.*differentiable"):
        causal_units(g, "features", "tree", segmenter=SegmentOnly(), n=4)
    with pytest.raises(ValueError, match="unknown concept 'cushion'.*tree"):
        causal_units(g, "features", "cushion", segmenter=s, n=4)
    with pytest.raises(ValueError, match="IoU initialisation has 3 entries.*20 units"):
        causal_units(g, "features", "tree", segmenter=s, n=4, iou=torch.ones(3))


def test_contextual_insertion_doors_only_on_buildings(world):
    g, s = world
    values = insertion_values(g, "features", s, n=40, seed=9)
    result = contextual_insertion(g, "features", DOOR, "door", segmenter=s, values=values, n=12, seed=1,
                                  batch_size=5)
    assert result.gain.shape == (12, 8, 8)
    gain_on = result.by_context["building"]
    assert gain_on[0] > 5 and gain_on[1] > 0  # one featuremap location is 16 output pixels
    assert result.by_context["sky"][0] == 0 and result.by_context["tree"][0] == 0
    # brute force for one image and location
    z = make_inputs(g, 12, seed=1)[3:4]
    before = int((s.segment(g(z)) == 4).sum())
    mask = torch.zeros(8, 8)
    mask[6, 2] = 1
    with gan_monitor.Edit(g, "features", units=DOOR, value=values[4], mask=mask):
        after = int((s.segment(g(z)) == 4).sum())
    assert result.gain[3, 6, 2] == after - before
    labels = s.segment(g(z))[0]
    assert result.context[3, 6, 2] == torch.mode(labels[24:28, 8:12].flatten()).values
    assert result.mean_map().shape == (8, 8)


def test_trace_effects_normalised_change_of_later_layers(world):
    g, s = world
    changes = trace_effects(g, "features", TREE, n=10, seed=2)
    assert list(changes) == ["render", "upsample"]
    z = make_inputs(g, 10, seed=2)
    r = g.features(z)
    before = g.render(r)
    r[:, TREE] = 0
    after = g.render(r)
    expected = ((after - before).abs().mean((0, 2, 3)) / before.abs().mean((0, 2, 3))).mean()
    assert changes["render"] == pytest.approx(float(expected), rel=1e-5) and changes["render"] > 0.05
    assert trace_effects(g, "features", DECOY, n=10, seed=2) == {"render": 0.0, "upsample": 0.0}


def test_insertion_candidates_tested_per_location_match_brute_force(world):
    g, s = world
    k = insertion_values(g, "features", s, n=40, seed=9)[2]
    z = make_inputs(g, 6, seed=4)
    present, insertable = _candidates(g, s, "features", z, 2, k, (20, 8, 8), 64, torch.Generator().manual_seed(0))
    labels = s.segment(g(z))
    for i in range(6):
        for y in range(8):
            for x in range(8):
                here = bool((labels[i, 4 * y:4 * y + 4, 4 * x:4 * x + 4] == 2).any())
                assert bool(present[i, y, x]) == here
                if here:
                    assert not insertable[i, y, x]
                    continue
                mask = torch.zeros(8, 8)
                mask[y, x] = 1
                with gan_monitor.Edit(g, "features", units=list(range(20)), value=k, mask=mask):
                    edited = s.segment(g(z[i:i + 1]))[0]
                appears = bool((edited[4 * y:4 * y + 4, 4 * x:4 * x + 4] == 2).any())
                assert bool(insertable[i, y, x]) == appears, (i, y, x)
    assert insertable.sum() > 0 and present.sum() > 0
    # with fewer tries, only tested (hence fewer) locations are kept, all of them genuine
    _, few = _candidates(g, s, "features", z, 2, k, (20, 8, 8), 2, torch.Generator().manual_seed(0))
    assert (few & ~insertable).sum() == 0 and 0 < few.flatten(1).sum(1).max() <= 2


def test_evaluation_reports_insertion_and_ace(world):
    g, s = world
    iou = torch.full((20,), 0.05)
    iou[TREE] = 1.0
    values = insertion_values(g, "features", s, n=40, seed=9)
    result = causal_units(g, "features", "tree", segmenter=s, n=16, iou=iou, values=values, epochs=1, top_n=4,
                          eval_n=24, seed=5)
    effects = result.effects()
    assert set(effects) == {"causal", "iou", "random"} and set(effects["causal"]) == {"removed", "inserted", "ace"}
    # brute force on the same held-out images (seed + 2)
    z = make_inputs(g, 24, seed=7)
    frac = lambda images: (s.segment(images) == 2).float().mean((1, 2))  # noqa: E731
    before = frac(g(z)).mean()
    units = result.sets["causal"]
    with gan_monitor.Edit(g, "features", units=units, value=0.0):
        ablated = frac(g(z)).mean()
    with gan_monitor.Edit(g, "features", units=units, value=values[2]):
        inserted = frac(g(z)).mean()
    assert effects["causal"]["removed"] == pytest.approx(float((before - ablated) / before), abs=1e-5)
    assert effects["causal"]["inserted"] == pytest.approx(float((inserted - before) / before), abs=1e-5)
    assert effects["causal"]["ace"] == pytest.approx(float((inserted - ablated) / before), abs=1e-5)
    assert effects["causal"]["inserted"] > 1.0 and effects["causal"]["ace"] > 1.9


def test_trace_effects_maps_and_bad_inputs(world):
    g, s = world
    left = torch.zeros(8, 8)
    left[:, :4] = 1
    changes = trace_effects(g, "features", TREE, mask=left, n=10, seed=2)
    assert set(changes.maps) == {"render", "upsample"} and changes.maps["render"].shape == (8, 8)
    z = make_inputs(g, 10, seed=2)
    r = g.features(z)
    before = g.render(r)
    r[:, TREE] = r[:, TREE] * (1 - left)
    after = g.render(r)
    expected = ((after - before).abs().mean(0) / before.abs().mean((0, 2, 3))[:, None, None]).mean(0)
    assert torch.allclose(changes.maps["render"], expected, atol=1e-6)
    assert changes["render"] == pytest.approx(float(expected.mean()), rel=1e-5)
    assert changes.maps["render"][:, 4:].abs().max() == 0 and changes.maps["render"][:, :4].max() > 0
    with pytest.raises(IndexError, match=r"\[20\] are out of range"):
        trace_effects(g, "features", [1, 20], n=4)
    with pytest.raises(ValueError, match=r"mask has shape \(4, 4\).*8x8"):  # names the argument: mask=
        trace_effects(g, "features", TREE, mask=torch.ones(4, 4), n=4)
    with pytest.raises(IndexError, match="out of range"):
        contextual_insertion(g, "features", [99], "door", segmenter=s, n=2)


def test_removal_only_objective_and_ties_broken_by_pull(world):
    g, s = world
    iou = torch.full((20,), 0.05)
    iou[DECOY] = 1.0
    iou[TREE] = 0.5
    result = causal_units(g, "features", "tree", segmenter=s, n=32, iou=iou, epochs=4, lr=0.3, locations=4,
                          insert_weight=0.0, evaluate=False)
    assert sorted(result.ranking[:4]) == TREE
    a, pull = result.coefficients, result.pull
    assert (a[TREE] == 1).all()  # saturated: the ranking among them comes from the pull
    position = {u: i for i, u in enumerate(result.ranking)}
    for u in range(20):
        for v in range(20):
            if a[u] > a[v] or (a[u] == a[v] and pull[u] > pull[v]):
                assert position[u] < position[v]
