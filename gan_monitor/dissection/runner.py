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

from typing import Any, Callable, Iterable

import torch
from tqdm.auto import tqdm

from gan_monitor.core.inputs import call_generator, index_inputs, iterate_batches, num_samples
from gan_monitor.core.tracing import Trace
from gan_monitor.segmenters.base import validate_segmentation

__all__ = ["BatchRunner", "compact_labels"]


class BatchRunner:
    """Runs the generator (traced at ``layers``) and the segmenter over this rank's shard
    of the held-out inputs, ``batch_size`` samples at a time, and checks what comes back.

    Args:
        generator, segmenter, layers: what to run and which featuremaps to record.
        batch_size, device, progress: batching, where inputs go, tqdm bars (rank 0 only).
        comm: a ``gan_monitor.core.distributed`` communicator (which shard is this rank's).
        unit_check: called once, at the first batch, with ``{layer: number of units}``
            (e.g. to check per-unit arguments against the layers' sizes before any work).

    After the first batch, ``size`` is the segmentation size ``(H, W)`` (the same for every
    batch, checked) and ``units`` the number of units of each layer.
    """

    def __init__(self, generator, segmenter, layers, batch_size, device, progress, comm,
                 unit_check: Callable[[dict[str, int]], None] | None = None):
        self.generator, self.segmenter, self.layers = generator, segmenter, layers
        self.batch_size, self.device, self.progress, self.comm = batch_size, device, progress, comm
        self.unit_check = unit_check
        self.n_concepts = len(segmenter.concepts)
        self.size: tuple[int, int] | None = None
        self.units: dict[str, int] | None = None
        self.ids: torch.Tensor | None = None  # global sample index of each local sample
        self.observer = None  # e.g. concept_counts.SampleCounter: reset() per pass, update(images, labels) per batch

    def shard(self, inputs) -> tuple[Any, torch.Tensor]:
        """This rank's samples ``rank::world_size`` of ``inputs`` and their global indices."""
        ids = torch.arange(self.comm.rank, num_samples(inputs), self.comm.world_size)
        return (inputs if self.comm.world_size == 1 else index_inputs(inputs, ids)), ids

    def global_ids(self, start: int, b: int, device) -> torch.Tensor:
        """Global sample indices of the ``b`` shard samples from ``start``."""
        return self.ids[start:start + b].to(device)

    def batches(self, inputs, desc: str) -> Iterable[tuple[int, dict[str, torch.Tensor], torch.Tensor]]:
        """Batches of this rank's shard of ``inputs`` (``start``: index in the shard)."""
        inputs, self.ids = self.shard(inputs)
        n = num_samples(inputs)
        bar = tqdm(total=n, desc=desc, disable=not self.progress or self.comm.rank > 0, leave=False)
        if self.observer is not None:
            self.observer.reset()  # the last pass of a dissection is its main sample
        for start, batch in iterate_batches(inputs, self.batch_size, self.device):
            with Trace(self.generator, self.layers, require_featuremap=True) as trace:
                images = call_generator(self.generator, batch)
            acts = {name: trace[name] for name in self.layers}
            b = next(iter(acts.values())).shape[0]
            seg = validate_segmentation(self.segmenter.segment(images), b, self.n_concepts)
            seg = seg.to(next(iter(acts.values())).device)
            self._check(start, acts, seg)
            if self.observer is not None:
                self.observer.update(images, seg)
            bar.update(b)
            yield start, acts, seg
        bar.close()

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
            bad = ~torch.isfinite(a)
            if bad.any():
                units = bad.transpose(0, 1).flatten(1).any(1).nonzero().flatten().tolist()
                raise ValueError(
                    f"layer {name!r} has NaN/inf activations in units {units[:20]}"
                    f"{' ...' if len(units) > 20 else ''} (samples from {int(self.ids[start])}); fix the generator "
                    "(e.g. a diverged checkpoint) before dissecting."
                )


def compact_labels(seg: torch.Tensor, n_concepts: int) -> torch.Tensor:
    """Label maps in the smallest integer type that holds them (uint8 up to 256 concepts), for caching."""
    return seg.to(torch.uint8 if n_concepts <= 256 else torch.int32)
