"""Counting agreement between thresholded units and segmentations (docs/method.md §4).

Everything here is an integer count that adds up across batches and processes:
``LayerTally`` is a torchmetrics ``Metric`` whose states all reduce with
``dist_reduce_fx="sum"``, so ``merge_state`` and DDP synchronisation are exact.
Its memory is fixed by the numbers of units U, concepts C and categories K
(``O(U*C + U*K)`` int64), independent of the number of samples.

Per batch the work is vectorised: upsample (two small matmuls), compare with the
thresholds in place, then one batched matmul of the ``[B, U, HW]`` 0/1 unit masks
with a compact per-image one-hot ``[B, HW, L]`` of the L concepts present in each
image. Each matmul entry counts at most HW pixels, so float32 is exact for
segmentations below 2^24 pixels; counts are accumulated in int64.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torchmetrics import Metric

from gan_monitor.core.validation import choice
from gan_monitor.dissection.options import IOU_VARIANTS
from gan_monitor.dissection.upsample import upsample

__all__ = ["EncodedSegmentation", "encode_segmentation", "category_index", "concept_presence", "dedupe_labels",
           "LayerTally", "image_chunks", "CHUNK_ELEMENTS"]

# Largest number of upsampled activations materialised at once (64 MiB of float32).
CHUNK_ELEMENTS = 1 << 24


def image_chunks(n_images: int, per_image: int, limit: int = CHUNK_ELEMENTS):
    """``(start, stop)`` ranges of images with at most ``limit`` elements each (at least one image)."""
    step = max(1, limit // max(1, per_image))
    for start in range(0, n_images, step):
        yield start, min(n_images, start + step)


def category_index(categories: Sequence[str]) -> tuple[list[str], torch.Tensor]:
    """Distinct categories of concepts 1.. and each concept's category index (-1 for concept 0)."""
    names = list(dict.fromkeys(categories[1:]))
    index = torch.tensor([-1] + [names.index(c) for c in categories[1:]], dtype=torch.long)
    return names, index


@dataclass
class EncodedSegmentation:
    """A batch of segmentations prepared for tallying (see ``encode_segmentation``).

    labels: long [B, D, HW], concept index per pixel and map; a concept repeated in a
        later map at the same pixel is set to 0 so that each (pixel, concept) counts once.
    onehot: float32 [B, HW, L+1], 1 where the pixel shows the image's l-th present concept;
        column L collects label 0 and is ignored.
    concept_ids: long [B, L+1], the concept of each local column (C for unused columns).
    present: bool [B, C], concept present in the image (column 0 always False).
    category_present: bool [B, K].
    """

    labels: torch.Tensor
    onehot: torch.Tensor
    concept_ids: torch.Tensor
    present: torch.Tensor
    category_present: torch.Tensor
    size: tuple[int, int]

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def slice(self, start: int, stop: int) -> "EncodedSegmentation":
        return EncodedSegmentation(self.labels[start:stop], self.onehot[start:stop],
                                   self.concept_ids[start:stop], self.present[start:stop],
                                   self.category_present[start:stop], self.size)


def dedupe_labels(labels: torch.Tensor) -> torch.Tensor:
    """``[B, D, P]`` label maps with a concept repeated at a pixel in a later map set to 0."""
    if labels.shape[1] > 1:
        labels = labels.clone()
        for j in range(1, labels.shape[1]):
            repeat = (labels[:, :j] == labels[:, j:j + 1]).any(1)
            labels[:, j][repeat] = 0
    return labels


def concept_presence(labels: torch.Tensor, n_concepts: int, concept_category: torch.Tensor,
                     n_categories: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Which concepts (bool ``[B, C]``, column 0 False) and categories (``[B, K]``) each image shows."""
    b = labels.shape[0]
    present = torch.zeros(b, n_concepts, dtype=torch.bool, device=labels.device)
    present.scatter_(1, labels.reshape(b, -1).long(), True)
    present[:, 0] = False
    cat = concept_category.to(labels.device)
    cat_onehot = torch.zeros(n_concepts, n_categories, device=labels.device)
    cat_onehot[torch.arange(1, n_concepts, device=labels.device), cat[1:]] = 1.0
    return present, (present.float() @ cat_onehot) > 0


def encode_segmentation(seg: torch.Tensor, n_concepts: int, concept_category: torch.Tensor,
                        n_categories: int) -> EncodedSegmentation:
    """Encode ``seg`` (long ``[B, H, W]`` or ``[B, D, H, W]``) for ``LayerTally``/``LevelTally``."""
    if seg.dim() == 3:
        seg = seg[:, None]
    if seg.dim() != 4:
        raise ValueError(f"segmentation must be [B,H,W] or [B,D,H,W], got shape {tuple(seg.shape)}.")
    b, d, height, width = seg.shape
    labels = dedupe_labels(seg.reshape(b, d, height * width).long())
    present, category_present = concept_presence(labels, n_concepts, concept_category, n_categories)
    n_local = max(1, int(present.sum(1).max())) if b else 1
    local = torch.where(present, present.long().cumsum(1) - 1, n_local)
    concept_ids = torch.full((b, n_local + 1), n_concepts, dtype=torch.long, device=seg.device)
    rows, cols = present.nonzero(as_tuple=True)
    concept_ids[rows, local[rows, cols]] = cols
    local_pixels = local.gather(1, labels.reshape(b, -1)).view(b, d, -1)
    onehot = torch.zeros(b, height * width, n_local + 1, device=seg.device)
    onehot.scatter_(2, local_pixels.transpose(1, 2), 1.0)
    return EncodedSegmentation(labels, onehot, concept_ids, present, category_present, (height, width))


class LayerTally(Metric):
    """Exact counts for the IoU of every unit of one layer with every concept.

    Args:
        thresholds: float ``[U]``; a unit is on where its upsampled activation > threshold.
        categories: category of each concept (length C, index 0 = unlabeled).

    States (all int64, summed across batches/processes):
        intersection [U, C]: pixels where unit u is on and concept c is present.
        active [U]: pixels where unit u is on.
        active_in_category [U, K]: pixels where u is on, in images showing some concept of category k.
        label_pixels [C], images_with_concept [C], pixels_in_category [K], pixels, images.

    ``update(acts, seg)`` takes raw featuremaps ``[B, U, h, w]`` and a segmentation
    (long ``[B, (D,) H, W]`` or an ``EncodedSegmentation``); ``iou(variant)`` gives
    the ``[U, C]`` IoU, ``variant`` = ``"plain"`` or ``"category"`` (docs/method.md §4).
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = True

    def __init__(self, thresholds: torch.Tensor, categories: Sequence[str], **kwargs):
        super().__init__(**kwargs)
        thresholds = torch.as_tensor(thresholds, dtype=torch.float32).flatten()
        self.register_buffer("thresholds", thresholds.clone(), persistent=False)
        self.category_names, concept_category = category_index(list(categories))
        self.register_buffer("concept_category", concept_category, persistent=False)
        u, c, k = thresholds.numel(), len(categories), len(self.category_names)
        self.n_units, self.n_concepts, self.n_categories = u, c, k
        for name, shape in [("intersection", (u, c)), ("active", (u,)), ("active_in_category", (u, k)),
                            ("label_pixels", (c,)), ("images_with_concept", (c,)),
                            ("pixels_in_category", (k,)), ("pixels", ()), ("images", ())]:
            self.add_state(name, default=torch.zeros(shape, dtype=torch.long), dist_reduce_fx="sum")

    def encode(self, seg: torch.Tensor) -> EncodedSegmentation:
        return encode_segmentation(seg, self.n_concepts, self.concept_category, self.n_categories)

    def update(self, acts: torch.Tensor, seg) -> None:  # type: ignore[override]
        if not isinstance(seg, EncodedSegmentation):
            seg = self.encode(seg)
        if acts.dim() != 4 or acts.shape[1] != self.n_units or acts.shape[0] != len(seg):
            raise ValueError(
                f"LayerTally expects featuremaps [{len(seg)}, {self.n_units}, h, w] (one per segmentation), "
                f"got {tuple(acts.shape)}."
            )
        height, width = seg.size
        hw = height * width
        if hw >= 1 << 24:
            raise ValueError(f"segmentations of {hw} pixels exceed the 2^24 pixels that float32 counts exactly.")
        thr = self.thresholds.to(acts.device).view(1, -1, 1)
        for start, stop in image_chunks(len(seg), self.n_units * hw):
            part = seg.slice(start, stop)
            on = upsample(acts[start:stop].float(), (height, width)).flatten(2)
            on.gt_(thr)  # 0/1 in place: unit on where activation > threshold
            on_per_image = on.sum(2).round().long()  # [b, U]
            self.active += on_per_image.sum(0)
            self.active_in_category += (on_per_image.unsqueeze(2) * part.category_present.unsqueeze(1)).sum(0)
            inter = torch.matmul(on, part.onehot).round().long()  # [b, U, L+1]
            acc = torch.zeros(self.n_units, self.n_concepts + 1, dtype=torch.long, device=acts.device)
            acc.index_add_(1, part.concept_ids.flatten(), inter.permute(1, 0, 2).reshape(self.n_units, -1))
            self.intersection += acc[:, :-1]
        self.add_images(seg)

    def add_images(self, seg) -> None:
        """Count what does not depend on the units: label pixels, category pixels, images.

        ``seg``: an ``EncodedSegmentation`` or label maps long ``[B, (D,) H, W]``."""
        if isinstance(seg, EncodedSegmentation):
            labels, present, category_present, (height, width) = seg.labels, seg.present, seg.category_present, seg.size
        else:
            seg = seg if seg.dim() == 4 else seg[:, None]
            height, width = seg.shape[-2:]
            labels = dedupe_labels(seg.flatten(2).long())
            present, category_present = concept_presence(labels, self.n_concepts, self.concept_category,
                                                         self.n_categories)
        self.label_pixels += torch.bincount(labels.flatten(), minlength=self.n_concepts)[: self.n_concepts]
        self.label_pixels[0] = 0
        self.images_with_concept += present.sum(0)
        self.pixels_in_category += category_present.sum(0) * (height * width)
        self.pixels += labels.shape[0] * height * width
        self.images += labels.shape[0]

    def add_active(self, units: torch.Tensor, positions: torch.Tensor, labels: torch.Tensor,
                   category_present: torch.Tensor) -> None:
        """Count a list of "on" pixels (sparse path; call ``add_images`` for their images).

        units: long [M], the unit that is on; positions: long [M], the pixel as
        ``image * P + pixel`` of the label maps ``labels`` [N, D, P] (any integer dtype,
        repeats already set to 0, see ``dedupe_labels``); category_present: bool [N, K]
        per image.
        """
        n_images, depth, pixels = labels.shape
        image = positions.div(pixels, rounding_mode="floor")
        if self.n_units * n_images <= CHUNK_ELEMENTS:  # on-pixels per (unit, image), then per category
            per_image = torch.bincount(units * n_images + image, minlength=self.n_units * n_images)
            per_image = per_image.view(self.n_units, n_images)
            self.active += per_image.sum(1)
            self.active_in_category += per_image @ category_present.long()
        else:
            self.active += torch.bincount(units, minlength=self.n_units)
            self.active_in_category.index_add_(0, units, category_present.index_select(0, image).long())
        flat = labels.reshape(-1)
        first = positions if depth == 1 else positions + image * ((depth - 1) * pixels)  # map 0 of the pixel
        for d in range(depth):
            index = units * self.n_concepts + flat.index_select(0, first + d * pixels).long()
            self.intersection += torch.bincount(index, minlength=self.n_units * self.n_concepts).view(
                self.n_units, self.n_concepts)
        self.intersection[:, 0] = 0

    def union(self, variant: str = "plain") -> torch.Tensor:
        """``[U, C]`` union counts; ``category`` counts a unit's pixels only in images
        that show some concept of the concept's category (2019 reference code)."""
        if choice("iou", variant, IOU_VARIANTS) == "plain":
            active = self.active[:, None].expand(-1, self.n_concepts)
        else:
            index = self.concept_category.clamp(min=0).to(self.active_in_category.device)
            active = self.active_in_category[:, index]
        return active + self.label_pixels[None, :] - self.intersection

    def iou(self, variant: str = "plain") -> torch.Tensor:
        """``[U, C]`` float IoU over all tallied images (ratio of sums; column 0 is 0)."""
        union = self.union(variant)
        iou = self.intersection.double() / union.clamp(min=1).double()
        iou[:, 0] = 0
        return iou.float()

    def compute(self) -> dict[str, torch.Tensor]:
        return {"plain": self.iou("plain"), "category": self.iou("category")}


