"""Counting every candidate level of every unit at once, fast and exact (iqr mode,
docs/method.md §3): the counts behind ``iqr.LevelTally``.

A pixel's *bucket* for unit u is the number of u's levels strictly below its upsampled
activation ``v`` (``torch.bucketize(v, levels[u])``), so ``v > level_j`` iff bucket > j
and the counts above every level are reverse cumulative sums over buckets. Per unit and
chunk of images (``count_unit``):

1. upsample the unit's raw maps once (``upsample``, the values every other part uses);
2. keep the words of ``WORD`` consecutive pixels that hold a pixel above the unit's
   lowest level (about a third of the pixels at ``max_fraction`` 0.2); a kept pixel at
   or below the lowest level lands in bucket 0, which is never used;
3. bucket the kept pixels with ``LevelBuckets`` (a lookup table, below);
4. count (bucket, concept, image group) with one ``bincount`` over the combined key
   ``bucket * C * G + concept * G + group``, where an image's group is the set of
   categories it shows (``G`` groups in the chunk), so the ``category`` IoU's per-category
   activity comes from the same count. A second label map (``D > 1``) adds one
   ``bincount`` of ``bucket * C + concept``.

``LevelBuckets`` replaces the binary search of ``bucketize`` (slow: about 50 ns a value)
by a table lookup and one comparison. With ``d_0 < ... < d_{m-1}`` the unit's distinct
levels and ``q(x) = int(clamp(x - d_0, 0, d_{m-1} - d_0) * cells / (d_{m-1} - d_0))``
(each float operation correctly rounded, so ``q`` is non-decreasing and the same
function for values and levels), ``table[k] = #{i : q(d_i) < k}`` and the cells are made
fine enough that no two distinct levels share a cell. Then for any ``v``: levels in
cells before ``q(v)`` are below ``v``, levels in later cells above it, and at most one
distinct level ``d = d_table[q(v)]`` shares its cell, so the number of distinct levels
below ``v`` is ``table[q(v)] + (v > d)``, exactly. Repeated levels are counted by
mapping distinct-level buckets to level buckets afterwards. A unit whose levels cannot be
separated within ``MAX_CELLS`` cells falls back to ``torch.bucketize``.

On a CPU, steps 1-4 run in one pass of a small C kernel (``kernels.c``, compiled on first
use, see ``kernels``): it mixes the upsampled lines from the first of ``upsample``'s two
matmuls itself where that reproduces ``upsample`` bit for bit (``kernels.rows_arithmetic``,
else it reads ``upsample``'s output), computes each bucket with the same single-precision
operations as ``LevelBuckets.bucketize`` and counts it at once (toy GAN, 192 units x 256
images of 64x64: 0.39 s against 0.72 s for the torch operations). The counts are the same
(tests compare the paths with each other and a brute force). Without a C compiler, with
``GAN_MONITOR_NATIVE=0``, on other devices and for units that fall back to
``torch.bucketize``, the torch code below runs.

Counts are int64 (sums across chunks and processes are exact); memory per call is a few
arrays of at most ``CHUNK_PIXELS`` values, independent of the number of images.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from gan_monitor.dissection.thresholds import kernels
from gan_monitor.dissection.upsample import upsample, upsample_rows

__all__ = ["LevelBuckets", "LabelCodes", "count_unit", "words_above", "greater", "CHUNK_PIXELS", "WORD", "MAX_CELLS"]

#: Upsampled pixels of one unit handled at once (4 MiB of float32).
CHUNK_PIXELS = 1 << 20
#: Pixels per word of the coarse "above the lowest level" selection.
WORD = 8
#: Cells a unit's lookup table may use before it falls back to ``torch.bucketize``.
MAX_CELLS = 1 << 16
#: Largest ``concepts * groups`` counted with one combined key (else two counts).
MAX_COMBINED = 1 << 12
_FIRST_CELLS = 1 << 11


class LevelBuckets:
    """Exact ``torch.bucketize(values, levels[u])`` of a unit's values, by table lookup.

    ``levels`` ``[U, L]``, each row ascending (repeats allowed). ``bucketize(u, v)``
    returns the *distinct*-level bucket ``#{distinct levels of u < v}`` (int32);
    ``to_levels[u]`` maps it to the level bucket (``None`` when u has no repeats).
    """

    def __init__(self, levels: torch.Tensor, max_cells: int = MAX_CELLS):
        levels = levels.detach().float().cpu()
        self.n_levels = levels.shape[1]
        self.lowest: list[float] = []
        self.span: list[float] = []
        self.scale: list[float] = []
        self.distinct: list[torch.Tensor] = []  # distinct levels and +inf
        self.table: list[torch.Tensor | None] = []  # None: fall back to torch.bucketize
        self.to_levels: list[torch.Tensor | None] = []
        device = levels.device
        for row in levels.numpy():  # numpy: a few microseconds per call, for ~100 values a row
            first = np.ones(len(row), dtype=bool)
            np.not_equal(row[1:], row[:-1], out=first[1:])  # -0.0 == 0.0, as torch.unique_consecutive
            distinct = row[first]
            lowest = float(distinct[0])
            span = float(_cells(distinct[-1:], lowest, math.inf, None)[0])
            self.lowest.append(lowest)
            self.span.append(span)
            self.distinct.append(torch.from_numpy(np.append(distinct, np.float32(math.inf))))
            starts = np.flatnonzero(first)
            self.to_levels.append(None if len(distinct) == len(row) else
                                  torch.from_numpy(np.append(starts, len(row)).astype(np.int64)))
            table, scale = None, 0.0
            cells = _FIRST_CELLS
            while len(distinct) > 1 and cells <= max_cells:
                # a float32 number: every implementation (torch on any device, the C kernel) multiplies alike
                scale = float(np.float32(cells / span)) if span > 0 else 0.0
                q = _cells(distinct, lowest, span, scale)
                if bool((q[1:] > q[:-1]).all()):  # one distinct level per cell at most
                    counts = np.bincount(q, minlength=int(q[-1]) + 1)
                    table = torch.from_numpy((np.cumsum(counts) - counts).astype(np.int32))  # #{i: q_i < k}
                    break
                cells *= 4
            if len(distinct) == 1:
                table = torch.zeros(1, dtype=torch.int32)
            self.scale.append(scale)
            self.table.append(table)
        self._device = device

    @staticmethod
    def _shift(x: torch.Tensor, lowest: float, span: float) -> torch.Tensor:
        return torch.sub(x, lowest).clamp_(0.0, span)

    @staticmethod
    def cell(x: torch.Tensor, lowest: float, span: float, scale: float) -> torch.Tensor:
        """``q(x)``: the same float operations for levels and values (non-decreasing)."""
        t = LevelBuckets._shift(x, lowest, span)
        return t.mul_(scale).to(torch.int32)

    def to(self, device) -> "LevelBuckets":
        device = torch.device(device)
        if device != self._device:
            self.distinct = [d.to(device) for d in self.distinct]
            self.table = [t if t is None else t.to(device) for t in self.table]
            self.to_levels = [t if t is None else t.to(device) for t in self.to_levels]
            self._device = device
        return self

    def bucketize(self, unit: int, values: torch.Tensor) -> torch.Tensor:
        """int32 ``#{distinct levels of unit < v}`` for each of ``values`` (float32)."""
        distinct, table = self.distinct[unit], self.table[unit]
        if table is None:
            return torch.bucketize(values, distinct[:-1], out_int32=True)
        start = table.index_select(0, self.cell(values, self.lowest[unit], self.span[unit], self.scale[unit]))
        return start + greater(values, distinct.index_select(0, start))


def _cells(x: np.ndarray, lowest: float, span: float, scale: float | None) -> np.ndarray:
    """``LevelBuckets.cell`` of float32 levels in numpy: the same single-precision operations
    (float32 constants, each operation correctly rounded) as torch and the C kernel apply to
    values; ``scale=None`` stops after the shift (the float32 ``span`` itself)."""
    t = np.subtract(x, np.float32(lowest), dtype=np.float32)
    np.minimum(np.maximum(t, np.float32(0.0), out=t), np.float32(span), out=t)
    if scale is None:
        return t
    return np.multiply(t, np.float32(scale), out=t).astype(np.int32)


class LabelCodes:
    """Label maps of a chunk of images prepared for ``count_unit``.

    ``labels`` long ``[B, D, P]`` (repeats in later maps already 0, see
    ``tally.dedupe_labels``); ``category_present`` bool ``[B, K]``. Images showing the
    same set of categories form a group (``groups`` bool ``[G, K]``). ``first``: int32
    ``[B*P]`` ``concept * G + group`` of map 0 (``combined``) or the concept alone, with
    ``group`` the group code per pixel; ``others``: the concepts of maps 1..D-1.
    """

    def __init__(self, labels: torch.Tensor, category_present: torch.Tensor, n_concepts: int):
        b, depth, pixels = labels.shape
        self.n_concepts, self.pixels = n_concepts, b * pixels
        self.groups, image_group = torch.unique(category_present, dim=0, return_inverse=True)
        if self.groups.shape[0] == 0:  # no images
            self.groups = torch.zeros(1, category_present.shape[1], dtype=torch.bool, device=labels.device)
        n_groups = self.groups.shape[0]
        self.n_groups = n_groups
        self.combined = n_concepts * n_groups <= MAX_COMBINED
        per_pixel_group = image_group.to(torch.int32).view(b, 1).expand(b, pixels)
        first = labels[:, 0].to(torch.int32)
        if self.combined:
            self.first = (first * n_groups + per_pixel_group).reshape(-1)
            self.group = None
        else:
            self.first = first.reshape(-1)
            self.group = per_pixel_group.reshape(-1)
        self.others = [labels[:, d].to(torch.int32).reshape(-1) for d in range(1, depth)]
        self.word = math.gcd(WORD, self.pixels) if self.pixels else 1


def _words(x: torch.Tensor, word: int) -> torch.Tensor:
    return x.view(-1, word)


def greater(a: torch.Tensor, b) -> torch.Tensor:
    """``a > b`` (bool): on a CPU through numpy, whose float comparisons measured 5-7x faster
    than torch's here (287,000 values: 0.03 ms against 0.2 ms); the same exact comparison."""
    if a.device.type != "cpu" or a.dtype != torch.float32:
        return a > b
    right = b.detach().numpy() if isinstance(b, torch.Tensor) else np.float32(b)
    return torch.from_numpy(np.greater(a.detach().numpy(), right))


def words_above(up: torch.Tensor, lowest: float, word: int) -> torch.Tensor:
    """Indices (int64) of the words of ``word`` consecutive values of ``up`` (flat float32)
    holding a value above ``lowest``. On a CPU numpy's compare and ``flatnonzero`` (0.57 ms
    per million values against 1.37 ms for torch's compare and ``nonzero``)."""
    if up.device.type == "cpu" and up.dtype == torch.float32:
        flags = np.greater(up.detach().numpy(), np.float32(lowest))
        if word == 8:
            return torch.from_numpy(np.flatnonzero(flags.view(np.int64)))
        return torch.from_numpy(np.flatnonzero(flags if word == 1 else flags.reshape(-1, word).any(1)))
    above = up > lowest
    if word == 8:
        chosen = above.view(torch.int64) != 0
    elif word == 1:
        chosen = above
    else:
        chosen = above.view(-1, word).any(1)
    return chosen.nonzero().view(-1)


def count_unit(raw: torch.Tensor, size: tuple[int, int], codes: LabelCodes, buckets: LevelBuckets,
               unit: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Counts of one unit over a chunk of images, from its raw maps ``raw`` ``[1, B, h, w]``.

    Returns int64 ``intersection [C, L+1]`` (pixels of each concept, label 0 included,
    in each level bucket), ``active [G, L+1]`` (pixels per image group and bucket) and
    nothing else; bucket 0 is left uncounted (zero)."""
    counts = None
    if raw.device.type == "cpu" and buckets.table[unit] is not None:
        counts = _count_native(raw.float(), size, codes, buckets, unit)
    if counts is None:
        counts = _count_torch(upsample(raw.float(), size).reshape(-1), codes, buckets, unit)
    intersection, active = counts
    to_levels = buckets.to_levels[unit]
    if to_levels is not None:  # repeated levels: distinct-level bucket -> level bucket
        n_levels = buckets.n_levels
        intersection = intersection.new_zeros(n_levels + 1, codes.n_concepts).index_add_(0, to_levels, intersection)
        active = active.new_zeros(n_levels + 1, codes.n_groups).index_add_(0, to_levels, active)
    intersection[0] = 0
    active[0] = 0
    return intersection.T, active.T


def _count_native(raw: torch.Tensor, size: tuple[int, int], codes: LabelCodes, buckets: LevelBuckets, unit: int):
    """``[m+1, C]`` and ``[m+1, G]`` counts by distinct-level bucket, by a C kernel: from
    upsample's rows where ``kernels.rows_arithmetic`` reproduces it, else from the upsampled
    values. ``None`` without kernels, or if one refuses the input (``kernels.refused``)."""
    height, width = size
    h, w = raw.shape[-2:]
    kernel, fused = kernels.choose(h, w, size, kernels.count_levels_rows, kernels.count_levels)
    from_rows = fused is not None
    if kernel is None or raw.numel() // (h * w) * height * width >= 2 ** 31:
        return None
    m = buckets.distinct[unit].numel() - 1
    c, g = codes.n_concepts, codes.n_groups
    table, distinct = buckets.table[unit].contiguous(), buckets.distinct[unit].contiguous()
    if from_rows:
        rows = upsample_rows(raw, width).contiguous()  # [1, B, h, W]
        lo, hi, weights = kernels.row_taps(h, height)
        line = torch.empty(width)
        maps = rows.numel() // (h * width)
    else:
        up = upsample(raw, size).reshape(-1).contiguous()
    level = (buckets.lowest[unit], buckets.span[unit], buckets.scale[unit], table.data_ptr(), table.numel(),
             distinct.data_ptr(), m + 1)

    def count(labels: torch.Tensor, code_width: int) -> torch.Tensor:
        labels = labels.to(torch.int32).contiguous()
        counts = torch.zeros((m + 1) * code_width, dtype=torch.int64)
        scratch = torch.empty(4 * (m + 1) * code_width, dtype=torch.int32)
        tail = (labels.data_ptr(), code_width, counts.data_ptr(), scratch.data_ptr())
        if from_rows:
            error = kernel(rows.data_ptr(), maps, h, width, height, lo.data_ptr(), hi.data_ptr(), weights.data_ptr(),
                           fused, *level, *tail, line.data_ptr())
        else:
            error = kernel(up.data_ptr(), up.numel(), *level, *tail)
        if error:
            raise _Refused(error)
        return counts.view(m + 1, code_width)

    try:
        if codes.combined:
            joint = count(codes.first, c * g).view(m + 1, c, g)
            intersection, active = joint.sum(2), joint.sum(1)
        else:
            intersection, active = count(codes.first, c), count(codes.group, g)
        for labels in codes.others:
            intersection = intersection + count(labels, c)
    except _Refused as error:
        kernels.refused("gm_count_levels", error.args[0], f"unit {unit}")
        return None
    return intersection, active


class _Refused(Exception):
    pass


def _count_torch(up: torch.Tensor, codes: LabelCodes, buckets: LevelBuckets, unit: int):
    """``_count_native`` with torch operations (any device)."""
    word = codes.word
    index = words_above(up, buckets.lowest[unit], word)
    values = _words(up, word).index_select(0, index).reshape(-1)
    bucket = buckets.bucketize(unit, values)
    m = buckets.distinct[unit].numel() - 1  # distinct levels
    c, g = codes.n_concepts, codes.n_groups
    first = _words(codes.first, word).index_select(0, index).reshape(-1)
    if codes.combined:
        joint = torch.bincount(torch.add(first, bucket, alpha=c * g), minlength=(m + 1) * c * g).view(m + 1, c, g)
        intersection, active = joint.sum(2), joint.sum(1)
    else:
        intersection = torch.bincount(torch.add(first, bucket, alpha=c), minlength=(m + 1) * c).view(m + 1, c)
        group = _words(codes.group, word).index_select(0, index).reshape(-1)
        active = torch.bincount(torch.add(group, bucket, alpha=g), minlength=(m + 1) * g).view(m + 1, g)
    for labels in codes.others:
        other = _words(labels, word).index_select(0, index).reshape(-1)
        intersection = intersection + torch.bincount(torch.add(other, bucket, alpha=c),
                                                     minlength=(m + 1) * c).view(m + 1, c)
    return intersection, active
