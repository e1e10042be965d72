"""Bilinear upsampling block by block, bit-identical to ``upsample.upsample``.

``thresholds.quantile.collect_above_floors`` upsamples only the output blocks that can hold a pixel
above a level. A block (``AxisBlocks``) is a rectangle of output pixels that all
interpolate the same raw 2x2 neighbourhood, so ``neighbourhood_max`` bounds it.

``upsample`` computes with two matmuls whose rounding depends on the BLAS kernel:
each output is ``low * w_low + high * w_high`` (the other taps are exact zeros),
rounded after each product or once per added term (a fused multiply-add).
``pick_arithmetic`` finds which, per geometry, by reproducing ``upsample`` bit for
bit on seeded random maps; ``PixelValues`` then recomputes exact values of chosen
pixels (``fused_sum`` emulates the fused rounding exactly in float64).
"""
from __future__ import annotations

import math
from functools import lru_cache

import torch

from gan_monitor.dissection.upsample import interpolation_matrix, upsample

__all__ = ["taps", "AxisBlocks", "axis_blocks", "neighbourhood_max", "interpolate", "pick_arithmetic", "PixelValues"]


def taps(n_in: int, n_out: int, device):
    """(low index, high index, weight of high) of 1-D interpolation for each output coordinate
    (the same rule as ``upsample.interpolation_matrix``). Cached per geometry and device:
    do not modify the returned tensors."""
    return _taps(int(n_in), int(n_out), str(torch.device(device)))


@lru_cache(maxsize=64)
def _taps(n_in: int, n_out: int, device: str):
    dst = torch.arange(int(n_out), dtype=torch.float64)
    src = ((dst + 0.5) * (n_in / n_out) - 0.5).clamp(0, n_in - 1)
    lo = src.floor().long()
    hi = (lo + 1).clamp(max=n_in - 1)
    return lo.to(device), hi.to(device), (src - lo).float().to(device)


def axis_blocks(n_in: int, n_out: int, device) -> "AxisBlocks":
    """``AxisBlocks(n_in, n_out, device)``, built once per geometry and device (read-only)."""
    return _axis_blocks(int(n_in), int(n_out), str(torch.device(device)))


@lru_cache(maxsize=64)
def _axis_blocks(n_in: int, n_out: int, device: str) -> "AxisBlocks":
    return AxisBlocks(n_in, n_out, device)


class AxisBlocks:
    """One axis of the upsampled grid cut into blocks whose pixels all interpolate
    the same two raw samples ``corner`` and ``min(corner + 1, n_in - 1)``.

    Output coordinates are grouped by their low tap (``taps``); a group longer than
    ``ceil(n_out / n_in)`` (the border groups, which also hold the clamped
    coordinates) is split so that blocks pad little. ``index`` ``[S, G]`` lists each
    block's output coordinates (consecutive from ``first``; -1 pads), ``weights``
    ``[S, G, 2]`` their (low, high) tap weights, read from
    ``upsample.interpolation_matrix`` (NaN for pads; a clamped coordinate whose two taps
    coincide gets (1, 0)).
    """

    def __init__(self, n_in: int, n_out: int, device):
        lo, hi, _ = taps(n_in, n_out, "cpu")
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


def neighbourhood_max(maps: torch.Tensor) -> torch.Tensor:
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


def fused_sum(p: torch.Tensor, b: torch.Tensor, wb: torch.Tensor) -> torch.Tensor:
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


def interpolate(a, wa, b, wb, fused: bool) -> torch.Tensor:
    """One tap pair ``a * wa + b * wb`` (float32, low tap first), rounded as a BLAS kernel
    does: after each product (``fused=False``) or once per added term (``fused=True``)."""
    if fused:
        return fused_sum(a * wa, b, wb)
    return a * wa + b * wb


class PixelValues:
    """Exact upsampled values at given (unit, flat global position) pairs, with the
    rounding ``arithmetic`` of ``upsample`` (see ``pick_arithmetic``)."""

    def __init__(self, cache, size, units, arithmetic, ys: AxisBlocks, xs: AxisBlocks):
        self.cache, self.size, self.units, self.arithmetic = cache, size, units, arithmetic
        h, w = cache[0].shape[-2:]
        device = cache[0].device
        self.ylo, self.yhi, _ = taps(h, size[0], device)
        self.xlo, self.xhi, _ = taps(w, size[1], device)
        self.wy, self.wx = dense_weights(ys, size[0]), dense_weights(xs, size[1])
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

        top = interpolate(at(y0, x0), wx0, at(y0, x1), wx1, first)
        bottom = interpolate(at(y1, x0), wx0, at(y1, x1), wx1, first)
        return interpolate(top, self.wy[row, 0], bottom, self.wy[row, 1], second)


_ARITHMETIC: dict = {}  # (h, w, H, W, device type) -> what pick_arithmetic found


def pick_arithmetic(shape: tuple[int, int], size: tuple[int, int], ys: AxisBlocks, xs: AxisBlocks,
                    device) -> tuple[bool, bool] | None:
    """Which rounding (``interpolate``) each of ``upsample``'s two matmuls uses for
    ``[h, w]`` maps upsampled to ``size`` on this machine, found by reproducing
    ``upsample`` bit for bit on seeded random maps (cached per geometry); ``None`` if no
    choice does (``collect_above_floors`` then upsamples densely)."""
    device = torch.device(device)
    key = (*shape, *size, device.type)
    if key not in _ARITHMETIC:
        h, w = shape
        x = torch.randn(2, 32, h, w, generator=torch.Generator().manual_seed(0)).to(device)
        rows_reference = torch.matmul(x, interpolation_matrix(w, size[1], x.dtype, device).T)  # upsample's 1st step
        reference = upsample(x, size)
        ylo, yhi, _ = taps(h, size[0], device)
        xlo, xhi, _ = taps(w, size[1], device)
        wy, wx = dense_weights(ys, size[0]), dense_weights(xs, size[1])
        found = None
        for first in (False, True):
            rows = interpolate(x[..., xlo], wx[:, 0], x[..., xhi], wx[:, 1], first)  # [2, 32, h, W]
            if not torch.equal(rows, rows_reference):
                continue
            for second in (False, True):
                dense = interpolate(rows[..., ylo, :], wy[:, 0, None], rows[..., yhi, :], wy[:, 1, None], second)
                if torch.equal(dense, reference):
                    found = (first, second)
                    break
            break
        _ARITHMETIC[key] = found
    return _ARITHMETIC[key]


def dense_weights(axis: AxisBlocks, n_out: int) -> torch.Tensor:
    """``[n_out, 2]`` (low, high) tap weights of every output coordinate (kept on ``axis``; read-only)."""
    cached = getattr(axis, "_dense_weights", None)
    if cached is not None and cached.shape[0] == n_out:
        return cached
    weights = torch.zeros(n_out, 2, device=axis.weights.device)
    real = axis.index >= 0
    weights[axis.index[real]] = axis.weights[real]
    axis._dense_weights = weights
    return weights
