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
