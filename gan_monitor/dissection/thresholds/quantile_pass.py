"""The quantile-mode pass of ``dissect`` (docs/method.md §3): find each unit's exact
top-``q`` threshold and count its "on" pixels against the segmentation, running the
generator and the segmenter once per held-out image.

1. One pass over the held-out inputs caches the raw featuremaps and the label maps
   (uint8 when there are at most 256 concepts), keeps each unit's top samples, and
   interpolates a seeded subsample of pixels straight from the raw maps.
2. From that subsample, each unit gets a floor safely below its threshold
   (``guess_floors``; with several ranks, selected over all ranks' picks at once).
3. Layer by layer, ``collect_above_floors`` upsamples only the blocks that can exceed the floor and
   keeps the pixels above it; the threshold is the ``(k+1)``-th largest of them,
   ``k = ceil(q * n*H*W)`` (units whose floor was too high are redone exactly), and
   the pixels above it are counted with ``LayerTally.add_active``.

Results are bit-identical to thresholding a dense ``upsample`` and independent of
batching and of the number of ranks.
"""
from __future__ import annotations

import math

import torch
from tqdm.auto import tqdm

from gan_monitor.core.distributed import check_identical, run_phase, select_across
from gan_monitor.core.inputs import num_samples
from gan_monitor.dissection.runner import compact_labels
from gan_monitor.dissection.tally import LayerTally, category_index, concept_presence, dedupe_labels
from gan_monitor.dissection.thresholds.quantile import (
    collect_above_floors,
    exact_thresholds,
    floor_index,
    guess_floors,
    interpolate_at,
)
from gan_monitor.dissection.thresholds.streaming import cached_bytes, streaming_quantile_pass
from gan_monitor.dissection.thresholds.top_values import quantile_rank
from gan_monitor.dissection.top_samples import TopSamples

__all__ = ["quantile_pass", "floors_from_subsample", "QUANTILE_SUBSAMPLE"]

#: Pixels per unit sampled (seeded) to place the quantile search; results do not depend on it.
QUANTILE_SUBSAMPLE = 16384


def quantile_pass(runner, inputs, layers, quantile, topk, seed, settings, memory_budget=None):
    """Exact per-unit thresholds, their ``LayerTally`` and top samples for every layer.

    ``runner``: a ``BatchRunner`` over this rank's shard. ``settings`` gains
    ``quantile_rank`` (pixels above each threshold), ``quantile_path`` (``"cached"``, or
    ``"streaming"`` when the cache would exceed ``memory_budget`` bytes, estimated by
    ``streaming.cached_bytes`` at the first batch: then ``streaming.streaming_quantile_pass``
    gives the same results in memory independent of n) and, cached, ``quantile_subsample``.
    Returns ``(thresholds, tallies, samples)``, dicts by layer name.
    """
    n, comm = num_samples(inputs), runner.comm
    categories = list(runner.segmenter.categories)
    cat_names, concept_category = category_index(categories)
    cache: dict[str, list[torch.Tensor]] = {name: [] for name in layers}
    picked: dict[str, list[torch.Tensor]] = {name: [] for name in layers}
    samples: dict[str, TopSamples] = {}
    labels, shows = [], []
    positions = None
    stream = False

    def sample_pass():
        nonlocal positions, stream
        for start, acts, seg in runner.batches(inputs, "dissect: sample"):
            size = runner.size
            pixels = size[0] * size[1]
            if positions is None and memory_budget is not None and cached_bytes(
                    math.ceil(n / comm.world_size), acts, seg, quantile, n, comm.world_size) > memory_budget:
                stream = True  # the same decision on every rank (global n, shapes, agreed budget)
                return
            if positions is None:  # drawn for every global sample index: the same on every rank
                per_image = max(1, min(pixels, math.ceil(QUANTILE_SUBSAMPLE / n)))
                gen = torch.Generator().manual_seed(int(seed))
                positions = torch.randint(pixels, (n, per_image), generator=gen).to(seg.device)
            b = seg.shape[0]
            ids = runner.global_ids(start, b, seg.device)
            for name, a in acts.items():
                picked[name].append(interpolate_at(a, positions[ids], size))
                samples.setdefault(name, TopSamples(a.shape[1], topk, device=a.device)).update(a, start, ids)
                cache[name].append(a)
            lab = dedupe_labels(seg.flatten(2))
            labels.append(compact_labels(lab, runner.n_concepts))
            shows.append(concept_presence(lab, len(categories), concept_category, len(cat_names))[1])

    run_phase(comm, "dissection (generator and segmenter)", sample_pass)
    settings["quantile_path"] = "streaming" if stream else "cached"
    if stream:
        return streaming_quantile_pass(runner, inputs, layers, quantile, topk, settings)
    check_identical(comm, "segmentation sizes", torch.tensor(runner.size), "segment() must return one size.")
    size = runner.size
    pixels = size[0] * size[1]
    rank = quantile_rank(quantile, n * pixels) + 1
    settings.update(quantile_rank=rank - 1, quantile_subsample=int(positions.numel()))
    all_labels, all_shows = torch.cat(labels), torch.cat(shows)
    floors = floors_from_subsample(picked, layers, rank, n * pixels, int(positions.numel()), comm)
    thresholds, tallies = {}, {}
    for name in tqdm(layers, desc="dissect: tally", disable=not runner.progress or comm.rank > 0, leave=False):
        kept = run_phase(comm, "dissection (collect)", lambda: collect_above_floors(cache[name], size, floors[name]))
        t, exact = kept.kth_largest(rank) if comm.world_size == 1 else kept.kth_largest_across(rank, comm)
        redo = (~exact).nonzero().flatten()
        if redo.numel():  # guess too high (ties): exact thresholds for these units, then collect again
            t[redo] = exact_thresholds(cache[name], size, rank, redo, comm)

        def count():
            tally = LayerTally(t, categories).to(t.device)
            for lab in labels:
                tally.add_images(lab.view(lab.shape[0], lab.shape[1], *size).long())
            skip = t.clone()
            skip[redo] = math.inf
            batches = [kept.above(skip)]
            if redo.numel():
                again = collect_above_floors(cache[name], size, t[redo], units=redo)
                batches.append((redo[u], pos) for u, pos in again.above(t[redo]))
            for chunks in batches:
                for unit, pos in chunks:
                    tally.add_active(unit, pos, all_labels, all_shows)
            return tally

        thresholds[name], tallies[name] = t, run_phase(comm, "dissection (count)", count)
        kept = None  # free the kept pixels before the next layer
        cache[name] = []
    return thresholds, tallies, samples


def floors_from_subsample(picked, layers, rank, pixels, total, comm) -> dict[str, torch.Tensor]:
    """Per-layer floors from the seeded subsample (``guess_floors``: its ``floor_index + 1``-th
    largest value per unit); with several ranks, selected over all ranks' picks at once."""
    sample = {}
    for name in layers:
        parts = picked.pop(name)
        sample[name] = torch.cat(parts).transpose(0, 1).reshape(parts[0].shape[1], -1)
    if comm.world_size == 1:
        return {name: guess_floors(v, rank, pixels)[0] for name, v in sample.items()}
    rows = torch.cat(list(sample.values()))
    floors = select_across(rows, torch.full((rows.shape[0], 1), floor_index(total, rank, pixels) + 1), comm)
    return dict(zip(sample, floors.flatten().split([v.shape[0] for v in sample.values()])))
