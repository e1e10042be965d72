"""Ready-made ``input_fn``s for generators that take more than a latent vector.

An ``input_fn(n, torch_generator) -> inputs`` draws ``n`` held-out generator inputs (the
held-out sample of docs/method.md §1) from a seeded ``torch.Generator``
(``dissect(input_fn=...)``, ``DissectionMonitor(input_fn=...)``; see
:mod:`gan_monitor.core.inputs`). Everything random is drawn from that generator, so the
same seed gives the same inputs, and the generator then gives the same images:

* :func:`stylegan_inputs`: z plus one fixed noise image per layer (StyleGAN's per-layer
  noise otherwise changes at every call, and every measurement with it), optionally a
  truncation ``psi``; returns the dict ``{"z": z, "noise_...": ..., "truncation_psi": psi}``,
  passed as ``G(**inputs)``.
* :func:`stylegan_w_inputs`: the same with w, mapped once from z when drawn.
* :func:`dataset_inputs`: ``n`` items of a fixed tensor of inputs (e.g. held-out label
  maps or images for an image-to-image generator such as pix2pix), chosen by the seed.
* :func:`one_hot_maps`: integer label maps ``[N, H, W]`` to one-hot channels.

The noise inputs are passed by keyword, one tensor ``[n, 1, H, W]`` per layer, so that
batching and sharding (which slice every tensor of the inputs along dim 0) apply to them.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import torch

from gan_monitor.core.validation import positive_int

__all__ = ["stylegan_inputs", "stylegan_w_inputs", "dataset_inputs", "one_hot_maps"]

InputFn = Callable[[int, torch.Generator], Any]


def _noise_shapes(noise_shapes: Mapping[str, Sequence[int]] | None) -> dict[str, tuple[int, ...]]:
    if noise_shapes is None:
        return {}
    if not isinstance(noise_shapes, Mapping):
        raise TypeError("noise_shapes must map each noise input's keyword to the shape of one sample's noise, "
                        "e.g. {'noise_b8_conv0': (1, 8, 8)} (ToyStyleGenerator.noise_shapes() gives it); "
                        f"got {type(noise_shapes).__name__}.")
    shapes = {}
    for name, shape in noise_shapes.items():
        if not isinstance(name, str) or not name.isidentifier() or name in ("z", "w", "truncation_psi"):
            raise ValueError(f"noise input names must be keyword names other than z, w and truncation_psi, "
                             f"got {name!r}.")
        shape = tuple(int(s) for s in shape)
        if not shape or min(shape) < 1:
            raise ValueError(f"noise_shapes[{name!r}] must be a shape of positive sizes, got {shape}.")
        shapes[name] = shape
    return shapes


def _check_psi(truncation_psi: float | None) -> float | None:
    if truncation_psi is None:
        return None
    if isinstance(truncation_psi, bool) or not isinstance(truncation_psi, (int, float)):
        raise TypeError(f"truncation_psi must be a number (1 = no truncation) or None, got {truncation_psi!r}.")
    return float(truncation_psi)


def _draw_noise(n: int, gen: torch.Generator, shapes: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    return {name: torch.randn((n, *shape), generator=gen) for name, shape in shapes.items()}


def stylegan_inputs(z_dim: int, noise_shapes: Mapping[str, Sequence[int]] | None = None,
                    truncation_psi: float | None = None) -> InputFn:
    """``input_fn`` drawing z and fixed per-layer noise for a StyleGAN-like generator.

    Args:
        z_dim: size of the latent z.
        noise_shapes: ``{keyword: shape of one sample's noise}``, e.g.
            ``ToyStyleGenerator.noise_shapes()``; each keyword gets ``randn(n, *shape)``.
            None: no noise inputs (use a generator whose noise is constant instead).
        truncation_psi: passed as ``truncation_psi=`` to the generator when given.

    Returns ``input_fn(n, gen) -> {"z": [n, z_dim], <noise keyword>: [n, *shape], ...}``
    (plus ``"truncation_psi": psi``), drawn in this order from ``gen``: the generator is
    then called as ``G(z=..., noise_b4_conv1=..., ...)``.
    """
    positive_int("z_dim", z_dim)
    shapes, psi = _noise_shapes(noise_shapes), _check_psi(truncation_psi)

    def draw(n: int, gen: torch.Generator) -> dict[str, Any]:
        inputs: dict[str, Any] = {"z": torch.randn(n, int(z_dim), generator=gen)}
        inputs.update(_draw_noise(n, gen, shapes))
        if psi is not None:
            inputs["truncation_psi"] = psi
        return inputs

    return draw


def stylegan_w_inputs(mapping: Callable[[torch.Tensor], torch.Tensor], z_dim: int,
                      noise_shapes: Mapping[str, Sequence[int]] | None = None,
                      truncation_psi: float | None = None, w_avg: torch.Tensor | None = None) -> InputFn:
    """``input_fn`` drawing w (z mapped by ``mapping`` when the inputs are drawn) and fixed noise.

    ``mapping(z) -> w`` runs in eval mode under ``torch.no_grad()`` on its own device (z is
    moved there, w comes back to the CPU; training flags are restored). With ``truncation_psi``, ``w <- w_avg + psi * (w - w_avg)``;
    ``w_avg`` defaults to ``mapping.w_avg``. The w are fixed when drawn: while training,
    later mapping weights would map the same z elsewhere, so monitor with
    :func:`stylegan_inputs` instead. Returns ``{"w": [n, w_dim], <noise keyword>: ...}``.
    """
    positive_int("z_dim", z_dim)
    shapes, psi = _noise_shapes(noise_shapes), _check_psi(truncation_psi)
    if not callable(mapping):
        raise TypeError(f"mapping must be callable (z -> w), e.g. generator.mapping; got {type(mapping).__name__}.")
    if psi is not None and psi != 1 and w_avg is None and getattr(mapping, "w_avg", None) is None:
        raise ValueError("truncation needs the average w: pass w_avg=..., or a mapping with a w_avg attribute.")

    def draw(n: int, gen: torch.Generator) -> dict[str, Any]:
        z = torch.randn(n, int(z_dim), generator=gen)
        modules = list(mapping.modules()) if isinstance(mapping, torch.nn.Module) else []
        device = next((p.device for p in mapping.parameters()), z.device) if modules else z.device
        flags = [m.training for m in modules]
        try:  # eval mode: a training-mode mapping would move its running w_avg
            for m in modules:
                m.training = False
            with torch.no_grad():
                w = mapping(z.to(device))
        finally:
            for m, flag in zip(modules, flags):
                m.training = flag
        with torch.no_grad():
            if psi is not None and psi != 1:
                avg = (w_avg if w_avg is not None else mapping.w_avg).to(w.device, w.dtype)
                w = avg + psi * (w - avg)
        inputs: dict[str, Any] = {"w": w.detach().cpu()}
        inputs.update(_draw_noise(n, gen, shapes))
        return inputs

    return draw


def dataset_inputs(data: torch.Tensor, replace: bool = False,
                   transform: Callable[[torch.Tensor], Any] | None = None) -> InputFn:
    """``input_fn`` taking ``n`` items of ``data`` (a tensor, samples along dim 0) at indices
    drawn from the seed: a random permutation (``replace=False``, needs ``n <= len(data)``)
    or uniform draws with replacement. ``transform`` maps the chosen items to the
    generator's inputs (e.g. ``one_hot_maps``). For image-to-image generators, use images
    or label maps held out from training."""
    if not isinstance(data, torch.Tensor) or data.dim() < 1 or data.shape[0] < 1:
        raise ValueError("data must be a tensor with at least one sample along dim 0, got "
                         f"{type(data).__name__}{tuple(data.shape) if isinstance(data, torch.Tensor) else ''}.")

    def draw(n: int, gen: torch.Generator) -> Any:
        if replace:
            index = torch.randint(data.shape[0], (n,), generator=gen)
        else:
            if n > data.shape[0]:
                raise ValueError(f"cannot draw {n} distinct items from {data.shape[0]}; give more data, a "
                                 "smaller n, or replace=True.")
            index = torch.randperm(data.shape[0], generator=gen)[:n]
        items = data[index.to(data.device)]
        return transform(items) if transform is not None else items

    return draw


def one_hot_maps(labels: torch.Tensor, num_classes: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Integer label maps ``[N, H, W]`` -> one-hot maps ``[N, num_classes, H, W]`` (0/1)."""
    positive_int("num_classes", num_classes)
    if labels.dtype.is_floating_point or labels.dtype == torch.bool or labels.dim() != 3:
        raise ValueError(f"labels must be integer label maps [N, H, W], got {labels.dtype} "
                         f"{tuple(labels.shape)}.")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(f"labels must lie in 0..{num_classes - 1}, got range "
                         f"[{int(labels.min())}, {int(labels.max())}]; raise num_classes.")
    out = torch.zeros(labels.shape[0], num_classes, *labels.shape[1:], dtype=dtype, device=labels.device)
    return out.scatter_(1, labels.long().unsqueeze(1), 1.0)
