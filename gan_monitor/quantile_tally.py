"""Quantile-mode tallying with one upsampling of each featuremap.

The threshold ``t_u`` (the ``(k+1)``-th largest upsampled activation of unit u, see
``thresholds``) must be known before counting, yet it depends on all images. Here
it is found exactly, and the IoU counted, from the cached raw featuremaps:

1. ``guess_floors``: from a seeded subsample of pixels (interpolated straight from
   the raw featuremaps, no full upsampling) pick per unit a level ``L_u`` a safe
   margin below the expected ``t_u``.
2. ``ActivePixels``: one pass over the cache upsamples each batch once and keeps
   the value and position of every pixel above ``L_u`` (about 1.6 k per unit); maps
   whose raw maximum is below ``L_u`` are not upsampled at all.
3. If at least ``k+1`` values lie above ``L_u``, ``t_u`` is the ``(k+1)``-th largest of
   them (exact), and the pixels above ``t_u`` are exactly the unit's "on" pixels;
   they are counted against the cached labels (``LayerTally.add_active``). Units
   whose guess was too high (rare: heavy ties, e.g. ReLU zeros) are redone exactly
   with ``TopValues`` and a second collection, for those units only.

Memory: the kept pixels, about ``1.8 * U * (k+1) * 8`` bytes per layer (float32 value
+ int32 position; buffers sized from the subsample), on top of the featuremap cache.
"""
from __future__ import annotations

import math

import torch

from .tallies import image_chunks, upsample
from .thresholds import TopValues

__all__ = ["interpolate_at", "guess_floors", "ActivePixels"]


def _taps(n_in: int, n_out: int, device):
    """(low index, high index, weight of high) of 1-D interpolation for each output coordinate
    (the same rule as ``tallies.interpolation_matrix``)."""
    dst = torch.arange(int(n_out), dtype=torch.float64)
    src = ((dst + 0.5) * (n_in / n_out) - 0.5).clamp(0, n_in - 1)
    lo = src.floor().long()
    hi = (lo + 1).clamp(max=n_in - 1)
    return lo.to(device), hi.to(device), (src - lo).float().to(device)


def interpolate_at(raw: torch.Tensor, positions: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Upsampled values of ``raw`` ``[b, U, h, w]`` at flat pixel ``positions`` ``[b, m]``
    of the ``size`` grid, without upsampling the rest: ``[b, U, m]`` (equal to
    ``upsample`` up to float rounding)."""
    b, u, h, w = raw.shape
    height, width = size
    ylo, yhi, fy = _taps(h, height, raw.device)
    xlo, xhi, fx = _taps(w, width, raw.device)
    y, x = positions // width, positions % width
    flat = raw.float().reshape(b, u, h * w)

    def at(rows, cols):
        return flat.gather(2, (rows * w + cols)[:, None, :].expand(b, u, -1))

    wy, wx = fy[y][:, None, :], fx[x][:, None, :]
    top = at(ylo[y], xlo[x]) * (1 - wx) + at(ylo[y], xhi[x]) * wx
    bottom = at(yhi[y], xlo[x]) * (1 - wx) + at(yhi[y], xhi[x]) * wx
    return top * (1 - wy) + bottom * wy


def guess_floors(samples: torch.Tensor, rank: int, pixels: int) -> tuple[torch.Tensor, int]:
    """Per-unit level below which the ``rank``-th largest of ``pixels`` values very likely
    does not lie, from ``samples`` ``[U, s]`` drawn uniformly from those values; and the
    number of values expected above it (to size the buffers)."""
    s = samples.shape[1]
    expected = rank / pixels * s
    index = min(s - 1, math.ceil(1.2 * expected + 4 * math.sqrt(expected) + 16))
    return samples.topk(index + 1, dim=1).values[:, index], math.ceil(pixels * (index + 1) / s)


def _above_floor(maps: torch.Tensor, floors: torch.Tensor, block: int = 64):
    """(rows, pixels, values) of entries of ``maps`` ``[M, P]`` above their row's floor
    ``floors`` ``[M]``, by row. Scans block maxima first: most blocks lie below the floor."""
    m, p = maps.shape
    if p % block:
        rows, pixels = (maps > floors[:, None]).nonzero(as_tuple=True)
        return rows, pixels, maps[rows, pixels]
    blocks = maps.view(m, p // block, block)
    br, bk = (blocks.amax(2) > floors[:, None]).nonzero(as_tuple=True)
    candidates = blocks[br, bk]  # [K, block]
    row, offset = (candidates > floors[br][:, None]).nonzero(as_tuple=True)
    return br[row], bk[row] * block + offset, candidates[row, offset]


class ActivePixels:
    """Values and positions of every upsampled pixel above a per-unit floor."""

    def __init__(self, floors: torch.Tensor, capacity: int, position_dtype=torch.int32):
        self.floors = floors.float()
        n_units = floors.numel()
        self.values = torch.full((n_units, max(1, capacity)), -math.inf, device=floors.device)
        self.positions = torch.zeros((n_units, max(1, capacity)), dtype=position_dtype, device=floors.device)
        self.count = torch.zeros(n_units, dtype=torch.long, device=floors.device)

    def update(self, maps: torch.Tensor, units: torch.Tensor, images: torch.Tensor) -> None:
        """Keep the pixels above the floor of upsampled maps ``[M, P]``; row r is unit
        ``units[r]`` (non-decreasing) on image ``images[r]`` (global index)."""
        n_units, p = self.count.numel(), maps.shape[1]
        rows, pixels, values = _above_floor(maps, self.floors[units])
        unit = units[rows]
        new = torch.bincount(unit, minlength=n_units)
        need = int((self.count + new).max()) if unit.numel() else 0
        if need > self.values.shape[1]:
            width = max(need, 2 * self.values.shape[1])
            grown_v = torch.full((n_units, width), -math.inf, device=maps.device)
            grown_p = torch.zeros((n_units, width), dtype=self.positions.dtype, device=maps.device)
            grown_v[:, : self.values.shape[1]] = self.values
            grown_p[:, : self.positions.shape[1]] = self.positions
            self.values, self.positions = grown_v, grown_p
        if unit.numel():
            first = torch.cumsum(new, 0) - new
            slot = self.count[unit] + torch.arange(unit.numel(), device=maps.device) - first[unit]
            self.values[unit, slot] = values
            self.positions[unit, slot] = (images[rows] * p + pixels).to(self.positions.dtype)
            self.count += new

    def kth_largest(self, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(``[U]`` rank-th largest kept value, ``[U]`` bool: exact, i.e. >= rank values kept)."""
        exact = self.count >= rank
        result = self.floors.clone()
        rows = exact.nonzero().flatten()
        if rows.numel():
            kept = self.values[rows]
            result[rows] = kept.kthvalue(kept.shape[1] - rank + 1, dim=1).values
        return result, exact

    def above(self, thresholds: torch.Tensor, unit_chunk: int = 0):
        """Yield ``(units, positions)`` of the kept pixels strictly above ``thresholds``."""
        n_units, width = self.values.shape
        step = unit_chunk or max(1, (1 << 24) // max(1, width))
        for lo in range(0, n_units, step):
            hi = min(n_units, lo + step)
            units, slots = (self.values[lo:hi] > thresholds[lo:hi, None]).nonzero(as_tuple=True)
            yield units + lo, self.positions[lo:hi][units, slots].long()


def exact_thresholds(cache: list[torch.Tensor], size: tuple[int, int], rank: int, units: torch.Tensor) -> torch.Tensor:
    """Exact rank-th largest upsampled value of the given units, streaming over the cache."""
    tv = TopValues(units.numel(), rank, device=cache[0].device)
    for raw in cache:
        part = raw[:, units]
        for lo, hi in image_chunks(part.shape[0], part.shape[1] * size[0] * size[1]):
            tv.update(upsample(part[lo:hi].float(), size).flatten(2))
    return tv.result()


def collect(cache: list[torch.Tensor], size: tuple[int, int], floors: torch.Tensor, capacity: int,
            units: torch.Tensor | None = None) -> ActivePixels:
    """One pass over the cached raw featuremaps keeping pixels above ``floors``."""
    pixels = size[0] * size[1]
    total = sum(raw.shape[0] for raw in cache) * pixels
    dtype = torch.int32 if total < 2 ** 31 else torch.int64
    active = ActivePixels(floors, capacity, dtype)
    floors = active.floors
    start = 0
    for raw in cache:
        part = raw if units is None else raw[:, units]
        for lo, hi in image_chunks(part.shape[0], part.shape[1] * pixels):
            maps = part[lo:hi].float().transpose(0, 1)  # [U, b, h, w]
            # An upsampled value never exceeds its map's maximum (convex weights; the
            # margin covers rounding), so maps peaking below the floor are skipped.
            peak = maps.amax((2, 3))
            margin = 1e-5 * torch.maximum(peak.abs(), maps.amin((2, 3)).abs())
            needed = peak + margin > floors[:, None]
            unit, image = needed.nonzero(as_tuple=True)  # grouped by unit
            if unit.numel():
                up = upsample(maps[unit, image][:, None], size).flatten(1)  # [M, P]
                active.update(up, unit, image + start + lo)
        start += raw.shape[0]
    return active
