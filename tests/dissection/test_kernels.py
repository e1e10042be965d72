"""The compiled level count (``kernels.c`` through ``thresholds.kernels``) gives the counts
of the torch code and of a brute force, and ``core.native`` builds, caches and refuses
kernels as documented."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from gan_monitor.core import native
from gan_monitor.dissection.tally import category_index, concept_presence, dedupe_labels
from gan_monitor.dissection.thresholds import kernels
from gan_monitor.dissection.thresholds import level_counts as lc
from gan_monitor.dissection.upsample import upsample, upsample_rows

CATS = ["-", "object", "object", "part", "material", "object", "part"]


def compiled_or_skip():
    if kernels.count_levels() is None:
        pytest.skip(f"no compiled kernel here: {native.status(kernels.SOURCE)}")


def tricky_levels(gen) -> torch.Tensor:
    """Rows of ascending levels: repeats, -0.0/0.0, negatives, a single value, levels one
    ulp apart, a huge span (the table cannot separate them: torch.bucketize fallback)."""
    rows = [torch.sort(torch.randn(12, generator=gen)).values for _ in range(3)]
    rows.append(torch.tensor([-0.0, 0.0, 0.0, 0.5, 0.5, 0.5, 1.0, 2.0, 2.0, 3.0, 3.0, 3.0]))
    rows.append(torch.full((12,), 0.25))
    one = torch.tensor(1.0)
    near = [one]
    for _ in range(11):
        near.append(torch.nextafter(near[-1], torch.tensor(math.inf)))
    rows.append(torch.stack(near))
    rows.append(torch.tensor([-1e30, -1.0, -1e-30, 0.0, 1e-30, 1e-20, 1e-10, 1.0, 2.0, 1e10, 1e20, 1e30]))
    return torch.stack(rows).float()


def values_around(levels_row: torch.Tensor, gen) -> torch.Tensor:
    """Random values plus every level, its float neighbours and values far outside."""
    inf = torch.tensor(math.inf)
    parts = [torch.randn(500, generator=gen) * 2, levels_row, torch.nextafter(levels_row, inf),
             torch.nextafter(levels_row, -inf), torch.tensor([-3e38, 3e38, 0.0, -0.0])]
    return torch.cat(parts).float()


def test_level_buckets_equal_torch_bucketize_on_tricky_levels():
    gen = torch.Generator().manual_seed(0)
    levels = tricky_levels(gen)
    buckets = lc.LevelBuckets(levels)
    assert buckets.table[-1] is None  # the huge span falls back
    assert any(t is not None and t.numel() > 1 for t in buckets.table)
    for u, row in enumerate(levels):
        values = values_around(row, gen)
        distinct = torch.unique_consecutive(row)
        expected = torch.bucketize(values, distinct)  # number of distinct levels strictly below
        assert torch.equal(buckets.bucketize(u, values).long(), expected), u
        if buckets.table[u] is not None and buckets.scale[u] > 0:
            # the levels' cells (numpy, when the table is built) equal the values' cells (torch)
            q_torch = lc.LevelBuckets.cell(distinct.clone(), buckets.lowest[u], buckets.span[u], buckets.scale[u])
            q_numpy = lc._cells(distinct.numpy(), buckets.lowest[u], buckets.span[u], buckets.scale[u])
            assert q_torch.tolist() == q_numpy.tolist()
            assert float(np.float32(buckets.scale[u])) == buckets.scale[u]


def brute_counts(up, labels, present, levels_row, n_concepts, groups):
    """[C, L+1] and [G, L+1] counts by level bucket (bucket 0 left at zero), pixel by pixel."""
    n_levels = levels_row.numel()
    inter = torch.zeros(n_concepts, n_levels + 1, dtype=torch.long)
    active = torch.zeros(groups.shape[0], n_levels + 1, dtype=torch.long)
    group_of = [int(((groups == present[i]).all(1)).nonzero()) for i in range(present.shape[0])]
    pixels = labels.shape[-1]
    for i, v in enumerate(up.tolist()):
        bucket = int((levels_row < v).sum())
        if bucket == 0:
            continue
        image = i // pixels
        active[group_of[image], bucket] += 1
        for d in range(labels.shape[1]):
            inter[int(labels[image, d, i % pixels]), bucket] += 1
    return inter, active


@pytest.mark.parametrize("from_rows", [True, False], ids=["from-rows", "from-upsampled"])
@pytest.mark.parametrize("depth, combined", [(1, True), (2, True), (1, False), (3, False)])
def test_count_unit_compiled_equals_torch_and_brute_force(depth, combined, from_rows, monkeypatch):
    compiled_or_skip()
    if from_rows:
        assert kernels.rows_arithmetic(3, 4, (9, 10)) is not None  # the rows kernel is what runs
    else:  # as if upsample's second matmul could not be reproduced: the kernel reads upsampled values
        monkeypatch.setattr(kernels, "rows_arithmetic", lambda *args: None)
    if not combined:
        monkeypatch.setattr(lc, "MAX_COMBINED", 1)  # concept and image group counted apart
    gen = torch.Generator().manual_seed(depth)
    n, h, w, size = 6, 3, 4, (9, 10)
    raw = torch.randn(n, 7, h, w, generator=gen)
    raw[:, 3] = torch.round(raw[:, 3])  # values equal to levels
    levels = tricky_levels(gen)
    levels[:3] = torch.sort(upsample(raw[:, :3], size).transpose(0, 1).flatten(1)[:, ::9][:, :12]).values
    labels = dedupe_labels(torch.randint(0, len(CATS), (n, depth, size[0] * size[1]), generator=gen))
    names, concept_category = category_index(CATS)
    _, present = concept_presence(labels, len(CATS), concept_category, len(names))
    codes = lc.LabelCodes(labels, present, len(CATS))
    assert codes.combined == combined
    buckets = lc.LevelBuckets(levels)
    maps = raw.transpose(0, 1).contiguous()
    for unit in range(raw.shape[1]):
        compiled = lc.count_unit(maps[unit:unit + 1], size, codes, buckets, unit)
        with monkeypatch.context() as off:
            off.setattr(kernels, "ENABLED", False)
            plain = lc.count_unit(maps[unit:unit + 1], size, codes, buckets, unit)
        up = upsample(maps[unit:unit + 1], size).reshape(-1)
        inter, active = brute_counts(up, labels, present, levels[unit], len(CATS), codes.groups)
        for got in (compiled, plain):
            assert torch.equal(got[0], inter), unit
            assert torch.equal(got[1], active), unit


@pytest.fixture
def kernels_restored():
    yield
    kernels.reset()


def test_a_refused_input_warns_and_falls_back_to_torch(kernels_restored):
    compiled_or_skip()
    gen = torch.Generator().manual_seed(3)
    labels = torch.randint(0, len(CATS), (2, 1, 16), generator=gen)
    names, concept_category = category_index(CATS)
    _, present = concept_presence(labels, len(CATS), concept_category, len(names))
    codes = lc.LabelCodes(labels, present, len(CATS))
    codes.first = codes.first.clone()
    codes.first[5] = 10_000  # a code beyond the counted width
    buckets = lc.LevelBuckets(torch.tensor([[-5.0, 0.0]]))
    raw = torch.ones(1, 2, 2, 2)  # upsampled to 4x4: 32 values, all above the levels
    with pytest.warns(RuntimeWarning, match="refused unit 0"):
        assert lc._count_native(raw, (4, 4), codes, buckets, 0) is None
    assert kernels.count_levels() is None  # off for the rest of the process
    kernels.reset()
    assert kernels.count_levels() is not None


@pytest.fixture
def fresh_native(tmp_path, monkeypatch):
    monkeypatch.setenv("GAN_MONITOR_NATIVE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv(native.SWITCH, raising=False)
    native.forget()
    yield tmp_path
    native.forget()


SOURCE = "int gm_add(int a, int b) { return a + b; }\n"


def test_native_compiles_once_and_reuses_the_cached_library(fresh_native, monkeypatch):
    if native._compiler() is None:
        pytest.skip("no C compiler here")
    source = fresh_native / "adder.c"
    source.write_text(SOURCE)
    library = native.load(source)
    assert library is not None and library.gm_add(2, 3) == 5
    built = list((fresh_native / "cache").glob("adder-*.so"))
    assert len(built) == 1 and "loaded" in native.status(source)
    native.forget()

    def no_compiler(*args):
        raise AssertionError("compiled again although a library was cached")

    with monkeypatch.context() as patched:
        patched.setattr(native, "_compile", no_compiler)
        assert native.load(source).gm_add(4, 5) == 9
    source.write_text(SOURCE.replace("a + b", "a + b + 1"))  # a changed source gets its own library
    native.forget()
    assert native.load(source).gm_add(4, 5) == 10
    assert len(list((fresh_native / "cache").glob("adder-*.so"))) == 2


def test_native_rebuilds_a_corrupt_cached_library(fresh_native):
    if native._compiler() is None:
        pytest.skip("no C compiler here")
    source = fresh_native / "adder.c"
    source.write_text(SOURCE)
    assert native.load(source) is not None
    (built,) = (fresh_native / "cache").glob("adder-*.so")
    built.unlink()  # a new file: the loaded library's pages stay valid
    built.write_bytes(b"not a library")
    native.forget()
    assert native.load(source).gm_add(1, 1) == 2


def test_native_switched_off_or_without_compiler_returns_none_and_says_why(fresh_native, monkeypatch):
    source = fresh_native / "adder.c"
    source.write_text(SOURCE)
    monkeypatch.setenv(native.SWITCH, "0")
    assert native.load(source) is None
    assert "switched off" in native.status(source)
    native.forget()
    monkeypatch.delenv(native.SWITCH)
    monkeypatch.setenv("CC", "no-such-compiler-gm")
    monkeypatch.setenv("PATH", str(fresh_native / "empty"))
    assert native.load(source) is None
    assert "no C compiler" in native.status(source)
    assert not (fresh_native / "cache").exists()


def test_native_reports_a_failing_compilation(fresh_native):
    if native._compiler() is None:
        pytest.skip("no C compiler here")
    source = fresh_native / "broken.c"
    source.write_text("int gm_broken(void) { return }\n")
    assert native.load(source) is None
    assert "could not build broken.c" in native.status(source)
    assert not list((fresh_native / "cache").glob("*.so"))  # no half-written library left


def test_native_cache_folder_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("GAN_MONITOR_NATIVE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert native.cache_dir() == tmp_path / "xdg" / "gan_monitor" / "native"
    monkeypatch.setenv("GAN_MONITOR_NATIVE_DIR", str(tmp_path / "mine"))
    assert native.cache_dir() == tmp_path / "mine"


@pytest.mark.parametrize("shape, size", [((8, 8), (64, 64)), ((16, 16), (64, 64)), ((4, 4), (256, 256)),
                                         ((5, 7), (13, 10)), ((9, 4), (5, 3)), ((7, 3), (7, 12))])
def test_rows_arithmetic_reproduces_upsample_bit_for_bit(shape, size):
    """What the probe found holds on other maps too, including extreme values and ties."""
    compiled_or_skip()
    h, w = shape
    arithmetic = kernels.rows_arithmetic(h, w, size)
    if arithmetic is None:
        pytest.skip(f"neither mixing reproduces upsample for {shape} -> {size} here (the kernels upsample first)")
    gen = torch.Generator().manual_seed(h * 100 + w)
    x = torch.randn(3, 5, h, w, generator=gen) * torch.logspace(-20, 20, 5).view(1, 5, 1, 1)
    x[:, 0] = torch.round(x[:, 0])
    rows = upsample_rows(x, size[1]).contiguous()
    lo, hi, weights = kernels.row_taps(h, size[0])
    out = torch.empty(3 * 5 * size[0] * size[1])
    error = kernels._function("gm_interpolate")(rows.data_ptr(), 15, h, size[1], size[0], lo.data_ptr(), hi.data_ptr(),
                                                weights.data_ptr(), int(arithmetic == "fused"), out.data_ptr())
    assert error == 0
    assert torch.equal(out.view(3, 5, *size), upsample(x, size))


def test_units_counted_in_parallel_threads_give_the_same_counts(monkeypatch):
    """With several torch threads the compiled counts run units in a thread pool (the
    kernels release the GIL); the counts equal the single-threaded torch code's."""
    compiled_or_skip()
    from gan_monitor.dissection.tally import LayerTally
    from gan_monitor.dissection.thresholds import sparse_tally
    from gan_monitor.dissection.thresholds.iqr import LevelTally

    gen = torch.Generator().manual_seed(21)
    acts = torch.randn(10, 9, 4, 4, generator=gen)
    seg = torch.randint(0, len(CATS), (10, 2, 16, 16), generator=gen)
    levels = torch.sort(upsample(acts, (16, 16)).transpose(0, 1).flatten(1)[:, ::23][:, :20]).values
    thresholds = levels[:, 15].contiguous()
    monkeypatch.setattr(sparse_tally, "GROUP_VALUES", 1)  # one unit per task
    results = {}
    for name, pool in (("threads", 3), ("torch", None)):
        with monkeypatch.context() as setting:
            if pool is None:
                setting.setattr(kernels, "ENABLED", False)
            else:
                setting.setattr(kernels, "threads", lambda: pool)
                used = []
                pooled = kernels.map_in_threads
                setting.setattr(kernels, "map_in_threads", lambda f, items: used.append(1) or pooled(f, items))
            level_tally = LevelTally(levels, CATS)
            level_tally.update(acts, seg)
            tally = LayerTally(thresholds, CATS)
            sparse_tally.tally_above(tally, acts, tally.encode(seg))
            results[name] = (level_tally.intersection, level_tally.active_in_category, tally.intersection,
                             tally.active_in_category)
            if pool is not None:
                assert len(used) == 2  # both counts went through the pool
    for got, want in zip(results["threads"], results["torch"]):
        assert torch.equal(got, want)
    assert results["torch"][0].sum() > 0 and results["torch"][2].sum() > 0
