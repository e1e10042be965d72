"""Statistics of the held-out sample that a dissection gets for free: from the label maps it
already computes, how many pixels and images show each concept, and from the generated
images, exact per-pixel sums for a diversity measure (docs/method.md, "Training signals").

:class:`SampleCounter` watches the dissection's main pass (``runner.BatchRunner`` calls
``reset()`` when a pass starts and ``update(images, labels)`` per batch). Everything it keeps
is an integer count, so the counts add across batches and across ranks exactly (one
``sum_states`` collective with the tallies) and do not depend on the batch size:

* ``pixel_counts[c]``: (image, pixel) positions labelled ``c`` in any label channel;
* ``image_counts[c]``: images in which ``c`` appears at least once;
* ``images``: images counted;
* ``value_sum``/``square_sum``: per pixel and channel, sums over images of the images
  (average-pooled in float64 to at most ``DIVERSITY_SIZE`` x ``DIVERSITY_SIZE``) quantised to
  integers (``round(x * 2**QUANT_BITS)``, ``x`` in [-1, 1]); the per-pixel standard deviation
  across images follows exactly from them (:func:`pixel_diversity`).

Across ranks this adds ``8 * (2 * C + 1 + 6 * h * w)`` bytes to the dissection's count
all-reduce (``h, w`` = the image size capped at ``DIVERSITY_SIZE``; 196 KB at 64 x 64).

``as_dict()`` is what ``DissectionResult.sample_stats`` stores (JSON-ready, no per-pixel sums).
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["QUANT_BITS", "SampleCounter", "count_labels", "pixel_diversity", "presence_entropy"]

QUANT_BITS = 12  # images are quantised to multiples of 2**-12 (finer than 8-bit pictures)
DIVERSITY_SIZE = 64  # larger images are average-pooled to at most this size for the diversity sums


def count_labels(seg: torch.Tensor, n_concepts: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(pixel_counts [C], image_counts [C])`` (int64) of label maps ``seg`` ``[B, D, H, W]``
    (or ``[B, H, W]``): a pixel counts once per concept even if several channels name it."""
    if seg.dim() == 3:
        seg = seg.unsqueeze(1)
    seg = seg.long()
    b, d = seg.shape[0], seg.shape[1]
    pixels = torch.zeros(n_concepts, dtype=torch.long, device=seg.device)
    for k in range(d):
        fresh = torch.ones_like(seg[:, k], dtype=torch.bool)
        for j in range(k):  # a concept repeated in an earlier channel at this pixel is already counted
            fresh &= seg[:, k] != seg[:, j]
        pixels += torch.bincount(seg[:, k][fresh], minlength=n_concepts)[:n_concepts]
    present = torch.zeros(b, n_concepts, dtype=torch.bool, device=seg.device)
    present.scatter_(1, seg.reshape(b, -1), True)
    return pixels, present.sum(0)


def pixel_diversity(value_sum: torch.Tensor, square_sum: torch.Tensor, images: int) -> float:
    """Mean over pixels and channels of the standard deviation across images (in image units,
    [-1, 1] images), from the exact integer sums of the quantised images; 0 for < 2 images."""
    if images < 2:
        return 0.0
    scale = float(2 ** QUANT_BITS)
    mean = value_sum.double() / images
    var = (square_sum.double() / images - mean * mean).clamp_min(0.0) * images / (images - 1)
    return float(var.sqrt().mean()) / scale


def presence_entropy(image_counts, images: int) -> float:
    """Sum over concepts (index 0 excluded) of the binary entropy (bits) of "the concept appears
    in an image": 0 when every image shows the same set of concepts (a collapsed generator)."""
    total = 0.0
    for count in list(image_counts)[1:]:
        p = int(count) / images if images else 0.0
        if 0.0 < p < 1.0:
            total -= p * math.log2(p) + (1 - p) * math.log2(1 - p)
    return total


class SampleCounter:
    """Integer statistics of the images and label maps of one dissection pass (module docstring).

    Its ``metric_state`` lets ``gan_monitor.core.distributed.sum_states`` sum it over ranks
    together with the tallies."""

    def __init__(self, n_concepts: int):
        self.n_concepts = int(n_concepts)
        self.reset()

    def reset(self) -> None:
        self.pixel_counts = torch.zeros(self.n_concepts, dtype=torch.long)
        self.image_counts = torch.zeros(self.n_concepts, dtype=torch.long)
        self.images = torch.zeros(1, dtype=torch.long)
        self.value_sum = torch.zeros(0, dtype=torch.long)
        self.square_sum = torch.zeros(0, dtype=torch.long)
        self.size: tuple[int, int] | None = None

    @property
    def metric_state(self) -> dict[str, torch.Tensor]:
        return {"pixel_counts": self.pixel_counts, "image_counts": self.image_counts, "images": self.images,
                "value_sum": self.value_sum, "square_sum": self.square_sum}

    def update(self, images: torch.Tensor, seg: torch.Tensor) -> None:
        """Add a batch: generated ``images`` ``[B, 3, H', W']`` and their label maps ``seg``."""
        pixels, present = count_labels(seg, self.n_concepts)
        if self.pixel_counts.device != pixels.device:  # counts stay where the batches are: no transfer per batch
            self.pixel_counts, self.image_counts, self.images = (
                t.to(pixels.device) for t in (self.pixel_counts, self.image_counts, self.images))
        self.pixel_counts = self.pixel_counts + pixels
        self.image_counts = self.image_counts + present
        self.images = self.images + int(seg.shape[0])
        self.size = (int(seg.shape[-2]), int(seg.shape[-1]))
        x = images.detach().double().clamp(-1, 1)
        if x.shape[-2] > DIVERSITY_SIZE or x.shape[-1] > DIVERSITY_SIZE:
            x = F.adaptive_avg_pool2d(x, (min(x.shape[-2], DIVERSITY_SIZE), min(x.shape[-1], DIVERSITY_SIZE)))
        q = torch.round(x * 2 ** QUANT_BITS).long()
        if self.value_sum.numel() == 0:
            self.value_sum = torch.zeros(q.shape[1:], dtype=torch.long, device=q.device)
            self.square_sum = torch.zeros(q.shape[1:], dtype=torch.long, device=q.device)
        self.value_sum = self.value_sum + q.sum(0)
        self.square_sum = self.square_sum + (q * q).sum(0)

    def as_dict(self, concepts: list[str]) -> dict[str, Any]:
        """The JSON-ready statistics stored in ``DissectionResult.sample_stats``."""
        images = int(self.images.item())
        h, w = self.size or (0, 0)
        return {"concepts": list(concepts), "images": images, "pixels_per_image": h * w,
                "pixel_counts": self.pixel_counts.tolist(), "image_counts": self.image_counts.tolist(),
                "pixel_diversity": pixel_diversity(self.value_sum, self.square_sum, images),
                "presence_entropy": presence_entropy(self.image_counts.tolist(), images)}
