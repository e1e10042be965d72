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
    index = min(s - 1, math.ceil(expected + 4 * math.sqrt(expected) + 16))  # P(too high) ~ 1e-7
    return samples.topk(index + 1, dim=1).values[:, index], math.ceil(pixels * (index + 1) / s)


class _AxisBlocks:
    """One axis of the upsampled grid cut into blocks whose pixels all interpolate
    the same two raw samples ``corner`` and ``min(corner + 1, n_in - 1)``.

    Output coordinates are grouped by their low tap (``_taps``); a group longer than
    ``ceil(n_out / n_in)`` (the border groups, which also hold the clamped
    coordinates) is split so that blocks pad little. ``index`` ``[S, G]`` lists each
    block's output coordinates (consecutive from ``first``; -1 pads), ``weights``
    ``[S, G, 2]`` their (low, high) tap weights, read from
    ``tallies.interpolation_matrix`` (NaN for pads; a clamped coordinate whose two taps
    coincide gets (1, 0)).
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
        index = torch.tensor(index)
        safe = index.clamp(min=0)
        weights = torch.stack([w_lo[safe], w_hi[safe]], -1)
        self.weights = torch.where(index[..., None] >= 0, weights, math.nan).to(device)  # NaN pads never pass
        self.corner, self.first = torch.tensor(corner, device=device), index[:, 0].to(device)
        self.index = index.to(device)


def _neighbourhood_max(maps: torch.Tensor) -> torch.Tensor:
    """``max(x[k:k+2, l:l+2])`` for every raw cell ``(k, l)`` of ``maps`` ``[..., h, w]``,
    the last row and column replicated: an upper bound of every upsampled pixel whose
    low taps are ``(k, l)`` (bilinear weights are convex)."""
    rows = torch.empty_like(maps)
    torch.maximum(maps[..., :-1, :], maps[..., 1:, :], out=rows[..., :-1, :])
    rows[..., -1, :] = maps[..., -1, :]
    both = torch.empty_like(maps)
    torch.maximum(rows[..., :-1], rows[..., 1:], out=both[..., :-1])
    both[..., -1] = rows[..., -1]
    return both


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
    """Values and positions of every upsampled pixel above a per-unit floor, as flat
    arrays grouped by unit (``unit`` non-decreasing).

    ``values`` may be approximations within ``slack[u]`` of the exact upsampled value
    (``exact_at(units, positions)`` gives those; ``None``: the values are exact);
    ``kth_largest`` and ``above`` compute exact values for the few pixels whose
    approximation is too close to a level to decide.
    """

    def __init__(self, floors: torch.Tensor, slack: torch.Tensor, parts: list, exact_at=None,
                 dropped: list | None = None):
        self.floors, self.slack, self.exact_at = floors.float(), slack, exact_at
        n_units = floors.numel()
        if parts:
            units, positions, values = (torch.cat(x) for x in zip(*parts))
        else:
            units = positions = torch.zeros(0, dtype=torch.long, device=floors.device)
            values = torch.zeros(0, device=floors.device)
        self.unit, self.positions, self.values = units, positions, values
        self.stored = torch.bincount(units, minlength=n_units)  # length of each unit's slice
        self.count = self.stored.clone()  # pixels above the floor (entries of value -inf were dropped)
        if dropped:
            self.count -= torch.bincount(torch.cat(dropped), minlength=n_units)

    def positions_of(self, unit: int) -> torch.Tensor:
        """Flat global positions (``image * H * W + pixel``) kept for ``unit``."""
        first = int(self.stored[:unit].sum())
        part = slice(first, first + int(self.stored[unit]))
        return self.positions[part][self.values[part] > -math.inf]

    def _exact(self, index: torch.Tensor) -> torch.Tensor:
        return self.exact_at(self.unit[index].long(), self.positions[index].long())

    def _segments(self):
        """(unit, first, stop) of every unit with kept pixels: its slice of the flat arrays."""
        stops = self.stored.cumsum(0).tolist()
        return [(u, stop - n, stop) for u, (n, stop) in enumerate(zip(self.stored.tolist(), stops)) if n]

    def kth_largest(self, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(``[U]`` exact rank-th largest kept value, ``[U]`` bool: exact, i.e. enough
        values were kept to decide).

        With approximate values (each off by at most d), the exact answer lies within d
        of the approximate one t: values above ``t + 2d`` rank above it, values below
        ``t - 2d`` below it, and the band between is ranked by exact values. That is
        decided where the band lies above the floor (all its pixels were kept)."""
        exact = self.count >= rank
        result = self.floors.clone()
        floors, slack = self.floors.tolist(), self.slack.tolist()
        bands = []  # (unit, indices of its band, number of values above the band)
        enough = exact.tolist()
        for u, first, stop in self._segments():
            if not enough[u]:
                continue
            part = self.values[first:stop]
            t = part.kthvalue(part.numel() - rank + 1).values
            if self.exact_at is None:
                result[u] = t
                continue
            t, d = float(t), 2 * slack[u]
            if t - d <= floors[u]:
                exact[u] = False
                continue
            band = ((part >= t - d) & (part <= t + d)).nonzero().flatten() + first
            bands.append((u, band, int((part > t + d).sum())))
        if bands:
            values = self._exact(torch.cat([band for _, band, _ in bands])).split([b.numel() for _, b, _ in bands])
            for (u, _, above), exact_values in zip(bands, values):
                result[u] = exact_values.sort(descending=True).values[rank - 1 - above]
        return result, exact

    def above(self, thresholds: torch.Tensor):
        """Yield ``(units, positions)`` (long) of the kept pixels whose exact value is
        strictly above ``thresholds`` (at or above their floors)."""
        levels, slack = thresholds.tolist(), self.slack.tolist()
        units, chosen, unsure = [], [], []
        for u, first, stop in self._segments():
            level, d = levels[u], slack[u]
            if level == math.inf:
                continue
            part = self.values[first:stop]
            if self.exact_at is not None:  # within d of the level: the exact value decides
                close = ((part > level - d) & (part <= level + d)).nonzero().flatten() + first
                if close.numel():
                    unsure.append((u, close))
            chosen.append((part > level + d).nonzero().flatten() + first)
            units.append(u)
        device = self.values.device
        counts = torch.tensor([c.numel() for c in chosen], dtype=torch.long, device=device)
        unit = [torch.repeat_interleave(torch.tensor(units, dtype=torch.long, device=device), counts)]
        if unsure:
            index = torch.cat([close for _, close in unsure])
            level = torch.cat([thresholds[u].expand(close.numel()) for u, close in unsure])
            index = index[self._exact(index) > level]
            chosen.append(index)
            unit.append(self.unit.index_select(0, index).long())
        if chosen:
            yield torch.cat(unit), self.positions.index_select(0, torch.cat(chosen)).long()


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
        batch = torch.bucketize(image, self.ends, right=True)
        channel = units if self.units is None else self.units[units]
        out = torch.empty(units.shape, device=units.device)
        for b in batch.unique().tolist():
            pick = (batch == b).nonzero().flatten()
            first = int(self.ends[b]) - self.cache[b].shape[0]
            out[pick] = self.local(self.cache[b], image[pick] - first, channel[pick], pixel[pick] // width,
                                   pixel[pick] % width)
        return out

    def local(self, raw, image, channel, row, col) -> torch.Tensor:
        """Values at ``raw[image, channel]`` upsampled, output pixel ``(row, col)``."""
        y0, y1, x0, x1 = self.ylo[row], self.yhi[row], self.xlo[col], self.xhi[col]
        wx0, wx1 = self.wx[col, 0], self.wx[col, 1]
        first, second = self.arithmetic

        def at(rows, cols):
            return raw[image, channel, rows, cols].float()

        top = _interpolate(at(y0, x0), wx0, at(y0, x1), wx1, first)
        bottom = _interpolate(at(y1, x0), wx0, at(y1, x1), wx1, first)
        return _interpolate(top, self.wy[row, 0], bottom, self.wy[row, 1], second)


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


def collect(cache: list[torch.Tensor], size: tuple[int, int], floors: torch.Tensor,
            units: torch.Tensor | None = None, cell_chunk: int = 1 << 15,
            chunk_elements: int = 1 << 22) -> ActivePixels:
    """One pass over the cached raw featuremaps keeping the upsampled pixels above ``floors``.

    Only blocks that can hold such a pixel are upsampled: a block's pixels interpolate
    the same 2x2 raw neighbourhood, so none exceeds its maximum (up to rounding,
    covered by a margin). Blocks are computed as ``low + w_high * (high - low)`` per axis, whose
    rounding may differ from ``upsample``'s by a few ulps (``slack``); pixels that
    close to their floor are decided by their exact value (``_PixelValues``, with the
    rounding of ``upsample``'s matmuls found on the first image by
    ``_pick_arithmetic``). Where that rounding cannot be reproduced, maps are
    upsampled densely. Units are processed a few at a time (``chunk_elements`` raw
    values of all images), so the kept pixels come out grouped by unit.
    """
    height, width = size
    pixels = height * width
    n_images = sum(raw.shape[0] for raw in cache)
    position_dtype = torch.int32 if n_images * pixels < 2 ** 31 else torch.int64
    h, w = cache[0].shape[-2:]
    device = cache[0].device
    channels = torch.arange(cache[0].shape[1], device=device) if units is None else units
    ys, xs = _AxisBlocks(h, height, device), _AxisBlocks(w, width, device)
    arithmetic = _pick_arithmetic(cache[0][:1, channels[:32]], size, ys, xs)
    exact_at = None if arithmetic is None else _PixelValues(cache, size, units, arithmetic, ys, xs)
    floors = floors.float()
    slack = torch.zeros_like(floors)
    # Tables over block kinds s = (y block, x block): raw corner offsets, first output pixel.
    high_y, high_x = ys.weights[..., 1].contiguous(), xs.weights[..., 1].contiguous()  # [S, G], NaN pads
    gy, gx, sx = ys.index.shape[1], xs.index.shape[1], xs.corner.numel()
    k, l = ys.corner[:, None], xs.corner[None, :]
    k1, l1 = (k + 1).clamp(max=h - 1), (l + 1).clamp(max=w - 1)
    corner_offsets = torch.stack([k * w + l, k * w + l1, k1 * w + l, k1 * w + l1], -1).view(-1, 4)
    first_pixel = (ys.first[:, None] * width + xs.first[None, :]).flatten()
    kinds = first_pixel.numel()
    offsets = (torch.arange(gy, device=device)[:, None] * width + torch.arange(gx, device=device)).flatten()
    parts, dropped = [], []
    step = max(1, chunk_elements // (n_images * h * w))
    for u0 in range(0, channels.numel(), step):
        chosen = channels[u0:u0 + step]
        maps = torch.empty(chosen.numel(), n_images, h, w, device=device)  # [u, n, h, w], unit-major
        first = 0
        for raw in cache:
            maps[:, first:first + raw.shape[0]] = raw.index_select(1, chosen).transpose(0, 1)
            first += raw.shape[0]
        if exact_at is None:
            parts += _collect_dense(maps, size, floors[u0:u0 + step], u0, position_dtype)
            continue
        low, high = torch.aminmax(maps.view(*maps.shape[:2], -1), dim=2)
        near = 1e-5 * torch.maximum(high, -low).flatten()  # per map: bounds rounding differences
        slack[u0:u0 + step] = near.view(maps.shape[:2]).amax(1)
        level = floors[u0:u0 + step]
        reach = _neighbourhood_max(maps)  # bounds the pixels of the cell's blocks, up to rounding
        candidate = reach > (level[:, None] - near.view(maps.shape[:2]))[..., None, None]
        candidate = candidate.index_select(2, ys.corner).index_select(3, xs.corner)
        found = candidate.view(-1).nonzero().flatten()  # (map, kind) flat, grouped by unit
        for lo in range(0, found.numel(), cell_chunk):
            map_index, kind = found[lo:lo + cell_chunk].div(kinds, rounding_mode="floor"), found[lo:lo + cell_chunk] % kinds
            corners = maps.view(-1).take(map_index[:, None] * (h * w) + corner_offsets.index_select(0, kind))
            # low + w_high * (high - low), columns then rows: within a few ulps of upsample's values
            corners = corners.view(-1, 2, 2, 1)  # [M, row k / k+1, column l / l+1, 1]
            rows = torch.addcmul(corners[:, :, 0], corners[:, :, 1] - corners[:, :, 0],
                                 high_x.index_select(0, kind % sx)[:, None, :])  # [M, 2, Gx]
            top = rows[:, :1]
            block = torch.addcmul(top, rows[:, 1:] - top,
                                  high_y.index_select(0, kind.div(sx, rounding_mode="floor"))[:, :, None]).view(-1)
            margin, floor = near.index_select(0, map_index), level.index_select(0, map_index // n_images)
            hit = (block.view(-1, gy * gx) > (floor - margin)[:, None]).view(-1).nonzero().flatten()
            cell, entry = hit.div(gy * gx, rounding_mode="floor"), hit % (gy * gx)
            values = block.index_select(0, hit)
            unsure = (values <= (floor + margin).index_select(0, cell)).nonzero().flatten()
            if unsure.numel():  # too close to the floor to tell: the exact value decides
                c, e = cell[unsure], entry[unsure]
                m, kd = map_index[c], kind[c]
                row = ys.first[kd.div(sx, rounding_mode="floor")] + e.div(gx, rounding_mode="floor")
                col = xs.first[kd % sx] + e % gx
                exact = exact_at.local(maps.transpose(0, 1), m % n_images, m.div(n_images, rounding_mode="floor"),
                                       row, col)
                out = unsure[exact <= floor[c]]
                values[out] = -math.inf  # not above the floor after all: stored, but never counted
                dropped.append(m[exact <= floor[c]].div(n_images, rounding_mode="floor") + u0)
            base = (map_index % n_images) * pixels + first_pixel.index_select(0, kind)
            positions = base.index_select(0, cell) + offsets.index_select(0, entry)
            unit = (map_index.div(n_images, rounding_mode="floor") + u0).int().index_select(0, cell)
            parts.append((unit, positions.to(position_dtype), values))
    return ActivePixels(floors, slack, parts, exact_at, dropped)


def _collect_dense(maps: torch.Tensor, size: tuple[int, int], floors: torch.Tensor, u0: int, position_dtype):
    """Fallback of ``collect``: upsample every map of ``maps`` ``[u, n, h, w]``, unit by unit."""
    parts = []
    pixels = size[0] * size[1]
    for u in range(maps.shape[0]):
        for lo, hi in image_chunks(maps.shape[1], pixels):
            up = upsample(maps[u:u + 1, lo:hi], size).flatten()
            flat = (up > floors[u]).nonzero().flatten()
            unit = torch.full_like(flat, u + u0, dtype=torch.int32)
            parts.append((unit, (flat + lo * pixels).to(position_dtype), up[flat]))
    return parts
