"""GAN dissection (paper Sec. 3.1, Eq. 2; docs/method.md §1-§4): which units of a layer
match which concepts of a segmenter, measured by IoU over a held-out sample.

``dissect`` checks its arguments (once, through ``DissectionOptions``), draws the
held-out inputs, runs one threshold mode and turns the tallies into a
``DissectionResult``. The generator and the segmenter run once per batch for all
requested layers together (one ``Trace``, one segmentation; ``runner.BatchRunner``):

* quantile mode (``threshold="quantile"`` or ``Quantile(q)``, the default;
  ``thresholds.quantile_pass``): the raw featuremaps and label maps are cached; per
  layer, only the output blocks that can exceed a safe per-unit floor are upsampled, the
  exact threshold (the ``(k+1)``-th largest value, ``k = ceil(q * n*H*W)``) is taken
  among the kept pixels and the pixels above it are counted against the cached labels.
  Results are bit-identical to thresholding a dense ``upsample`` and independent of
  batching. Memory: the cache, ``n * sum_layers(U*h*w) * 4`` bytes (featuremap dtype)
  plus ``n * D * H * W`` bytes of labels, and per layer in turn about
  ``1.4 * U * (k+1) * 12`` bytes of kept pixels (the price of exact quantiles) and the
  temporaries of selecting them, several times that: measured, 128 units, 1000 images of
  64x64, q = 0.01, peak RSS 918 MB against 468 MB for the forward passes alone (README,
  "Memory"). When that would exceed ``memory_budget``,
  ``thresholds.streaming`` gives the same results without a cache, in memory independent of
  n, by regenerating the held-out inputs (4 generator and 2 segmenter passes).
* iqr mode (``threshold="iqr"`` or ``IQR(...)``; ``thresholds.iqr_selection``): a
  separate held-out sample (seed + ``IQR_SEED_OFFSET``, or ``IQR(inputs=...)``) is cached
  the same way and picks each unit's level and label by IQR; the main sample is then
  tallied in one streaming pass with ``tally.LayerTally`` (no cache). Memory: the iqr
  cache plus ``O(U * C * levels)`` counts; above ``memory_budget`` the iqr sample is
  generated twice instead of cached (``settings["iqr_path"]``), memory independent of n.

The generator (and the segmenter, if it is an ``nn.Module``) runs in eval mode
under ``torch.no_grad()``; every submodule's training flag is restored afterwards
and the global RNG is never used.

Distributed (``distributed=`` a ``gan_monitor.core.distributed`` communicator;
docs/method.md §9): every rank draws the same held-out inputs and dissects its shard
(samples ``rank::world_size``); the result is identical on every rank and to one
process. Integer tallies are summed; the seeded pixel subsamples are defined by global
sample index; order statistics (the floors, iqr levels and exact quantiles) are selected
by bisection over counts summed across ranks (``distributed.select_across``,
``ActivePixels.kth_largest_across``); top-sample lists are gathered and merged. Each
rank's local work runs in ``distributed.run_phase``: if one rank fails, all abandon
together and the error names the failing rank(s). Ranks must hold the same generator
parameters (checked); rank 0's buffers (e.g. BatchNorm statistics) are used on every rank.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping

import torch
from torch import nn

from gan_monitor.core.distributed import (
    check_identical,
    fingerprint,
    merge_top_samples,
    rank_zero_buffers,
    resolve,
    run_phase,
    sum_states,
)
from gan_monitor.core.determinism import check_deterministic
from gan_monitor.core.held_out import checksum
from gan_monitor.core.inputs import make_inputs, num_samples, require_described_sample
from gan_monitor.core.tracing import as_layer_list, eval_mode, resolve_layer
from gan_monitor.core.validation import check_inputs, integer, positive_int, run_device
from gan_monitor.dissection.concept_counts import SampleCounter
from gan_monitor.dissection.exclusion import check_exclude_units, exclusion_masks
from gan_monitor.dissection.legacy_keywords import threshold_from_legacy
from gan_monitor.dissection.options import DissectionOptions
from gan_monitor.dissection.results import DissectionResult, LayerDissection
from gan_monitor.dissection.runner import BatchRunner
from gan_monitor.dissection.thresholds.iqr_selection import iqr_pass
from gan_monitor.dissection.thresholds.modes import IQR, IQR_SEED_OFFSET, Quantile
from gan_monitor.dissection.thresholds.quantile_pass import quantile_pass
from gan_monitor.dissection.thresholds.streaming import agreed_budget
from gan_monitor.dissection.upsample import upsample
from gan_monitor.segmenters.base import validate_segmenter

__all__ = ["dissect", "upsample", "DissectionResult", "LayerDissection", "IQR_SEED_OFFSET"]


def _agreed_inputs(comm, generator, inputs, draw: Callable[[], Any], what: str) -> Any:
    """``inputs``, or ``draw()`` when None; with several ranks, drawn inside a phase and
    checked to be the same on every rank, as are the generator's parameters."""

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


def dissect(generator: nn.Module, layers: str | Iterable[str], segmenter, *, inputs: Any = None, n: int = 1000,
            seed: int = 0, input_fn: Callable | None = None, threshold: str | Quantile | IQR = "quantile",
            iou: str = "plain", cutoff: float = 0.05, topk: int = 8, batch_size: int = 32,
            device: torch.device | str | None = None, progress: bool = False,
            exclude_units: Mapping[str, Any] | None = None, distributed: Any = None,
            image_range: tuple[float, float] = (-1.0, 1.0), allow_nondeterministic: bool = False,
            memory_budget: int | None = None, **legacy: Any) -> DissectionResult:
    """Dissect ``layers`` of ``generator`` with ``segmenter`` (paper Eq. 2, docs/method.md §1-§4).

    Args:
        generator: an ``nn.Module`` mapping inputs to images ``[N, 3, H, W]`` in [-1, 1] (or in
            ``image_range``).
        layers: dotted layer name(s) whose outputs are featuremaps ``[N, U, h, w]``.
        segmenter: follows ``gan_monitor.segmenters.base.Segmenter``.
        inputs: held-out generator inputs (tensor / tuple / dict, samples along dim 0);
            default: ``n`` inputs drawn by ``input_fn`` seeded with ``seed``.
        input_fn: ``input_fn(n, torch_generator) -> inputs``; default ``z ~ N(0, 1)``
            of the generator's latent shape (``inputs.default_input_fn``).
        threshold: how each unit's threshold is chosen: ``"quantile"`` or
            :class:`~gan_monitor.dissection.thresholds.modes.Quantile` ``(q)`` (the exact
            top-``q`` quantile of its upsampled activations, default ``q = 0.01``), or
            ``"iqr"`` or :class:`~gan_monitor.dissection.thresholds.modes.IQR` ``(...)``
            (the level maximising IQR on a separate sample, drawn with seed +
            ``IQR_SEED_OFFSET`` by ``input_fn`` unless ``IQR(inputs=...)`` is given; with your own
            ``inputs=``, give one of the two: nothing is drawn that you did not describe).
        iou: ``"plain"`` or ``"category"`` (docs/method.md §4). cutoff: interpretable if IoU >= cutoff.
        topk: number of top-activating samples kept per unit.
        batch_size, device: batching (results do not depend on it) and where to run
            (default: the generator's device).
        progress: show tqdm progress bars.
        exclude_units: ``{layer: bool mask [U] or unit indices}``: units left out of labelling,
            never interpretable whatever their IoU (e.g. unrealistic units, paper S-6.3:
            ``gan_monitor.fid.unit_fid.unrealistic_units(fids, max_fid, U)``). Adds
            ``settings["excluded_units"]`` (how many, per layer) and ``extras["excluded"]``.
        image_range: ``(low, high)`` of the generator's images (default ``(-1, 1)``); see
            :class:`~gan_monitor.dissection.options.DissectionOptions`.
        memory_budget: bytes a dissection may spend caching a held-out sample (default: a quarter of
            the host's, or the CUDA device's, total memory, at most 1 GiB; ``settings["memory_budget"]``).
            Quantile mode: a dissection whose cache would exceed it takes an exact streaming path
            instead: the same results, memory independent of ``n``, the held-out inputs regenerated
            (generator 4 times, segmenter twice; ``settings["quantile_path"]`` says which;
            ``thresholds.streaming``). Iqr mode: the iqr sample is generated and segmented twice
            instead of cached (``settings["iqr_path"]``), the same results.
        allow_nondeterministic: before measuring, the first few held-out inputs are run twice
            (``gan_monitor.core.determinism.check_deterministic``; cost: two forward passes of 4
            samples); a generator giving different images raises ``NondeterministicGeneratorError``
            naming the fixes (noise as an input, a constant noise mode). True: a warning instead,
            and ``settings["nondeterministic"]`` records the largest pixel difference seen.
        distributed: ``None`` (one process) or a ``gan_monitor.core.distributed`` communicator
            (``TorchDistributed()``; ``True``: torch.distributed's default group). Every rank
            must call ``dissect`` with the same arguments; each dissects the samples
            ``rank::world_size`` and all return the result of one process.
        legacy: the keywords of release 0.1 (``quantile=``, ``iqr_n=``, ``iqr_inputs=``,
            ``iqr_levels=``, ``iqr_max_fraction=``, ``iqr_min_lift=``, ``iqr_subsample=``) still
            work, with a ``FutureWarning`` naming the new spelling (``legacy_keywords``);
            ``unit_fid=``/``max_unit_fid=`` were replaced by ``exclude_units=``.

    Returns a ``DissectionResult`` with one ``LayerDissection`` per layer. A unit's
    label is its best-IoU concept (quantile mode) or best-IQR concept (iqr mode; a
    unit positively associated with no concept falls back to the level nearest
    ``IQR(fallback)`` and its best-IoU concept); ``unit_iou`` is the IoU of that label
    on the main sample and ``interpretable`` is ``unit_iou >= cutoff`` (and not excluded).
    ``settings`` records threshold, quantile (iqr mode: the fallback fraction), iou,
    cutoff, n, seed, whether inputs were drawn or given, topk, the segmentation size and,
    per mode, ``quantile_rank`` (pixels above each threshold) and ``quantile_subsample``
    (seeded pixels per unit used only to place the exact search) or ``iqr_n``,
    ``iqr_seed``, ``iqr_levels``, ``iqr_fraction_range``, ``iqr_min_lift``,
    ``iqr_subsample``. Iqr mode adds ``extras["iqr"]`` (best IQR) and
    ``extras["level_fraction"]`` per unit. The generator and segmenter must already live
    on ``device``; memory bounds are in the module docstring.
    """
    threshold = threshold_from_legacy(threshold, legacy)
    options = DissectionOptions(threshold=threshold, iou=iou, cutoff=cutoff, topk=topk, batch_size=batch_size,
                                image_range=image_range, allow_nondeterministic=allow_nondeterministic,
                                memory_budget=memory_budget)
    mode = options.threshold
    seed = integer("seed", seed)
    if inputs is None:
        n = positive_int("n", n)
    if input_fn is not None and not callable(input_fn):
        raise TypeError(f"input_fn must be a function (n, torch.Generator) -> inputs, got {type(input_fn).__name__}.")
    if isinstance(mode, IQR) and mode.inputs is None:  # iqr levels come from a second sample
        require_described_sample(
            inputs is not None, input_fn,
            "iqr mode chooses each unit's level on a second, separate held-out sample (dissect never draws inputs "
            "you did not describe)",
            "threshold=IQR(inputs=<a second set of inputs like yours>) (0.1 spelling: iqr_inputs=), or "
            "input_fn=<function (n, torch.Generator) -> inputs> to draw it, or use threshold='quantile'")
    if not isinstance(generator, nn.Module):
        raise TypeError(f"generator must be a torch.nn.Module, got {type(generator).__name__}.")
    layers = as_layer_list(layers)
    for name in layers:
        resolve_layer(generator, name)
    excluded = check_exclude_units(exclude_units, layers)
    validate_segmenter(segmenter)
    concepts, categories = list(segmenter.concepts), list(segmenter.categories)
    device = run_device(generator, device)
    drawn = check_inputs(inputs) is None
    comm = resolve(distributed)
    inputs = _agreed_inputs(comm, generator, inputs, lambda: make_inputs(generator, n, seed, input_fn),
                            "held-out inputs")
    n = num_samples(inputs)
    chosen = options.settings()
    settings: dict[str, Any] = {"threshold": chosen["threshold"], "quantile": chosen["quantile"], "iou": iou,
                                "cutoff": chosen["cutoff"], "n": n, "seed": seed,
                                "inputs": "drawn" if drawn else "given", "topk": topk,
                                **({"image_range": chosen["image_range"]} if "image_range" in chosen else {})}
    runner = BatchRunner(generator, segmenter, layers, options.batch_size, device, progress, comm,
                         unit_check=lambda units: exclusion_masks(excluded, units), image_range=options.image_range)
    runner.observer = counter = SampleCounter(len(concepts))  # concept statistics of the main sample
    extras: dict[str, dict[str, Any]] = {name: {} for name in layers}
    labels: dict[str, torch.Tensor] = {}
    with eval_mode(generator, segmenter), torch.no_grad(), rank_zero_buffers(generator, comm):
        difference = run_phase(comm, "dissection (determinism check)", lambda: check_deterministic(
            generator, inputs, device=device, allow=options.allow_nondeterministic, what="dissection"))
        if difference > 0 and options.allow_nondeterministic:
            settings["nondeterministic"] = difference
        settings["memory_budget"] = budget = agreed_budget(options.memory_budget, device, comm)
        if isinstance(mode, Quantile):
            thresholds, tallies, samples = quantile_pass(runner, inputs, layers, mode.q, topk, seed, settings,
                                                         memory_budget=budget)
        else:
            if mode.inputs is None:
                settings["iqr_seed"] = seed + IQR_SEED_OFFSET
            iqr_inputs = _agreed_inputs(comm, generator, mode.inputs, lambda: make_inputs(
                generator, mode.n or n, seed + IQR_SEED_OFFSET, input_fn), "iqr-mode inputs")
            thresholds, tallies, samples, labels = iqr_pass(runner, inputs, iqr_inputs, layers, mode, iou, topk,
                                                            seed, settings, extras, memory_budget=budget)
        sum_states(list(tallies.values()) + [counter], comm)
        merge_top_samples(samples, comm)
    settings["segmentation_size"] = list(runner.size)
    masks = exclusion_masks(excluded, runner.units) if exclude_units is not None else {}
    result: dict[str, LayerDissection] = {}
    for name in layers:
        iou_matrix = tallies[name].iou(iou).cpu()
        label = iou_matrix[:, 1:].argmax(1) + 1  # best by IoU
        if name in labels:  # iqr mode: best by IQR, where some concept is positively associated
            label = torch.where(labels[name].cpu() < 0, label, labels[name].cpu())
        unit_iou = iou_matrix.gather(1, label.view(-1, 1)).flatten()
        layer_settings = dict(settings, featuremap_units=int(tallies[name].thresholds.shape[0]))
        interpretable = unit_iou >= cutoff
        if name in masks:
            interpretable = interpretable & ~masks[name]
            layer_settings["excluded_units"] = int(masks[name].sum())
            extras[name]["excluded"] = masks[name].tolist()
        result[name] = LayerDissection(
            layer=name, concepts=concepts, categories=categories,
            thresholds=thresholds[name].float().cpu(), iou=iou_matrix, label_index=label.long(),
            unit_iou=unit_iou, interpretable=interpretable,
            topk=samples[name].indices.cpu(), topk_values=samples[name].values.cpu(),
            settings=layer_settings, extras=extras[name])
    return DissectionResult(layers=result, settings=settings, sample_stats=counter.as_dict(concepts))
