"""Iqr mode's building blocks (paper Eq. 2; docs/method.md §3): candidate levels, their
counts and their scores. ``iqr_selection`` drives them.

Candidate levels are each unit's values at top fractions log-spaced from ``1e-3`` to
``max_fraction`` (``level_fractions``; default 0.2: levels stay in the top of each unit's
distribution), read from an exact sort of a fixed-size seeded subsample of pixels
(``PixelSubsample``; the levels are only candidates, the IoU at the chosen level is then
counted exactly). ``LevelTally`` bucketizes activations into the levels and accumulates
per (unit, concept, bucket) counts in one pass; a reverse cumulative sum gives the 2x2
table of (unit on, concept present) at every level. ``score_levels`` computes
``IQR = I(A;S) / H(A,S)``. Guards: IQR counts only where the unit is positively
associated with the concept, with precision ``P(S|A)`` at least ``min_lift`` (default 2)
times the base rate ``P(S)`` (IQR is symmetric and otherwise rewards anti-correlated or
chance agreement with large concepts); concepts absent from the sample score 0.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from torchmetrics import Metric
from tqdm.auto import tqdm

from gan_monitor.core.distributed import select_across
from gan_monitor.dissection.tally import (
    EncodedSegmentation,
    category_index,
    concept_presence,
    dedupe_labels,
    image_chunks,
)
from gan_monitor.dissection.thresholds import kernels
from gan_monitor.dissection.thresholds.level_counts import (
    CHUNK_PIXELS,
    LabelCodes,
    LevelBuckets,
    count_unit,
)

__all__ = ["level_fractions", "largest_at", "PixelSubsample", "LevelTally", "count_levels", "score_levels"]


def level_fractions(n_levels: int = 100, min_fraction: float = 1e-3, max_fraction: float = 0.2) -> torch.Tensor:
    """Top fractions of the candidate levels, log-spaced, largest first (lowest level first)."""
    if not 0 < min_fraction < max_fraction < 1:
        raise ValueError(f"need 0 < min_fraction < max_fraction < 1, got {min_fraction}, {max_fraction}.")
    return torch.logspace(math.log10(max_fraction), math.log10(min_fraction), int(n_levels), dtype=torch.float64)


class PixelSubsample:
    """A fixed, seeded subsample of each unit's upsampled activations.

    ``per_image`` pixel positions are drawn per image index from a
    ``torch.Generator`` seeded with ``seed`` (never the global RNG), so the sample is
    the same for any batching.
    """

    def __init__(self, n_images: int, n_pixels: int, per_image: int, seed: int, device=None):
        gen = torch.Generator().manual_seed(int(seed))
        self.positions = torch.randint(int(n_pixels), (int(n_images), int(per_image)), generator=gen).to(device)
        self.parts: list[torch.Tensor] = []
        self.starts: list[int] = []

    def update(self, picked: torch.Tensor, start: int) -> None:
        """``picked`` ``[B, U, per_image]``: the values at ``positions[start:start+B]``
        (e.g. from ``thresholds.quantile.interpolate_at``)."""
        self.parts.append(picked.transpose(0, 1).reshape(picked.shape[1], -1))
        self.starts.append(start)

    def levels(self, fractions: torch.Tensor, comm=None) -> torch.Tensor:
        """``[U, L]`` ascending levels: the value with a fraction f of the subsample above it.

        ``comm`` (a ``distributed`` communicator): each rank took the picks of its own
        images (``positions`` rows by global image index); the levels, order statistics of
        the whole subsample, are selected exactly across ranks (``gan_monitor.core.distributed.select_across``)."""
        order = sorted(range(len(self.parts)), key=self.starts.__getitem__)
        values = torch.cat([self.parts[i] for i in order], 1)
        size = self.positions.numel() if comm is not None else values.shape[1]
        index = torch.clamp(torch.ceil(fractions * size - 1e-9).long(), 0, size - 1)
        if comm is not None and comm.world_size > 1:
            return select_across(values, (index + 1).view(1, -1).expand(values.shape[0], -1), comm).contiguous()
        return largest_at(values, index)


def largest_at(values: torch.Tensor, ranks: torch.Tensor) -> torch.Tensor:
    """``[U, R]``: the ``ranks[j]``-th largest value of each row of ``values`` ``[U, S]``
    (0: the largest), exactly (featuremaps are finite, so no NaN ordering question).

    On a CPU, numpy's ``partition`` (everything below the deepest rank is set aside) and
    ``sort`` of the rest are several times faster than ``torch.topk`` with a large k
    (measured: 192 rows of 65,536 values, ranks down to 13,108: 0.04 s against 0.31 s on
    one thread); elsewhere ``torch.topk``. Both return the same order statistics."""
    ranks = ranks.long().cpu()
    depth = int(ranks.max()) + 1
    size = values.shape[1]
    if values.device.type == "cpu" and values.dtype == torch.float32 and 0 < depth <= size:
        array = values.contiguous().numpy()
        top = np.partition(array, size - depth, axis=1)[:, size - depth:] if depth < size else array.copy()
        top.sort(axis=1)  # ascending: the r-th largest sits at depth - 1 - r
        return torch.from_numpy(np.ascontiguousarray(top[:, (depth - 1 - ranks).numpy()]))
    ranked = values.topk(depth, dim=1, sorted=True).values  # only the top part is needed
    return ranked[:, ranks.to(ranked.device)].contiguous()


class LevelTally(Metric):
    """Per (unit, concept, level bucket) counts for scoring all candidate levels at once.

    ``levels`` ``[U, L]`` ascending per unit. A pixel's bucket is the number of levels
    strictly below its activation, so ``activation > level_j`` iff bucket > j; bucket 0
    (at or below every level) is never needed and not counted.
    States (int64, summed): ``intersection [U, C, L+1]``, ``active [U, L+1]``,
    ``active_in_category [U, K, L+1]``, ``label_pixels [C]``, ``pixels_in_category [K]``,
    ``pixels``. Memory ``O(U*C*L)``, independent of the number of samples.
    """

    full_state_update = False

    def __init__(self, levels: torch.Tensor, categories: Sequence[str], **kwargs):
        super().__init__(**kwargs)
        self.register_buffer("levels", levels.float().contiguous(), persistent=False)
        self.category_names, concept_category = category_index(list(categories))
        self.register_buffer("concept_category", concept_category, persistent=False)
        u, nl = levels.shape
        c, k = len(categories), len(self.category_names)
        self.n_units, self.n_levels, self.n_concepts, self.n_categories = u, nl, c, k
        for name, shape in [("intersection", (u, c, nl + 1)), ("active", (u, nl + 1)),
                            ("active_in_category", (u, k, nl + 1)), ("label_pixels", (c,)),
                            ("pixels_in_category", (k,)), ("pixels", ())]:
            self.add_state(name, default=torch.zeros(shape, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, acts: torch.Tensor, seg) -> None:  # type: ignore[override]
        """Count raw featuremaps ``acts`` ``[B, U, h, w]`` against their segmentations
        (long ``[B, (D,) H, W]`` or an ``EncodedSegmentation``), unit by unit
        (``level_counts.count_unit``; with the compiled kernels, units in parallel threads)."""
        if isinstance(seg, EncodedSegmentation):
            labels, category_present, (height, width) = seg.labels, seg.category_present, seg.size
        else:
            seg = seg if seg.dim() == 4 else seg[:, None]
            if seg.dim() != 4:
                raise ValueError(f"segmentation must be [B,H,W] or [B,D,H,W], got shape {tuple(seg.shape)}.")
            height, width = seg.shape[-2:]
            labels = dedupe_labels(seg.flatten(2).long())
            _, category_present = concept_presence(labels, self.n_concepts, self.concept_category,
                                                   self.n_categories)
        if acts.dim() != 4 or acts.shape[1] != self.n_units or acts.shape[0] != labels.shape[0]:
            raise ValueError(f"LevelTally expects featuremaps [{labels.shape[0]}, {self.n_units}, h, w] "
                             f"(one per segmentation), got {tuple(acts.shape)}.")
        hw = height * width
        buckets = self._level_buckets(acts.device)
        for start, stop in image_chunks(labels.shape[0], hw, CHUNK_PIXELS):
            codes = LabelCodes(labels[start:stop], category_present[start:stop], self.n_concepts)
            groups = codes.groups.long().T  # [K, G]
            maps = acts[start:stop].float().transpose(0, 1).contiguous()  # [U, b, h, w]

            def one(unit: int):
                return count_unit(maps[unit:unit + 1], (height, width), codes, buckets, unit)

            compiled = maps.device.type == "cpu" and kernels.count_levels() is not None
            counted = kernels.map_in_threads(one, range(self.n_units)) if compiled else map(one, range(self.n_units))
            for unit, (intersection, active) in enumerate(counted):
                self.intersection[unit] += intersection
                self.active[unit] += active.sum(0)
                self.active_in_category[unit] += groups @ active
        self.label_pixels += torch.bincount(labels.flatten(), minlength=self.n_concepts)[: self.n_concepts]
        self.label_pixels[0] = 0
        self.pixels_in_category += category_present.sum(0) * hw
        self.pixels += labels.shape[0] * hw

    def update_cached(self, featuremaps: Sequence[torch.Tensor], segmentations: Sequence[torch.Tensor]) -> None:
        """``update`` over cached batches (raw featuremaps and label maps, in the same
        order), regrouped into chunks of about ``CHUNK_PIXELS`` pixels per unit."""
        group: list[int] = []
        pixels = 0
        for i, seg in enumerate(segmentations):
            group.append(i)
            pixels += seg.shape[0] * seg.shape[-2] * seg.shape[-1]
            if pixels >= CHUNK_PIXELS or i == len(segmentations) - 1:
                self.update(torch.cat([featuremaps[j] for j in group]),
                            torch.cat([segmentations[j] for j in group]).long())
                group, pixels = [], 0

    def _level_buckets(self, device) -> LevelBuckets:
        if getattr(self, "_buckets", None) is None:
            self._buckets = LevelBuckets(self.levels)
        return self._buckets.to(device)

    def compute(self):
        return self.intersection


def count_levels(cache: dict[str, list[torch.Tensor]], segs: list[torch.Tensor], levels: dict[str, torch.Tensor],
                 categories: Sequence[str], desc: str = "iqr levels", progress: bool = False) -> dict[str, LevelTally]:
    """A ``LevelTally`` per layer of ``levels`` (``[U, L]``), filled from the cached raw
    featuremaps ``cache[layer][i]`` and label maps ``segs[i]`` (``LevelTally.update_cached``)."""
    categories = list(categories)
    tallies = {}
    for name in tqdm(list(levels), desc=desc, disable=not progress, leave=False):
        tallies[name] = LevelTally(levels[name], categories).to(cache[name][0].device)
        tallies[name].update_cached(cache[name], segs)
    return tallies

def _above(hist: torch.Tensor) -> torch.Tensor:
    """Counts above each level from bucket histograms ``[..., L+1]`` -> ``[..., L]``."""
    return hist.flip(-1).cumsum(-1).flip(-1)[..., 1:]


def score_levels(tally: LevelTally, variant: str = "plain", min_lift: float = 2.0) -> dict[str, torch.Tensor]:
    """IQR and IoU of every (unit, concept, level): ``[U, C, L]`` float64 each."""
    inter = _above(tally.intersection).double()  # [U, C, L]
    if variant == "plain":
        active = _above(tally.active).double()[:, None, :]
        total = tally.pixels.double().view(1, 1, 1)
    elif variant == "category":
        index = tally.concept_category.clamp(min=0).to(tally.active_in_category.device)
        active = _above(tally.active_in_category).double()[:, index, :]
        total = tally.pixels_in_category.double()[index].view(1, -1, 1)
    else:
        raise ValueError(f"iou variant must be 'plain' or 'category', got {variant!r}.")
    label = tally.label_pixels.double().view(1, -1, 1)
    union = active + label - inter
    iou = inter / union.clamp(min=1)
    t = total.clamp(min=1)
    cells = [inter / t, (active - inter) / t, (label - inter) / t, (t - union) / t]
    p_a, p_s = active / t, label / t
    margins = [(p_a, p_s), (p_a, 1 - p_s), (1 - p_a, p_s), (1 - p_a, 1 - p_s)]
    mutual = torch.zeros_like(inter)
    joint = torch.zeros_like(inter)
    for p, (ma, ms) in zip(cells, margins):
        p = p.clamp(min=0)
        pos = p > 0
        logp = torch.log(torch.where(pos, p, 1.0))
        joint -= torch.where(pos, p * logp, 0.0)
        mutual += torch.where(pos, p * (logp - torch.log((ma * ms).clamp(min=1e-300))), 0.0)
    iqr = torch.where(joint > 0, mutual / joint.clamp(min=1e-300), 0.0)
    positive = inter * t >= min_lift * active * label  # precision >= min_lift * base rate
    iqr = torch.where(positive & (inter > 0), iqr, 0.0)
    iqr[:, 0] = 0
    iou[:, 0] = 0
    return {"iqr": iqr, "iou": iou}
