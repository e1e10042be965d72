"""The generator families of ``gan-monitor demo --arch``: what to train, which layers to
dissect and which held-out inputs to draw for each.

* ``progan``: :class:`~gan_monitor.toyworld.gan.ToyGAN` (latent z), layers ``layer2``, ``layer3``.
* ``stylegan``: :class:`~gan_monitor.toyworld.stylegan.ToyStyleGAN`; the weight average
  ``generator_ema`` is dissected, with z and fixed per-layer noise as inputs (its noise is
  otherwise fresh at every call, which the determinism check refuses); layers
  ``synthesis.b16.conv1``, ``synthesis.b32.conv1``.
* ``pix2pix``: :class:`~gan_monitor.toyworld.pix2pix.ToyPix2Pix`, conditioned on held-out
  label maps; layers ``down2`` (encoder) and ``up2`` (decoder), both 16x16.

The last checkpoint is dissected again at the end of the demo (``gan-monitor dissect``),
which needs importable input functions: :func:`stylegan_demo_inputs` and
:func:`pix2pix_demo_inputs` draw them for the demo's default sizes (64x64 images, z of 128).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import lightning.pytorch as pl
import torch

from gan_monitor.core.input_factories import stylegan_inputs
from gan_monitor.core.tracing import layer_names, unknown_layers
from gan_monitor.core.validation import choice
from gan_monitor.toyworld.gan import ToyGAN
from gan_monitor.toyworld.pix2pix import ToyPix2Pix, pix2pix_inputs
from gan_monitor.toyworld.stylegan import ToyStyleGAN

__all__ = ["ARCHS", "Family", "FAMILIES", "family", "make_model", "generator_attr", "monitor_input_fn",
           "checkpoint_input_fn", "unknown_layers", "stylegan_demo_inputs", "pix2pix_demo_inputs"]

ARCHS = ("progan", "stylegan", "pix2pix")
DEMO_IMAGE_SIZE, DEMO_LATENT_DIM = 64, 128


@dataclass(frozen=True)
class Family:
    """``module``: the LightningModule (``pkg.mod:Class``, as ``gan-monitor dissect --module``);
    ``layers``: dissected by default; ``input_fn``: ``--input-fn`` of the final dissection
    (None: the default Gaussian z)."""

    name: str
    module: str
    layers: tuple[str, ...]
    input_fn: str | None


FAMILIES = {
    "progan": Family("progan", "gan_monitor.toyworld.gan:ToyGAN", ("layer2", "layer3"), None),
    "stylegan": Family("stylegan", "gan_monitor.toyworld.stylegan:ToyStyleGAN",
                       ("synthesis.b16.conv1", "synthesis.b32.conv1"),
                       "gan_monitor.cli.demo_families:stylegan_demo_inputs"),
    "pix2pix": Family("pix2pix", "gan_monitor.toyworld.pix2pix:ToyPix2Pix", ("down2", "up2"),
                      "gan_monitor.cli.demo_families:pix2pix_demo_inputs"),
}


def family(arch: str) -> Family:
    return FAMILIES[choice("arch", arch, ARCHS)]


def make_model(arch: str, seed: int, gan_kwargs: dict | None = None) -> pl.LightningModule:
    """The LightningModule of ``arch`` training on the scenes of ``seed`` (``gan_kwargs``: its
    constructor's other arguments, e.g. smaller widths)."""
    cls = {"progan": ToyGAN, "stylegan": ToyStyleGAN, "pix2pix": ToyPix2Pix}[family(arch).name]
    return cls(data_seed=seed, **(gan_kwargs or {}))


def generator_attr(model: pl.LightningModule) -> str:
    """The attribute holding the generator to dissect: the weight average when there is one."""
    return "generator_ema" if getattr(model, "generator_ema", None) is not None else "generator"


def monitor_input_fn(arch: str, model: pl.LightningModule) -> Callable | None:
    """The held-out inputs of the monitor: None (Gaussian z), z + fixed noise, or label maps."""
    name = family(arch).name
    if name == "stylegan":
        return getattr(model, generator_attr(model)).input_fn()
    if name == "pix2pix":
        return pix2pix_inputs(int(model.hparams.image_size))
    return None


def checkpoint_input_fn(arch: str, model: pl.LightningModule) -> tuple[bool, str | None]:
    """``(usable, --input-fn spec)`` for dissecting a checkpoint of ``model``: the importable
    functions below fit the demo's default sizes only (other sizes: not usable)."""
    fam, hp = family(arch), model.hparams
    if fam.name == "stylegan":
        return (int(hp.image_size), int(hp.latent_dim)) == (DEMO_IMAGE_SIZE, DEMO_LATENT_DIM), fam.input_fn
    if fam.name == "pix2pix":
        return int(hp.image_size) == DEMO_IMAGE_SIZE, fam.input_fn
    return True, None


def _demo_noise_shapes() -> dict[str, tuple[int, int, int]]:
    shapes = {"noise_b4_conv1": (1, 4, 4)}
    r = 8
    while r <= DEMO_IMAGE_SIZE:
        shapes.update({f"noise_b{r}_conv0": (1, r, r), f"noise_b{r}_conv1": (1, r, r)})
        r *= 2
    return shapes


def stylegan_demo_inputs(n: int, gen: torch.Generator) -> dict[str, Any]:
    """z and fixed noise for the demo's toy StyleGAN (64x64, z of 128): ``stylegan_inputs``."""
    return stylegan_inputs(DEMO_LATENT_DIM, _demo_noise_shapes())(n, gen)


def pix2pix_demo_inputs(n: int, gen: torch.Generator) -> torch.Tensor:
    """One-hot label maps of held-out 64x64 scenes for the demo's toy pix2pix."""
    return pix2pix_inputs(DEMO_IMAGE_SIZE)(n, gen)


def layer_list(generator: torch.nn.Module) -> str:
    """The generator's dissectable layers for a message."""
    names = getattr(generator, "layer_names", None) or layer_names(generator)
    return ", ".join(names)
