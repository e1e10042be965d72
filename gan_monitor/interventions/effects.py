"""Where an edit acts: contextual insertion and the tracing of an edit's effect through
later layers (paper Fig. 11 and S-6.5; docs/method.md §6).

* ``contextual_insertion``: insert a set of units (forced to a concept's insertion
  values) at one featuremap location at a time and count the concept pixels gained,
  conditioned on the concept already segmented there (doors appear on buildings, not
  in the sky).
* ``trace_effects``: after editing units of one layer, the normalised change of every
  later featuremap layer, per layer and per location.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from gan_monitor.core.inputs import call_generator, index_inputs, make_inputs, move_inputs, num_samples
from gan_monitor.core.tracing import Edit, Trace, eval_mode, layer_names, resolve_layer
from gan_monitor.core.validation import check_inputs, run_device
from gan_monitor.interventions.ace import (check_region, check_units, insertion_values, prepare_edit, presence,
                                           second_sample_fn)

__all__ = ["contextual_insertion", "ContextualInsertion", "trace_effects", "TraceEffects"]


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
    if values is None:
        second_sample_fn(check_inputs(inputs) is not None, input_fn, "contextual_insertion without values=")
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
    execution; channels that are always 0 count their raw change. Modules that run more
    than once per forward pass (e.g. one ReLU module reused) are left out: they have no
    single output (``gan_monitor.core.layer_selectors``)."""
    device = run_device(generator, device)
    if check_inputs(inputs) is None:
        inputs = make_inputs(generator, n, seed, input_fn)
    batch = move_inputs(inputs, device)
    resolve_layer(generator, layer)
    names = layer_names(generator) + ([layer] if layer not in layer_names(generator) else [])
    with eval_mode(generator), torch.no_grad():
        # modules that run more than once per forward (e.g. a shared ReLU) have no single output: left out
        with Trace(generator, names, detach=True, allow_repeated=True) as trace:
            call_generator(generator, batch)
        names = [name for name in names if name not in trace.repeated or name == layer]
        original = {name: out for name, out in trace.outputs.items() if name in names}
        if layer not in original:
            raise ValueError(f"layer {layer!r} did not run in the forward pass.")
        shape = tuple(original[layer].shape[1:])
        units = check_units(units, shape[0], layer)
        region = check_region(mask, shape, num_samples(inputs), name="mask")
        region = region.to(device) if region is not None else None
        with Edit(generator, layer, units=units, value=value, mask=region), \
                Trace(generator, names, detach=True, allow_repeated=True) as trace:
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
