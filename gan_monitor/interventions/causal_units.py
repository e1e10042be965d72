"""Causal unit sets by optimising a continuous intervention (paper Eq. 5-6, S-6.4).

``causal_units`` learns per-unit coefficients ``a`` in [0, 1] that, applied with
the edit rule ``r' = r(1 - a m) + k a m`` at sampled featuremap locations, best
remove the concept where it is (``k = 0``) and best insert it where it is absent
but could appear (``k`` = the concept's insertion values):

    loss = mean p_c(ablated, at the removal locations)
           - mean p_c(inserted, at the insertion locations) + penalty * ||a||_2

``p_c`` is the segmenter's differentiable probability of the concept. Each term
is scored at its own locations (the removal term where c was, the insertion term
where it was not). Locations are sampled per image: ones where c is present in
the output, and equally many where c is absent but appears there when every unit
is set to ``k`` at that location alone. ``a`` starts at ``IoU_u / max_v IoU_v``, is
optimised with Adam and clamped to [0, 1] after each step; units are ranked by
``a``. The top-n set is then evaluated (``intervention.ace``) against the top-n IoU
units and n random units (Fig. 4), by ablation, by insertion and by the ACE of
Eq. 4, ``(E[s_c(inserted)] - E[s_c(ablated)]) / E[s_c(x)]``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from gan_monitor.core.inputs import call_generator, index_inputs, make_inputs, move_inputs, num_samples
from gan_monitor.interventions.ace import (AceResult, _layer_shape, ace, concept_index, insertion_values, presence)
from gan_monitor.segmenters.base import validate_segmenter
from gan_monitor.core.tracing import Edit, eval_mode, module_device, resolve_layer

__all__ = ["causal_units", "CausalUnits", "check_differentiable", "contextual_insertion", "ContextualInsertion",
           "trace_effects", "TraceEffects"]


def check_differentiable(segmenter) -> None:
    """Raise unless the segmenter offers ``probabilities(images) -> [N, C, H, W]``."""
    if not callable(getattr(segmenter, "probabilities", None)):
        raise TypeError(
            f"{type(segmenter).__name__} has no `probabilities(images)` method. causal_units optimises "
            "the intervention by gradient descent through the segmenter, so it needs differentiable "
            "class probabilities [N, C, H, W] (e.g. the softmax of a segmentation network's logits). "
            "Add such a method, or rank units with single_unit_effects / ace, which only need segment()."
        )


@dataclass
class CausalUnits:
    """Result of ``causal_units``.

    Attributes:
        layer, concept: what was optimised.
        coefficients: float ``[U]``, the optimised ``a`` (in [0, 1]).
        ranking: units by decreasing ``a``; ties (coefficients clamped at 1 or 0) broken
            by ``pull``, the summed negative gradient: how hard the loss kept pushing
            each coefficient up.
        initial: the IoU initialisation of ``a``.
        losses: loss per optimisation step.
        top_n: size of the evaluated sets; sets: ``{"causal", "iou", "random"}`` -> units.
        evaluation: the same keys -> ``AceResult`` of ablating that set
            (``.fraction_removed``).
        insertion: the same keys -> ``AceResult`` of inserting that set everywhere.
    """

    layer: str
    concept: str
    coefficients: torch.Tensor
    ranking: list[int]
    initial: torch.Tensor
    losses: list[float]
    top_n: int
    sets: dict[str, list[int]] = field(default_factory=dict)
    evaluation: dict[str, AceResult] = field(default_factory=dict)
    pull: torch.Tensor | None = None
    insertion: dict[str, AceResult] = field(default_factory=dict)

    def fractions_removed(self) -> dict[str, float]:
        return {name: result.fraction_removed for name, result in self.evaluation.items()}

    def effects(self) -> dict[str, dict[str, float]]:
        """Per evaluated set: ``removed`` (fraction of c's pixels removed by ablation),
        ``inserted`` (normalised gain by insertion) and ``ace`` =
        ``(E[s_c(inserted)] - E[s_c(ablated)]) / E[s_c(x)]`` (Eq. 4; same images)."""
        out = {}
        for name, ablated in self.evaluation.items():
            inserted = self.insertion.get(name)
            row = {"removed": ablated.fraction_removed}
            if inserted is not None:
                row["inserted"] = inserted.mean
                gap = float(inserted.after.double().mean() - ablated.after.double().mean())
                row["ace"] = gap / ablated.normaliser if ablated.normaliser > 0 else float("nan")
            out[name] = row
        return out


def _iou_init(generator, layer, segmenter, c, iou, dissection, inputs, batch_size, device) -> torch.Tensor:
    if iou is None:
        if dissection is None:
            from gan_monitor.dissection.pipeline import dissect
            dissection = dissect(generator, layer, segmenter, inputs=inputs, batch_size=batch_size,
                                 device=device)
        if hasattr(dissection, "layers") or not hasattr(dissection, "iou"):
            dissection = dissection[layer]
        iou = dissection.iou[:, c]
    iou = torch.as_tensor(iou, dtype=torch.float32).clamp_min(0).flatten()
    top = float(iou.max()) if iou.numel() else 0.0
    return iou / top if top > 0 else torch.full_like(iou, 0.5)


def _sample_locations(candidates: torch.Tensor, per_image: int, gen: torch.Generator) -> torch.Tensor:
    """``[N, h, w]`` 0/1 mask with up to ``per_image`` random candidate locations per image."""
    flat = candidates.flatten(1).float()
    scores = torch.rand(flat.shape, generator=gen) * flat - (1 - flat)
    picked = torch.zeros_like(flat)
    idx = scores.topk(min(per_image, flat.shape[1]), dim=1).indices
    picked.scatter_(1, idx, 1.0)
    return (picked * flat).view(candidates.shape)


def _masked_mean(probs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``probs`` ``[N, H, W]`` over the featuremap mask ``[N, h, w]`` upsampled."""
    big = F.interpolate(mask[:, None], size=probs.shape[-2:], mode="nearest")[:, 0]
    return (probs * big).sum() / big.sum().clamp_min(1.0)


def _present(segmenter, images, c, shape) -> torch.Tensor:
    """``[N, h, w]`` bool: concept ``c`` segmented anywhere in each location's output block."""
    return F.adaptive_max_pool2d(presence(segmenter, images)[:, c:c + 1], shape[1:])[:, 0] > 0


def _candidates(generator, segmenter, layer, batch, c, k, shape, tries, gen):
    """Removal candidates (c present) and insertion candidates, ``[N, h, w]`` bool.

    An insertion candidate is a location p where c is absent but appears (in p's own
    output block) when every unit is set to k at p alone. Testing every location costs
    h*w passes, so ``tries`` random absent locations per image are tested, one per pass
    (each image its own location); the ones where c appears are kept.
    """
    with torch.no_grad():
        present = _present(segmenter, call_generator(generator, batch), c, shape)
        absent = (~present).flatten(1).float().cpu()
        order = (torch.rand(absent.shape, generator=gen) * absent - (1 - absent)).argsort(1, descending=True)
        insertable = torch.zeros_like(absent, dtype=torch.bool)
        rows = torch.arange(absent.shape[0])
        for t in range(min(int(tries), absent.shape[1])):
            where = order[:, t]
            tried = absent[rows, where] > 0
            if not tried.any():
                break
            mask = torch.zeros_like(absent)
            mask[rows, where] = tried.float()
            mask = mask.view(-1, *shape[1:]).to(present.device)
            with Edit(generator, layer, units=list(range(shape[0])), value=k, mask=mask):
                appeared = _present(segmenter, call_generator(generator, batch), c, shape)
            insertable[rows, where] |= tried & appeared.flatten(1).cpu()[rows, where]
    return present.cpu(), insertable.view(present.shape)


def causal_units(generator: nn.Module, layer: str, concept: str | int, *, segmenter, n: int = 200, seed: int = 0,
                 input_fn: Callable | None = None, inputs: Any = None, dissection=None, iou=None,
                 values: torch.Tensor | None = None, epochs: int = 10, lr: float = 0.01, penalty: float = 0.005,
                 batch_size: int = 16, locations: int = 1, tries: int = 4, insert_weight: float = 1.0,
                 top_n: int = 20,
                 eval_n: int = 100, evaluate: bool = True, device=None) -> CausalUnits:
    """Rank the units of ``layer`` by their causal effect on ``concept`` (Eq. 5-6).

    Args:
        n, seed, input_fn / inputs: the optimisation sample (``epochs`` passes over it).
        dissection / iou: IoU initialisation: a ``DissectionResult``/``LayerDissection``
            of the layer, or an IoU vector ``[U]``; default: dissect ``inputs``.
        values: insertion values ``[C, U]`` or ``[U]``; default computed on seed + 1.
        lr, penalty: Adam learning rate and L2 weight (reference: 0.01, 0.005).
        locations: removal (and as many insertion) locations sampled per image.
        tries: absent locations per image tested for insertability in each batch.
        insert_weight: weight of the insertion term (1: Eq. 5-6; 0: removal only, which
            ranks units for ablation alone and skips the insertion passes).
        top_n, eval_n, evaluate: size of the evaluated sets, images used (seed + 2).
    """
    validate_segmenter(segmenter)
    check_differentiable(segmenter)
    c = concept_index(segmenter, concept)
    resolve_layer(generator, layer)
    device = torch.device(device) if device is not None else module_device(generator)
    if inputs is None:
        inputs = make_inputs(generator, n, seed, input_fn)
    n = num_samples(inputs)
    with eval_mode(generator, segmenter), torch.no_grad():
        shape = _layer_shape(generator, layer, inputs, device)
    a0 = _iou_init(generator, layer, segmenter, c, iou, dissection, inputs, batch_size, device)
    if a0.numel() != shape[0]:
        raise ValueError(f"the IoU initialisation has {a0.numel()} entries but layer {layer!r} has {shape[0]} units.")
    if values is None:
        values = insertion_values(generator, layer, segmenter, n=n, seed=seed + 1, input_fn=input_fn,
                                  batch_size=batch_size, device=device)
    k = torch.as_tensor(values, dtype=torch.float32)
    k = (k[c] if k.dim() == 2 else k).to(device)
    a = a0.clone().to(device).requires_grad_(True)
    optimiser = torch.optim.Adam([a], lr=lr)
    gen = torch.Generator().manual_seed(seed + 3)
    losses: list[float] = []
    pull = torch.zeros_like(a, requires_grad=False)
    with eval_mode(generator, segmenter):
        for _ in range(int(epochs)):
            order = torch.randperm(n, generator=gen)
            for start in range(0, n, batch_size):
                batch = index_inputs(inputs, order[start:start + batch_size])
                batch = move_inputs(batch, device)
                present, insertable = _candidates(generator, segmenter, layer, batch, c, k, shape,
                                                  tries if insert_weight else 0, gen)
                remove_at = _sample_locations(present, locations, gen).to(device)
                insert_at = _sample_locations(insertable, locations, gen).to(device) * (insert_weight != 0)
                loss = penalty * a.norm()
                with torch.enable_grad():
                    if remove_at.sum() > 0:
                        with Edit(generator, layer, coefficients=a, mask=remove_at, value=0.0):
                            probs = segmenter.probabilities(call_generator(generator, batch))[:, c]
                        loss = loss + _masked_mean(probs, remove_at)
                    if insert_at.sum() > 0:
                        with Edit(generator, layer, coefficients=a, mask=insert_at, value=k):
                            probs = segmenter.probabilities(call_generator(generator, batch))[:, c]
                        loss = loss - insert_weight * _masked_mean(probs, insert_at)
                    grad, = torch.autograd.grad(loss, [a], allow_unused=True)
                a.grad = torch.zeros_like(a) if grad is None else grad
                pull -= a.grad.detach()
                optimiser.step()
                with torch.no_grad():
                    a.clamp_(0.0, 1.0)
                losses.append(float(loss.detach()))
    coefficients, pull = a.detach().cpu(), pull.cpu()
    by_pull = torch.argsort(pull, descending=True, stable=True)
    ranking = by_pull[torch.argsort(coefficients[by_pull], descending=True, stable=True)].tolist()
    result = CausalUnits(layer=layer, concept=list(segmenter.concepts)[c], coefficients=coefficients,
                         ranking=ranking, initial=a0, losses=losses, pull=pull, top_n=min(int(top_n), shape[0]))
    if evaluate:
        m = result.top_n
        perm = torch.randperm(shape[0], generator=torch.Generator().manual_seed(seed + 4))
        result.sets = {"causal": ranking[:m],
                       "iou": torch.argsort(a0, descending=True, stable=True)[:m].tolist(),
                       "random": sorted(perm[:m].tolist())}
        held_out = make_inputs(generator, eval_n, seed + 2, input_fn)
        for name, units in result.sets.items():
            for mode, store in (("ablate", result.evaluation), ("insert", result.insertion)):
                store[name] = ace(generator, layer, units, c, segmenter=segmenter, mode=mode, inputs=held_out,
                                  values=k.cpu(), seed=seed + 2, batch_size=batch_size, device=device)
    return result


@dataclass
class ContextualInsertion:
    """Result of ``contextual_insertion`` (Fig. 11).

    Attributes:
        gain: float ``[N, h, w]``: concept pixels gained (in output pixels) when the
            units are inserted at that featuremap location alone.
        context: long ``[N, h, w]``: the concept segmented at that location before
            the insertion (the most frequent label in the location's output block).
        by_context: concept name -> ``(mean gain, number of locations)``.
    """

    concept: str
    units: list[int]
    gain: torch.Tensor
    context: torch.Tensor
    by_context: dict[str, tuple[float, int]]

    def mean_map(self) -> torch.Tensor:
        """``[h, w]`` mean gain per location over the sample."""
        return self.gain.mean(0)


def _block_labels(labels: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """Most frequent label of ``labels`` ``[N, H, W]`` in each block of a ``shape`` grid."""
    n_labels = int(labels.max()) + 1
    onehot = F.one_hot(labels, n_labels).permute(0, 3, 1, 2).float()
    return F.adaptive_avg_pool2d(onehot, shape).argmax(1)


def contextual_insertion(generator: nn.Module, layer: str, units, concept: str | int, *, segmenter,
                         values: torch.Tensor | None = None, n: int = 20, seed: int = 0,
                         input_fn: Callable | None = None, inputs: Any = None, batch_size: int = 32,
                         device=None) -> ContextualInsertion:
    """Insert ``units`` (set to the concept's insertion values) at one featuremap
    location at a time and count the concept pixels gained; condition the mean
    gain on the concept already at the location (doors appear on buildings)."""
    from gan_monitor.interventions.ace import prepare_edit
    c, units, inputs, shape, device = prepare_edit(generator, layer, units, concept, segmenter, inputs, n, seed,
                                                   input_fn, device)
    if values is None:
        values = insertion_values(generator, layer, segmenter, n=max(num_samples(inputs), 20), seed=seed + 1,
                                  input_fn=input_fn, batch_size=batch_size, device=device)
    k = torch.as_tensor(values, dtype=torch.float32)
    k = (k[c] if k.dim() == 2 else k).to(device)
    h, w = shape[1:]
    gains, contexts = [], []
    with eval_mode(generator, segmenter), torch.no_grad():
        for start in range(0, num_samples(inputs), batch_size):
            idx = torch.arange(start, min(num_samples(inputs), start + batch_size))
            batch = move_inputs(index_inputs(inputs, idx), device)
            images = call_generator(generator, batch)
            before = presence(segmenter, images)[:, c].sum((1, 2))
            contexts.append(_block_labels(_first_label(segmenter, images), (h, w)).cpu())
            gain = torch.zeros(len(idx), h, w)
            for y in range(h):
                for x in range(w):
                    mask = torch.zeros(h, w, device=device)
                    mask[y, x] = 1
                    with Edit(generator, layer, units=units, value=k, mask=mask):
                        after = presence(segmenter, call_generator(generator, batch))[:, c].sum((1, 2))
                    gain[:, y, x] = (after - before).cpu()
            gains.append(gain)
    gain, context = torch.cat(gains), torch.cat(contexts)
    names = list(segmenter.concepts)
    by_context = {names[label]: (float(gain[context == label].mean()), int((context == label).sum()))
                  for label in torch.unique(context).tolist()}
    return ContextualInsertion(concept=names[c], units=units, gain=gain, context=context, by_context=by_context)


def _first_label(segmenter, images: torch.Tensor) -> torch.Tensor:
    """The segmenter's first (or only) label map ``[N, H, W]``."""
    seg = segmenter.segment(images)
    return seg if seg.dim() == 3 else seg[:, 0]


class TraceEffects(dict):
    """``{later layer: normalised change}`` in execution order (a plain dict), plus
    ``maps``: ``{later layer: float [h, w]}``, the same change per featuremap location
    (per channel, mean |edited - original| at that location over the sample divided
    by the channel's mean |original|, averaged over channels); a layer's value is the
    mean of its map."""

    def __init__(self, changes: dict[str, float], maps: dict[str, torch.Tensor]):
        super().__init__(changes)
        self.maps = maps


def trace_effects(generator: nn.Module, layer: str, units, *, value=0.0, mask=None, n: int = 20, seed: int = 0,
                  input_fn: Callable | None = None, inputs: Any = None, device=None) -> TraceEffects:
    """After editing ``units`` of ``layer`` (to ``value``, within ``mask`` [h, w] or
    [n, h, w] at the layer's resolution), the change of every later featuremap layer
    (S-6.5): per channel, mean |edited - original| divided by the channel's mean
    |original|, averaged over channels; ``.maps`` has it per location. Ordered by
    execution; channels that are always 0 count their raw change."""
    from gan_monitor.interventions.ace import _check_region, check_units
    from gan_monitor.core.tracing import Trace, layer_names
    device = torch.device(device) if device is not None else module_device(generator)
    if inputs is None:
        inputs = make_inputs(generator, n, seed, input_fn)
    batch = move_inputs(inputs, device)
    names = layer_names(generator)
    resolve_layer(generator, layer)
    with eval_mode(generator), torch.no_grad():
        with Trace(generator, names, detach=True) as trace:
            call_generator(generator, batch)
        original = dict(trace.outputs)
        if layer not in original:
            raise ValueError(f"layer {layer!r} did not run in the forward pass.")
        shape = tuple(original[layer].shape[1:])
        units = check_units(units, shape[0], layer)
        region = _check_region(mask, shape, num_samples(inputs))
        region = region.to(device) if region is not None else None
        with Edit(generator, layer, units=units, value=value, mask=region), \
                Trace(generator, names, detach=True) as trace:
            call_generator(generator, batch)
        edited = dict(trace.outputs)
    order = list(original)
    changes, maps = {}, {}
    for name in order[order.index(layer) + 1:]:
        r, r2 = original[name], edited.get(name)
        if not (isinstance(r, torch.Tensor) and r.dim() == 4 and isinstance(r2, torch.Tensor)) or name == layer:
            continue
        if layer.startswith(name + ".") or name == "":
            continue  # a container of the edited layer
        scale = r.abs().mean((0, 2, 3))
        diff = (r2 - r).abs().mean(0)  # [C, H, W]
        per_channel = torch.where(scale[:, None, None] > 0, diff / scale.clamp_min(1e-12)[:, None, None], diff)
        maps[name] = per_channel.mean(0).float().cpu()
        changes[name] = float(maps[name].double().mean())
    return TraceEffects(changes, maps)
