"""Checks of single argument values, shared by the API, the callbacks and the CLI, so that
each value is validated once and every message names the argument and what it accepts.

>>> positive_int("n", 5)
5
>>> positive_int("n", 2.5)
Traceback (most recent call last):
...
ValueError: n must be a positive integer, got 2.5.
>>> choice("iou", "plain", ("plain", "category"))
'plain'
"""
from __future__ import annotations

import math
import numbers
from typing import Any, Sequence

import numpy
import torch

__all__ = ["positive_int", "non_negative_int", "integer", "fraction", "choice", "positive_float", "value_range",
           "checked_device", "check_not_meta", "run_device", "check_inputs"]


def _is_int(value: Any) -> bool:
    # numbers.Integral: Python ints and numpy integers (not bools, floats or tensors)
    return not isinstance(value, (bool, numpy.bool_)) and isinstance(value, numbers.Integral)


def positive_int(name: str, value: Any, *, allow_none: bool = False) -> int | None:
    """``value`` as an int >= 1 (``None`` passes when ``allow_none``); bools and floats are refused."""
    if value is None and allow_none:
        return None
    if not _is_int(value) or value < 1:
        hint = " or None" if allow_none else ""
        raise ValueError(f"{name} must be a positive integer{hint}, got {value!r}.")
    return int(value)


def non_negative_int(name: str, value: Any) -> int:
    if not _is_int(value) or value < 0:
        raise ValueError(f"{name} must be an integer >= 0, got {value!r}.")
    return int(value)


def integer(name: str, value: Any) -> int:
    """Any int (e.g. a seed); ``None``, bools, floats and strings are refused."""
    if not _is_int(value):
        raise TypeError(f"{name} must be an integer, got {value!r}.")
    return int(value)


def fraction(name: str, value: Any, *, closed: bool = False, meaning: str = "") -> float:
    """A float in (0, 1), or in [0, 1] when ``closed``."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        ok = 0.0 <= value <= 1.0 if closed else 0.0 < value < 1.0
    if not ok:
        where = "[0, 1]" if closed else "(0, 1)"
        raise ValueError(f"{name} must lie in {where}{' (' + meaning + ')' if meaning else ''}, got {value!r}.")
    return float(value)


def positive_float(name: str, value: Any, *, allow_zero: bool = False) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{name} must be a finite number {'>= 0' if allow_zero else '> 0'}, got {value!r}.")
    return float(value)


def choice(name: str, value: Any, choices: Sequence[str]) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(repr(c) for c in choices)}; got {value!r}.")
    return value


def value_range(name: str, value: Any) -> tuple[float, float]:
    """``(low, high)``: two finite numbers with ``low < high``."""
    try:
        low, high = value
        ok = all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in (low, high))
    except (TypeError, ValueError):
        ok = False
    if not ok or not low < high:
        raise ValueError(f"{name} must be (low, high) with finite low < high, e.g. (0, 1) or (0, 255); got {value!r}.")
    return float(low), float(high)


def checked_device(name: str, device: Any) -> torch.device | None:
    """``device`` as a ``torch.device`` (None stays None), refusing a CUDA device this torch
    cannot use with the reason and the fix."""
    if device is None:
        return None
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"{name}={device!r} is not a torch device ({err}); e.g. 'cpu', 'cuda' or 'cuda:1'.") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        why = (f"this torch ({torch.__version__}) was built without CUDA" if torch.version.cuda is None
               else f"this torch ({torch.__version__}, CUDA {torch.version.cuda}) sees no CUDA GPU")
        raise ValueError(f"{name}={device!r}: {why}. Install a CUDA build of torch (see "
                         "https://pytorch.org/get-started/locally/; with this project's Makefile: make test "
                         "TORCH_SPEC=torch==<version> PIP_EXTRA_INDEX_URL=<PyTorch CUDA index>) or use 'cpu'.")
    if dev.type == "meta":
        raise ValueError(f"{name}='meta' holds no data; dissect on a real device ('cpu' or 'cuda').")
    return dev


def check_not_meta(what: str, tensors, fix: str | None = None) -> None:
    """Refuse tensors on the meta device (a model built without its weights); ``fix`` says
    what to do instead (default: load the module's weights)."""
    if any(isinstance(t, torch.Tensor) and t.is_meta for t in tensors):
        fix = fix or ("load its weights (module.to_empty(device=...) then load_state_dict) before dissecting or "
                      "intervening")
        raise ValueError(f"{what} lives on the meta device (no values: e.g. built with device='meta' or under "
                         f"init_empty_weights); {fix}.")


def run_device(generator: Any, device: Any = None) -> torch.device:
    """Where to run ``generator``: ``device`` checked (:func:`checked_device`), else the
    device of its first parameter or buffer (CPU when it has none). A generator with
    parameters on the meta device is refused (:func:`check_not_meta`)."""
    tensors = list(generator.parameters()) + list(generator.buffers()) if isinstance(generator, torch.nn.Module) else []
    check_not_meta("the generator", tensors)
    dev = checked_device("device", device)
    if dev is not None:
        return dev
    return tensors[0].device if tensors else torch.device("cpu")


def check_inputs(inputs: Any) -> Any:
    """User-given generator ``inputs=`` (a tensor, or a tuple/list/dict of tensors): refused
    when a tensor has no samples along dim 0 or lives on the meta device."""
    if inputs is None:
        return None
    if isinstance(inputs, torch.Tensor):
        values = [inputs]
    elif isinstance(inputs, dict):
        values = list(inputs.values())
    else:
        values = list(inputs) if isinstance(inputs, (list, tuple)) else None
    if values is None:
        raise TypeError(f"inputs= must be a tensor, or a tuple/list/dict of tensors (samples along dim 0), got "
                        f"{type(inputs).__name__}.")
    tensors = [t for t in values if isinstance(t, torch.Tensor) and t.dim() > 0]
    check_not_meta("inputs=", tensors, fix="give real tensors (e.g. on 'cpu'), or leave inputs=None to draw them")
    if any(t.shape[0] == 0 for t in tensors):
        raise ValueError("inputs= has 0 samples (dim 0 is empty); give at least one held-out input, or leave "
                         "inputs=None to draw n of them.")
    return inputs
