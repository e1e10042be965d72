"""The compiled counting kernels of the threshold passes (``kernels.c``), or ``None``.

``gan_monitor.core.native`` compiles ``kernels.c`` on first use; these accessors declare
the C signatures and hand out the functions, or ``None`` where there is no library
(no C compiler, ``GAN_MONITOR_NATIVE=0``) so that callers count with torch. Every path
gives the same integer counts (tests/dissection/test_kernels.py, test_sparse_tally.py and
the golden file). A kernel that refuses its input (an error code) switches the kernels off
for the rest of the process, with one warning.

- ``count_levels`` / ``count_levels_rows``: iqr mode's level count of one unit
  (``level_counts.count_unit``), from upsampled values or from upsample's first matmul
  (``upsample.upsample_rows``), whose rows the kernel mixes into output lines itself.
- ``count_above`` / ``count_above_rows``: counts at known thresholds
  (``sparse_tally.tally_above``), likewise.
- ``map_in_threads(function, items)``: the kernels are single-threaded and release the
  GIL (ctypes), so callers spread units over ``torch.get_num_threads()`` Python threads.
- ``choose``: the rows variant where ``rows_arithmetic`` allows it, else the other.
- ``rows_arithmetic(h, w, size)``: how the second matmul of ``upsample`` rounds for this
  geometry on this machine (``"plain"`` or ``"fused"``), found once by reproducing it bit
  for bit with ``gm_interpolate`` on seeded random maps; ``None`` when neither does (or
  fused rounding needs hardware FMA that is missing): the rows kernels are then not used.
"""
from __future__ import annotations

import ctypes
import warnings
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from pathlib import Path

import torch

from gan_monitor.core import native
from gan_monitor.dissection.upsample import upsample, upsample_rows
from gan_monitor.dissection.upsample_blocks import axis_blocks, dense_weights, taps

__all__ = ["count_levels", "count_levels_rows", "count_above", "count_above_rows", "rows_arithmetic", "row_taps",
           "choose", "map_in_threads", "threads", "refused", "reset", "SOURCE", "ENABLED"]

SOURCE = Path(__file__).with_name("kernels.c")
_P, _I64, _F32, _INT = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float, ctypes.c_int
_MIX = [_P, _P, _P, _INT]  # lo, hi, weights, fused
_LEVELS = [_F32, _F32, _F32, _P, _I64, _P, _I64, _P, _I64, _P, _P]  # lowest .. codes, width, counts, scratch
_SIGNATURES = {
    "gm_count_levels": [_P, _I64] + _LEVELS,  # values, n, ...
    "gm_count_levels_rows": [_P, _I64, _I64, _I64, _I64] + _MIX + _LEVELS + [_P],  # rows, maps, h, W, H, ..., line
    # values, images, units, pixels, thresholds, labels, depth, concepts, per_image, intersection
    "gm_count_above": [_P, _I64, _I64, _I64, _P, _P, _I64, _I64, _P, _P],
    # rows, images, units, h, W, H, lo, hi, weights, fused, thresholds, labels, depth, concepts, per_image,
    # intersection, line
    "gm_count_above_rows": [_P, _I64, _I64, _I64, _I64, _I64] + _MIX + [_P, _P, _I64, _I64, _P, _P, _P],
    "gm_interpolate": [_P, _I64, _I64, _I64, _I64] + _MIX + [_P],  # rows, maps, h, W, H, ..., out
    "gm_fused_available": [],
}
#: Set to False (tests) to count with torch although the library is there.
ENABLED = True
_functions: dict | None = None  # name -> ctypes function, resolved on first use ({} when unavailable)
_arithmetic: dict = {}  # (h, w, H, W) -> "plain" / "fused" / None


def _function(name: str):
    global _functions
    if not ENABLED:
        return None
    if _functions is None:
        library = native.load(SOURCE)
        _functions = {}
        if library is not None:
            for symbol, argtypes in _SIGNATURES.items():
                function = getattr(library, symbol)
                function.argtypes, function.restype = argtypes, ctypes.c_int
                _functions[symbol] = function
    return _functions.get(name)


def count_levels():
    """``gm_count_levels`` (see ``kernels.c``) or ``None``."""
    return _function("gm_count_levels")


def count_levels_rows():
    """``gm_count_levels_rows`` or ``None``."""
    return _function("gm_count_levels_rows")


def count_above():
    """``gm_count_above`` or ``None``."""
    return _function("gm_count_above")


def count_above_rows():
    """``gm_count_above_rows`` or ``None``."""
    return _function("gm_count_above_rows")


@lru_cache(maxsize=64)
def row_taps(h: int, height: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(low row int32 ``[height]``, high row int32 ``[height]``, their weights float32
    ``[height, 2]``) of each output row: ``upsample_blocks.taps`` and ``dense_weights``, the
    taps ``PixelValues`` mixes. Cached: read-only."""
    lo, hi, _ = taps(h, height, "cpu")
    weights = dense_weights(axis_blocks(h, height, "cpu"), height)
    return lo.int().contiguous(), hi.int().contiguous(), weights.contiguous()


def choose(h: int, w: int, size: tuple[int, int], rows, dense):
    """``(kernel, fused)`` for ``[h, w]`` maps upsampled to ``size``: the rows variant
    (``rows()``) and its mixing (1 fused, 0 plain) where ``rows_arithmetic`` reproduces
    ``upsample``, else the variant reading upsampled values (``dense()``) and ``None``;
    ``(None, None)`` without kernels."""
    arithmetic = rows_arithmetic(h, w, size)
    kernel = rows() if arithmetic is not None else None
    if kernel is not None:
        return kernel, int(arithmetic == "fused")
    return dense(), None


def rows_arithmetic(h: int, w: int, size: tuple[int, int]) -> str | None:
    """``"plain"`` or ``"fused"``: the mixing of ``upsample_rows`` that reproduces
    ``upsample`` bit for bit for ``[h, w]`` maps upsampled to ``size`` here, checked once on
    seeded random maps (cached); ``None`` if neither does or there is no kernel."""
    key = (int(h), int(w), int(size[0]), int(size[1]))
    interpolate, available = _function("gm_interpolate"), _function("gm_fused_available")
    if interpolate is None:
        return None
    if key not in _arithmetic:
        found = None
        if key[:2] != key[2:]:  # (same size: upsample copies nothing)
            height, width = key[2:]
            x = torch.randn(2, 32, h, w, generator=torch.Generator().manual_seed(0)) * 3
            reference = upsample(x, size)
            rows = upsample_rows(x, width).contiguous()
            lo, hi, weights = row_taps(h, height)
            out = torch.empty(2 * 32 * height * width)
            for name, fused in (("fused", 1), ("plain", 0)):
                if fused and not available():
                    continue
                error = interpolate(rows.data_ptr(), 64, h, width, height, lo.data_ptr(), hi.data_ptr(),
                                    weights.data_ptr(), fused, out.data_ptr())
                if not error and torch.equal(out.view_as(reference), reference):
                    found = name
                    break
        _arithmetic[key] = found
    return _arithmetic[key]


def threads() -> int:
    """Python threads ``map_in_threads`` uses: torch's intra-op thread count (1: no pool)."""
    return max(1, torch.get_num_threads())


def map_in_threads(function, items) -> list:
    """``[function(item) for item in items]``, spread over ``threads()`` threads when that is
    more than one (for calls that spend their time in the compiled kernels, which release
    the GIL; results in the order of ``items``)."""
    items = list(items)
    workers = min(threads(), len(items))
    if workers <= 1:
        return [function(item) for item in items]
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="gan_monitor-count") as pool:
        return list(pool.map(function, items))


def refused(name: str, code: int, what: str) -> None:
    """A kernel returned error ``code`` on ``what``: switch the kernels off in this process, warning once."""
    global _functions
    _functions = {}
    warnings.warn(f"gan_monitor: the compiled counting kernel {name} refused {what} (error {code}); counting "
                  "with torch from now on (same results, slower).", RuntimeWarning, stacklevel=3)


def reset() -> None:
    """Look for the library again on next use, and probe the arithmetic again (tests)."""
    global _functions
    _functions = None
    _arithmetic.clear()
