"""The monitor's held-out sample: drawn once, reproducibly, and verifiable after a resume.

``HeldOutSample(n, seed, input_fn)`` draws its inputs with
:func:`gan_monitor.core.inputs.make_inputs` (a private seeded ``torch.Generator``,
never the global RNG) the first time they are needed on a device, and keeps a
checksum of their values. ``state_dict()`` holds ``(n, seed, checksum)``: what a
resumed run needs to rebuild exactly the same sample and to check that it did.
"""
from __future__ import annotations

import hashlib
import warnings
from typing import Any, Callable

import torch
from torch import nn

from gan_monitor.core.inputs import make_inputs

__all__ = ["HeldOutSample", "checksum"]


def checksum(inputs: Any) -> str:
    """Hash of the values, shapes and dtypes of the tensors in ``inputs`` (a tensor or
    nested tuples/lists/dicts; other entries by ``repr``)."""
    h = hashlib.sha256()

    def visit(x):
        if isinstance(x, torch.Tensor):
            t = x.detach().cpu().contiguous()
            h.update(str((tuple(t.shape), t.dtype)).encode())
            if t.numel():
                h.update(t.view(torch.uint8).numpy().tobytes())
        elif isinstance(x, dict):
            for k in sorted(x, key=str):
                h.update(str(k).encode())
                visit(x[k])
        elif isinstance(x, (list, tuple)):
            for v in x:
                visit(v)
        else:
            h.update(repr(x).encode())

    visit(inputs)
    return h.hexdigest()[:16]


class HeldOutSample:
    """``n`` generator inputs drawn by ``input_fn`` (default: Gaussian latents) from
    ``seed``; see the module docstring."""

    def __init__(self, n: int, seed: int, input_fn: Callable | None = None):
        self.n, self.seed, self.input_fn = int(n), int(seed), input_fn
        self.checksum: str | None = None
        self._inputs = None
        self._device: torch.device | None = None

    def inputs(self, generator: nn.Module, device: torch.device | str) -> Any:
        """The inputs on ``device``, drawn on first use (and again on another device)."""
        device = torch.device(device)
        if self._inputs is None or self._device != device:
            self._inputs = make_inputs(generator, self.n, self.seed, input_fn=self.input_fn, device=device)
            self._device = device
            digest = checksum(self._inputs)
            if self.checksum is not None and digest != self.checksum:
                warnings.warn(
                    "gan_monitor: the held-out inputs rebuilt from the checkpoint's seed differ from "
                    "the ones the checkpointed run used (another input_fn or generator?); dissections "
                    "before and after this point are not on the same samples.",
                    stacklevel=3,
                )
            self.checksum = digest
        return self._inputs

    def state_dict(self) -> dict[str, Any]:
        return {"n": self.n, "seed": self.seed, "checksum": self.checksum}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.n = int(state.get("n", self.n))
        self.seed = int(state.get("seed", self.seed))
        self.checksum = state.get("checksum")
        self._inputs = None  # rebuilt from (n, seed) at the next use
