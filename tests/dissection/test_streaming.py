"""Quantile mode's streaming path (``thresholds.streaming``, issue 16): with the memory
budget forced small it regenerates the held-out inputs instead of caching them, and gives
the cached path's results bit for bit."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from gan_monitor import dissect
from gan_monitor.core.errors import NondeterministicGeneratorError
from gan_monitor.dissection.options import DissectionOptions
from gan_monitor.dissection.thresholds.streaming import DIGITS, RadixSelect, cached_bytes

from planted_world import PlantedGenerator, PlantedSegmenter

torch.set_num_threads(1)


def brute_kth_largest(rows: torch.Tensor, rank: int) -> torch.Tensor:
    return rows.sort(dim=1, descending=True).values[:, rank - 1]


def tricky_values(seed: int) -> torch.Tensor:
    """``[6, 3, 50]`` values per (batch, unit, pixel): negatives, ReLU zeros with -0.0,
    few distinct values, tiny and huge magnitudes."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(6, 3, 50, generator=gen)
    x[:, 0] = torch.relu(x[:, 0])
    x[:, 0, ::7] = -0.0
    x[:, 1] = torch.round(x[:, 1] * 2) / 2 - 3  # mostly negative, heavy ties
    x[:, 2] = x[:, 2] * torch.tensor([1e-30, 1.0, 1e30]).repeat_interleave(torch.tensor([20, 20, 10]))
    return x


@pytest.mark.parametrize("rank", [1, 7, 150, 300])
def test_radix_select_is_exact_with_ties_and_signs(rank):
    x = tricky_values(0)
    select = RadixSelect(3, rank)
    for _ in DIGITS:
        for i in range(0, 6, 4):  # two batches per pass
            select.update(x[i:i + 4])
        select.finish()
    assert torch.equal(select.result(), brute_kth_largest(x.transpose(0, 1).reshape(3, -1), rank))


def test_radix_select_keeps_zeros_out_of_the_bin_just_below_zero():
    # the bin of the largest negative keys ends at -0.0, which compares equal to the zeros above it
    from gan_monitor.core.distributed import keys_to_values

    x = torch.zeros(2, 1, 40)
    # tiny negatives whose keys share the zeros' pass-2 digit (the lowest of the bin below zero)
    x[:, 0, :10] = keys_to_values(-(1 << 21) + torch.arange(10, 30, 2))
    rank = 2 * 30 + 5  # below every zero
    select = RadixSelect(1, rank)
    for _ in DIGITS:
        select.update(x)
        select.finish()
    assert torch.equal(select.result(), brute_kth_largest(x.transpose(0, 1).reshape(1, -1), rank))


class _Pair:
    """A two-rank communicator for one rank: ``sum`` adds the other rank's tensor."""
    world_size = 2

    def __init__(self):
        self.other = None

    def sum(self, t):
        return t + self.other


def test_radix_select_histograms_sum_across_ranks():
    x = tricky_values(1)
    rank = 40
    a, b = RadixSelect(3, rank), RadixSelect(3, rank)
    ca, cb = _Pair(), _Pair()
    for _ in DIGITS:
        a.update(x[:2])  # rank 0 holds images 0-1, rank 1 images 2-5
        b.update(x[2:])
        ca.other, cb.other = b.hist.clone(), a.hist.clone()
        a.finish(ca)
        b.finish(cb)
    want = brute_kth_largest(x.transpose(0, 1).reshape(3, -1), rank)
    assert torch.equal(a.result(), want) and torch.equal(b.result(), want)


def assert_same(cached, streamed):
    assert cached.settings["quantile_path"] == "cached" and streamed.settings["quantile_path"] == "streaming"
    for name, a in cached.layers.items():
        b = streamed.layers[name]
        assert torch.equal(a.thresholds, b.thresholds)
        assert torch.equal(a.iou, b.iou)
        assert torch.equal(a.label_index, b.label_index)
        assert torch.equal(a.unit_iou, b.unit_iou)
        assert torch.equal(a.interpretable, b.interpretable)
        assert torch.equal(a.topk, b.topk) and torch.equal(a.topk_values, b.topk_values)
    assert cached.sample_stats == streamed.sample_stats
    assert cached.settings["quantile_rank"] == streamed.settings["quantile_rank"]


@pytest.mark.parametrize("q,iou", [(0.01, "plain"), (0.2, "category")])
def test_streaming_equals_cached_on_the_toy_gan(q, iou):
    from gan_monitor.dissection.thresholds.modes import Quantile
    from gan_monitor.toyworld.gan import ToyGenerator
    from gan_monitor.toyworld.segmenter import load_segmenter

    torch.manual_seed(0)
    generator, segmenter = ToyGenerator().eval(), load_segmenter()
    kwargs = dict(n=24, seed=3, threshold=Quantile(q), iou=iou, batch_size=16)
    cached = dissect(generator, ["layer2", "layer3"], segmenter, **kwargs)
    streamed = dissect(generator, ["layer2", "layer3"], segmenter, memory_budget=1, **kwargs)
    assert streamed.settings["memory_budget"] == 1 and cached.settings["memory_budget"] > 10 ** 6
    assert_same(cached, streamed)


def test_streaming_equals_cached_on_the_planted_world():
    generator = PlantedGenerator(noise=0.35)
    kwargs = dict(n=120, seed=1, batch_size=50)
    cached = dissect(generator, "features", PlantedSegmenter(multilabel=True), **kwargs)
    streamed = dissect(generator, "features", PlantedSegmenter(multilabel=True), memory_budget=1000, **kwargs)
    assert_same(cached, streamed)
    assert int(cached["features"].interpretable.sum()) > 10  # planted units found: a meaningful comparison


def test_budget_between_the_estimate_decides_the_path():
    from gan_monitor.toyworld.gan import ToyGenerator
    from gan_monitor.toyworld.segmenter import load_segmenter

    torch.manual_seed(0)
    generator, segmenter = ToyGenerator().eval(), load_segmenter()
    z = generator.sample_latents(8, seed=0)
    with torch.no_grad():
        from gan_monitor.core.tracing import Trace
        with Trace(generator, ["layer2"]) as trace:
            images = generator(z)
        seg = segmenter.segment(images)
    need = cached_bytes(8, {"layer2": trace["layer2"]}, seg if seg.dim() == 4 else seg[:, None], 0.01, 8)
    assert need > 8 * 128 * 8 * 8 * 4  # at least the featuremap cache
    above = dissect(generator, "layer2", segmenter, inputs=z, memory_budget=need + 1)
    below = dissect(generator, "layer2", segmenter, inputs=z, memory_budget=need - 1)
    assert above.settings["quantile_path"] == "cached" and below.settings["quantile_path"] == "streaming"


@pytest.mark.parametrize("bad", [0, -5, 1.5, "1GB", True])
def test_memory_budget_must_be_a_positive_number_of_bytes(bad):
    with pytest.raises(ValueError, match="memory_budget"):
        DissectionOptions(memory_budget=bad)


class _Drifting(nn.Module):
    """A generator whose activations change at every call (fresh noise)."""

    def __init__(self):
        super().__init__()
        self.features = nn.Conv2d(1, 4, 1)
        self.calls = 0

    def forward(self, z):
        self.calls += 1
        x = z.view(-1, 1, 1, 1).expand(-1, 1, 4, 4) + 0.01 * self.calls
        return self.features(x)[:, :3].tanh()


@pytest.mark.filterwarnings("ignore:gan_monitor.*different images")
def test_streaming_refuses_a_generator_that_changes_between_passes():
    class Segmenter:
        concepts = ["-", "a", "b"]
        categories = ["-", "object", "object"]

        def segment(self, images):
            return (images[:, 0] > 0).long() + 1

    with pytest.raises(NondeterministicGeneratorError, match="differ between two passes"):
        dissect(_Drifting(), "features", Segmenter(), inputs=torch.randn(10), memory_budget=1,
                allow_nondeterministic=True)


def assert_same_iqr(cached, streamed):
    assert cached.settings["iqr_path"] == "cached" and streamed.settings["iqr_path"] == "streaming"
    for name, a in cached.layers.items():
        b = streamed.layers[name]
        for field in ("thresholds", "iou", "label_index", "unit_iou", "interpretable", "topk", "topk_values"):
            assert torch.equal(getattr(a, field), getattr(b, field)), (name, field)
        assert a.extras == b.extras  # best IQR and chosen level of every unit
    assert cached.sample_stats == streamed.sample_stats
    assert {k: v for k, v in cached.settings.items() if k not in ("iqr_path", "memory_budget")} == \
        {k: v for k, v in streamed.settings.items() if k not in ("iqr_path", "memory_budget")}


@pytest.mark.parametrize("iou", ["plain", "category"])
def test_iqr_streaming_equals_cached_on_the_toy_gan(iou):
    from gan_monitor.dissection.thresholds.modes import IQR
    from gan_monitor.toyworld.gan import ToyGenerator
    from gan_monitor.toyworld.segmenter import load_segmenter

    torch.manual_seed(0)
    generator, segmenter = ToyGenerator().eval(), load_segmenter()
    # batches of 8 images of 64x64: the streaming count flushes every 256 images, so n=300 takes two chunks
    kwargs = dict(n=40, seed=3, threshold=IQR(n=300), iou=iou, batch_size=8)
    cached = dissect(generator, ["layer2", "layer3"], segmenter, **kwargs)
    streamed = dissect(generator, ["layer2", "layer3"], segmenter, memory_budget=1, **kwargs)
    assert_same_iqr(cached, streamed)
    assert streamed.settings["memory_budget"] == 1


def test_iqr_streaming_equals_cached_on_the_planted_world():
    from gan_monitor.dissection.thresholds.modes import IQR

    generator = PlantedGenerator(noise=0.35)
    kwargs = dict(n=60, seed=1, batch_size=50, threshold=IQR(n=150), iou="category")
    cached = dissect(generator, "features", PlantedSegmenter(multilabel=True), **kwargs)
    streamed = dissect(generator, "features", PlantedSegmenter(multilabel=True), memory_budget=1000, **kwargs)
    assert_same_iqr(cached, streamed)
    assert int(cached["features"].interpretable.sum()) > 10  # planted units found: a meaningful comparison


def test_iqr_budget_around_the_estimate_decides_the_path():
    from gan_monitor.core.tracing import Trace
    from gan_monitor.dissection.thresholds.iqr_selection import iqr_cache_bytes
    from gan_monitor.dissection.thresholds.modes import IQR
    from gan_monitor.toyworld.gan import ToyGenerator
    from gan_monitor.toyworld.segmenter import load_segmenter

    torch.manual_seed(0)
    generator, segmenter = ToyGenerator().eval(), load_segmenter()
    z, z_iqr = generator.sample_latents(4, seed=0), generator.sample_latents(6, seed=1)
    with torch.no_grad(), Trace(generator, ["layer3"]) as trace:
        seg = segmenter.segment(generator(z_iqr[:1]))
    need = iqr_cache_bytes(6, {"layer3": trace["layer3"]}, seg if seg.dim() == 4 else seg[:, None])
    assert need > 6 * 64 * 16 * 16 * 4  # at least the featuremap cache
    kwargs = dict(inputs=z, threshold=IQR(inputs=z_iqr))
    above = dissect(generator, "layer3", segmenter, memory_budget=need + 1, **kwargs)
    below = dissect(generator, "layer3", segmenter, memory_budget=need - 1, **kwargs)
    assert above.settings["iqr_path"] == "cached" and below.settings["iqr_path"] == "streaming"


@pytest.mark.filterwarnings("ignore:gan_monitor.*different images")
def test_iqr_streaming_refuses_a_generator_that_changes_between_passes():
    from gan_monitor.dissection.thresholds.modes import IQR

    class Segmenter:
        concepts = ["-", "a", "b"]
        categories = ["-", "object", "object"]

        def segment(self, images):
            return (images[:, 0] > 0).long() + 1

    with pytest.raises(NondeterministicGeneratorError, match="iqr mode's streaming level count"):
        dissect(_Drifting(), "features", Segmenter(), inputs=torch.randn(10), memory_budget=1,
                threshold=IQR(inputs=torch.randn(12)), allow_nondeterministic=True)


@pytest.mark.parametrize("threshold", ["quantile", "iqr"])
def test_streaming_passes_hand_freed_memory_back_and_cached_passes_do_not(threshold, monkeypatch):
    import gan_monitor.dissection.runner as runner_module
    from gan_monitor.core.memory import release_freed_memory

    calls = []
    monkeypatch.setattr(runner_module, "release_freed_memory", lambda: calls.append(1) or True)
    generator = PlantedGenerator(noise=0.35)
    kwargs = dict(n=40, seed=1, batch_size=10, threshold=threshold)
    dissect(generator, "features", PlantedSegmenter(), **kwargs)
    assert calls == []  # everything cached: nothing to trim
    dissect(generator, "features", PlantedSegmenter(), memory_budget=1000, **kwargs)
    assert 1 <= len(calls) <= 12  # streamed: at most once a second, at least once
    import platform
    import sys

    glibc = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
    assert release_freed_memory() is glibc  # glibc: malloc_trim asked; elsewhere a no-op
