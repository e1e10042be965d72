"""Procedural scenes: determinism, shapes, coverage and structural facts read from the labels."""
from __future__ import annotations

import pytest
import torch

from gan_monitor.toyworld import CONCEPT_NAMES
from gan_monitor.toyworld.scenes import SceneDataset, render_scenes

L = {name: i for i, name in enumerate(CONCEPT_NAMES)}
C = len(CONCEPT_NAMES)


@pytest.fixture(scope="module")
def batch():
    return render_scenes(256, seed=2024, size=64)


def test_deterministic_and_independent_of_global_rng():
    torch.manual_seed(0)
    state = torch.get_rng_state()
    a = render_scenes(5, seed=11)
    assert torch.equal(torch.get_rng_state(), state), "render_scenes must not consume the global RNG"
    torch.manual_seed(12345)
    torch.rand(7)
    b = render_scenes(5, seed=11)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    c = render_scenes(5, seed=12)
    assert not torch.equal(a[1], c[1])
    assert not torch.equal(a[0], c[0])


def test_prefix_property_and_chunks():
    """Image i depends only on (seed, i), also across the 64-image chunks."""
    big_x, big_y = render_scenes(70, seed=5, size=32)
    small_x, small_y = render_scenes(3, seed=5, size=32)
    assert torch.equal(big_x[:3], small_x) and torch.equal(big_y[:3], small_y)
    # scenes are not repeated between chunks
    assert not torch.equal(big_y[0], big_y[64])


@pytest.mark.parametrize("size", [32, 64, 128])
def test_shapes_ranges_dtypes(size):
    x, y = render_scenes(6, seed=1, size=size)
    assert x.shape == (6, 3, size, size) and x.dtype == torch.float32
    assert y.shape == (6, size, size) and y.dtype == torch.int64
    assert float(x.min()) >= -1 and float(x.max()) <= 1
    assert int(y.min()) >= 1 and int(y.max()) < C, "every pixel must get a concept (label 0 never occurs)"
    assert x.std() > 0.1  # not a blank image


def test_same_geometry_at_every_size():
    _, y64 = render_scenes(16, seed=9, size=64)
    _, y128 = render_scenes(16, seed=9, size=128)
    _, y32 = render_scenes(16, seed=9, size=32)
    # pixel centres of the coarse grid fall between two fine pixels: compare nearest samples
    assert (y64 == y128[:, ::2, ::2]).float().mean() > 0.93
    assert (y32 == y64[:, ::2, ::2]).float().mean() > 0.88


def test_scene_dataset_matches_render_scenes():
    x, y = render_scenes(70, seed=3, size=32)
    ds = SceneDataset(70, seed=3, size=32)
    assert len(ds) == 70
    for i in (0, 63, 64, 69, -1):
        xi, yi = ds[i]
        assert xi.dtype == torch.float32 and yi.dtype == torch.int64
        assert (xi - x[i]).abs().max() <= 1 / 255 + 1e-6  # uint8 quantisation
        assert torch.equal(yi, y[i])
    assert ds.images.dtype == torch.uint8
    with pytest.raises(IndexError):
        ds[70]


def test_every_concept_with_plausible_coverage(batch):
    _, y = batch
    cover = torch.bincount(y.flatten(), minlength=C).double() / y.numel()
    present = torch.stack([(y == c).flatten(1).any(1) for c in range(C)], 1).double().mean(0)
    print("\nconcept     coverage  images containing it")
    for c in range(C):
        print(f"{CONCEPT_NAMES[c]:10s} {float(cover[c]):8.3f}  {float(present[c]):6.2f}")
    assert cover[0] == 0
    assert bool((present[1:] > 0.5).all()), "every concept should appear in most images"
    # sky and grass must not dominate (docs/method.md §3, arithmetic of quantile mode)
    assert 0.15 < cover[L["sky"]] < 0.35 and 0.15 < cover[L["grass"]] < 0.35
    for name in ("mountain", "road", "tree", "building"):
        assert cover[L[name]] > 0.03, name
    for name in ("cloud", "door", "window", "dome"):
        assert cover[L[name]] > 0.008, name
    sky_grass = ((y == L["sky"]) | (y == L["grass"])).flatten(1).double().mean(1)
    assert (sky_grass > 0.85).double().mean() < 0.1


def test_parts_are_big_enough(batch):
    """A window is at least 3x3 pixels at size 64 and a door is taller than wide."""
    _, y = batch
    for name, min_h, min_w in (("window", 3, 3), ("door", 5, 3)):
        m = y == L[name]
        # a full-size part has a pixel whose min_h x min_w neighbourhood is all that part
        full = torch.nn.functional.max_pool2d((~m).float()[:, None], (min_h, min_w), stride=1) == 0
        has_full = full.flatten(1).any(1)
        assert has_full[m.flatten(1).any(1)].double().mean() > 0.9, name


def test_sky_is_above_ground_in_every_column(batch):
    _, y = batch
    rows = torch.arange(y.shape[1]).view(1, -1, 1)
    sky_low = torch.where(y == L["sky"], rows, -1).amax(1)
    ground = (y == L["grass"]) | (y == L["road"])
    ground_high = torch.where(ground, rows, y.shape[1]).amin(1)
    assert bool((sky_low < ground_high).all())


def _neighbours(y: torch.Tensor, dy: int, dx: int):
    """Label of the neighbour at (dy, dx) and whether it lies inside the image."""
    shifted = torch.roll(y, shifts=(-dy, -dx), dims=(1, 2))
    inside = torch.ones_like(y, dtype=torch.bool)
    if dy:
        inside[:, -1 if dy > 0 else 0, :] = False
    if dx:
        inside[:, :, -1 if dx > 0 else 0] = False
    return shifted, inside


def test_windows_and_doors_are_surrounded_by_building(batch):
    _, y = batch
    structure = torch.zeros(C, dtype=torch.bool)
    for name in ("building", "door", "window", "dome", "tree"):  # tree: occlusion
        structure[L[name]] = True
    for name, dirs in (("window", [(-1, 0), (1, 0), (0, -1), (0, 1)]), ("door", [(-1, 0), (0, -1), (0, 1)])):
        m = y == L[name]
        assert m.any()
        for dy, dx in dirs:
            nb, inside = _neighbours(y, dy, dx)
            bad = m & inside & ~structure[nb]
            assert not bad.any(), f"{name} pixel with a {CONCEPT_NAMES[int(nb[bad][0])]} neighbour at {(dy, dx)}"
    # the row below a door is ground, another (nearer) building, or a tree; never sky or mountain
    nb, inside = _neighbours(y, 1, 0)
    door_bottom = (y == L["door"]) & inside & (nb != L["door"])
    assert not torch.isin(nb[door_bottom], torch.tensor([L["sky"], L["cloud"], L["mountain"]])).any()


def test_domes_sit_on_buildings(batch):
    _, y = batch
    nb, inside = _neighbours(y, 1, 0)
    dome_bottom = (y == L["dome"]) & inside & (nb != L["dome"])
    assert dome_bottom.any()
    below = nb[dome_bottom]
    support = torch.tensor([L["building"], L["tree"], L["window"], L["door"]])
    assert bool(torch.isin(below, support).all()), torch.bincount(below, minlength=C)
    assert (below == L["building"]).double().mean() > 0.9
    # a dome never touches the ground or hangs in the sky from below
    nb_up, inside_up = _neighbours(y, -1, 0)
    assert not ((y == L["grass"]) & inside_up & (nb_up == L["dome"])).any()


@pytest.mark.parametrize("kwargs", [
    dict(n=-1, seed=0), dict(n=2.5, seed=0), dict(n=True, seed=0), dict(n=2, seed=0, size=8),
    dict(n=2, seed=0, size=1000), dict(n=2, seed=0, size="64"), dict(n=2, seed="a"), dict(n=2, seed=1.5),
])
def test_bad_input_raises_clear_error(kwargs):
    n = kwargs.pop("n")
    with pytest.raises(ValueError, match="must be"):
        render_scenes(n, **kwargs)
    with pytest.raises(ValueError, match="must be"):
        SceneDataset(n, **kwargs)


def test_zero_scenes():
    x, y = render_scenes(0, seed=0, size=32)
    assert x.shape == (0, 3, 32, 32) and y.shape == (0, 32, 32)
