"""Insertion values, ace and single-unit effects on a generator whose causal units are known."""
from __future__ import annotations

import pytest
import torch

import gan_monitor
from gan_monitor.core.inputs import make_inputs
from gan_monitor.interventions.ace import ace, insertion_values, single_unit_effects

from intervention_world import BUILDING, BUILDING_DECOY, DECOY, DOOR, NOISE, TREE, CausalGenerator, CausalSegmenter


@pytest.fixture(scope="module")
def world():
    torch.manual_seed(0)
    return CausalGenerator(), CausalSegmenter()


def test_insertion_values_match_brute_force(world):
    g, s = world
    z = make_inputs(g, 30, seed=3)
    values = insertion_values(g, "features", s, inputs=z, batch_size=7)
    feats = g.features(z)
    labels = s.segment(g(z))
    num = torch.zeros(5, 20, dtype=torch.float64)
    den = torch.zeros(5, dtype=torch.float64)
    for i in range(30):
        for y in range(8):
            for x in range(8):
                block = labels[i, 4 * y:4 * y + 4, 4 * x:4 * x + 4]
                for c in range(5):
                    cover = float((block == c).float().mean())
                    num[c] += cover * feats[i, :, y, x].double()
                    den[c] += cover
    expected = torch.where(den[:, None] > 0, num / den.clamp_min(1e-12)[:, None], torch.zeros_like(num))
    assert torch.allclose(values.double(), expected, atol=1e-5)
    assert values[2, TREE].min() > 1.9 and values[2, BUILDING].max() < 1e-6  # tree units on at trees only


def test_insertion_values_kept_with_dissection(world):
    g, s = world
    result = gan_monitor.dissect(g, "features", s, n=20, seed=1)
    values = insertion_values(g, "features", s, n=20, seed=1, dissection=result["features"])
    assert torch.allclose(torch.tensor(result["features"].extras["insertion_values"]), values)
    assert "insertion_values" in result.to_json()


def test_ablating_planted_units_removes_the_concept_and_decoys_do_not(world):
    g, s = world
    planted = gan_monitor.ace(g, "features", TREE, "tree", segmenter=s, n=64, seed=2)
    decoys = ace(g, "features", DECOY + NOISE, "tree", segmenter=s, n=64, seed=2)
    assert planted.fraction_removed >= 0.9 and planted.mean == planted.fraction_removed
    assert abs(decoys.fraction_removed) < 0.02
    assert planted.ci[0] <= planted.mean <= planted.ci[1] and planted.per_image.shape == (64,)
    # brute force: segmented tree fraction with and without the units
    z = make_inputs(g, 64, seed=2)
    before = (s.segment(g(z)) == 2).float().mean((1, 2))
    r = g.features(z)
    r[:, TREE] = 0
    after = (s.segment(g.upsample(g.render(r))) == 2).float().mean((1, 2))
    assert torch.allclose(planted.before, before) and torch.allclose(planted.after, after)
    assert planted.fraction_removed == pytest.approx(float((before.sum() - after.sum()) / before.sum()), abs=1e-6)
    per = (before - after) / before.mean()
    assert torch.allclose(planted.per_image, per.double(), atol=1e-6)
    half = 1.96 * float(per.double().std()) / 8
    # the normal interval, clipped at 1: ablation cannot remove more than all of the concept
    assert float(per.mean()) + half > 1.0  # (so the clipping is exercised here)
    assert planted.ci == pytest.approx((float(per.mean()) - half, 1.0), abs=1e-6) and planted.ci[1] <= 1.0
    assert planted.mean <= 1.0


def test_insertion_depends_on_context(world):
    g, s = world
    sky = torch.zeros(8, 8)
    sky[0:2] = 1  # buildings never reach the top rows
    ground = torch.zeros(8, 8)
    ground[5:8] = 1
    in_sky = ace(g, "features", DOOR, "door", segmenter=s, mode="insert", region=sky, n=48, seed=4)
    on_ground = ace(g, "features", DOOR, "door", segmenter=s, mode="insert", region=ground, n=48, seed=4)
    assert in_sky.fraction_removed is None
    assert in_sky.gained == pytest.approx(0.0, abs=1e-6)
    assert on_ground.gained > 0.03 and on_ground.mean > 1.0
    # inserted doors appear only on buildings, never outside
    z = make_inputs(g, 48, seed=4)
    building = (s.segment(g(z)) >= 3)
    values = insertion_values(g, "features", s, n=48, seed=5)
    with gan_monitor.Edit(g, "features", units=DOOR, value=values[4], mask=ground):
        edited = s.segment(g(z))
    assert not ((edited == 4) & ~building).any()
    # trees inserted everywhere cover the non-building part of the image
    tree = ace(g, "features", TREE, "tree", segmenter=s, mode="insert", n=16, seed=4)
    assert tree.gained > 0.3


def test_region_per_sample_and_bad_inputs(world):
    g, s = world
    left = torch.zeros(6, 8, 8)
    left[:, :, :4] = 1
    part = ace(g, "features", TREE, "tree", segmenter=s, region=left, n=6, seed=0)
    full = ace(g, "features", TREE, "tree", segmenter=s, n=6, seed=0)
    assert 0 < part.fraction_removed < full.fraction_removed
    with pytest.raises(ValueError, match="unknown concept 'cushion'.*sky, tree, building, door"):
        ace(g, "features", TREE, "cushion", segmenter=s, n=4)
    with pytest.raises(IndexError, match=r"\[20, 25\] are out of range.*20 units"):
        ace(g, "features", [1, 20, 25], "tree", segmenter=s, n=4)
    with pytest.raises(ValueError, match=r"region has shape \(4, 4\).*8x8"):
        ace(g, "features", TREE, "tree", segmenter=s, region=torch.ones(4, 4), n=4)
    with pytest.raises(ValueError, match="mode must be"):
        ace(g, "features", TREE, "tree", segmenter=s, mode="remove", n=4)
    with pytest.raises(KeyError, match="no layer named 'nope'"):
        ace(g, "nope", TREE, "tree", segmenter=s, n=4)


def test_single_unit_effects_find_the_key_unit(world):
    g, s = world
    effects = single_unit_effects(g, "features", segmenter=s, n=24, seed=6, batch_size=10)
    building = effects.concepts.index("building")
    assert effects.ranking("building")[0] == BUILDING[0]
    assert effects.removed[BUILDING[0], building] > 0.99
    assert effects.removed[BUILDING_DECOY[0], building].abs() < 1e-6
    # cross-check one entry against ace
    assert float(effects.removed[BUILDING[0], building]) == pytest.approx(
        ace(g, "features", BUILDING, "building", segmenter=s, n=24, seed=6).fraction_removed, abs=1e-5)
    assert torch.isnan(effects.removed[:, 0]).all()
    with pytest.raises(ValueError, match="unknown concept"):
        effects.ranking("cushion")
