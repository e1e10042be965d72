"""Is the generator a function of its held-out inputs? Checked before measuring.

Dissection, ACE and single-unit ablation compare images generated from the *same*
held-out inputs (the dissection's passes, before/after an edit). A generator that draws
fresh randomness at every call (StyleGAN's per-layer noise in its default ``"random"``
mode, dropout left on, ``torch.randn`` inside ``forward``) gives different images each
time, so every measurement moves between runs and an ablation's effect mixes with the
noise's. :func:`check_deterministic` runs the first ``samples`` held-out inputs twice
and compares the images:

* the same (within ``tolerance`` of the images' scale, so that non-deterministic GPU
  kernels do not count): nothing happens;
* different: :class:`~gan_monitor.core.errors.NondeterministicGeneratorError` naming the
  usual fixes, or with ``allow=True`` a ``UserWarning`` and the measurement goes on.

Cost: two extra forward passes over ``samples`` (default 4) held-out inputs, in eval mode
under ``torch.no_grad()`` (e.g. dissecting 1000 inputs in batches of 32: 8 extra images for
the ~32 batches' 1000, under 1 % more generator time, no segmentation). The generator
may consume the global RNG in these passes (that is what is being detected).

>>> import torch
>>> from torch import nn
>>> class Noisy(nn.Module):
...     def forward(self, z):
...         return torch.tanh(z + torch.randn_like(z))
>>> check_deterministic(nn.Tanh(), torch.zeros(4, 3, 2, 2))  # a function of its inputs: passes
0.0
>>> check_deterministic(Noisy(), torch.zeros(4, 3, 2, 2))  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
gan_monitor.core.errors.NondeterministicGeneratorError: Noisy gave different images for the same held-out inputs ...
"""
from __future__ import annotations

import warnings
from typing import Any

import torch

from gan_monitor.core.errors import NondeterministicGeneratorError
from gan_monitor.core.inputs import call_generator, move_inputs, num_samples, slice_inputs
from gan_monitor.core.validation import positive_int

__all__ = ["check_deterministic", "DETERMINISM_SAMPLES", "DETERMINISM_TOLERANCE", "FIXES"]

#: held-out inputs run twice by the check
DETERMINISM_SAMPLES = 4
#: largest difference tolerated, relative to the images' largest absolute value (at least 1)
DETERMINISM_TOLERANCE = 1e-4

FIXES = ("pass the noise as an input drawn from the seed (e.g. gan_monitor.core.input_factories.stylegan_inputs, "
         "ToyStyleGenerator.input_fn()), switch the generator to a constant noise mode (StyleGAN2: "
         "noise_mode='const'), or remove other randomness from its forward (dropout is already off: it runs in "
         "eval mode)")


def _first_tensor(out: Any) -> torch.Tensor | None:
    if isinstance(out, torch.Tensor):
        return out
    values = out.values() if isinstance(out, dict) else out if isinstance(out, (list, tuple)) else []
    return next((v for v in values if isinstance(v, torch.Tensor)), None)


def check_deterministic(generator, inputs: Any, *, device=None, samples: int = DETERMINISM_SAMPLES,
                        allow: bool = False, what: str = "dissection",
                        tolerance: float = DETERMINISM_TOLERANCE) -> float:
    """Run the first ``samples`` of ``inputs`` through ``generator`` twice and compare.

    Call it with the generator already in eval mode and under ``torch.no_grad()`` (as the
    measurements do). Returns 0.0 for a deterministic generator, else (``allow=True``) the
    largest absolute pixel difference seen. Raises ``NondeterministicGeneratorError`` when it exceeds
    ``tolerance * max(1, max |image|)``, or warns instead with ``allow=True``
    (``allow_nondeterministic=True`` of ``dissect``/``ace``). ``what`` names the
    measurement in the message.
    """
    samples = positive_int("samples", samples)
    k = min(samples, num_samples(inputs))
    batch = move_inputs(slice_inputs(inputs, 0, k), device)
    try:
        first, second = (_first_tensor(call_generator(generator, batch)) for _ in range(2))
    except TypeError:  # called the wrong way: the measurement's first batch explains how to call it
        return 0.0
    first, second = (t.detach() if isinstance(t, torch.Tensor) else t for t in (first, second))
    if first is None or second is None or first.shape != second.shape or not first.is_floating_point():
        return 0.0  # not images we can compare; the measurement's own checks say what is wrong
    diff = float((first.double() - second.double()).abs().max()) if first.numel() else 0.0
    scale = max(1.0, float(first.detach().abs().max())) if first.numel() else 1.0
    if not diff > tolerance * scale:  # NaN differences are left to the finiteness checks
        return 0.0
    message = (f"{type(generator).__name__} gave different images for the same held-out inputs (the first {k} "
               f"sample(s), run twice: largest pixel difference {diff:.3g}), so every {what} measurement would move "
               f"between runs. Fixes: {FIXES}.")
    if allow:
        warnings.warn(f"gan_monitor: {message} Going on because allow_nondeterministic=True: results carry this "
                      "randomness.", stacklevel=3)
        return diff
    raise NondeterministicGeneratorError(
        f"{message} To measure it anyway, pass allow_nondeterministic=True (a warning instead of this error).")
