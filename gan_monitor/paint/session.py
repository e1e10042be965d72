"""The painting model behind the page: which units draw which concept, the samples on
show, and edits made of brush strokes (no web code here; ``server`` wraps it).

A stroke is ``(concept c, mode, mask M at image resolution, n units)``. It is applied at
the layer with the project's edit rule (docs/method.md §6)::

    r' = r * (1 - a*m) + k * (a*m)

with ``a`` = 1 for the concept's first ``n`` units (0 for the others), ``m`` = ``M``
area-averaged down to the layer's resolution (the painted fraction of each featuremap
cell) and ``k`` = the units' insertion values for c when drawing (their mean activation
where c is present, coverage-weighted: ``interventions.ace.insertion_values``) or 0 when
removing. Several strokes are applied in order, each to the result of the previous ones.

The concept's units are the layer's interpretable units labelled with it, best IoU first,
at most ``units_per_concept`` (or a ranking given by the caller, e.g. causal units).

After each edit the session reports, in the last stroke's painted region ``M`` (weighted
by ``M``), the concept's segmented pixels before that stroke (all earlier strokes applied)
and after it, and in the unedited image.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from gan_monitor.core.inputs import (
    call_generator,
    index_inputs,
    make_inputs,
    move_inputs,
)
from gan_monitor.core.tracing import (
    Edit,
    Trace,
    eval_mode,
    module_device,
    resolve_layer,
)
from gan_monitor.core.validation import non_negative_int, positive_int
from gan_monitor.dissection.pipeline import dissect
from gan_monitor.interventions.ace import insertion_values
from gan_monitor.segmenters.base import validate_segmentation, validate_segmenter

__all__ = ["ConceptUnits", "Stroke", "Sample", "EditResult", "PaintSession", "MODES"]

MODES = ("draw", "remove")


@dataclass(frozen=True)
class ConceptUnits:
    """The units that paint one concept. ``values``: insertion value of every unit of the layer."""

    name: str
    index: int
    category: str
    units: tuple[int, ...]
    scores: tuple[float, ...]  # IoU (or the caller's score) of each unit, same order
    values: torch.Tensor


@dataclass(frozen=True)
class Stroke:
    """One brush stroke: ``mask`` float ``[H, W]`` in [0, 1] at image resolution."""

    concept: str
    mode: str
    mask: torch.Tensor
    units: int | None = None  # how many of the concept's units (default: all)


@dataclass
class Sample:
    id: int
    seed: int
    inputs: Any  # one generator input (batch of 1)
    image: torch.Tensor  # [3, H, W] in [-1, 1], unedited
    labels: torch.Tensor  # [D, Hs, Ws] long, its segmentation


@dataclass
class EditResult:
    image: torch.Tensor  # [3, H, W] edited
    labels: torch.Tensor  # [D, Hs, Ws]
    change: dict[str, Any] | None  # see PaintSession.edit


class PaintSession:
    """A generator layer ready to paint on. Build it with :meth:`create` (dissects the layer
    or takes a dissection) or directly from a ``LayerDissection`` and insertion values.

    Args:
        generator, layer, segmenter: the model, the dotted layer name, the segmenter.
        dissection: ``LayerDissection`` of ``layer`` made with this segmenter.
        values: insertion values ``[C, U]`` (``interventions.ace.insertion_values``).
        units_per_concept: at most this many units per concept.
        units, ranking: optional ``{concept: [unit, ...]}`` (best first) replacing the
            IoU ranking, and the words saying how it was ranked (shown on the page).
        samples, sample_seed, input_fn: the first samples on show; sample ``i`` is drawn
            with seed ``sample_seed + i`` (``core.inputs.make_inputs``).
        max_samples: samples held at once (the oldest are dropped), max_strokes: per edit.
    """

    def __init__(self, generator: nn.Module, layer: str, segmenter, dissection, values: torch.Tensor, *,
                 units_per_concept: int = 20, units: Mapping[str, Sequence[int]] | None = None,
                 ranking: str | None = None, samples: int = 6, sample_seed: int = 10_000,
                 input_fn: Callable | None = None, device=None, max_samples: int = 64, max_strokes: int = 32):
        validate_segmenter(segmenter)
        resolve_layer(generator, layer)
        self.generator, self.layer, self.segmenter = generator, layer, segmenter
        self.device = torch.device(device) if device is not None else module_device(generator)
        self.input_fn = input_fn
        self.units_per_concept = positive_int("units_per_concept", units_per_concept)
        self.max_samples = positive_int("max_samples", max_samples)
        self.max_strokes = positive_int("max_strokes", max_strokes)
        self.sample_seed = non_negative_int("sample_seed", sample_seed)
        self.concept_names = list(segmenter.concepts)
        self.categories = list(segmenter.categories)
        if list(dissection.concepts) != self.concept_names:
            raise ValueError(f"the dissection of {dissection.layer!r} was made with other concepts than the "
                             f"segmenter's ({len(dissection.concepts)} vs {len(self.concept_names)}); dissect "
                             f"again with this segmenter.")
        self.dissection = dissection
        self._lock = threading.Lock()
        self._samples: OrderedDict[int, Sample] = OrderedDict()
        self._next_id = 0
        first = make_inputs(generator, 1, self.sample_seed, input_fn)
        with self._lock, eval_mode(generator, segmenter), torch.no_grad(), \
                Trace(generator, layer, detach=True, require_featuremap=True) as trace:
            image = call_generator(generator, move_inputs(first, self.device))
        self.layer_shape = tuple(int(s) for s in trace[layer].shape[1:])  # (U, h, w)
        self.image_size = _check_images(image)
        if dissection.num_units != self.layer_shape[0]:
            raise ValueError(f"the dissection of {dissection.layer!r} has {dissection.num_units} units but layer "
                             f"{layer!r} has {self.layer_shape[0]}; was it made for another generator or layer?")
        values = torch.as_tensor(values, dtype=torch.float32)
        if tuple(values.shape) != (len(self.concept_names), self.layer_shape[0]):
            raise ValueError(f"values must be insertion values [C, U] = [{len(self.concept_names)}, "
                             f"{self.layer_shape[0]}], got shape {tuple(values.shape)}.")
        self.ranking = ranking or ("IoU with the concept (dissection of this layer)" if units is None
                                   else "given by the caller")
        self.concepts = self._concept_units(values.to(self.device), units)
        self.new_samples(positive_int("samples", samples))

    @classmethod
    def create(cls, generator: nn.Module, layer: str, segmenter, *, dissection=None, n: int = 500, seed: int = 0,
               threshold: str = "quantile", cutoff: float = 0.05, batch_size: int = 32, insertion_n: int = 200,
               input_fn: Callable | None = None, device=None, progress: bool = False, **kwargs) -> "PaintSession":
        """Dissect ``layer`` (unless ``dissection``, a ``DissectionResult`` or ``LayerDissection``,
        is given) on ``n`` held-out samples from ``seed``; take the insertion values from the
        dissection's extras or compute them on ``insertion_n`` samples from ``seed + 1``."""
        if dissection is None:
            dissection = dissect(generator, layer, segmenter, n=n, seed=seed, input_fn=input_fn,
                                 threshold=threshold, cutoff=cutoff, batch_size=batch_size, device=device,
                                 progress=progress)
        if hasattr(dissection, "layers"):  # a DissectionResult
            dissection = dissection[layer]
        if dissection.layer != layer:
            raise ValueError(f"the dissection is of layer {dissection.layer!r}, not {layer!r}.")
        values = dissection.extras.get("insertion_values")
        if values is None:
            values = insertion_values(generator, layer, segmenter, n=insertion_n, seed=seed + 1, input_fn=input_fn,
                                      batch_size=batch_size, device=device, dissection=dissection)
        return cls(generator, layer, segmenter, dissection, torch.as_tensor(values), input_fn=input_fn,
                   device=device, **kwargs)

    # ---- concepts -------------------------------------------------------
    def _concept_units(self, values: torch.Tensor, given) -> dict[str, ConceptUnits]:
        d = self.dissection
        out: dict[str, ConceptUnits] = {}
        if given is not None:
            for name, units in given.items():
                c = self._concept_index(name)
                units = [int(u) for u in units][: self.units_per_concept]
                bad = [u for u in units if not 0 <= u < self.layer_shape[0]]
                if not units or bad:
                    raise ValueError(f"units for {name!r} must be a non-empty list of unit indices in "
                                     f"0..{self.layer_shape[0] - 1}, got {list(given[name])!r}.")
                scores = tuple(float(d.iou[u, c]) for u in units)
                out[name] = ConceptUnits(name, c, self.categories[c], tuple(units), scores, values[c])
            return out
        for u in d.ranked_units(only_interpretable=True):
            c = int(d.label_index[u])
            name = self.concept_names[c]
            if name not in out:
                out[name] = ConceptUnits(name, c, self.categories[c], (), (), values[c])
            entry = out[name]
            if len(entry.units) < self.units_per_concept:
                out[name] = ConceptUnits(name, c, entry.category, entry.units + (u,),
                                         entry.scores + (float(d.unit_iou[u]),), entry.values)
        return dict(sorted(out.items(), key=lambda kv: (-len(kv[1].units), kv[1].index)))

    def _concept_index(self, name: str) -> int:
        if name in self.concept_names[1:]:
            return self.concept_names.index(name)
        raise ValueError(f"unknown concept {name!r}; the segmenter knows: {', '.join(self.concept_names[1:])}.")

    # ---- samples --------------------------------------------------------
    def new_samples(self, count: int) -> list[Sample]:
        """Draw ``count`` new samples (the next seeds); the oldest beyond ``max_samples`` are dropped."""
        made = []
        for _ in range(positive_int("count", count)):
            seed = self.sample_seed + self._next_id
            inputs = move_inputs(make_inputs(self.generator, 1, seed, self.input_fn), self.device)
            with self._lock, eval_mode(self.generator, self.segmenter), torch.no_grad():
                image = call_generator(self.generator, inputs)
                labels = self._segment(image)
            sample = Sample(self._next_id, seed, inputs, image[0].cpu(), labels[0].cpu())
            self._samples[sample.id] = sample
            self._next_id += 1
            made.append(sample)
        while len(self._samples) > self.max_samples:
            self._samples.popitem(last=False)
        return made

    @property
    def sample_ids(self) -> list[int]:
        return list(self._samples)

    def sample(self, sample_id: int) -> Sample:
        """The held sample ``sample_id``; a LookupError says which ids are held otherwise."""
        if sample_id in self._samples:
            return self._samples[sample_id]
        held = ", ".join(str(i) for i in self._samples)
        raise LookupError(f"unknown sample id {sample_id!r}; the samples held are {held} "
                          f"(ask for new samples to get more).")

    def _segment(self, images: torch.Tensor) -> torch.Tensor:
        seg = self.segmenter.segment(images)
        return validate_segmentation(seg, images.shape[0], len(self.concept_names))

    # ---- edits ----------------------------------------------------------
    def check_stroke(self, stroke: Stroke, number: int = 0) -> ConceptUnits:
        """The stroke's concept units; a ValueError naming the stroke if anything is off."""
        where = f"stroke {number}"
        if stroke.concept not in self.concepts:
            have = ", ".join(self.concepts) or "(none: no interpretable unit at this layer)"
            raise ValueError(f"{where}: unknown concept {stroke.concept!r}; concepts with units: {have}.")
        if stroke.mode not in MODES:
            raise ValueError(f"{where}: mode must be 'draw' or 'remove', got {stroke.mode!r}.")
        entry = self.concepts[stroke.concept]
        if stroke.units is not None and not (isinstance(stroke.units, int) and 1 <= stroke.units <= len(entry.units)):
            raise ValueError(f"{where}: units must be an integer from 1 to {len(entry.units)} (the units of "
                             f"{stroke.concept!r}), got {stroke.units!r}.")
        mask = stroke.mask
        if not isinstance(mask, torch.Tensor) or tuple(mask.shape) != self.image_size:
            got = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
            raise ValueError(f"{where}: the mask must be {self.image_size[0]} rows of {self.image_size[1]} values "
                             f"(the image's size), got {got}.")
        if not bool(torch.isfinite(mask).all()) or float(mask.min()) < 0 or float(mask.max()) > 1:
            raise ValueError(f"{where}: mask values must lie in [0, 1] (0 = not painted, 1 = painted).")
        if float(mask.max()) == 0:
            raise ValueError(f"{where}: the mask paints no pixel (all values are 0).")
        return entry

    def layer_mask(self, mask: torch.Tensor) -> torch.Tensor:
        """Image-resolution mask ``[H, W]`` -> the painted fraction of each featuremap cell ``[h, w]``."""
        return F.adaptive_avg_pool2d(mask[None, None].float(), self.layer_shape[1:])[0, 0]

    def edit(self, sample_id: int, strokes: Sequence[Stroke]) -> EditResult:
        """Apply ``strokes`` in order to sample ``sample_id``.

        ``change`` (None without strokes) describes the last stroke's region ``M``:
        ``region_pixels`` = sum of M; ``before``, ``after``, ``original`` = M-weighted
        pixels of the stroke's concept before the stroke, after it, and with no edit;
        ``change`` = after - before; ``fraction_before``/``fraction_after`` divide by
        ``region_pixels``.
        """
        sample = self.sample(sample_id)
        if len(strokes) > self.max_strokes:
            raise ValueError(f"at most {self.max_strokes} strokes per edit, got {len(strokes)}; press reset.")
        entries = [self.check_stroke(s, i) for i, s in enumerate(strokes)]
        unit_lists = [list(e.units[: s.units or len(e.units)]) for s, e in zip(strokes, entries)]
        if not strokes:
            return EditResult(sample.image, sample.labels, None)
        # two images: [0] without the last stroke, [1] with it (one forward pass of 2)
        several = len(strokes) > 1
        batch = _repeat(sample.inputs, 2 if several else 1)
        with self._lock, eval_mode(self.generator, self.segmenter), torch.no_grad(), ExitStack() as stack:
            for i, (stroke, entry, units) in enumerate(zip(strokes, entries, unit_lists)):
                m = self.layer_mask(stroke.mask).to(self.device)
                if several:
                    m = torch.stack([m if i < len(strokes) - 1 else torch.zeros_like(m), m])
                value = entry.values if stroke.mode == "draw" else 0.0
                stack.enter_context(Edit(self.generator, self.layer, units=units, mask=m, value=value))
            images = call_generator(self.generator, batch)
            labels = self._segment(images).cpu()
        images = images.cpu()
        before_labels = labels[0] if several else sample.labels
        last = strokes[-1]
        c = entries[-1].index
        region = _region_at(last.mask.float(), tuple(labels.shape[-2:]))
        total = float(region.sum())

        def pixels(lab: torch.Tensor) -> float:
            return float((region * (lab == c).any(0).float()).sum())

        before, after, original = pixels(before_labels), pixels(labels[-1]), pixels(sample.labels)
        change = {"concept": last.concept, "mode": last.mode, "units": len(unit_lists[-1]),
                  "region_pixels": total, "before": before, "after": after, "original": original,
                  "change": after - before, "fraction_before": before / total if total else 0.0,
                  "fraction_after": after / total if total else 0.0}
        return EditResult(images[-1], labels[-1], change)


def _repeat(inputs: Any, times: int) -> Any:
    return inputs if times == 1 else index_inputs(inputs, torch.zeros(times, dtype=torch.long))


def _check_images(images: Any) -> tuple[int, int]:
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 3:
        got = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"the generator must return RGB images [N, 3, H, W] in [-1, 1] to paint on, got {got}.")
    return int(images.shape[2]), int(images.shape[3])


def _region_at(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The painted mask at the segmentation's resolution (area average, or nearest when larger)."""
    if tuple(mask.shape) == size:
        return mask
    mode = "area" if size[0] <= mask.shape[0] and size[1] <= mask.shape[1] else "nearest"
    return F.interpolate(mask[None, None], size=size, mode=mode)[0, 0]
