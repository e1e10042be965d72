"""Giving freed host memory back to the operating system during long streaming passes.

A dissection that streams thousands of batches frees and reallocates megabyte-sized
temporaries (upsampled maps, selections) between small long-lived tensors (running counts,
top samples). glibc's allocator then serves later requests from a growing, fragmented heap
instead of returning the freed pages, so the peak resident memory creeps up with the number
of batches (toy GAN, streaming quantile path: 569 MB at n = 1,000, 675 MB at n = 3,000,
776 MB at n = 10,000). ``release_freed_memory`` asks glibc to return the free pages
(``malloc_trim(0)``: milliseconds, up to ~10 ms with a large heap); ``BatchRunner`` calls
it at most once a second during the streaming passes (656 MB at n = 10,000; README,
"Memory"). Elsewhere (macOS, Windows, musl) it does nothing.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import sys

__all__ = ["release_freed_memory"]

_TRIM = None  # resolved on first use: the malloc_trim function, or False


def _malloc_trim():
    global _TRIM
    if _TRIM is None:
        _TRIM = False
        if sys.platform.startswith("linux"):
            try:
                libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
                trim = libc.malloc_trim  # glibc only
                trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
                _TRIM = trim
            except (OSError, AttributeError):
                _TRIM = False
    return _TRIM


def release_freed_memory() -> bool:
    """Return freed heap pages to the operating system (glibc); True if it could be asked."""
    trim = _malloc_trim()
    if not trim:
        return False
    trim(0)
    return True
