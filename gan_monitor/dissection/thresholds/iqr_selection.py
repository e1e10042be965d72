"""The iqr-mode level selection of ``dissect`` (paper Eq. 2; docs/method.md §3): on a
separate held-out sample, choose each unit's threshold among candidate levels by the
information quality ratio ``IQR = I(A;S) / H(A,S)`` of its best concept.

1. ``candidate_levels`` runs the generator and the segmenter over the iqr sample,
   caches the raw featuremaps and label maps, reads each unit's candidate levels from a
   seeded pixel subsample (``PixelSubsample``: top fractions log-spaced from 1e-3 to
   ``max_fraction``) and counts every (unit, concept, level) at once by replaying the
   cache into a ``LevelTally``. When the cache would exceed the memory budget, the sample
   is regenerated for the count instead (``iqr_path`` "streaming": same counts, memory
   independent of the sample's size).
2. ``pick_levels`` scores the counts (``score_levels``) and keeps, per unit, the
   (concept, level) of highest IQR; a unit positively associated with no concept falls
   back to the level nearest the fallback top fraction.

3. ``iqr_pass`` does both, then tallies the main sample at the chosen thresholds in
   one streaming pass (``LayerTally``, no cache) and keeps each unit's top samples.
"""
from __future__ import annotations

import math

import torch
from tqdm.auto import tqdm

from gan_monitor.core.distributed import check_identical, run_phase, sum_states
from gan_monitor.core.inputs import num_samples
from gan_monitor.dissection.runner import compact_labels
from gan_monitor.dissection.tally import LayerTally, category_index, encode_segmentation
from gan_monitor.dissection.thresholds.iqr import (
    LevelTally,
    PixelSubsample,
    count_levels,
    level_fractions,
    score_levels,
)
from gan_monitor.dissection.thresholds.level_counts import CHUNK_PIXELS
from gan_monitor.dissection.thresholds.modes import IQR
from gan_monitor.dissection.thresholds.quantile import interpolate_at
from gan_monitor.dissection.thresholds.sparse_tally import tally_above
from gan_monitor.dissection.thresholds.streaming import activation_checksum, check_same_activations, sample_bytes
from gan_monitor.dissection.top_samples import TopSamples

__all__ = ["iqr_pass", "candidate_levels", "iqr_cache_bytes", "pick_levels", "replay_cache"]


def iqr_pass(runner, inputs, iqr_inputs, layers, mode: IQR, iou: str, topk: int, seed: int, settings, extras,
             memory_budget=None):
    """Thresholds chosen on ``iqr_inputs``, then the main sample ``inputs`` tallied at them.

    ``settings`` gains ``iqr_n``, ``iqr_levels``, ``iqr_fraction_range``, ``iqr_min_lift``,
    ``iqr_subsample`` and ``iqr_path`` (``candidate_levels``; ``memory_budget`` decides the
    path); ``extras[layer]`` gains ``iqr`` (each unit's best IQR) and ``level_fraction``
    (the top fraction of its chosen level). Returns ``(thresholds, tallies, samples,
    labels)`` by layer; ``labels[layer]`` is each unit's best-IQR
    concept, or -1 where no concept is positively associated (``dissect`` then takes
    the best-IoU concept at the fallback level).
    """
    comm = runner.comm
    settings.update(iqr_n=num_samples(iqr_inputs), iqr_levels=mode.levels,
                    iqr_fraction_range=[1e-3, mode.max_fraction], iqr_min_lift=mode.min_lift)
    levels, level_tallies, fractions = candidate_levels(runner, iqr_inputs, layers, seed, mode.levels,
                                                        mode.max_fraction, mode.subsample, settings, memory_budget)
    thresholds, labels = {}, {}
    for name in layers:
        t, label, fallback, best, fraction = pick_levels(levels[name], level_tallies[name], iou, mode.min_lift,
                                                         fractions, mode.fallback)
        thresholds[name], labels[name] = t, torch.where(fallback, -1, label)
        extras[name].update(iqr=best.float().tolist(), level_fraction=fraction.tolist())
    del level_tallies
    categories = list(runner.segmenter.categories)
    tallies = {name: LayerTally(thresholds[name], categories).to(runner.device) for name in layers}
    samples: dict[str, TopSamples] = {}

    def tally_pass():
        for start, acts, seg in runner.batches(inputs, "dissect: tally"):
            encoded = tallies[layers[0]].encode(seg)
            ids = runner.global_ids(start, seg.shape[0], seg.device)
            for name, a in acts.items():
                samples.setdefault(name, TopSamples(a.shape[1], topk, device=a.device)).update(a, start, ids)
                tally_above(tallies[name], a, encoded)  # = tallies[name].update(a, encoded), sparsely

    run_phase(comm, "dissection (generator and segmenter)", tally_pass)
    return thresholds, tallies, samples, labels


def replay_cache(cache, segs, thresholds_or_levels, categories, desc, progress, tally_cls=LayerTally):
    """Tallies (``tally_cls(value, categories)`` per layer) filled from cached featuremaps
    ``cache[layer][i]`` and label maps ``segs[i]``, batch by batch."""
    categories = list(categories)
    names, concept_category = category_index(categories)
    tallies = {name: tally_cls(value, categories).to(cache[name][0].device)
               for name, value in thresholds_or_levels.items()}
    for i in tqdm(range(len(segs)), desc=desc, disable=not progress, leave=False):
        enc = encode_segmentation(segs[i].long(), len(categories), concept_category, len(names))
        for name, tally in tallies.items():
            tally.update(cache[name][i], enc)
    return tallies


def iqr_cache_bytes(n_local: int, acts: dict[str, torch.Tensor], seg: torch.Tensor) -> int:
    """Estimated bytes of caching ``n_local`` iqr-sample images (featuremaps and uint8 label maps)
    from a first batch ``acts`` (``{layer: [B, U, h, w]}``) and its segmentation ``seg``, plus
    the counting's temporaries (a few arrays of ``CHUNK_PIXELS`` values)."""
    return int(n_local * sample_bytes(acts, seg, label_copies=1) + 32 * CHUNK_PIXELS)


def candidate_levels(runner, inputs, layers, seed, n_levels, max_fraction, subsample, settings, memory_budget=None):
    """Each unit's candidate levels ``[U, L]`` on the iqr sample ``inputs`` and their
    ``LevelTally`` (summed over ranks), per layer, and the levels' top ``fractions``.
    ``settings`` gains ``iqr_subsample`` (pixels per unit the levels are read from) and
    ``iqr_path``: ``"cached"``, or ``"streaming"`` when caching the sample would exceed
    ``memory_budget`` bytes (``iqr_cache_bytes``, at the first batch): the sample is then
    generated and segmented a second time to count the levels (same counts, memory
    independent of its size; the generator must be deterministic, checked per batch)."""
    n, comm = num_samples(inputs), runner.comm
    fractions = level_fractions(n_levels, 1e-3, max_fraction)
    cache: dict[str, list[torch.Tensor]] = {name: [] for name in layers}
    segs: list[torch.Tensor] = []
    subs: dict[str, PixelSubsample] = {}
    sums: list[torch.Tensor] = []
    stream = False

    def sample_pass():
        nonlocal stream
        for start, acts, seg in runner.batches(inputs, "dissect: iqr sample", observe=False):
            height, width = runner.size
            if not subs and memory_budget is not None:  # the same decision on every rank (global n, shapes)
                stream = iqr_cache_bytes(math.ceil(n / comm.world_size), acts, seg) > memory_budget
            per_image = max(1, min(height * width, math.ceil(subsample / n)))
            ids = runner.global_ids(start, seg.shape[0], seg.device)
            for name, a in acts.items():
                if name not in subs:  # positions drawn for every global sample index
                    subs[name] = PixelSubsample(n, height * width, per_image, seed, device=a.device)
                positions = subs[name].positions[ids]
                subs[name].update(interpolate_at(a, positions, (height, width)), start)
                if not stream:
                    cache[name].append(a)
            if stream:
                sums.append(activation_checksum(acts))
            else:
                segs.append(compact_labels(seg, runner.n_concepts))

    run_phase(comm, "dissection (iqr sample: generator and segmenter)", sample_pass)
    check_identical(comm, "segmentation sizes", torch.tensor(runner.size), "segment() must return one size.")
    settings["iqr_subsample"] = int(subs[layers[0]].positions.numel())
    settings["iqr_path"] = "streaming" if stream else "cached"
    levels = {name: subs[name].levels(fractions.to(subs[name].positions.device), comm) for name in layers}
    show = runner.progress and comm.rank == 0
    if stream:
        runner.release_memory = True  # also for the main sample's tally pass (core.memory)
        tallies = run_phase(comm, "dissection (iqr levels: generator and segmenter again)", lambda: _stream_levels(
            runner, inputs, levels, sums, settings.get("memory_budget")))
    else:
        tallies = run_phase(comm, "dissection (iqr levels)", lambda: count_levels(
            cache, segs, levels, runner.segmenter.categories, "dissect: iqr levels", show))
    sum_states(list(tallies.values()), comm)
    return levels, tallies, fractions


def _stream_levels(runner, inputs, levels, sums, budget) -> dict[str, LevelTally]:
    """``count_levels`` without a cache: the iqr sample regenerated, counted about
    ``CHUNK_PIXELS`` pixels per unit at a time (checksums ``sums`` of the first pass checked)."""
    categories = list(runner.segmenter.categories)
    tallies = {name: LevelTally(value, categories).to(value.device) for name, value in levels.items()}
    pending_acts: list[dict[str, torch.Tensor]] = []
    pending_segs: list[torch.Tensor] = []

    def flush():
        for name, tally in tallies.items():  # regroups the pending batches into one chunk
            tally.update_cached([acts[name] for acts in pending_acts], pending_segs)
        pending_acts.clear()
        pending_segs.clear()

    pixels = 0
    for i, (start, acts, seg) in enumerate(runner.batches(inputs, "dissect: iqr levels", observe=False)):
        check_same_activations(sums[i], acts, i, "iqr mode's streaming level count", budget)
        pending_acts.append(acts)
        pending_segs.append(compact_labels(seg, runner.n_concepts))
        pixels += seg.shape[0] * seg.shape[-2] * seg.shape[-1]
        if pixels >= CHUNK_PIXELS:
            flush()
            pixels = 0
    if pending_segs:
        flush()
    return tallies


def pick_levels(levels, tally, variant, min_lift, fractions, quantile):
    """Per unit: the threshold, label, whether it fell back (no positive association),
    the best IQR and the chosen level's top fraction."""
    scores = score_levels(tally, variant, min_lift)
    iqr = scores["iqr"]  # [U, C, L]
    n_units, n_concepts, n_levels = iqr.shape
    best, flat = iqr.reshape(n_units, -1).max(1)
    label = torch.div(flat, n_levels, rounding_mode="floor")
    level = flat % n_levels
    fallback = best <= 0  # no concept positively associated: use the level nearest the quantile
    nearest = int(torch.argmin((fractions.log() - math.log(quantile)).abs()))
    level = torch.where(fallback, torch.full_like(level, nearest), level)
    thresholds = levels.gather(1, level.view(-1, 1).to(levels.device)).flatten()
    return thresholds, label, fallback, best, fractions[level.cpu()]
