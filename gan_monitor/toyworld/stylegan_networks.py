"""The toy StyleGAN generator: a small StyleGAN2-style network for the toy world's scenes.

Default 64x64, ``channels=(128, 128, 64, 32, 16)`` at resolutions 4, 8, 16, 32, 64::

    z [N, latent_dim]
    mapping       pixel norm, 4 fully connected layers (fc0..fc3), leaky ReLU -> w [N, w_dim]
                  truncation: w <- w_avg + psi * (w - w_avg), w_avg the running mean of w
    synthesis.b4  learned constant [128, 4, 4] -> conv1 -> torgb            returns (x, rgb)
    synthesis.b8  conv0 (2x upsample) -> conv1 -> torgb, rgb += up(rgb)      returns (x, rgb)
    ...           (b16, b32)
    synthesis.b64 same; image = tanh(rgb)                                    [N, 3, 64, 64]

Layers to dissect (single tensors ``[N, C, R, R]``, after the activation):
``synthesis.b4.conv1``, ``synthesis.bR.conv0`` and ``synthesis.bR.conv1`` for R = 8 ... 64
(``generator.layer_names``). A block ``synthesis.bR`` returns the tuple ``(x, rgb)`` as
StyleGAN2 code does: its featuremap is element 0. ``synthesis.bR.torgb`` gives the block's
RGB contribution ``[N, 3, R, R]``, ``mapping.fcK`` the mapping's ``[N, w_dim]`` vectors.
With ``shared_activation=True`` a block holds one activation module ``synthesis.bR.act``
applied after both of its convolutions (as some third-party StyleGAN2 code does), so it
runs twice per forward and ``convK`` outputs are taken before the activation.

Modulated, demodulated convolution (StyleGAN2): per sample n, the style
``s = affine(w)`` scales the input channels of the 3x3 weight ``W``, and each output
channel is renormalised,
``W'[o,i,k] = W[o,i,k] s_i / sqrt(sum_{i,k} (W[o,i,k] s_i)^2 + 1e-8)``. It is computed
without per-sample weights as ``conv(x * s, W) * d`` with
``d_o = 1 / sqrt(sum_{i,k} W[o,i,k]^2 s_i^2 + 1e-8)`` (same result). Then
``x + strength_c * noise + bias_c`` and leaky ReLU (slope 0.2, gain sqrt 2). Weights are
stored at unit scale and multiplied by ``1/sqrt(fan_in)`` at run time (equalised learning
rate; the mapping also by ``mapping_lr_mul``). Upsampling is nearest-neighbour followed by
the convolution (``gan.upsample_conv2d``), never a transposed convolution; the RGB skip
sum is upsampled bilinearly. The final ``tanh`` (not in StyleGAN2) keeps images in [-1, 1].

Noise: every ``convK`` adds one noise image ``[N, 1, R, R]`` scaled per channel by learned
strengths (initialised to ``noise_strength_init``, 0.1 by default so that even an untrained
generator depends on it; StyleGAN2 starts at 0). Per layer, noise given to ``forward``
(``noise=[...]`` in ``noise_names`` order, ``noise={name: tensor}`` or keywords
``noise_b8_conv0=...``) is used as is; otherwise ``noise_mode`` decides: ``"random"``
(fresh ``torch.randn`` from the global RNG at every call: two calls give different images),
``"const"`` (the fixed buffer ``noise_const`` of each layer, saved with the weights) or
``"none"``. For dissection, pass the noise as inputs (``core.input_factories.stylegan_inputs``
draws it from the seed) or set ``noise_mode = "const"``.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from gan_monitor.core.input_factories import stylegan_inputs, stylegan_w_inputs
from gan_monitor.core.validation import choice, positive_int

from .gan_networks import PixelNorm, upsample_conv2d

__all__ = ["ToyStyleGenerator", "MappingNetwork", "SynthesisNetwork", "SynthesisBlock", "SynthesisLayer",
           "ModulatedConv2d", "ToRGB", "NOISE_MODES"]

NOISE_MODES = ("random", "const", "none")
_NOISE_SEED = 20_240_517  # seeds the fixed noise buffers (layer i uses _NOISE_SEED + i)


class ScaledLeakyReLU(nn.Module):
    """``leaky_relu(x, 0.2) * sqrt(2)`` (keeps the activations' scale, as in StyleGAN2)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(x, 0.2) * math.sqrt(2.0)


class EqualLinear(nn.Module):
    """Fully connected layer with equalised learning rate: ``y = x (W g)^T + b lr_mul``,
    ``g = lr_mul / sqrt(in_features)``, ``W`` initialised N(0, 1/lr_mul^2)."""

    def __init__(self, in_features: int, out_features: int, bias_init: float = 0.0, lr_mul: float = 1.0,
                 activation: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_mul)
        self.bias = nn.Parameter(torch.full([out_features], float(bias_init) / lr_mul))
        self.weight_gain, self.lr_mul = lr_mul / math.sqrt(in_features), lr_mul
        self.act = ScaledLeakyReLU() if activation else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x, self.weight * self.weight_gain, self.bias * self.lr_mul)
        return self.act(y) if self.act is not None else y


class MappingNetwork(nn.Module):
    """``z [N, latent_dim] -> w [N, w_dim]``: pixel norm then ``layers`` leaky-ReLU fully
    connected layers ``fc0...``. In training mode every call moves ``w_avg`` towards the
    batch mean of w (``w_avg <- w_avg + (1 - beta) (mean w - w_avg)``, beta 0.995), which
    truncation pulls towards."""

    def __init__(self, latent_dim: int, w_dim: int, layers: int = 4, lr_mul: float = 0.01,
                 w_avg_beta: float = 0.995):
        super().__init__()
        self.latent_dim, self.w_dim, self.w_avg_beta = latent_dim, w_dim, w_avg_beta
        self.norm = PixelNorm()
        for i in range(layers):
            self.add_module(f"fc{i}", EqualLinear(latent_dim if i == 0 else w_dim, w_dim, lr_mul=lr_mul,
                                                  activation=True))
        self.layers = layers
        self.register_buffer("w_avg", torch.zeros(w_dim))

    def forward(self, z: torch.Tensor, truncation_psi: float = 1.0) -> torch.Tensor:
        x = self.norm(z)
        for i in range(self.layers):
            x = getattr(self, f"fc{i}")(x)
        if self.training:
            with torch.no_grad():
                self.w_avg.lerp_(x.detach().mean(0).to(self.w_avg.dtype), 1.0 - self.w_avg_beta)
        return truncate(x, self.w_avg, truncation_psi)


def truncate(w: torch.Tensor, w_avg: torch.Tensor, psi: float) -> torch.Tensor:
    """``w_avg + psi * (w - w_avg)`` (psi = 1: unchanged; 0: every sample at the average)."""
    return w if psi == 1 else w_avg.to(w.dtype) + float(psi) * (w - w_avg.to(w.dtype))


class ModulatedConv2d(nn.Module):
    """Modulated (and by default demodulated) ``kernel x kernel`` convolution; ``up=True``
    first doubles the resolution (nearest neighbour, folded into the convolution)."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, kernel: int = 3,
                 demodulate: bool = True, up: bool = False):
        super().__init__()
        if up and kernel != 3:
            raise ValueError(f"an upsampling modulated convolution needs kernel=3, got {kernel}.")
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel, kernel))
        self.weight_gain = 1.0 / math.sqrt(in_channels * kernel * kernel)
        self.affine = EqualLinear(w_dim, in_channels, bias_init=1.0)  # styles start near 1
        self.demodulate, self.up, self.padding = demodulate, up, kernel // 2

    def scaled_weight(self) -> torch.Tensor:
        """The shared weight ``W`` (after the equalised-learning-rate gain)."""
        return self.weight * self.weight_gain

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        styles = self.affine(w)  # [N, in]
        weight = self.scaled_weight()
        x = x * styles[:, :, None, None]
        x = upsample_conv2d(x, weight, None) if self.up else F.conv2d(x, weight, padding=self.padding)
        if self.demodulate:
            energy = (weight.square().sum((2, 3))[None] * styles.square()[:, None, :]).sum(2)  # [N, out]
            x = x * torch.rsqrt(energy + 1e-8)[:, :, None, None]
        return x


class SynthesisLayer(nn.Module):
    """Modulated 3x3 convolution, per-channel scaled noise, bias and (unless the block
    shares one) leaky ReLU; output ``[N, out_channels, resolution, resolution]``."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int, *, up: bool,
                 activation: bool, noise_strength_init: float, noise_seed: int):
        super().__init__()
        self.conv = ModulatedConv2d(in_channels, out_channels, w_dim, up=up)
        self.noise_strength = nn.Parameter(torch.full([out_channels], float(noise_strength_init)))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.resolution = resolution
        const = torch.randn(1, 1, resolution, resolution, generator=torch.Generator().manual_seed(noise_seed))
        self.register_buffer("noise_const", const)
        self.act = ScaledLeakyReLU() if activation else None

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise: torch.Tensor | None = None,
                noise_mode: str = "random") -> torch.Tensor:
        x = self.conv(x, w)
        if noise is None and noise_mode == "random":
            noise = torch.randn(x.shape[0], 1, x.shape[2], x.shape[3], device=x.device, dtype=x.dtype)
        elif noise is None and noise_mode == "const":
            noise = self.noise_const
        if noise is not None:
            x = x + noise.to(x.dtype) * self.noise_strength.view(1, -1, 1, 1)
        x = x + self.bias.view(1, -1, 1, 1)
        return self.act(x) if self.act is not None else x


class ToRGB(nn.Module):
    """Modulated 1x1 convolution to RGB (no demodulation) plus bias: ``[N, 3, R, R]``.
    Its weights start at a quarter of the usual scale, so that the initial skip sum stays
    in the linear range of the final tanh (40 % of the pixels saturate otherwise)."""

    def __init__(self, in_channels: int, w_dim: int):
        super().__init__()
        self.conv = ModulatedConv2d(in_channels, 3, w_dim, kernel=1, demodulate=False)
        with torch.no_grad():
            self.conv.weight.mul_(0.25)
        self.bias = nn.Parameter(torch.zeros(3))

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return self.conv(x, w) + self.bias.view(1, -1, 1, 1)


class SynthesisBlock(nn.Module):
    """One resolution R: ``conv0`` (2x upsample; the 4x4 block starts from the learned
    ``const`` instead), ``conv1``, ``torgb``. ``forward`` returns ``(x, rgb)``, the
    featuremap and the RGB skip sum so far."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int, *,
                 shared_activation: bool, noise_strength_init: float, layer_index: int):
        super().__init__()
        self.resolution, self.first = resolution, resolution == 4
        own_act = not shared_activation
        args = dict(activation=own_act, noise_strength_init=noise_strength_init)
        if self.first:
            self.const = nn.Parameter(torch.randn(out_channels, 4, 4))
        else:
            self.conv0 = SynthesisLayer(in_channels, out_channels, w_dim, resolution, up=True,
                                        noise_seed=_NOISE_SEED + layer_index, **args)
            layer_index += 1
        self.conv1 = SynthesisLayer(out_channels, out_channels, w_dim, resolution, up=False,
                                    noise_seed=_NOISE_SEED + layer_index, **args)
        self.torgb = ToRGB(out_channels, w_dim)
        self.act = ScaledLeakyReLU() if shared_activation else None
        self.conv_names = ["conv1"] if self.first else ["conv0", "conv1"]

    def forward(self, x: torch.Tensor | None, rgb: torch.Tensor | None, ws: torch.Tensor,
                noise: Mapping[str, torch.Tensor | None], noise_mode: str) -> tuple[torch.Tensor, torch.Tensor]:
        if self.first:
            x = self.const.unsqueeze(0).expand(ws.shape[0], -1, -1, -1)
        for i, name in enumerate(self.conv_names):
            x = getattr(self, name)(x, ws[:, i], noise.get(name), noise_mode)
            if self.act is not None:
                x = self.act(x)
        y = self.torgb(x, ws[:, len(self.conv_names)])
        if rgb is not None:
            y = y + F.interpolate(rgb, scale_factor=2, mode="bilinear", align_corners=False)
        return x, y


class SynthesisNetwork(nn.Module):
    """``ws [N, num_ws, w_dim]`` -> image ``[N, 3, S, S]`` in [-1, 1] through blocks
    ``b4``, ``b8``, ... ``bS``. Block k uses ``ws[:, j : j + convs + 1]`` where j counts
    the convolutions of the blocks before it (its ToRGB shares the next block's first w,
    as in StyleGAN2)."""

    def __init__(self, w_dim: int, image_size: int, channels: Sequence[int], shared_activation: bool,
                 noise_strength_init: float):
        super().__init__()
        self.block_names: list[str] = []
        layer_index, prev = 0, channels[0]
        for i, c in enumerate(channels):
            res = 4 * 2**i
            block = SynthesisBlock(prev, c, w_dim, res, shared_activation=shared_activation,
                                   noise_strength_init=noise_strength_init, layer_index=layer_index)
            self.add_module(f"b{res}", block)
            self.block_names.append(f"b{res}")
            layer_index += len(block.conv_names)
            prev = c
        self.num_ws = layer_index + 1

    def forward(self, ws: torch.Tensor, noise: Mapping[str, Mapping[str, torch.Tensor | None]],
                noise_mode: str) -> torch.Tensor:
        x = rgb = None
        j = 0
        for name in self.block_names:
            block = getattr(self, name)
            k = len(block.conv_names)
            x, rgb = block(x, rgb, ws[:, j:j + k + 1], noise.get(name, {}), noise_mode)
            j += k
        return torch.tanh(rgb)


class ToyStyleGenerator(nn.Module):
    """StyleGAN2-style generator: ``G(z)``, ``G(z, noise)``, ``G(w=w)``; see the module docstring.

    Args:
        latent_dim, w_dim: sizes of z and w.
        image_size: side of the square images (power of two >= 8).
        channels: widths from 4x4 up to ``image_size`` (one per block ``b4`` ... ``bS``).
        mapping_layers, mapping_lr_mul: depth of the mapping network and its learning-rate
            multiplier (StyleGAN2: 8 and 0.01).
        noise_mode: ``"random"``, ``"const"`` or ``"none"`` (for layers given no noise).
        noise_strength_init: initial per-channel noise strength.
        shared_activation: one activation module per block, applied after both convolutions.
        truncation_psi: default truncation (1 = none), overridable per call.
    """

    def __init__(self, latent_dim: int = 128, w_dim: int = 128, image_size: int = 64,
                 channels: Sequence[int] = (128, 128, 64, 32, 16), mapping_layers: int = 4,
                 mapping_lr_mul: float = 0.01, noise_mode: str = "random", noise_strength_init: float = 0.1,
                 shared_activation: bool = False, truncation_psi: float = 1.0):
        super().__init__()
        positive_int("latent_dim", latent_dim)
        positive_int("w_dim", w_dim)
        positive_int("mapping_layers", mapping_layers)
        if image_size < 8 or image_size & (image_size - 1):
            raise ValueError(f"image_size must be a power of two >= 8, got {image_size}; use e.g. 32 or 64.")
        needed = int(math.log2(image_size)) - 1
        if len(channels) != needed or any(int(c) < 1 for c in channels):
            raise ValueError(
                f"channels must list {needed} positive widths for image_size={image_size} (one per block "
                f"from 4x4 up to {image_size}x{image_size}), got {tuple(channels)}; "
                f"e.g. {tuple(max(16, 128 // 2 ** max(0, i - 1)) for i in range(needed))}.")
        self.latent_dim, self.w_dim, self.image_size = int(latent_dim), int(w_dim), int(image_size)
        self.channels = tuple(int(c) for c in channels)
        self.mapping = MappingNetwork(self.latent_dim, self.w_dim, mapping_layers, mapping_lr_mul)
        self.synthesis = SynthesisNetwork(self.w_dim, self.image_size, self.channels, bool(shared_activation),
                                          noise_strength_init)
        self.noise_mode = noise_mode
        self.truncation_psi = float(truncation_psi)
        self.num_ws = self.synthesis.num_ws
        #: dissectable featuremaps (single tensors), coarse to fine
        self.layer_names = [f"synthesis.{b}.{c}" for b in self.synthesis.block_names
                            for c in getattr(self.synthesis, b).conv_names]
        #: blocks returning the tuple (x, rgb)
        self.block_names = [f"synthesis.{b}" for b in self.synthesis.block_names]
        #: names of the per-layer noise inputs, e.g. "noise_b8_conv0", in layer order
        self.noise_names = ["noise_" + name.split(".", 1)[1].replace(".", "_") for name in self.layer_names]

    @property
    def noise_mode(self) -> str:
        return self._noise_mode

    @noise_mode.setter
    def noise_mode(self, mode: str) -> None:
        self._noise_mode = choice("noise_mode", mode, NOISE_MODES)

    def noise_shapes(self) -> dict[str, tuple[int, int, int]]:
        """``{noise input name: (1, R, R)}``: the shape of one sample's noise per layer."""
        return {noise: (1, self._layer(name).resolution, self._layer(name).resolution)
                for noise, name in zip(self.noise_names, self.layer_names)}

    def featuremap_shapes(self) -> dict[str, tuple[int, int, int]]:
        """``{layer name: (units, R, R)}`` of each entry of ``layer_names``."""
        return {name: (self._layer(name).bias.shape[0], self._layer(name).resolution,
                       self._layer(name).resolution) for name in self.layer_names}

    def _layer(self, name: str) -> SynthesisLayer:
        return self.get_submodule(name)

    def sample_latents(self, n: int, seed: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """``n`` standard-normal latents from a private seeded generator (global RNG untouched)."""
        return torch.randn(int(n), self.latent_dim, generator=torch.Generator().manual_seed(int(seed))).to(device)

    def input_fn(self, truncation_psi: float | None = None, w_space: bool = False):
        """``input_fn(n, torch_generator)`` for ``dissect``: z (or, with ``w_space``, w
        mapped by the current weights) plus fixed noise for every layer."""
        if w_space:
            return stylegan_w_inputs(self.mapping, self.latent_dim, self.noise_shapes(), truncation_psi,
                                     w_avg=self.mapping.w_avg)
        return stylegan_inputs(self.latent_dim, self.noise_shapes(), truncation_psi)

    def _noise_by_block(self, noise: Any, named: dict[str, torch.Tensor]) -> dict[str, dict[str, Any]]:
        given: dict[str, Any] = {}
        if isinstance(noise, (list, tuple)):
            if len(noise) != len(self.noise_names):
                raise ValueError(f"noise must list {len(self.noise_names)} tensors (one per layer, in the order "
                                 f"{self.noise_names}), got {len(noise)}.")
            given.update(zip(self.noise_names, noise))
        elif isinstance(noise, Mapping):
            given.update(noise)
        elif noise is not None:
            raise TypeError(f"noise must be a list or dict of per-layer tensors, got {type(noise).__name__}.")
        given.update(named)
        unknown = sorted(set(given) - set(self.noise_names))
        if unknown:
            raise TypeError(f"unknown noise input(s) {unknown}; this generator's noise inputs are {self.noise_names}.")
        out: dict[str, dict[str, Any]] = {}
        for noise_name, name in zip(self.noise_names, self.layer_names):
            tensor = given.get(noise_name)
            res = self._layer(name).resolution
            if tensor is not None and (tensor.dim() != 4 or tuple(tensor.shape[1:]) != (1, res, res)):
                raise ValueError(f"{noise_name} must have shape [N, 1, {res}, {res}], got {tuple(tensor.shape)}.")
            _, block, conv = name.split(".")
            out.setdefault(block, {})[conv] = tensor
        return out

    def forward(self, z: torch.Tensor | None = None, noise: Any = None, *, w: torch.Tensor | None = None,
                truncation_psi: float | None = None, **noise_inputs: torch.Tensor) -> torch.Tensor:
        """Images ``[N, 3, S, S]`` in [-1, 1] from ``z [N, latent_dim]`` or ``w`` (``[N, w_dim]``
        or per layer ``[N, num_ws, w_dim]``; w is used as given, without truncation)."""
        psi = self.truncation_psi if truncation_psi is None else float(truncation_psi)
        if (z is None) == (w is None):
            raise ValueError("give exactly one of z [N, latent_dim] and w [N, w_dim].")
        if z is not None:
            if z.dim() != 2 or z.shape[1] != self.latent_dim:
                raise ValueError(f"the generator takes latents of shape [N, {self.latent_dim}], got "
                                 f"{tuple(z.shape)}; draw them with e.g. torch.randn(N, {self.latent_dim}).")
            w = self.mapping(z, psi)
        if w.dim() == 2 and w.shape[1] == self.w_dim:
            ws = w.unsqueeze(1).expand(-1, self.num_ws, -1)
        elif w.dim() == 3 and tuple(w.shape[1:]) == (self.num_ws, self.w_dim):
            ws = w
        else:
            raise ValueError(f"w must have shape [N, {self.w_dim}] or [N, {self.num_ws}, {self.w_dim}], "
                             f"got {tuple(w.shape)}.")
        return self.synthesis(ws, self._noise_by_block(noise, noise_inputs), self.noise_mode)
