"""causal_units (Eq. 5-6), contextual insertion and tracing on a generator with known causal units."""
from __future__ import annotations

import pytest
import torch

import gan_monitor
from gan_monitor.causal import causal_units
from intervention_world import DECOY, NOISE, TREE, CausalGenerator, CausalSegmenter, SegmentOnly


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
    from gan_monitor.causal import contextual_insertion
    from gan_monitor.inputs import make_inputs
    from gan_monitor.intervention import insertion_values
    from intervention_world import DOOR
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
    from gan_monitor.causal import trace_effects
    from gan_monitor.inputs import make_inputs
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
