"""Quantile-mode tallying that upsamples only where a unit can be "on".

The threshold ``t_u`` (the ``(k+1)``-th largest upsampled activation of unit u, see
``thresholds``) must be known before counting, yet it depends on all images. Here
it is found exactly, and the IoU counted, from the cached raw featuremaps:

1. ``guess_floors``: from a seeded subsample of pixels (interpolated straight from
   the raw featuremaps, no full upsampling) pick per unit a level ``L_u`` a safe
   margin below the expected ``t_u`` (about 1.4 ``(k+1)`` pixels lie above it).
2. ``collect``: a bilinear pixel is a convex combination of its (up to) 4 raw
   neighbours, so it can exceed ``L_u`` only if the maximum of that raw 2x2
   neighbourhood does. The maximum is taken once per featuremap (a 2x2 max-pool with
   the border replicated) and only the output blocks of the cells above ``L_u`` are
   upsampled (about 8 % of them at q = 0.01); the value and position of every pixel
   above ``L_u`` is kept (``ActivePixels``, flat arrays grouped by unit).
3. If at least ``k+1`` values lie above ``L_u``, ``t_u`` is the ``(k+1)``-th largest of
   them (exact), and the pixels above ``t_u`` are exactly the unit's "on" pixels;
   they are counted against the cached labels (``LayerTally.add_active``). Units
   whose guess was too high (rare: heavy ties, e.g. ReLU zeros) are redone exactly
   with ``TopValues`` and a second collection, for those units only.

Bit-identical to ``upsample``: blocks are computed elementwise (fast, within a few
ulps), and every decision closer to a level than that bound is made on the exact
value, recomputed with the rounding ``upsample``'s matmuls use on this machine (one
or two roundings per tap pair, found once per geometry by ``pick_arithmetic``;
if neither reproduces ``upsample``, ``collect`` upsamples densely instead).

Memory: the kept pixels, about ``1.4 * U * (k+1) * 12`` bytes per layer (float32
value, int32 unit and position), plus a unit-major copy of at most ``chunk_elements``
raw values, on top of the featuremap cache.
"""
from __future__ import annotations

import math

import torch

from .tallies import image_chunks, upsample
from .upsample_blocks import AxisBlocks, PixelValues, neighbourhood_max, pick_arithmetic, taps
from .distributed import run_phase
from .thresholds import TopValues

__all__ = ["interpolate_at", "floor_index", "guess_floors", "ActivePixels", "ordered_keys", "select_across"]


def interpolate_at(raw: torch.Tensor, positions: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Upsampled values of ``raw`` ``[b, U, h, w]`` at flat pixel ``positions`` ``[b, m]``
    of the ``size`` grid, without upsampling the rest: ``[b, U, m]`` (equal to
    ``upsample`` up to float rounding)."""
    b, u, h, w = raw.shape
    height, width = size
    ylo, yhi, fy = taps(h, height, raw.device)
    xlo, xhi, fx = taps(w, width, raw.device)
    y, x = positions // width, positions % width
    flat = raw.float().reshape(b, u, h * w)

    def at(rows, cols):
        return flat.gather(2, (rows * w + cols)[:, None, :].expand(b, u, -1))

    wy, wx = fy[y][:, None, :], fx[x][:, None, :]
    top = at(ylo[y], xlo[x]) * (1 - wx) + at(ylo[y], xhi[x]) * wx
    bottom = at(yhi[y], xlo[x]) * (1 - wx) + at(yhi[y], xhi[x]) * wx
    return top * (1 - wy) + bottom * wy


def floor_index(s: int, rank: int, pixels: int) -> int:
    """Which of ``s`` sampled values (0 = largest) ``guess_floors`` takes as the floor."""
    expected = rank / pixels * s
    return min(s - 1, math.ceil(expected + 4 * math.sqrt(expected) + 16))  # P(too high) ~ 1e-7


def guess_floors(samples: torch.Tensor, rank: int, pixels: int, total: int | None = None) -> tuple[torch.Tensor, int]:
    """Per-unit level below which the ``rank``-th largest of ``pixels`` values very likely
    does not lie, from ``samples`` ``[U, s]`` drawn uniformly from those values; and the
    number of values expected above it (to size the buffers). ``total``: the size of the
    whole sample when ``samples`` holds only its top ``floor_index + 1`` values per unit
    (e.g. merged from several processes)."""
    s = samples.shape[1] if total is None else int(total)
    index = floor_index(s, rank, pixels)
    return samples.topk(index + 1, dim=1).values[:, index], math.ceil(pixels * (index + 1) / s)


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

    def kth_largest_across(self, rank: int, comm) -> tuple[torch.Tensor, torch.Tensor]:
        """``kth_largest`` over the pixels every rank of ``comm`` kept (same floors on all
        ranks, each over its own images); the same result on every rank.

        The rank-th largest approximate value ``t`` is selected exactly by bisection on
        order-preserving integer keys (32 rounds of a ``[U]`` count summed over ranks);
        each rank then computes exact values of its pixels within ``2 d`` of ``t`` (``d``:
        the largest slack of any rank), and those few values are gathered and ranked."""
        n_units, device = self.floors.numel(), self.floors.device
        count = comm.sum(self.count)
        exact = count >= rank
        slack = torch.stack(comm.gather(self.slack.float())).amax(0)
        keys = ordered_keys(self.values)
        span = 1 << 32
        combined, _ = (self.unit.long() * span + (keys + (1 << 31))).sort()  # grouped by unit, ascending
        units = torch.arange(n_units, device=device)
        ends = torch.searchsorted(combined, (units + 1) * span)
        lo = torch.full((n_units,), -(1 << 31), dtype=torch.long, device=device)  # count(key >= lo) >= rank
        hi = torch.full((n_units,), 1 << 31, dtype=torch.long, device=device)  # count(key >= hi) < rank
        for _ in range(32):
            mid = torch.div(lo + hi, 2, rounding_mode="floor")
            reached = comm.sum(ends - torch.searchsorted(combined, units * span + mid + (1 << 31))) >= rank
            lo, hi = torch.where(reached, mid, lo), torch.where(reached, hi, mid)
        t = keys_to_values(lo)
        d = 2 * slack
        exact &= t - d > self.floors  # else the band may reach below the floor: redo exactly
        low, high = torch.repeat_interleave(t - d, self.stored), torch.repeat_interleave(t + d, self.stored)
        above = comm.sum(torch.bincount(self.unit[self.values > high].long(), minlength=n_units))
        band = ((self.values >= low) & (self.values <= high)).nonzero().flatten()
        band = band[exact[self.unit[band].long()]]

        def band_values():
            return self.values[band] if self.exact_at is None else self._exact(band)

        values = torch.cat(comm.gather(run_phase(comm, "exact quantiles", band_values).float()))
        owners = torch.cat(comm.gather(self.unit[band].long()))
        order = values.argsort(descending=True, stable=True)
        values, owners = values[order], owners[order]
        order = owners.argsort(stable=True)
        values, owners = values[order], owners[order]
        per_unit = torch.bincount(owners, minlength=n_units)
        first = per_unit.cumsum(0) - per_unit
        pick = first + rank - 1 - above
        exact &= (pick >= first) & (pick < first + per_unit)
        result = self.floors.clone()
        result[exact] = values[pick[exact]]
        return result, exact

    def above(self, thresholds: torch.Tensor):
        """Yield ``(units, positions)`` (long) of the kept pixels whose exact value is
        strictly above ``thresholds`` (at or above their floors; ``inf`` skips a unit)."""
        low = torch.repeat_interleave(thresholds.float() - self.slack, self.stored)  # per kept pixel
        if self.exact_at is None:
            chosen = (self.values > low).nonzero().flatten()
        else:  # within slack of the level: the exact value decides
            high = torch.repeat_interleave(thresholds.float() + self.slack, self.stored)
            chosen = (self.values > high).nonzero().flatten()
            close = ((self.values > low) & (self.values <= high)).nonzero().flatten()
            if close.numel():
                level = torch.repeat_interleave(thresholds.float(), self.stored).index_select(0, close)
                chosen = torch.cat([chosen, close[self._exact(close) > level]])
        if chosen.numel():
            yield self.unit.index_select(0, chosen).long(), self.positions.index_select(0, chosen).long()


def exact_thresholds(cache: list[torch.Tensor], size: tuple[int, int], rank: int, units: torch.Tensor,
                     comm=None) -> torch.Tensor:
    """Exact rank-th largest upsampled value of the given units, streaming over the cache
    (with ``comm``, a ``distributed`` communicator: over every rank's cache)."""
    def local() -> TopValues:
        tv = TopValues(units.numel(), rank, device=cache[0].device)
        for raw in cache:
            part = raw[:, units]
            for lo, hi in image_chunks(part.shape[0], part.shape[1] * size[0] * size[1]):
                tv.update(upsample(part[lo:hi].float(), size).flatten(2))
        return tv

    if comm is None or comm.world_size == 1:
        return local().result()
    tv = run_phase(comm, "exact thresholds", local)
    merged = TopValues(units.numel(), rank, device=tv.buffer.device)
    for floor, buffer in zip(comm.gather(tv.floor), comm.gather(tv.buffer)):
        merged.floor = torch.maximum(merged.floor, floor)
        merged.update(buffer)
    return merged.result()


def collect(cache: list[torch.Tensor], size: tuple[int, int], floors: torch.Tensor,
            units: torch.Tensor | None = None, cell_chunk: int = 1 << 15,
            chunk_elements: int = 1 << 22) -> ActivePixels:
    """One pass over the cached raw featuremaps keeping the upsampled pixels above ``floors``.

    Only blocks that can hold such a pixel are upsampled: a block's pixels interpolate
    the same 2x2 raw neighbourhood, so none exceeds its maximum (up to rounding,
    covered by a margin). Blocks are computed as ``low + w_high * (high - low)`` per
    axis, within a few ulps of ``upsample`` (``slack``: 1e-5 of the map's largest
    magnitude); pixels that close to their floor are decided by their exact value
    (``PixelValues``, with the rounding of ``upsample``'s matmuls that
    ``pick_arithmetic`` found). Where that rounding cannot be reproduced, maps are
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
    ys, xs = AxisBlocks(h, height, device), AxisBlocks(w, width, device)
    arithmetic = pick_arithmetic((h, w), size, ys, xs, device)
    exact_at = None if arithmetic is None else PixelValues(cache, size, units, arithmetic, ys, xs)
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
            part = raw[:, u0:u0 + step] if units is None else raw.index_select(1, chosen)
            maps[:, first:first + raw.shape[0]] = part.transpose(0, 1)
            first += raw.shape[0]
        if exact_at is None:
            parts += _collect_dense(maps, size, floors[u0:u0 + step], u0, position_dtype)
            continue
        low, high = torch.aminmax(maps.view(*maps.shape[:2], -1), dim=2)
        near = 1e-5 * torch.maximum(high, -low).flatten()  # per map: bounds rounding differences
        slack[u0:u0 + step] = near.view(maps.shape[:2]).amax(1)
        level = floors[u0:u0 + step]
        reach = neighbourhood_max(maps)  # bounds the pixels of the cell's blocks, up to rounding
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


_LOW_BITS = 0x7FFFFFFF


def ordered_keys(values: torch.Tensor) -> torch.Tensor:
    """int64 keys of float32 ``values`` in the same order (``-0.0`` counts as ``0.0``)."""
    bits = (values.float() + 0.0).view(torch.int32).long()
    return torch.where(bits >= 0, bits, bits ^ _LOW_BITS)


def keys_to_values(keys: torch.Tensor) -> torch.Tensor:
    """Inverse of ``ordered_keys``."""
    bits = torch.where(keys >= 0, keys, keys ^ _LOW_BITS)
    return bits.to(torch.int32).view(torch.float32)


def select_across(values: torch.Tensor, ranks: torch.Tensor, comm) -> torch.Tensor:
    """``[U, R]`` float32: for each row u, the ``ranks[u, j]``-th largest (1 = largest) of
    row u of ``values`` ``[U, s]`` taken over every rank of ``comm`` together (each rank
    holds its own values), exactly: bisection on ``ordered_keys`` with one ``[U, R]`` count
    summed over ranks per bit (32 rounds, whatever the number of ranks). ``ranks`` must
    not exceed the total number of values per row."""
    keys = ordered_keys(values).to(torch.int32).sort(dim=1).values  # ascending per row (keys fit in int32)
    ranks = ranks.to(keys.device, torch.long)
    lo = torch.full(ranks.shape, -(1 << 31), dtype=torch.long, device=keys.device)  # count(key >= lo) >= rank
    hi = torch.full(ranks.shape, 1 << 31, dtype=torch.long, device=keys.device)  # count(key >= hi) < rank
    for _ in range(32):
        mid = torch.div(lo + hi, 2, rounding_mode="floor")
        count = keys.shape[1] - torch.searchsorted(keys, mid.to(torch.int32))  # values with key >= mid
        reached = comm.sum(count) >= ranks
        lo, hi = torch.where(reached, mid, lo), torch.where(reached, hi, mid)
    return keys_to_values(lo)
