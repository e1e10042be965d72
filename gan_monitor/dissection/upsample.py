"""Bilinear upsampling of featuremaps to the segmentation's size (docs/method.md §2).

>>> import torch
>>> x = torch.tensor([[[[0.0, 1.0]]]])
>>> upsample(x, (1, 4)).flatten().tolist()
[0.0, 0.25, 0.75, 1.0]
"""
from __future__ import annotations

from functools import lru_cache

import torch

__all__ = ["upsample", "upsample_rows", "interpolation_matrix"]


@lru_cache(maxsize=64)
def _matrix_cpu(n_in: int, n_out: int) -> torch.Tensor:
    dst = torch.arange(n_out, dtype=torch.float64)
    src = ((dst + 0.5) * (n_in / n_out) - 0.5).clamp(0, n_in - 1)  # centres aligned, border padding
    lo = src.floor().long()
    hi = (lo + 1).clamp(max=n_in - 1)
    frac = src - lo
    m = torch.zeros(n_out, n_in, dtype=torch.float64)
    rows = torch.arange(n_out)
    m.index_put_((rows, lo), 1 - frac, accumulate=True)
    m.index_put_((rows, hi), frac, accumulate=True)
    return m


def interpolation_matrix(n_in: int, n_out: int, dtype=torch.float32, device=None) -> torch.Tensor:
    """``[n_out, n_in]`` 1-D linear interpolation weights, pixel centres aligned.

    Output pixel ``i`` samples input coordinate ``(i + 0.5) * n_in / n_out - 0.5``,
    clamped to ``[0, n_in - 1]`` (border padding), i.e. ``align_corners=False``.
    """
    return _matrix_cpu(int(n_in), int(n_out)).to(device=device, dtype=dtype)


def upsample(featuremap: torch.Tensor, size) -> torch.Tensor:
    """Bilinearly upsample ``[N, U, h, w]`` to ``[N, U, H, W]`` (docs/method.md §2).

    Pixel centres are aligned and borders padded by replication: the same values as
    ``F.interpolate(x, size, mode="bilinear", align_corners=False)`` up to float
    rounding, computed as two separable matmuls (faster on a CPU). Every part of
    gan_monitor upsamples with this function so thresholds and masks agree.
    """
    if featuremap.dim() != 4:
        raise ValueError(f"upsample expects a featuremap [N, U, h, w], got shape {tuple(featuremap.shape)}.")
    height, width = (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))
    h, w = featuremap.shape[-2:]
    if (h, w) == (height, width):
        return featuremap
    rows = upsample_rows(featuremap, width)
    return torch.matmul(interpolation_matrix(h, height, rows.dtype, rows.device), rows)


def upsample_rows(featuremap: torch.Tensor, width: int) -> torch.Tensor:
    """The first of ``upsample``'s two matmuls: ``[..., h, w]`` interpolated along x to
    ``[..., h, width]`` (the compiled kernels mix these rows into output lines themselves)."""
    x = featuremap if featuremap.dtype.is_floating_point else featuremap.float()
    return torch.matmul(x, interpolation_matrix(x.shape[-1], width, x.dtype, x.device).T)
