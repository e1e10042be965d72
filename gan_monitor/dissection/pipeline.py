"""GAN dissection (paper Sec. 3.1, Eq. 2; METHOD.md 1): which units of a layer
match which concepts of a segmenter, measured by IoU over a held-out sample.

``dissect`` runs the generator and the segmenter once per batch for all requested
layers together (one ``Trace``, one segmentation), then:

* ``threshold="quantile"`` (default): the raw featuremaps and the label maps (uint8
  when there are at most 256 concepts) are cached, and a seeded subsample of
  upsampled values is taken directly from the raw maps. Afterwards, per layer,
  ``quantile_tally.collect`` upsamples only the output blocks whose raw 2x2
  neighbourhood exceeds a safe per-unit floor (about 8 % of them at q = 0.01) and
  keeps the pixels above the floor; the exact threshold (the ``(k+1)``-th largest
  value, ``k = ceil(q * n*H*W)``) is taken among them and the pixels above it are
  counted against the cached labels. The generator and the segmenter run once per
  image; results are exact (bit-identical to a dense ``upsample``) and independent
  of batching. Memory: the cache, ``n * sum_layers(U*h*w) * 4`` bytes (featuremap
  dtype) plus ``n * D * H * W`` bytes of labels, and per layer in turn about
  ``1.4 * U * (k+1) * 12`` bytes of kept pixels (the price of exact quantiles;
  e.g. 128 units, 1000 images of 64x64, q = 0.01: 88 MB).
* ``threshold="iqr"``: a separate held-out sample (seed + ``IQR_SEED_OFFSET``, or
  ``iqr_inputs``) is cached the same way and picks each unit's level and label by
  IQR (``thresholds.score_levels``); the main sample is then tallied in one
  streaming pass with ``tallies.LayerTally`` (no cache). Memory: the iqr cache plus
  ``O(U * C * levels)`` counts.

The generator (and the segmenter, if it is an ``nn.Module``) runs in eval mode
under ``torch.no_grad()``; every submodule's training flag is restored afterwards
and the global RNG is never used.

Distributed (``distributed=`` a ``gan_monitor.core.distributed`` communicator): every rank
draws the same held-out inputs and dissects its shard (samples ``rank::world_size``);
the result is identical on every rank and to one process. Integer tallies are summed;
the seeded pixel subsamples are defined by global sample index; order statistics (the
floors, iqr levels and exact quantiles) are selected by bisection over counts summed
across ranks (``quantile_tally.select_across``, ``ActivePixels.kth_largest_across``);
top-sample lists are gathered and merged. Each rank's local
work runs in ``distributed.run_phase``: if one rank fails, all abandon together and the
error names the failing rank(s). Ranks must hold the same generator parameters (checked);
rank 0's buffers (e.g. BatchNorm statistics) are used on every rank.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Iterable

import torch
from torch import nn
from tqdm.auto import tqdm

from gan_monitor.core.distributed import (check_identical, fingerprint, merge_top_samples, rank_zero_buffers, resolve,
                          run_phase, sum_states)
from gan_monitor.core.inputs import make_inputs, num_samples
from gan_monitor.dissection.results import DissectionResult, LayerDissection
from gan_monitor.dissection.runner import Sampler as _Sampler, compact_labels as _compact_labels
from gan_monitor.segmenters.base import validate_segmenter
from gan_monitor.dissection.thresholds.quantile import collect, exact_thresholds, floor_index, guess_floors, interpolate_at
from gan_monitor.core.distributed import select_across
from gan_monitor.dissection.tally import LayerTally, category_index, concept_presence, dedupe_labels, encode_segmentation
from gan_monitor.dissection.top_samples import TopSamples
from gan_monitor.dissection.upsample import upsample
from gan_monitor.dissection.thresholds.iqr import LevelTally, PixelSubsample, level_fractions, score_levels
from gan_monitor.dissection.thresholds.top_values import quantile_rank
from gan_monitor.core.tracing import _as_layer_list, eval_mode, module_device, resolve_layer

__all__ = ["dissect", "upsample", "DissectionResult", "LayerDissection", "IQR_SEED_OFFSET"]

#: The iqr-mode held-out sample is drawn with seed + IQR_SEED_OFFSET.
IQR_SEED_OFFSET = 1_000_003
#: Pixels per unit sampled (seeded) to place the quantile search; results do not depend on it.
QUANTILE_SUBSAMPLE = 16384


def _quantile_pass(sampler, inputs, layers, quantile, topk, seed, settings):
    """Quantile mode: pass 1 runs the generator, caches featuremaps and labels and
    samples pixels; then, layer by layer, the blocks that can hold "on" pixels are
    upsampled to find the exact thresholds and count the "on" pixels (``quantile_tally``)."""
    n, comm = num_samples(inputs), sampler.comm
    categories = list(sampler.segmenter.categories)
    cat_names, concept_category = category_index(categories)
    cache: dict[str, list[torch.Tensor]] = {name: [] for name in layers}
    picked: dict[str, list[torch.Tensor]] = {name: [] for name in layers}
    samples: dict[str, TopSamples] = {}
    labels, shows = [], []
    positions = None

    def sample_pass():
        nonlocal positions
        for start, acts, seg in sampler.batches(inputs, "dissect: sample"):
            size = sampler.size
            pixels = size[0] * size[1]
            if positions is None:  # drawn for every global sample index: the same on every rank
                per_image = max(1, min(pixels, math.ceil(QUANTILE_SUBSAMPLE / n)))
                gen = torch.Generator().manual_seed(int(seed))
                positions = torch.randint(pixels, (n, per_image), generator=gen).to(seg.device)
            b = seg.shape[0]
            ids = sampler.global_ids(start, b, seg.device)
            for name, a in acts.items():
                picked[name].append(interpolate_at(a, positions[ids], size))
                samples.setdefault(name, TopSamples(a.shape[1], topk, device=a.device)).update(a, start, ids)
                cache[name].append(a)
            lab = dedupe_labels(seg.flatten(2))
            labels.append(_compact_labels(lab, sampler.n_concepts))
            shows.append(concept_presence(lab, len(categories), concept_category, len(cat_names))[1])

    run_phase(comm, "dissection (generator and segmenter)", sample_pass)
    check_identical(comm, "segmentation sizes", torch.tensor(sampler.size), "segment() must return one size.")
    size = sampler.size
    pixels = size[0] * size[1]
    rank = quantile_rank(quantile, n * pixels) + 1
    settings.update(quantile_rank=rank - 1, quantile_subsample=int(positions.numel()))
    all_labels, all_shows = torch.cat(labels), torch.cat(shows)
    floors = _floors(picked, layers, rank, n * pixels, int(positions.numel()), comm)
    thresholds, tallies = {}, {}
    for name in tqdm(layers, desc="dissect: tally", disable=not sampler.progress or comm.rank > 0, leave=False):
        kept = run_phase(comm, "dissection (collect)", lambda: collect(cache[name], size, floors[name]))
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
                again = collect(cache[name], size, t[redo], units=redo)
                batches.append((redo[u], pos) for u, pos in again.above(t[redo]))
            for chunks in batches:
                for unit, pos in chunks:
                    tally.add_active(unit, pos, all_labels, all_shows)
            return tally

        thresholds[name], tallies[name] = t, run_phase(comm, "dissection (count)", count)
        del kept
        cache[name] = []
    return thresholds, tallies, samples


def _floors(picked, layers, rank, pixels, total, comm) -> dict[str, torch.Tensor]:
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


def _replay(cache, segs, thresholds_or_levels, categories, desc, progress, tally_cls=LayerTally):
    categories = list(categories)
    names, concept_category = category_index(categories)
    tallies = {name: tally_cls(value, categories).to(cache[name][0].device)
               for name, value in thresholds_or_levels.items()}
    for i in tqdm(range(len(segs)), desc=desc, disable=not progress, leave=False):
        enc = encode_segmentation(segs[i].long(), len(categories), concept_category, len(names))
        for name, tally in tallies.items():
            tally.update(cache[name][i], enc)
    return tallies


def _iqr_levels(sampler, inputs, layers, seed, n_levels, max_fraction, subsample, settings):
    """Choose each unit's level (and IQR label) on the separate held-out sample."""
    n, comm = num_samples(inputs), sampler.comm
    fractions = level_fractions(n_levels, 1e-3, max_fraction)
    cache: dict[str, list[torch.Tensor]] = {name: [] for name in layers}
    segs: list[torch.Tensor] = []
    subs: dict[str, PixelSubsample] = {}

    def sample_pass():
        for start, acts, seg in sampler.batches(inputs, "dissect: iqr sample"):
            height, width = sampler.size
            per_image = max(1, min(height * width, math.ceil(subsample / n)))
            ids = sampler.global_ids(start, seg.shape[0], seg.device)
            for name, a in acts.items():
                if name not in subs:  # positions drawn for every global sample index
                    subs[name] = PixelSubsample(n, height * width, per_image, seed, device=a.device)
                positions = subs[name].positions[ids]
                subs[name].update(interpolate_at(a, positions, (height, width)), start)
                cache[name].append(a)
            segs.append(_compact_labels(seg, sampler.n_concepts))

    run_phase(comm, "dissection (iqr sample: generator and segmenter)", sample_pass)
    check_identical(comm, "segmentation sizes", torch.tensor(sampler.size), "segment() must return one size.")
    settings["iqr_subsample"] = int(subs[layers[0]].positions.numel())
    levels = {name: subs[name].levels(fractions.to(subs[name].positions.device), comm) for name in layers}
    tallies = run_phase(comm, "dissection (iqr levels)", lambda: _replay(
        cache, segs, levels, sampler.segmenter.categories, "dissect: iqr levels",
        sampler.progress and comm.rank == 0, tally_cls=LevelTally))
    sum_states(list(tallies.values()), comm)
    return levels, tallies, fractions


def _pick_levels(levels, tally, variant, min_lift, fractions, quantile):
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


def _agreed_inputs(comm, generator, inputs, draw: Callable[[], Any], what: str) -> Any:
    """``inputs``, or ``draw()`` when None; with several ranks, drawn inside a phase and
    checked to be the same on every rank, as are the generator's parameters."""
    from gan_monitor.core.held_out import checksum

    def local():
        chosen = draw() if inputs is None else inputs
        if comm.world_size == 1:
            return chosen, None
        digest = torch.tensor(list(bytes.fromhex(checksum(chosen))), dtype=torch.float64)
        return chosen, torch.cat([fingerprint(generator.parameters()), digest])

    chosen, mine = run_phase(comm, f"dissection (drawing the {what})", local)
    if comm.world_size > 1:
        check_identical(comm, f"the generator's parameters or the {what}", mine,
                        "every rank must dissect the same generator on the same inputs (same seed and input_fn).")
        if num_samples(chosen) < comm.world_size:
            raise ValueError(f"{num_samples(chosen)} {what} cannot be split over {comm.world_size} ranks; "
                             "use at least one sample per rank.")
    return chosen


def dissect(generator: nn.Module, layers: str | Iterable[str], segmenter, *, inputs: Any = None,
            n: int = 1000, seed: int = 0, input_fn: Callable | None = None, threshold: str = "quantile",
            quantile: float = 0.01, iou: str = "plain", cutoff: float = 0.05, batch_size: int = 32,
            device: torch.device | str | None = None, topk: int = 8, iqr_inputs: Any = None,
            iqr_n: int | None = None, iqr_levels: int = 100, iqr_max_fraction: float = 0.2,
            iqr_min_lift: float = 2.0, iqr_subsample: int = 65536, progress: bool = False,
            unit_fid: dict[str, Any] | None = None, max_unit_fid: float | None = None,
            distributed: Any = None) -> DissectionResult:
    """Dissect ``layers`` of ``generator`` with ``segmenter`` (paper Eq. 2, METHOD.md 1).

    Args:
        generator: an ``nn.Module`` mapping inputs to images ``[N, 3, H, W]`` in [-1, 1].
        layers: dotted layer name(s) whose outputs are featuremaps ``[N, U, h, w]``.
        segmenter: follows ``gan_monitor.segmenters.base.Segmenter``.
        inputs: held-out generator inputs (tensor / tuple / dict, samples along dim 0);
            default: ``n`` inputs drawn by ``input_fn`` seeded with ``seed``.
        input_fn: ``input_fn(n, torch_generator) -> inputs``; default ``z ~ N(0, 1)``
            of the generator's latent shape (``inputs.default_input_fn``).
        threshold: ``"quantile"`` (top ``quantile`` of each unit's upsampled
            activations, exact) or ``"iqr"`` (level maximising IQR on a separate sample).
        iou: ``"plain"`` or ``"category"`` (METHOD.md 1.3). cutoff: interpretable if IoU >= cutoff.
        batch_size, device: batching (results do not depend on it) and where to run
            (default: the generator's device).
        topk: number of top-activating samples kept per unit.
        iqr_inputs / iqr_n: the separate iqr-mode sample, or its size (default n),
            drawn with seed + ``IQR_SEED_OFFSET``. iqr_levels, iqr_max_fraction:
            candidate levels, top fractions log-spaced from 1e-3 to the cap.
            iqr_min_lift: IQR counts only where P(S|A) >= lift * P(S).
            iqr_subsample: pixels per unit the levels are read from (seeded).
        progress: show tqdm progress bars.
        unit_fid, max_unit_fid: the unrealistic-unit filter (paper S-6.3): ``unit_fid``
            maps each layer to its per-unit FIDs (``gan_monitor.fid.unit_fid.UnitFID`` or a ``[U]``
            sequence); units with FID > ``max_unit_fid`` are left out of labelling
            (never interpretable, whatever their IoU), since segmenters misfire on
            unrealistic images. Adds ``extras["unit_fid"]``, ``extras["unrealistic"]``
            and ``settings["max_unit_fid"]``.
        distributed: ``None`` (one process) or a ``gan_monitor.core.distributed`` communicator
            (``TorchDistributed()``; ``True``: torch.distributed's default group). Every rank
            must call ``dissect`` with the same arguments; each dissects the samples
            ``rank::world_size`` and all return the result of one process.

    Returns a ``DissectionResult`` with one ``LayerDissection`` per layer. A unit's
    label is its best-IoU concept (quantile mode) or best-IQR concept (iqr mode; a
    unit positively associated with no concept falls back to the level nearest the
    ``quantile`` top fraction and its best-IoU concept); ``unit_iou`` is the IoU of
    that label on the main sample and ``interpretable`` is ``unit_iou >= cutoff``.
    ``settings`` records threshold, quantile, iou, cutoff, n, seed, whether inputs
    were drawn or given, topk, the segmentation size and, per mode, ``quantile_rank``
    (pixels above each threshold) and ``quantile_subsample`` (seeded pixels per unit
    used only to place the exact search) or ``iqr_n``, ``iqr_seed``, ``iqr_levels``,
    ``iqr_fraction_range``, ``iqr_min_lift``, ``iqr_subsample``. Iqr mode adds
    ``extras["iqr"]`` (best IQR) and ``extras["level_fraction"]`` per unit.
    The generator and segmenter must already live on ``device``; memory bounds are
    in the module docstring.
    """
    if threshold not in ("quantile", "iqr"):
        raise ValueError(f"threshold must be 'quantile' or 'iqr', got {threshold!r}.")
    if iou not in ("plain", "category"):
        raise ValueError(f"iou must be 'plain' or 'category', got {iou!r}.")
    if not 0 < quantile < 1:
        raise ValueError(f"quantile is the top fraction of activations per unit, in (0, 1); got {quantile}.")
    if not 0 <= cutoff <= 1:
        raise ValueError(f"cutoff is an IoU in [0, 1], got {cutoff}.")
    if not isinstance(generator, nn.Module):
        raise TypeError(f"generator must be a torch.nn.Module, got {type(generator).__name__}.")
    layers = _as_layer_list(layers)
    for name in layers:
        resolve_layer(generator, name)
    if (unit_fid is None) != (max_unit_fid is None):
        raise ValueError("the unrealistic-unit filter needs both unit_fid={layer: per-unit FIDs} and max_unit_fid.")
    missing = [name for name in layers if unit_fid is not None and name not in unit_fid]
    if missing:
        raise ValueError(f"unit_fid has no per-unit FIDs for layer(s) {missing}; give them for every dissected layer.")
    validate_segmenter(segmenter)
    concepts, categories = list(segmenter.concepts), list(segmenter.categories)
    device = torch.device(device) if device is not None else module_device(generator)
    drawn = inputs is None
    comm = resolve(distributed)
    inputs = _agreed_inputs(comm, generator, inputs, lambda: make_inputs(generator, n, seed, input_fn),
                            "held-out inputs")
    n = num_samples(inputs)
    settings: dict[str, Any] = {"threshold": threshold, "quantile": quantile, "iou": iou, "cutoff": cutoff,
                                "n": n, "seed": seed, "inputs": "drawn" if drawn else "given", "topk": topk}
    sampler = _Sampler(generator, segmenter, layers, batch_size, device, progress, comm)
    extras: dict[str, dict[str, Any]] = {name: {} for name in layers}
    labels: dict[str, torch.Tensor] = {}
    with eval_mode(generator, segmenter), torch.no_grad(), rank_zero_buffers(generator, comm):
        if threshold == "quantile":
            thresholds, tallies, samples = _quantile_pass(sampler, inputs, layers, quantile, topk, seed, settings)
        else:
            if iqr_inputs is None:
                settings["iqr_seed"] = seed + IQR_SEED_OFFSET
            iqr_inputs = _agreed_inputs(comm, generator, iqr_inputs, lambda: make_inputs(
                generator, iqr_n or n, seed + IQR_SEED_OFFSET, input_fn), "iqr-mode inputs")
            settings.update(iqr_n=num_samples(iqr_inputs), iqr_levels=iqr_levels,
                            iqr_fraction_range=[1e-3, iqr_max_fraction], iqr_min_lift=iqr_min_lift)
            levels, level_tallies, fractions = _iqr_levels(sampler, iqr_inputs, layers, seed, iqr_levels,
                                                           iqr_max_fraction, iqr_subsample, settings)
            thresholds, fallback = {}, {}
            for name in layers:
                t, lab, fb, best, frac = _pick_levels(levels[name], level_tallies[name], iou, iqr_min_lift,
                                                      fractions, quantile)
                thresholds[name], labels[name], fallback[name] = t, lab, fb
                extras[name].update(iqr=best.float().tolist(), level_fraction=frac.tolist())
            del level_tallies
            tallies = {name: LayerTally(thresholds[name], categories).to(device) for name in layers}
            samples = {}

            def tally_pass():
                for start, acts, seg in sampler.batches(inputs, "dissect: tally"):
                    enc = tallies[layers[0]].encode(seg)
                    ids = sampler.global_ids(start, seg.shape[0], seg.device)
                    for name, a in acts.items():
                        samples.setdefault(name, TopSamples(a.shape[1], topk, device=a.device)).update(a, start, ids)
                        tallies[name].update(a, enc)

            run_phase(comm, "dissection (generator and segmenter)", tally_pass)
        sum_states(list(tallies.values()), comm)
        merge_top_samples(samples, comm)
    settings["segmentation_size"] = list(sampler.size)
    result: dict[str, LayerDissection] = {}
    for name in layers:
        iou_matrix = tallies[name].iou(iou).cpu()
        best_by_iou = iou_matrix[:, 1:].argmax(1) + 1
        if threshold == "iqr":
            label = torch.where(fallback[name].cpu(), best_by_iou, labels[name].cpu())
        else:
            label = best_by_iou
        unit_iou = iou_matrix.gather(1, label.view(-1, 1)).flatten()
        shape = list(tallies[name].thresholds.shape)
        layer_settings = dict(settings, featuremap_units=shape[0])
        interpretable = unit_iou >= cutoff
        if unit_fid is not None:
            from gan_monitor.fid.unit_fid import unrealistic_units

            unrealistic = unrealistic_units(unit_fid[name], max_unit_fid, shape[0], name)
            interpretable = interpretable & ~unrealistic
            layer_settings["max_unit_fid"] = float(max_unit_fid)
            fids = getattr(unit_fid[name], "fid", unit_fid[name])
            extras[name].update(unit_fid=torch.as_tensor(fids, dtype=torch.float64).flatten().tolist(),
                                unrealistic=unrealistic.tolist())
        result[name] = LayerDissection(
            layer=name, concepts=concepts, categories=categories,
            thresholds=thresholds[name].float().cpu(), iou=iou_matrix, label_index=label.long(),
            unit_iou=unit_iou, interpretable=interpretable,
            topk=samples[name].indices.cpu(), topk_values=samples[name].values.cpu(),
            settings=layer_settings, extras=extras[name])
    return DissectionResult(layers=result, settings=settings)
