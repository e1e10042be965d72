"""Dissection against a conditional generator's *input* label map (pix2pix circularity).

A pix2pix generator paints an image from a label map. Dissecting it against the
segmentation of its output (``dissect``) finds units that match concepts, but the
output's segmentation largely repeats the input map: a unit that only carries the input
forward (a skip connection, an early encoder layer) looks as "interpretable" as one that
draws the concept. The seed report noticed this circularity. Here the same units are
dissected twice, with the same held-out inputs, thresholds rule and IoU:

* against the segmentation of the generated image (the usual reference), and
* against the conditioning label map itself (``dissect_input_reference``): the
  segmentation is read from the input (``input_labels(batch)``; by default the batch is
  one-hot maps ``[N, C, H, W]`` whose channel c is the segmenter's concept c, as
  ``gan_monitor.toyworld.pix2pix.pix2pix_inputs`` draws them).

``input_vs_output`` puts the two side by side, per unit (``InputOutputUnits``): its best
concept and IoU against each reference, and a kind: ``"copies input"`` when its IoU
against the input map reaches ``cutoff`` and is at least its IoU against the output,
``"generates"`` when its IoU against the output reaches ``cutoff`` and exceeds its IoU
against the input (it matches what was drawn better than what was asked for), else
``"neither"``. Cost: two dissections (the generator runs twice per held-out input; the
segmenter only in the output one).

How: the generator is wrapped in a module that shares its submodules (so layer names are
unchanged) and, after running the generator, returns the input label map encoded as a
one-channel image ``2 * label / (C - 1) - 1``, which a matching segmenter decodes exactly.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable

import torch
from torch import nn

from gan_monitor.core.tracing import as_layer_list, eval_mode
from gan_monitor.dissection.pipeline import dissect
from gan_monitor.dissection.results import DissectionResult, LayerDissection
from gan_monitor.segmenters.base import validate_segmenter

__all__ = ["dissect_input_reference", "input_vs_output", "InputOutputUnits", "one_hot_labels", "UNIT_KINDS"]

UNIT_KINDS = ("copies input", "generates", "neither")


def one_hot_labels(batch: Any) -> torch.Tensor:
    """Default ``input_labels``: one-hot (or soft) maps ``[N, C, H, W]`` -> labels ``[N, H, W]``
    (argmax over channels; 0 where every channel is 0)."""
    if not isinstance(batch, torch.Tensor) or batch.dim() != 4 or not batch.is_floating_point():
        raise TypeError("the default input_labels reads one-hot label maps [N, C, H, W] (channel c = concept c), "
                        f"got {type(batch).__name__}{tuple(batch.shape) if isinstance(batch, torch.Tensor) else ''}; "
                        "pass input_labels=<function batch -> integer label maps [N, H, W]>.")
    values, labels = batch.max(1)
    return torch.where(values > 0, labels, torch.zeros_like(labels))


class _InputAsImage(nn.Module):
    """Runs the generator (its submodules are this module's, under the same names) and
    returns the input's label map encoded as a one-channel image in [-1, 1]."""

    def __init__(self, generator: nn.Module, input_labels: Callable[[Any], torch.Tensor], n_concepts: int):
        super().__init__()
        for name, child in generator.named_children():
            self.add_module(name, child)
        object.__setattr__(self, "_generator", generator)  # not a submodule: names stay the generator's
        self.input_labels, self.n_concepts = input_labels, n_concepts

    def forward(self, *args, **kwargs) -> torch.Tensor:
        self._generator(*args, **kwargs)
        batch = kwargs if kwargs else args[0] if len(args) == 1 else args
        labels = self.input_labels(batch)
        if not isinstance(labels, torch.Tensor) or labels.dim() != 3 or labels.is_floating_point():
            shape = tuple(labels.shape) if isinstance(labels, torch.Tensor) else ""
            raise TypeError(f"input_labels must return integer label maps [N, H, W], got "
                            f"{type(labels).__name__}{shape}.")
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.n_concepts):
            raise ValueError(f"input label maps hold labels {int(labels.min())}..{int(labels.max())}, but the "
                             f"segmenter knows {self.n_concepts} concepts (0..{self.n_concepts - 1}); the input's "
                             "classes must be the segmenter's concept indices.")
        return (labels.unsqueeze(1).double() * (2.0 / max(self.n_concepts - 1, 1)) - 1.0).float()


class _DecodeLabels:
    """The segmenter of the input reference: decodes ``_InputAsImage``'s images exactly."""

    def __init__(self, concepts, categories):
        self.concepts, self.categories = list(concepts), list(categories)

    def segment(self, images: torch.Tensor) -> torch.Tensor:
        scale = max(len(self.concepts) - 1, 1) / 2.0
        return torch.round((images.double() + 1.0) * scale).long()


def _check_inputs(inputs, input_fn) -> None:
    if inputs is None and input_fn is None:
        raise ValueError("dissecting against the input label map needs the conditional generator's inputs: pass "
                         "input_fn=<function (n, torch.Generator) -> label maps> (e.g. "
                         "gan_monitor.toyworld.pix2pix.pix2pix_inputs(size)) or inputs=<held-out label maps>.")


def dissect_input_reference(generator: nn.Module, layers: str | Iterable[str], segmenter, *,
                            input_labels: Callable[[Any], torch.Tensor] = one_hot_labels, inputs: Any = None,
                            input_fn: Callable | None = None, **dissect_args: Any) -> DissectionResult:
    """``dissect`` with the conditioning label map as the segmentation of every sample.

    Args:
        generator, layers: as for ``dissect`` (names unchanged, selectors allowed).
        segmenter: only its ``concepts`` and ``categories`` are used: label c of the input map
            is concept c.
        input_labels: ``batch -> integer label maps [N, H, W]`` (the batch as the generator is
            called with it: a tensor, tuple or dict); default :func:`one_hot_labels`.
        inputs / input_fn: the held-out inputs (one of them is required: a conditional
            generator has no default inputs).
        dissect_args: every other ``dissect`` argument (n, seed, threshold, iou, cutoff, ...).

    The result's ``settings["reference"]`` is ``"input"``.
    """
    validate_segmenter(segmenter)
    _check_inputs(inputs, input_fn)
    if not isinstance(generator, nn.Module):
        raise TypeError(f"generator must be a torch.nn.Module, got {type(generator).__name__}.")
    if not callable(input_labels):
        raise TypeError(f"input_labels must be a function batch -> label maps [N, H, W], got {input_labels!r}.")
    wrapper = _InputAsImage(generator, input_labels, len(segmenter.concepts))
    with eval_mode(generator):
        result = dissect(wrapper, as_layer_list(layers), _DecodeLabels(segmenter.concepts, segmenter.categories),
                         inputs=inputs, input_fn=input_fn, **dissect_args)
    result.settings["reference"] = "input"
    for ld in result.layers.values():
        ld.settings["reference"] = "input"
    return result


@dataclass
class InputOutputUnits:
    """One layer dissected against the output's segmentation and against the input map.

    Attributes:
        layer, concepts: what was dissected.
        output, input: the two ``LayerDissection`` s.
        kind: per unit, one of ``UNIT_KINDS`` (see the module docstring).
        input_iou_same_concept: ``[U]``, the IoU against the input map of the concept the
            output dissection labelled the unit with.
    """

    layer: str
    concepts: list[str]
    output: LayerDissection
    input: LayerDissection
    kind: list[str]
    input_iou_same_concept: torch.Tensor

    def units(self, kind: str) -> list[int]:
        """Units of one kind (``"copies input"``, ``"generates"`` or ``"neither"``)."""
        if kind not in UNIT_KINDS:
            raise ValueError(f"kind must be one of {UNIT_KINDS}, got {kind!r}.")
        return [u for u, k in enumerate(self.kind) if k == kind]

    def summary(self) -> dict[str, Any]:
        """Counts per kind and, per unit, both labels and IoUs (JSON-safe)."""
        names = self.concepts
        return {
            "layer": self.layer, "counts": {k: len(self.units(k)) for k in UNIT_KINDS},
            "units": [{"unit": u, "kind": self.kind[u],
                       "output_label": names[int(self.output.label_index[u])],
                       "output_iou": float(self.output.unit_iou[u]),
                       "input_label": names[int(self.input.label_index[u])],
                       "input_iou": float(self.input.unit_iou[u]),
                       "input_iou_same_concept": float(self.input_iou_same_concept[u])}
                      for u in range(len(self.kind))]}


def classify_units(output: LayerDissection, input: LayerDissection, cutoff: float) -> list[str]:
    """``UNIT_KINDS`` per unit from the two dissections' best IoUs."""
    kinds = []
    for out_iou, in_iou in zip(output.unit_iou.tolist(), input.unit_iou.tolist()):
        if in_iou >= cutoff and in_iou >= out_iou:
            kinds.append("copies input")
        elif out_iou >= cutoff and out_iou > in_iou:
            kinds.append("generates")
        else:
            kinds.append("neither")
    return kinds


def input_vs_output(generator: nn.Module, layers: str | Iterable[str], segmenter, *,
                    input_labels: Callable[[Any], torch.Tensor] = one_hot_labels, inputs: Any = None,
                    input_fn: Callable | None = None, cutoff: float = 0.05,
                    **dissect_args: Any) -> dict[str, InputOutputUnits]:
    """Dissect ``layers`` against the output's segmentation (``dissect``) and against the
    input label map (:func:`dissect_input_reference`) on the same held-out inputs, and
    classify each unit. Returns ``{layer: InputOutputUnits}``."""
    _check_inputs(inputs, input_fn)
    layers = as_layer_list(layers)
    args = dict(inputs=inputs, input_fn=input_fn, cutoff=cutoff, **dissect_args)
    out = dissect(generator, layers, segmenter, **args)
    ref = dissect_input_reference(generator, layers, segmenter, input_labels=input_labels, **args)
    result = {}
    for name in layers:
        o, i = out[name], ref[name]
        same = i.iou.gather(1, o.label_index.view(-1, 1)).flatten()
        result[name] = InputOutputUnits(layer=name, concepts=list(o.concepts), output=o, input=i,
                                        kind=classify_units(o, i, float(o.settings["cutoff"])),
                                        input_iou_same_concept=same)
    return result
