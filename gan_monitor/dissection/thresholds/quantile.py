"""Quantile mode's exact thresholds, found by upsampling only where a unit can be "on"
(docs/method.md §3).

The threshold ``t_u`` (the ``(k+1)``-th largest upsampled activation of unit u,
``k = top_values.quantile_rank(q, pixels)``) must be known before counting, yet it
depends on all images. Here it is found exactly from the cached raw featuremaps (the
pass that drives these steps and counts the IoU is ``quantile_pass``):

1. ``guess_floors``: from a seeded subsample of pixels (interpolated straight from
   the raw featuremaps, no full upsampling) pick per unit a level ``L_u`` a safe
   margin below the expected ``t_u`` (about 1.4 ``(k+1)`` pixels lie above it).
2. ``collect_above_floors``: a bilinear pixel is a convex combination of its (up to) 4 raw
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
if neither reproduces ``upsample``, ``collect_above_floors`` upsamples densely instead).

Memory: the kept pixels, about ``1.4 * U * (k+1) * 12`` bytes per layer (float32
value, int32 unit and position), plus a unit-major copy of at most ``chunk_elements``
raw values, on top of the featuremap cache; the temporaries of the selection raise the
peak several-fold (measured numbers: README, "Memory").
"""
from __future__ import annotations

import math

import torch

from gan_monitor.core.distributed import run_phase
from gan_monitor.dissection.tally import image_chunks
from gan_monitor.dissection.thresholds.active_pixels import ActivePixels
from gan_monitor.dissection.thresholds.top_values import TopValues
from gan_monitor.dissection.upsample import upsample
from gan_monitor.dissection.upsample_blocks import PixelValues, axis_blocks, neighbourhood_max, pick_arithmetic, taps

__all__ = ["interpolate_at", "floor_index", "guess_floors", "exact_thresholds", "collect_above_floors", "ActivePixels"]


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

    def mix(low, w_low, high, w_high):  # low * w_low + high * w_high, in place (the same roundings)
        return low.mul_(w_low).add_(high.mul_(w_high))

    wy, wx = fy[y][:, None, :], fx[x][:, None, :]
    top = mix(at(ylo[y], xlo[x]), 1 - wx, at(ylo[y], xhi[x]), wx)
    bottom = mix(at(yhi[y], xlo[x]), 1 - wx, at(yhi[y], xhi[x]), wx)
    return mix(top, 1 - wy, bottom, wy)


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


def collect_above_floors(cache: list[torch.Tensor], size: tuple[int, int], floors: torch.Tensor,
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
    ys, xs = axis_blocks(h, height, device), axis_blocks(w, width, device)
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
        largest = maps.view(*maps.shape[:2], -1).abs().amax(2)  # (aminmax along a dim: 10x slower here)
        near = 1e-5 * largest.flatten()  # per map: bounds rounding differences
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
    """Fallback of ``collect_above_floors``: upsample every map of ``maps`` ``[u, n, h, w]``, unit by unit."""
    parts = []
    pixels = size[0] * size[1]
    for u in range(maps.shape[0]):
        for lo, hi in image_chunks(maps.shape[1], pixels):
            up = upsample(maps[u:u + 1, lo:hi], size).flatten()
            flat = (up > floors[u]).nonzero().flatten()
            unit = torch.full_like(flat, u + u0, dtype=torch.int32)
            parts.append((unit, (flat + lo * pixels).to(position_dtype), up[flat]))
    return parts
