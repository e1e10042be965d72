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
``a``. The top-n set is then evaluated (``interventions.ace.ace``) against the top-n IoU
units and n random units (Fig. 4), by ablation, by insertion and by the ACE of
Eq. 4, ``(E[s_c(inserted)] - E[s_c(ablated)]) / E[s_c(x)]``.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from gan_monitor.core.inputs import call_generator, index_inputs, make_inputs, move_inputs, num_samples
from gan_monitor.core.tracing import Edit, eval_mode, resolve_layer
from gan_monitor.core.validation import check_inputs, run_device
from gan_monitor.dissection.pipeline import dissect
from gan_monitor.interventions.ace import (AceResult, ace, concept_index, insertion_values, layer_shape, presence,
                                           second_sample_fn)
from gan_monitor.segmenters.base import validate_segmenter

__all__ = ["causal_units", "CausalUnits", "check_differentiable"]


def check_differentiable(segmenter, images: torch.Tensor | None = None) -> None:
    """Raise unless the segmenter offers ``probabilities(images) -> [N, C, H, W]`` and, given
    sample ``images``, those probabilities carry a gradient that depends on the images (a
    segmenter computing them under ``no_grad``, or from ``segment()``'s integer labels, would
    make the optimisation return the IoU initialisation as the "causal" ranking)."""
    if not callable(getattr(segmenter, "probabilities", None)):
        raise TypeError(
            f"{type(segmenter).__name__} has no `probabilities(images)` method. causal_units optimises "
            "the intervention by gradient descent through the segmenter, so it needs differentiable "
            "class probabilities [N, C, H, W] (e.g. the softmax of a segmentation network's logits). "
            "Add such a method, or rank units with single_unit_effects / ace, which only need segment()."
        )
    if images is None:
        return
    x = images.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        probs = segmenter.probabilities(x)
        grad = None
        if isinstance(probs, torch.Tensor) and probs.requires_grad:
            # a fixed random weighting per class: the plain sum of probabilities is constant (1)
            weights = torch.rand(probs.shape[1], generator=torch.Generator().manual_seed(0)).to(probs.device)
            grad, = torch.autograd.grad((probs.float() * weights.view(1, -1, 1, 1)).sum(), [x], allow_unused=True)
    if grad is None or not bool(torch.isfinite(grad).all()) or not bool((grad != 0).any()):
        raise ValueError(
            f"{type(segmenter).__name__}.probabilities(images) does not depend differentiably on the images (no "
            "gradient reaches them: computed under torch.no_grad(), detached, or derived from integer labels). "
            "causal_units needs the gradient to optimise the intervention; without it the result would only repeat "
            "the IoU ranking. Return the softmax of the network's logits without no_grad, or rank units with "
            "single_unit_effects / ace, which only need segment().")


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
            With your own ``inputs=``, the insertion values and the evaluation images need
            ``input_fn=`` (how to draw more), or ``values=`` and ``evaluate=False``: nothing is
            drawn that you did not describe.
    """
    validate_segmenter(segmenter)
    check_differentiable(segmenter)
    c = concept_index(segmenter, concept)
    resolve_layer(generator, layer)
    device = run_device(generator, device)
    if values is None or evaluate:
        what = "causal_units" + (" without values=" if values is None else "")
        second_sample_fn(check_inputs(inputs) is not None, input_fn, what, also=", evaluate=False" if evaluate else "")
    if check_inputs(inputs) is None:
        inputs = make_inputs(generator, n, seed, input_fn)
    n = num_samples(inputs)
    with eval_mode(generator, segmenter), torch.no_grad():
        shape = layer_shape(generator, layer, inputs, device)
        probe = call_generator(generator, move_inputs(index_inputs(inputs, torch.arange(min(8, n))), device))
    with eval_mode(segmenter):
        check_differentiable(segmenter, probe)
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
    used = 0  # removal + insertion locations the loss saw
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
                used += int(remove_at.sum()) + int(insert_at.sum())
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
    if used == 0:
        warnings.warn(f"causal_units: concept {list(segmenter.concepts)[c]!r} was neither segmented nor insertable at "
                      f"any location of the {n} optimisation images, so nothing was optimised and the ranking is the IoU "
                      "initialisation; use images where the generator draws it (n=, inputs=) or more tries=.",
                      stacklevel=2)
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
