"""Interventions on units (paper Sec. 3.2, Eq. 3-4, S-6.4; docs/method.md §6).

* ``insertion_values``: per concept c and unit u, the value ``k`` that inserting
  u forces: u's mean activation at featuremap locations, each location weighted by
  the fraction of it that c covers in the segmented output (S-6.4).
* ``ace``: ablate (force to 0) or insert (force to ``k``) a set of units, inside an
  optional region, and measure the change of the segmented fraction of a concept,
  normalised by its mean fraction in the unedited images (Eq. 4). For ablation,
  ``fraction_removed`` is the share of the concept's pixels that disappear (Fig. 9).
* ``single_unit_effects``: the fraction of every concept removed by ablating each
  unit alone, with a ranking of units per concept.

Everything runs in eval mode under ``torch.no_grad()`` and draws its held-out
inputs from a seeded generator (``gan_monitor.core.inputs.make_inputs``), never the global RNG.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from gan_monitor.core.determinism import check_deterministic
from gan_monitor.core.inputs import (
    call_generator,
    call_generator_first,
    iterate_batches,
    make_inputs,
    num_samples,
    require_described_sample,
)
from gan_monitor.core.errors import AbsentConceptError
from gan_monitor.core.tracing import Edit, Trace, eval_mode, resolve_layer
from gan_monitor.core.validation import check_inputs, run_device
from gan_monitor.segmenters.base import validate_segmentation, validate_segmenter

__all__ = ["concept_index", "check_units", "second_sample_fn", "check_region", "layer_shape", "prepare_edit",
           "presence",
           "concept_fractions", "insertion_values", "ace", "AceResult", "single_unit_effects", "SingleUnitEffects"]


def concept_index(segmenter, concept: str | int) -> int:
    """Index of ``concept`` (a name or an index) among the segmenter's concepts."""
    names = list(segmenter.concepts)
    if isinstance(concept, int) and not isinstance(concept, bool):
        if 1 <= concept < len(names):
            return concept
        raise ValueError(f"concept index {concept} is out of range 1..{len(names) - 1}.")
    if isinstance(concept, str) and concept in names[1:]:
        return names.index(concept)
    raise ValueError(f"unknown concept {concept!r}; the segmenter knows: {', '.join(names[1:])}.")


def check_units(units: Sequence[int], n_units: int, layer: str) -> list[int]:
    """Unit indices as a list of ints, each in ``0..n_units-1``."""
    out = [int(u) for u in (units.tolist() if isinstance(units, torch.Tensor) else units)]
    if not out:
        raise ValueError("give at least one unit index.")
    bad = [u for u in out if not 0 <= u < n_units]
    if bad:
        raise IndexError(f"units {bad} are out of range: layer {layer!r} has {n_units} units (0..{n_units - 1}).")
    return out


def presence(segmenter, images: torch.Tensor) -> torch.Tensor:
    """Float ``[N, C, H, W]``: 1 where the segmenter finds concept c (in any of its maps)."""
    n_concepts = len(segmenter.concepts)
    seg = validate_segmentation(segmenter.segment(images), images.shape[0], n_concepts)
    onehot = F.one_hot(seg, n_concepts).amax(1)  # [N, H, W, C]
    return onehot.permute(0, 3, 1, 2).float()


def concept_fractions(segmenter, images: torch.Tensor, concept: int) -> torch.Tensor:
    """``[N]`` fraction of each image's pixels segmented as ``concept``."""
    n_concepts = len(segmenter.concepts)
    seg = validate_segmentation(segmenter.segment(images), images.shape[0], n_concepts)
    return (seg == concept).any(1).flatten(1).float().mean(1)


def layer_shape(generator, layer: str, inputs, device) -> tuple[int, int, int]:
    """(units, h, w) of the layer's featuremap, from one sample."""
    one = next(iterate_batches(inputs, 1, device))[1]
    with Trace(generator, layer, detach=True, require_featuremap=True, stop=True) as trace:
        call_generator_first(generator, one)
    return tuple(trace[layer].shape[1:])


def second_sample_fn(inputs_given: bool, input_fn: Callable | None, what: str, also: str = "") -> Callable | None:
    """``input_fn`` for a second sample (insertion values at seed + 1, an evaluation sample);
    :func:`gan_monitor.core.inputs.require_described_sample` refuses to draw it unasked."""
    return require_described_sample(
        inputs_given, input_fn, f"{what} needs a second sample (drawn at seed + 1)",
        f"values= (e.g. insertion_values(generator, layer, segmenter, inputs=...)){also} or input_fn=lambda n, gen: "
        "... (how your inputs are drawn)")


def prepare_edit(generator, layer: str, units, concept, segmenter, inputs, n: int, seed: int, input_fn, device):
    """Check the arguments of an edit of ``units`` at ``layer`` and draw the held-out
    inputs if not given -> (concept index, unit list, inputs, layer shape, device)."""
    validate_segmenter(segmenter)
    c = concept_index(segmenter, concept)
    resolve_layer(generator, layer)
    device = run_device(generator, device)
    if check_inputs(inputs) is None:
        inputs = make_inputs(generator, n, seed, input_fn)
    with eval_mode(generator, segmenter), torch.no_grad():
        shape = layer_shape(generator, layer, inputs, device)
    return c, check_units(units, shape[0], layer), inputs, shape, device


def insertion_values(generator: nn.Module, layer: str, segmenter, *, inputs: Any = None, n: int = 200,
                     seed: int = 0, input_fn: Callable | None = None, batch_size: int = 32,
                     device=None, dissection=None) -> torch.Tensor:
    """Float ``[C, U]``: the insertion value of every unit for every concept (S-6.4).

    ``k[c, u] = sum_{x, p} cov_c(x, p) * r_u(x, p) / sum_{x, p} cov_c(x, p)`` where
    ``cov_c(x, p)`` is the fraction of featuremap location p that c covers in the
    segmentation of image x. Concepts never seen get 0. If ``dissection`` (a
    ``LayerDissection`` of this layer) is given, the values are also kept in its
    ``extras["insertion_values"]`` (as nested lists, JSON-safe).
    """
    validate_segmenter(segmenter)
    resolve_layer(generator, layer)
    device = run_device(generator, device)
    if check_inputs(inputs) is None:
        inputs = make_inputs(generator, n, seed, input_fn)
    n_concepts = len(segmenter.concepts)
    numerator = denominator = None
    with eval_mode(generator, segmenter), torch.no_grad():
        for _, batch in iterate_batches(inputs, batch_size, device):
            with Trace(generator, layer, detach=True, require_featuremap=True) as trace:
                images = call_generator(generator, batch)
            acts = trace[layer].float()
            cover = F.adaptive_avg_pool2d(presence(segmenter, images).to(acts.device), acts.shape[-2:])
            if numerator is None:
                numerator = torch.zeros(n_concepts, acts.shape[1], dtype=torch.float64, device=acts.device)
                denominator = torch.zeros(n_concepts, dtype=torch.float64, device=acts.device)
            numerator += torch.einsum("nchw,nuhw->cu", cover.double(), acts.double())
            denominator += cover.double().sum((0, 2, 3))
    values = (numerator / denominator.clamp_min(1e-12).unsqueeze(1)).float().cpu()
    values[denominator.cpu() == 0] = 0.0
    if dissection is not None:
        dissection.extras["insertion_values"] = values.tolist()
    return values


@dataclass
class AceResult:
    """Effect of an intervention on one concept.

    Attributes:
        concept, mode, units, layer: what was done.
        before, after: ``[N]`` fraction of each image segmented as the concept,
            without and with the intervention.
        normaliser: ``before.mean()``, the concept's mean fraction (Eq. 4 normalisation).
        per_image: ``[N]`` (after - before) / normaliser for insertion,
            (before - after) / normaliser for ablation (positive = the intended effect).
        mean: mean of ``per_image``; ci: 95 % normal confidence interval of the mean, clipped
            to the range the effect can take (ablation <= 1: no more than all of the concept
            can disappear; insertion >= -1: no less than none of it can remain), so an
            interval never claims an impossible value; a clipped side is then conservative.
        fraction_removed: for ablation, the share of the concept's pixels that
            disappear over the sample (= ``mean``); ``None`` for insertion.
        gained: mean fraction of image pixels gained (after - before), unnormalised.
    """

    concept: str
    mode: str
    layer: str
    units: list[int]
    before: torch.Tensor
    after: torch.Tensor
    normaliser: float
    per_image: torch.Tensor
    mean: float
    ci: tuple[float, float]
    fraction_removed: float | None
    gained: float
    settings: dict[str, Any] = field(default_factory=dict)


def _mean_ci(x: torch.Tensor, low: float = -math.inf, high: float = math.inf) -> tuple[float, tuple[float, float]]:
    """Mean and 95 % normal interval, clipped to ``[low, high]`` (the quantity's range; the
    mean itself can leave it only by float rounding)."""
    mean = min(high, max(low, float(x.double().mean())))
    if x.numel() < 2:
        return mean, (mean, mean)
    half = 1.96 * float(x.double().std()) / math.sqrt(x.numel())
    return mean, (min(mean, max(low, mean - half)), max(mean, min(high, mean + half)))


def check_region(region, shape: tuple[int, int, int], n: int, name: str = "region") -> torch.Tensor | None:
    """``region`` as a float mask ``[h, w]`` or ``[n, h, w]`` at the resolution of a layer of
    ``shape`` ``(units, h, w)`` (``None`` stays ``None``: everywhere)."""
    if region is None:
        return None
    m = torch.as_tensor(region, dtype=torch.float32)
    if not bool(torch.isfinite(m).all()):
        raise ValueError(f"{name} contains NaN/inf; give a mask with values in [0, 1] (1: intervene, 0: leave alone).")
    if m.numel() and (float(m.min()) < 0.0 or float(m.max()) > 1.0):
        raise ValueError(f"{name} values must lie in [0, 1] (1: intervene, 0: leave alone, between: partly), got "
                         f"values in [{float(m.min()):.4g}, {float(m.max()):.4g}]; e.g. divide a 0-255 mask by 255.")
    h, w = shape[1:]
    ok = m.dim() == 2 and tuple(m.shape) == (h, w) or m.dim() == 3 and tuple(m.shape) == (n, h, w)
    if not ok:
        raise ValueError(f"{name} has shape {tuple(m.shape)}, but the layer's featuremap is {h}x{w}: give a "
                         f"mask of shape ({h}, {w}) or ({n}, {h}, {w}) (one per sample) at featuremap resolution.")
    return m


def _run_edit(generator, segmenter, layer, inputs, batch_size, device, concept, edit_args, region):
    """Per-image concept fractions before and after the edit."""
    before, after = [], []
    with eval_mode(generator, segmenter), torch.no_grad():
        for start, batch in iterate_batches(inputs, batch_size, device):
            images = call_generator(generator, batch)
            before.append(concept_fractions(segmenter, images, concept).cpu())
            mask = region
            if mask is not None:
                mask = mask.to(device)
                if mask.dim() == 3:
                    mask = mask[start:start + images.shape[0]]
            with Edit(generator, layer, mask=mask, **edit_args):
                edited = call_generator(generator, batch)
            after.append(concept_fractions(segmenter, edited, concept).cpu())
    return torch.cat(before), torch.cat(after)


def ace(generator: nn.Module, layer: str, units: Sequence[int], concept: str | int, *, segmenter,
        mode: str = "ablate", region=None, n: int = 200, seed: int = 0, input_fn: Callable | None = None,
        inputs: Any = None, values: torch.Tensor | None = None, batch_size: int = 32,
        device=None, allow_nondeterministic: bool = False) -> AceResult:
    """Average causal effect of forcing ``units`` of ``layer`` on ``concept`` (Eq. 3-4).

    Args:
        units: unit indices. concept: a concept name (or index) of the segmenter.
        mode: ``"ablate"`` (units forced to 0) or ``"insert"`` (forced to their
            insertion value for the concept; ``values`` [C, U] or [U] from
            ``insertion_values``, computed on a separate sample, seed + 1, if not given;
            with your own ``inputs=`` give ``values=`` or ``input_fn=``: nothing is drawn that
            you did not describe).
        region: where to intervene: a mask ``[h, w]`` or ``[n, h, w]`` in [0, 1] at
            featuremap resolution; default everywhere. The effect is measured on the
            whole image.
        n, seed, input_fn / inputs: the held-out sample.
        allow_nondeterministic: the first held-out inputs are run twice first
            (``gan_monitor.core.determinism``); a generator giving different images raises
            ``NondeterministicGeneratorError`` (its before/after difference would mix the
            edit with its noise); True: a warning instead.
    """
    if mode not in ("ablate", "insert"):
        raise ValueError(f"mode must be 'ablate' or 'insert', got {mode!r}.")
    if mode == "insert" and values is None:
        second_sample_fn(check_inputs(inputs) is not None, input_fn, "ace(mode='insert') without values=")
    c, units, inputs, shape, device = prepare_edit(generator, layer, units, concept, segmenter, inputs, n, seed,
                                                   input_fn, device)
    mask = check_region(region, shape, num_samples(inputs))
    with eval_mode(generator, segmenter), torch.no_grad():
        check_deterministic(generator, inputs, device=device, allow=allow_nondeterministic, what="ace")
    if mode == "ablate":
        edit_args = {"units": units, "value": 0.0}
    else:
        if values is None:
            values = insertion_values(generator, layer, segmenter, n=n, seed=seed + 1, input_fn=input_fn,
                                      batch_size=batch_size, device=device)
        values = torch.as_tensor(values, dtype=torch.float32)
        if values.dim() == 2:
            values = values[c]
        if values.shape != (shape[0],):
            raise ValueError(f"values must be [C, U] or [U] with U = {shape[0]} units, got {tuple(values.shape)}.")
        if not bool(values[units].ne(0).any()):
            warnings.warn(f"ace: the insertion values of {list(segmenter.concepts)[c]!r} are 0 for every unit inserted "
                          "(the concept never appeared in the sample they were computed on), so this 'insertion' is "
                          "an ablation; compute values= on images that show the concept.", stacklevel=2)
        edit_args = {"units": units, "value": values.to(device)}
    before, after = _run_edit(generator, segmenter, layer, inputs, batch_size, device, c, edit_args, mask)
    normaliser = float(before.double().mean())
    if normaliser <= 0:
        name = list(segmenter.concepts)[c]
        raise AbsentConceptError(f"concept {name!r} appears in none of the {num_samples(inputs)} held-out images, so "
                                 "its change cannot be normalised (Eq. 4 divides by its mean fraction). Pick a concept "
                                 "the generator draws, or use more / other held-out inputs (n=, inputs=).", name)
    diff = (before - after) if mode == "ablate" else (after - before)
    per_image = diff.double() / normaliser
    mean, ci = _mean_ci(per_image, high=1.0) if mode == "ablate" else _mean_ci(per_image, low=-1.0)
    return AceResult(
        concept=list(segmenter.concepts)[c], mode=mode, layer=layer, units=units, before=before, after=after,
        normaliser=normaliser, per_image=per_image, mean=mean, ci=ci,
        fraction_removed=mean if mode == "ablate" else None, gained=float((after - before).double().mean()),
        settings={"n": num_samples(inputs), "seed": seed, "region": region is not None})


@dataclass
class SingleUnitEffects:
    """``removed[u, c]``: fraction of concept c's pixels removed by ablating unit u alone
    (NaN where c never appears). ``ranking(concept)``: units, strongest remover first
    (``AbsentConceptError`` for a concept that appears in none of the images: no ranking)."""

    layer: str
    concepts: list[str]
    removed: torch.Tensor
    baseline: torch.Tensor

    def ranking(self, concept: str | int) -> list[int]:
        names = self.concepts
        c = concept if isinstance(concept, int) else (names.index(concept) if concept in names[1:] else None)
        if c is None or not 1 <= c < len(names):
            raise ValueError(f"unknown concept {concept!r}; known: {', '.join(names[1:])}.")
        if not float(self.baseline[c]) > 0:
            raise AbsentConceptError(f"concept {names[c]!r} appears in none of the held-out images, so no unit removes "
                                     "any of it and there is no ranking; pick a concept the generator draws, or use "
                                     "more / other held-out inputs (n=, inputs=).", names[c])
        return torch.argsort(self.removed[:, c].nan_to_num(-1.0), descending=True, stable=True).tolist()


def single_unit_effects(generator: nn.Module, layer: str, *, segmenter, units: Sequence[int] | None = None,
                        n: int = 50, seed: int = 0, input_fn: Callable | None = None, inputs: Any = None,
                        batch_size: int = 32, device=None, allow_nondeterministic: bool = False) -> SingleUnitEffects:
    """Ablate each unit alone (all of ``units``, default every unit) and measure the
    fraction of every concept's pixels removed over the sample. The generator is checked to
    be deterministic first, as in :func:`ace` (``allow_nondeterministic``)."""
    validate_segmenter(segmenter)
    device = run_device(generator, device)
    if check_inputs(inputs) is None:
        inputs = make_inputs(generator, n, seed, input_fn)
    n_concepts = len(segmenter.concepts)
    with eval_mode(generator, segmenter), torch.no_grad():
        shape = layer_shape(generator, layer, inputs, device)  # first call: a TypeError says to pass input_fn=
        check_deterministic(generator, inputs, device=device, allow=allow_nondeterministic, what="single-unit ablation")
        units = check_units(range(shape[0]) if units is None else units, shape[0], layer)
        base = torch.zeros(n_concepts, dtype=torch.float64)
        after = torch.zeros(shape[0], n_concepts, dtype=torch.float64)
        for _, batch in iterate_batches(inputs, batch_size, device):
            base += presence(segmenter, call_generator(generator, batch)).double().mean((2, 3)).sum(0).cpu()
            for u in units:
                with Edit(generator, layer, units=[u]):
                    edited = call_generator(generator, batch)
                after[u] += presence(segmenter, edited).double().mean((2, 3)).sum(0).cpu()
    removed = torch.full((shape[0], n_concepts), float("nan"), dtype=torch.float64)
    seen = base > 0
    removed[units] = ((base - after[units]) / base.clamp_min(1e-12))
    removed[:, ~seen] = float("nan")
    removed[:, 0] = float("nan")
    return SingleUnitEffects(layer=layer, concepts=list(segmenter.concepts), removed=removed.float(),
                             baseline=(base / num_samples(inputs)).float())
