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

from .tallies import image_chunks, interpolation_matrix, upsample
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


class _AxisBlocks:
    """One axis of the upsampled grid cut into blocks whose pixels all interpolate
    the same two raw samples ``corner`` and ``min(corner + 1, n_in - 1)``.

    Output coordinates are grouped by their low tap (``_taps``); a group longer than
    ``ceil(n_out / n_in)`` (the border groups, which also hold the clamped
    coordinates) is split so that blocks pad little. ``index`` ``[S, G]`` lists each
    block's output coordinates (-1 pads), ``weights`` ``[S, G, 2]`` their (low, high)
    tap weights, read from ``tallies.interpolation_matrix`` (0 for pads; a clamped
    coordinate whose two taps coincide gets (1, 0)).
    """

    def __init__(self, n_in: int, n_out: int, device):
        lo, hi, _ = _taps(n_in, n_out, "cpu")
        matrix = interpolation_matrix(n_in, n_out)
        rows = torch.arange(n_out)
        w_lo, w_hi = matrix[rows, lo], torch.where(hi == lo, 0.0, matrix[rows, hi])
        size = max(1, math.ceil(n_out / n_in))
        corner, index = [], []
        for k in range(n_in):
            coords = (lo == k).nonzero().flatten().tolist()
            for first in range(0, len(coords), size):
                part = coords[first:first + size]
                corner.append(k)
                index.append(part + [-1] * (size - len(part)))
        self.corner = torch.tensor(corner, device=device)
        self.index = torch.tensor(index, device=device)
        safe = self.index.clamp(min=0).cpu()
        weights = torch.stack([w_lo[safe], w_hi[safe]], -1) * (self.index.cpu() >= 0)[..., None]
        self.weights = weights.to(device)


def _neighbourhood_max(maps: torch.Tensor) -> torch.Tensor:
    """``max(x[k:k+2, l:l+2])`` for every raw cell ``(k, l)`` of ``maps`` ``[..., h, w]``,
    the last row and column replicated: an upper bound of every upsampled pixel whose
    low taps are ``(k, l)`` (bilinear weights are convex)."""
    down = torch.cat([maps[..., 1:, :], maps[..., -1:, :]], -2)
    rows = torch.maximum(maps, down)
    right = torch.cat([rows[..., 1:], rows[..., -1:]], -1)
    return torch.maximum(rows, right)


def _fused_sum(p: torch.Tensor, b: torch.Tensor, wb: torch.Tensor) -> torch.Tensor:
    """float32 ``p + b * wb`` rounded once (a fused multiply-add), emulated exactly.

    ``b * wb`` is exact in float64; the float64 sum is rounded again to float32, which
    errs only when it lands exactly halfway between two float32 values: there the
    float64 rounding error (TwoSum) says which way the exact sum lies."""
    pd, q = p.double(), b.double() * wb.double()
    s = pd + q
    bb = s - pd
    err = (pd - (s - bb)) + (q - bb)  # exact: s + err == p + b * wb
    f = s.float()
    toward = torch.where(s > f.double(), math.inf, -math.inf).float()
    other = torch.nextafter(f, toward)
    halfway = (err != 0) & (f.double() + other.double() == 2 * s)
    if bool(halfway.any()):
        fix = (err > 0) == (other > f)  # the exact sum lies on other's side of the midpoint
        f = torch.where(halfway & fix, other, f)
    return f


def _interpolate(a, wa, b, wb, fused: bool) -> torch.Tensor:
    """One tap pair ``a * wa + b * wb`` (float32, low tap first), rounded as a BLAS kernel
    does: after each product (``fused=False``) or once per added term (``fused=True``)."""
    if fused:
        return _fused_sum(a * wa, b, wb)
    return a * wa + b * wb


class ActivePixels:
    """Values and positions of every upsampled pixel above a per-unit floor.

    ``values`` may be approximations within ``slack[u]`` of the exact upsampled value
    (``exact_at(units, positions)`` gives those, ``None``: the values are exact);
    ``kth_largest`` and ``above`` then compute exact values for the few pixels whose
    approximation is too close to the level to decide.
    """

    def __init__(self, floors: torch.Tensor, capacity: int, position_dtype=torch.int32, exact_at=None):
        self.floors = floors.float()
        n_units = floors.numel()
        self.values = torch.full((n_units, max(1, capacity)), -math.inf, device=floors.device)
        self.positions = torch.zeros((n_units, max(1, capacity)), dtype=position_dtype, device=floors.device)
        self.count = torch.zeros(n_units, dtype=torch.long, device=floors.device)
        self.slack = torch.zeros(n_units, device=floors.device)
        self.exact_at = exact_at

    def add(self, unit: torch.Tensor, positions: torch.Tensor, values: torch.Tensor) -> None:
        """Keep pixels: ``unit`` (non-decreasing), flat global ``positions``, ``values``."""
        if not unit.numel():
            return
        n_units = self.count.numel()
        new = torch.bincount(unit, minlength=n_units)
        need = int((self.count + new).max())
        if need > self.values.shape[1]:
            width = max(need, 2 * self.values.shape[1])
            grown_v = torch.full((n_units, width), -math.inf, device=values.device)
            grown_p = torch.zeros((n_units, width), dtype=self.positions.dtype, device=values.device)
            grown_v[:, : self.values.shape[1]] = self.values
            grown_p[:, : self.positions.shape[1]] = self.positions
            self.values, self.positions = grown_v, grown_p
        first = torch.cumsum(new, 0) - new
        slot = self.count[unit] + torch.arange(unit.numel(), device=values.device) - first[unit]
        self.values[unit, slot] = values
        self.positions[unit, slot] = positions.to(self.positions.dtype)
        self.count += new

    def _exact(self, units: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
        return self.exact_at(units, self.positions[units, slots].long())

    def drop_not_above_floor(self) -> None:
        """Remove kept pixels whose exact value is at or below their floor (only pixels
        kept for their approximate value can be)."""
        if self.exact_at is None:
            return
        near = (self.values > -math.inf) & (self.values <= (self.floors + self.slack)[:, None])
        units, slots = near.nonzero(as_tuple=True)
        drop = self._exact(units, slots) <= self.floors[units]
        if not drop.any():
            return
        keep = self.values > -math.inf
        keep[units[drop], slots[drop]] = False
        rows, cols = keep.nonzero(as_tuple=True)
        slot = (keep.cumsum(1) - 1)[rows, cols]
        values, positions = torch.full_like(self.values, -math.inf), torch.zeros_like(self.positions)
        values[rows, slot], positions[rows, slot] = self.values[rows, cols], self.positions[rows, cols]
        self.values, self.positions, self.count = values, positions, keep.sum(1)

    def kth_largest(self, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(``[U]`` exact rank-th largest kept value, ``[U]`` bool: exact, i.e. enough
        values were kept to decide)."""
        exact = self.count >= rank
        result = self.floors.clone()
        rows = exact.nonzero().flatten()
        if rows.numel():
            kept = self.values[rows]
            t = kept.kthvalue(kept.shape[1] - rank + 1, dim=1).values
            if self.exact_at is not None:
                t, decided = self._refine(rows, kept, t, rank)
                exact[rows] = decided
            result[rows] = torch.where(exact[rows], t, result[rows])
        return result, exact

    def _refine(self, rows, kept, t, rank):
        """Exact rank-th largest from the approximate one ``t``: with every value off by
        at most d, it lies within d of ``t``; values above ``t + 2d`` rank above it, values
        below ``t - 2d`` below it, and the band between is ranked by exact values.
        Decided where the band lies above the floor (all its pixels were kept)."""
        d = self.slack[rows]
        decided = t - 2 * d > self.floors[rows]
        above = (kept > (t + 2 * d)[:, None]).sum(1)
        r, slot = ((kept >= (t - 2 * d)[:, None]) & (kept <= (t + 2 * d)[:, None])).nonzero(as_tuple=True)
        values = self._exact(rows[r], slot)
        per_row = torch.bincount(r, minlength=rows.numel())
        band = torch.full((rows.numel(), int(per_row.max())), -math.inf, device=kept.device)
        band[r, torch.arange(r.numel(), device=r.device) - (per_row.cumsum(0) - per_row)[r]] = values
        band = band.sort(1, descending=True).values
        return band.gather(1, (rank - 1 - above).clamp(min=0)[:, None]).flatten(), decided

    def above(self, thresholds: torch.Tensor, unit_chunk: int = 0):
        """Yield ``(units, positions)`` of the kept pixels whose exact value is strictly
        above ``thresholds`` (at or above their floors)."""
        n_units, width = self.values.shape
        step = unit_chunk or max(1, (1 << 24) // max(1, width))
        for lo in range(0, n_units, step):
            hi = min(n_units, lo + step)
            d, level = self.slack[lo:hi], thresholds[lo:hi]
            values = self.values[lo:hi]
            units, slots = (values > (level - d)[:, None]).nonzero(as_tuple=True)
            if self.exact_at is not None:
                unsure = (values[units, slots] <= (level + d)[units]).nonzero().flatten()
                if unsure.numel():
                    exact = self._exact(units[unsure] + lo, slots[unsure])
                    keep = torch.ones_like(units, dtype=torch.bool)
                    keep[unsure] = exact > level[units[unsure]]
                    units, slots = units[keep], slots[keep]
            yield units + lo, self.positions[lo:hi][units, slots].long()


class _PixelValues:
    """Exact upsampled values at given (unit, flat global position) pairs, with the
    rounding ``arithmetic`` of ``upsample`` (see ``_pick_arithmetic``)."""

    def __init__(self, cache, size, units, arithmetic, ys: _AxisBlocks, xs: _AxisBlocks):
        self.cache, self.size, self.units, self.arithmetic = cache, size, units, arithmetic
        h, w = cache[0].shape[-2:]
        device = cache[0].device
        self.ylo, self.yhi, _ = _taps(h, size[0], device)
        self.xlo, self.xhi, _ = _taps(w, size[1], device)
        self.wy, self.wx = _dense_weights(ys, size[0]), _dense_weights(xs, size[1])
        self.ends = torch.tensor([raw.shape[0] for raw in cache], device=device).cumsum(0)

    def __call__(self, units: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        height, width = self.size
        image, pixel = positions // (height * width), positions % (height * width)
        row, col = pixel // width, pixel % width
        batch = torch.bucketize(image, self.ends, right=True)
        channel = units if self.units is None else self.units[units]
        out = torch.empty(units.shape, device=units.device)
        first, second = self.arithmetic
        for b in batch.unique().tolist():
            pick = (batch == b).nonzero().flatten()
            raw = self.cache[b]
            i = image[pick] - (int(self.ends[b]) - raw.shape[0])
            c, y, x = channel[pick], row[pick], col[pick]

            def at(rows, cols):
                return raw[i, c, rows, cols].float()

            y0, y1, x0, x1 = self.ylo[y], self.yhi[y], self.xlo[x], self.xhi[x]
            wx0, wx1 = self.wx[x, 0], self.wx[x, 1]
            top = _interpolate(at(y0, x0), wx0, at(y0, x1), wx1, first)
            bottom = _interpolate(at(y1, x0), wx0, at(y1, x1), wx1, first)
            out[pick] = _interpolate(top, self.wy[y, 0], bottom, self.wy[y, 1], second)
        return out


def exact_thresholds(cache: list[torch.Tensor], size: tuple[int, int], rank: int, units: torch.Tensor) -> torch.Tensor:
    """Exact rank-th largest upsampled value of the given units, streaming over the cache."""
    tv = TopValues(units.numel(), rank, device=cache[0].device)
    for raw in cache:
        part = raw[:, units]
        for lo, hi in image_chunks(part.shape[0], part.shape[1] * size[0] * size[1]):
            tv.update(upsample(part[lo:hi].float(), size).flatten(2))
    return tv.result()


_PLAIN = (False, False)  # float32 operations, one rounding per product and per sum


def _pick_arithmetic(raw: torch.Tensor, size: tuple[int, int], ys: _AxisBlocks, xs: _AxisBlocks):
    """Which rounding (``_interpolate``) each ``upsample`` matmul uses here, found by
    reproducing ``upsample`` on ``raw`` ``[m, U, h, w]`` bit for bit; ``None`` if no
    choice does (``collect`` then upsamples densely)."""
    x = raw.float()
    reference = upsample(x, size)
    h, w = x.shape[-2:]
    ylo, yhi, _ = _taps(h, size[0], x.device)
    xlo, xhi, _ = _taps(w, size[1], x.device)
    wy, wx = _dense_weights(ys, size[0]), _dense_weights(xs, size[1])
    for first in (False, True):
        rows = _interpolate(x[..., xlo], wx[:, 0], x[..., xhi], wx[:, 1], first)  # [m, U, h, W]
        for second in (False, True):
            wy0, wy1 = wy[:, 0, None], wy[:, 1, None]
            dense = _interpolate(rows[..., ylo, :], wy0, rows[..., yhi, :], wy1, second)
            if torch.equal(dense, reference):
                return first, second
    return None


def _dense_weights(axis: _AxisBlocks, n_out: int) -> torch.Tensor:
    """``[n_out, 2]`` (low, high) tap weights of every output coordinate."""
    weights = torch.zeros(n_out, 2, device=axis.weights.device)
    real = axis.index >= 0
    weights[axis.index[real]] = axis.weights[real]
    return weights


def _block_values(corners, wy, wx, arithmetic):
    """Upsampled blocks ``[M, Gy, Gx]`` from raw corners ``[M, 2, 2]`` and tap weights
    ``wy`` ``[M, Gy, 2]``, ``wx`` ``[M, Gx, 2]``: columns first, then rows, like ``upsample``."""
    first, second = arithmetic
    rows = _interpolate(corners[:, :, 0, None], wx[:, None, :, 0], corners[:, :, 1, None], wx[:, None, :, 1],
                        first)  # [M, 2, Gx]
    return _interpolate(rows[:, None, 0], wy[:, :, 0, None], rows[:, None, 1], wy[:, :, 1, None], second)


def collect(cache: list[torch.Tensor], size: tuple[int, int], floors: torch.Tensor, capacity: int,
            units: torch.Tensor | None = None, cell_chunk: int = 1 << 15) -> ActivePixels:
    """One pass over the cached raw featuremaps keeping the upsampled pixels above ``floors``.

    Only blocks that can hold such a pixel are upsampled: a block's pixels interpolate
    the same 2x2 raw neighbourhood, so none exceeds its maximum (up to rounding,
    covered by a margin). Blocks are computed elementwise with the rounding that
    ``upsample``'s matmuls use on this machine (``_pick_arithmetic``, checked on the
    first images), so the kept values are bit-identical to ``upsample``; where that
    cannot be reproduced, maps are upsampled densely.
    """
    height, width = size
    pixels = height * width
    total = sum(raw.shape[0] for raw in cache) * pixels
    dtype = torch.int32 if total < 2 ** 31 else torch.int64
    h, w = cache[0].shape[-2:]
    ys, xs = _AxisBlocks(h, height, cache[0].device), _AxisBlocks(w, width, cache[0].device)
    probe = cache[0][:1] if units is None else cache[0][:1, units]
    arithmetic = _pick_arithmetic(probe, size, ys, xs)
    approximate = arithmetic is not None and arithmetic != _PLAIN
    exact_at = _PixelValues(cache, size, units, arithmetic, ys, xs) if approximate else None
    active = ActivePixels(floors, capacity, dtype, exact_at)
    floors = active.floors
    start = 0
    for raw in cache:
        part = raw if units is None else raw[:, units]
        maps = part.float().transpose(0, 1)  # [U, b, h, w], a view
        if arithmetic is None:
            _collect_dense(active, maps, size, start)
            start += raw.shape[0]
            continue
        margin = 1e-5 * maps.abs().amax((2, 3))  # [U, b], bounds rounding differences
        reach = _neighbourhood_max(maps) + margin[..., None, None]  # bounds every pixel of the cell's blocks
        slack = margin if approximate else torch.zeros_like(margin)
        active.slack = torch.maximum(active.slack, slack.amax(1))
        candidate = (reach > floors.view(-1, 1, 1, 1))[:, :, ys.corner][:, :, :, xs.corner]
        cells = candidate.nonzero()  # [M, 4]: unit, image, y block, x block; grouped by unit
        for lo in range(0, cells.shape[0], cell_chunk):
            unit, image, by, bx = cells[lo:lo + cell_chunk].unbind(1)
            k, l = ys.corner[by], xs.corner[bx]
            k1, l1 = (k + 1).clamp(max=h - 1), (l + 1).clamp(max=w - 1)
            corners = torch.stack([maps[unit, image, k, l], maps[unit, image, k, l1],
                                   maps[unit, image, k1, l], maps[unit, image, k1, l1]], 1).view(-1, 2, 2)
            block = _block_values(corners, ys.weights[by], xs.weights[bx], _PLAIN)
            level = floors[unit] - slack[unit, image]
            cell, i, j = (block > level.view(-1, 1, 1)).nonzero(as_tuple=True)
            row, col = ys.index[by[cell], i], xs.index[bx[cell], j]
            real = (row >= 0) & (col >= 0)  # drop the pads of short blocks
            cell, i, j, row, col = cell[real], i[real], j[real], row[real], col[real]
            positions = (image[cell] + start) * pixels + row * width + col
            active.add(unit[cell], positions, block[cell, i, j])
        start += raw.shape[0]
    active.drop_not_above_floor()
    return active


def _collect_dense(active: ActivePixels, maps: torch.Tensor, size: tuple[int, int], start: int) -> None:
    """Fallback of ``collect``: upsample every map of ``maps`` ``[U, b, h, w]``."""
    u, b = maps.shape[:2]
    for lo, hi in image_chunks(b, u * size[0] * size[1]):
        up = upsample(maps[:, lo:hi], size).flatten(1)  # [U, (hi - lo) * P], per unit
        unit, flat = (up > active.floors[:, None]).nonzero(as_tuple=True)
        active.add(unit, flat + (start + lo) * size[0] * size[1], up[unit, flat])
