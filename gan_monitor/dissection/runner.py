"""Running the generator and the segmenter over held-out inputs for ``dissect``: in
batches, over this process's shard (samples ``rank::world_size``), with checks of
what comes back (segmentation sizes, unlabelled images, NaN/inf activations).

Every pass of a dissection (the quantile pass, the iqr sample, the iqr tally pass)
iterates ``BatchRunner.batches``, which yields ``(start, activations, labels)``:
``start`` the batch's first index in this rank's shard, ``activations`` the traced
featuremaps ``{layer: [B, U, h, w]}`` and ``labels`` the checked segmentation
``[B, D, H, W]`` on the featuremaps' device.
"""
from __future__ import annotations

import time
import warnings
from typing import Any, Callable, Iterable

import torch
from tqdm.auto import tqdm

from gan_monitor.core.inputs import call_generator, call_generator_first, index_inputs, iterate_batches, num_samples
from gan_monitor.core.memory import release_freed_memory
from gan_monitor.core.tracing import Trace
from gan_monitor.segmenters.base import validate_segmentation

__all__ = ["BatchRunner", "compact_labels", "all_finite", "RANGE_SLACK"]

#: Images may overshoot the declared range by this fraction of its half-width (generators
#: without a final tanh, e.g. StyleGAN2, slightly exceed [-1, 1]); beyond it they are refused.
RANGE_SLACK = 0.5


class BatchRunner:
    """Runs the generator (traced at ``layers``) and the segmenter over this rank's shard
    of the held-out inputs, ``batch_size`` samples at a time, and checks what comes back.

    Args:
        generator, segmenter, layers: what to run and which featuremaps to record.
        batch_size, device, progress: batching, where inputs go, tqdm bars (rank 0 only).
        comm: a ``gan_monitor.core.distributed`` communicator (which shard is this rank's).
        unit_check: called once, at the first batch, with ``{layer: number of units}``
            (e.g. to check per-unit arguments against the layers' sizes before any work).
        image_range: ``(low, high)`` of the generator's images, mapped linearly to [-1, 1]
            before segmenting (``DissectionOptions.image_range``).

    Checks, per batch, in this order: the traced activations are finite (a NaN/inf names the
    layer and units), the images are finite, and (first batch) the images lie in the declared
    range (values beyond ``RANGE_SLACK`` times its half-width outside it are refused with the
    range seen; a first batch with no negative pixel under the default range warns that the
    generator may output [0, 1]).

    After the first batch, ``size`` is the segmentation size ``(H, W)`` (the same for every
    batch, checked) and ``units`` the number of units of each layer.
    """

    def __init__(self, generator, segmenter, layers, batch_size, device, progress, comm,
                 unit_check: Callable[[dict[str, int]], None] | None = None,
                 image_range: tuple[float, float] = (-1.0, 1.0)):
        self.generator, self.segmenter, self.layers = generator, segmenter, layers
        self.batch_size, self.device, self.progress, self.comm = batch_size, device, progress, comm
        self.unit_check = unit_check
        self.image_range = (float(image_range[0]), float(image_range[1]))
        self._range_checked = False
        self.n_concepts = len(segmenter.concepts)
        self.size: tuple[int, int] | None = None
        self.units: dict[str, int] | None = None
        self.ids: torch.Tensor | None = None  # global sample index of each local sample
        self.release_memory, self._released = False, 0.0  # set by the streaming paths (_release)
        self.observer = None  # e.g. concept_counts.SampleCounter: reset() per pass, update(images, labels) per batch

    def shard(self, inputs) -> tuple[Any, torch.Tensor]:
        """This rank's samples ``rank::world_size`` of ``inputs`` and their global indices."""
        ids = torch.arange(self.comm.rank, num_samples(inputs), self.comm.world_size)
        return (inputs if self.comm.world_size == 1 else index_inputs(inputs, ids)), ids

    def global_ids(self, start: int, b: int, device) -> torch.Tensor:
        """Global sample indices of the ``b`` shard samples from ``start``."""
        return self.ids[start:start + b].to(device)

    def batches(self, inputs, desc: str, observe: bool = True) -> Iterable[tuple[int, dict[str, torch.Tensor],
                                                                                  torch.Tensor]]:
        """Batches of this rank's shard of ``inputs`` (``start``: index in the shard).
        ``observe=False``: the ``observer`` skips this pass (e.g. iqr mode's level sample)."""
        inputs, self.ids = self.shard(inputs)
        n = num_samples(inputs)
        bar = tqdm(total=n, desc=desc, disable=not self.progress or self.comm.rank > 0, leave=False)
        observer = self.observer if observe else None
        if observer is not None:
            observer.reset()  # the last observed pass of a dissection is its main sample
        for start, batch in iterate_batches(inputs, self.batch_size, self.device):
            with Trace(self.generator, self.layers, require_featuremap=True) as trace:
                call = call_generator_first if self.size is None else call_generator  # first: hint at input_fn=
                images = call(self.generator, batch)
            acts = {name: trace[name] for name in self.layers}
            b = next(iter(acts.values())).shape[0]
            self._check_activations(start, acts)
            images = self._checked_images(start, images)
            seg = validate_segmentation(self.segmenter.segment(images), b, self.n_concepts)
            seg = seg.to(next(iter(acts.values())).device)
            self._check(start, acts, seg)
            if observer is not None:
                observer.update(images, seg)
            bar.update(b)
            yield start, acts, seg
            del acts, seg, images
            self._release()
        bar.close()

    def featuremaps(self, inputs, desc: str) -> Iterable[tuple[int, dict[str, torch.Tensor]]]:
        """Like ``batches`` without images or segmentations: ``(start, activations)`` of this
        rank's shard, the generator only and only up to the last traced layer (extra passes
        of the streaming quantile search)."""
        inputs, self.ids = self.shard(inputs)
        bar = tqdm(total=num_samples(inputs), desc=desc, disable=not self.progress or self.comm.rank > 0, leave=False)
        for start, batch in iterate_batches(inputs, self.batch_size, self.device):
            with Trace(self.generator, self.layers, require_featuremap=True, stop=True) as trace:
                call_generator(self.generator, batch)
            acts = {name: trace[name] for name in self.layers}
            bar.update(next(iter(acts.values())).shape[0])
            yield start, acts
            del acts
            self._release()
        bar.close()

    def _release(self) -> None:
        """Streaming passes (``release_memory`` set): hand freed heap pages back to the system
        at most once a second (``core.memory``; a call costs up to ~10 ms), so that memory
        does not creep up over thousands of batches."""
        if self.release_memory and time.monotonic() - self._released >= 1.0:
            release_freed_memory()
            self._released = time.monotonic()

    def _check_activations(self, start: int, acts: dict[str, torch.Tensor]) -> None:
        for name, a in acts.items():
            if all_finite(a):
                continue
            bad = ~torch.isfinite(a)
            units = bad.transpose(0, 1).flatten(1).any(1).nonzero().flatten().tolist()
            raise ValueError(
                f"layer {name!r} has NaN/inf activations in units {units[:20]}"
                f"{' ...' if len(units) > 20 else ''} (samples from {int(self.ids[start])}); fix the generator "
                "(e.g. a diverged checkpoint) before dissecting."
            )

    def _checked_images(self, start: int, images: Any) -> Any:
        """``images`` checked (finite; first batch: in the declared range) and mapped to [-1, 1]."""
        if not isinstance(images, torch.Tensor) or not images.is_floating_point():
            return images  # the segmenter's validation says what it needs
        if not all_finite(images):
            rows = (~torch.isfinite(images.flatten(1))).any(1).nonzero().flatten()
            which = self.ids[start:start + images.shape[0]][rows.cpu()].tolist()
            raise ValueError(f"the generator's output images contain NaN/inf (held-out sample(s) {which[:10]}) "
                             f"although the traced layers {list(self.layers)} are finite: the problem is after "
                             "them; fix the generator (e.g. a diverged checkpoint) before dissecting.")
        low, high = self.image_range
        if not self._range_checked:
            self._range_checked = True
            seen_low, seen_high = (float(v) for v in torch.aminmax(images.detach()))
            slack = RANGE_SLACK * (high - low) / 2
            if seen_low < low - slack or seen_high > high + slack:
                raise ValueError(
                    f"the generator's images range over [{seen_low:.4g}, {seen_high:.4g}], far outside the declared "
                    f"image_range ({low:g}, {high:g}); the segmenter expects [-1, 1] images and would quietly "
                    "mislabel these. Declare the generator's output range, e.g. image_range=(0, 255) or (0, 1) "
                    "(dissect(..., image_range=...), DissectionMonitor(..., image_range=...)), or rescale its output.")
            if (low, high) == (-1.0, 1.0) and seen_low >= 0.0:
                warnings.warn(
                    f"gan_monitor: the first batch of generated images has no negative pixel (range [{seen_low:.3g}, "
                    f"{seen_high:.3g}]); dissection assumes [-1, 1] images. If the generator outputs [0, 1], pass "
                    "image_range=(0, 1).", stacklevel=4)
        if (low, high) != (-1.0, 1.0):
            images = (images - low) * (2.0 / (high - low)) - 1.0
        return images

    def _check(self, start: int, acts: dict[str, torch.Tensor], seg: torch.Tensor) -> None:
        size = (int(seg.shape[-2]), int(seg.shape[-1]))
        if self.size is None:
            self.size = size
        elif size != self.size:
            raise ValueError(f"segment() returned {size[0]}x{size[1]} maps after {self.size[0]}x{self.size[1]}; "
                             "every segmentation of a dissection must have the same size.")
        empty = ~(seg.flatten(1) > 0).any(1)
        if empty.any():
            which = self.ids[start:start + seg.shape[0]][empty.cpu()].tolist()
            raise ValueError(
                f"the segmenter found no concept at all (every pixel label 0) in held-out sample(s) {which[:10]}; "
                "dissection needs labelled pixels in every image. Check that the segmenter fits these images "
                "(value range [-1, 1], concept list) or leave such inputs out."
            )
        if self.units is None:
            self.units = {name: int(a.shape[1]) for name, a in acts.items()}
            if self.unit_check is not None:
                self.unit_check(self.units)
        for name, a in acts.items():
            if a.shape[0] != seg.shape[0]:
                raise ValueError(f"layer {name!r} produced {a.shape[0]} featuremaps for {seg.shape[0]} images.")


def all_finite(x: torch.Tensor) -> bool:
    """No NaN or inf in ``x``: its minimum and maximum are finite (one pass without a
    temporary; NaN propagates to both; 20x faster than ``torch.isfinite(x).all()`` here)."""
    if x.numel() == 0 or not (x.is_floating_point() or x.is_complex()):
        return True
    if x.is_complex():
        return bool(torch.isfinite(x).all())
    low, high = torch.aminmax(x.detach())
    return bool(torch.isfinite(low) & torch.isfinite(high))


def compact_labels(seg: torch.Tensor, n_concepts: int) -> torch.Tensor:
    """Label maps in the smallest integer type that holds them (uint8 up to 256 concepts), for caching."""
    return seg.to(torch.uint8 if n_concepts <= 256 else torch.int32)
