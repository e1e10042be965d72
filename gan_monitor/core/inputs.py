"""Held-out generator inputs: drawing them reproducibly and feeding them in batches.

Inputs are a tensor, a tuple/list of tensors or a dict of tensors whose first
dimension indexes samples. A tensor is passed to the generator as ``g(x)``, a
tuple as ``g(*x)``, a dict as ``g(**x)``; non-tensor entries are passed unchanged
to every batch. Drawing uses a seeded ``torch.Generator`` on the CPU and never the
global RNG, so a training run is not perturbed and the same seed gives the same
inputs on any device.
"""
from __future__ import annotations

from typing import Any, Callable, Iterator

import torch
from torch import nn

from gan_monitor.core.validation import integer, positive_int

__all__ = ["infer_latent_shape", "default_input_fn", "make_inputs", "num_samples", "index_inputs",
           "slice_inputs", "move_inputs", "call_generator", "call_generator_first", "iterate_batches",
           "require_described_sample"]

InputFn = Callable[[int, torch.Generator], Any]

_HOW_TO = ("pass input_fn=lambda n, gen: torch.randn(n, <latent shape...>, generator=gen) "
           "(or your own inputs: noise, class labels, images) or inputs=...")


def infer_latent_shape(generator: nn.Module) -> tuple[int, ...]:
    """Shape of one latent vector (without the batch dimension).

    Looked up, in order, in ``generator.latent_dim``, ``generator.hparams.latent_dim``
    and the first ``Linear`` (``(in_features,)``) or convolution
    (``(in_channels, 1, 1)``, DCGAN style) among the generator's modules.
    """
    for owner in (generator, getattr(generator, "hparams", None)):
        dim = None
        if isinstance(owner, dict):
            dim = owner.get("latent_dim")
        elif owner is not None:
            dim = getattr(owner, "latent_dim", None)
        if dim is not None:
            shape = (int(dim),) if isinstance(dim, int) else tuple(int(d) for d in dim)
            if not shape or min(shape) < 1:
                raise ValueError(f"latent_dim {dim!r} of {type(generator).__name__} is not a valid shape.")
            return shape
    for module in generator.modules():
        if isinstance(module, nn.Linear):
            return (module.in_features,)
        if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
            return (module.in_channels, 1, 1)
        if isinstance(module, (nn.Conv1d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose3d, nn.Embedding)):
            break
    raise ValueError(
        f"cannot tell the latent shape of {type(generator).__name__}: it has no `latent_dim` "
        f"attribute and does not start with a Linear or 2-D convolution layer; {_HOW_TO}."
    )


def default_input_fn(generator: nn.Module) -> InputFn:
    """``input_fn`` drawing ``z ~ N(0, 1)`` of the generator's latent shape."""
    shape = infer_latent_shape(generator)

    def draw(n: int, gen: torch.Generator) -> torch.Tensor:
        return torch.randn((n, *shape), generator=gen)

    return draw


def make_inputs(generator: nn.Module, n: int, seed: int, input_fn: InputFn | None = None,
                device: torch.device | str | None = None) -> Any:
    """Draw ``n`` held-out inputs with ``input_fn(n, torch.Generator().manual_seed(seed))``.

    The default ``input_fn`` draws Gaussian latents (``default_input_fn``).
    """
    n, seed = positive_int("n", n), integer("seed", seed)  # n=2.5 or seed=None: named, never truncated
    fn = input_fn if input_fn is not None else default_input_fn(generator)
    if not callable(fn):
        raise TypeError(f"input_fn must be callable as input_fn(n, generator) or None, got {type(fn).__name__}.")
    gen = torch.Generator(device="cpu").manual_seed(seed)
    inputs = fn(n, gen)
    got = num_samples(inputs)
    if got != int(n):
        raise ValueError(f"input_fn returned {got} samples for n={n}; it must return exactly n along dim 0.")
    return move_inputs(inputs, device) if device is not None else inputs


def _tensors(inputs: Any) -> list[torch.Tensor]:
    if isinstance(inputs, torch.Tensor):
        return [inputs]
    if isinstance(inputs, (tuple, list)):
        return [x for x in inputs if isinstance(x, torch.Tensor)]
    if isinstance(inputs, dict):
        return [x for x in inputs.values() if isinstance(x, torch.Tensor)]
    raise TypeError(
        f"generator inputs must be a tensor, a tuple/list or a dict of tensors, got {type(inputs).__name__}."
    )


def num_samples(inputs: Any) -> int:
    """Number of samples (size of dim 0, which all tensors must share)."""
    sizes = {int(t.shape[0]) for t in _tensors(inputs) if t.dim() > 0}
    if not sizes:
        raise ValueError("generator inputs contain no tensor with a sample dimension (dim 0).")
    if len(sizes) > 1:
        raise ValueError(f"generator input tensors disagree on the number of samples (dim 0): {sorted(sizes)}.")
    return sizes.pop()


def _map(inputs: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    def one(x):
        return fn(x) if isinstance(x, torch.Tensor) and x.dim() > 0 else x
    if isinstance(inputs, torch.Tensor):
        return one(inputs)
    if isinstance(inputs, (tuple, list)):
        return type(inputs)(one(x) for x in inputs)
    if isinstance(inputs, dict):
        return {k: one(v) for k, v in inputs.items()}
    raise TypeError(f"unsupported generator inputs of type {type(inputs).__name__}.")


def index_inputs(inputs: Any, index: torch.Tensor) -> Any:
    """Samples ``index`` (a LongTensor) of every tensor (along dim 0); other entries kept."""
    return _map(inputs, lambda t: t[index.to(t.device)])


def slice_inputs(inputs: Any, start: int, stop: int) -> Any:
    """Samples ``start:stop`` of every tensor (along dim 0)."""
    return _map(inputs, lambda t: t[start:stop])


def move_inputs(inputs: Any, device: torch.device | str | None) -> Any:
    if device is None:
        return inputs
    return _map(inputs, lambda t: t.to(device))


def call_generator(generator: Callable, batch: Any) -> Any:
    """``g(x)``, ``g(*x)`` or ``g(**x)`` depending on the type of ``batch``."""
    if isinstance(batch, dict):
        return generator(**batch)
    if isinstance(batch, (tuple, list)):
        return generator(*batch)
    return generator(batch)


def require_described_sample(inputs_given: bool, input_fn: InputFn | None, need: str, give: str) -> InputFn | None:
    """``input_fn``, unless the user gave their own ``inputs=`` and no ``input_fn=``: then a
    second sample (the iqr sample, insertion values, evaluation images) would be Gaussian
    latents they never described, and ``ValueError`` says ``need`` and what to ``give``."""
    if input_fn is None and inputs_given:
        raise ValueError(f"{need}, but with your own inputs= and no input_fn= it would be Gaussian latents you "
                         f"never asked for. Pass {give}.")
    return input_fn


def call_generator_first(generator: Callable, batch: Any) -> Any:
    """:func:`call_generator` for the first batch of a run: a ``TypeError`` (e.g. a forward
    that needs ``G(styles, noise)`` or ``G(z, labels)`` called with one latent tensor) is
    re-raised with how to pass the generator's inputs (``input_fn=`` / ``inputs=``)."""
    try:
        return call_generator(generator, batch)
    except TypeError as err:
        raise TypeError(
            f"calling {type(generator).__name__} on the held-out inputs failed: {err}. If its forward needs more "
            "than one input (e.g. G(styles, noise) or G(z, labels)), pass input_fn=<function (n, torch.Generator) "
            "-> inputs> returning a tuple (called as G(*x)) or a dict (G(**x)), or inputs=... "
            "(gan_monitor.core.input_factories has ready ones).") from err


def iterate_batches(inputs: Any, batch_size: int, device=None) -> Iterator[tuple[int, Any]]:
    """Yield ``(start index, batch)`` over the inputs, moved to ``device``."""
    batch_size = positive_int("batch_size", batch_size)
    n = num_samples(inputs)
    for start in range(0, n, batch_size):
        yield start, move_inputs(slice_inputs(inputs, start, min(n, start + batch_size)), device)
