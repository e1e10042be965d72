"""The toy GAN: a small DCGAN/ProGAN-like generator that learns the procedural
scenes of the toy world on a CPU in minutes.

Generator (default 64x64, ``g_channels=(256, 128, 64, 32)``)::

    z [N, latent_dim]
    layer1  linear -> 4x4, batch norm, leaky ReLU           [N, 256,  4,  4]
    layer2  2x upsample, 3x3 conv, batch norm, leaky ReLU   [N, 128,  8,  8]
    layer3  2x upsample, 3x3 conv, batch norm, leaky ReLU   [N,  64, 16, 16]
    layer4  2x upsample, 3x3 conv, batch norm, leaky ReLU   [N,  32, 32, 32]
    output  2x upsample, 3x3 conv to RGB, tanh              [N,   3, 64, 64]

Nearest-neighbour upsampling followed by a convolution (rather than a transposed
convolution) avoids checkerboard artifacts; ``upsample_conv2d`` computes it exactly
without materialising the upsampled tensor, about twice as fast on a CPU.

Batch norm in both networks (DCGAN) learned markedly faster on CPU budgets than
pixel norm in G with spectral norm in D (``g_norm="pixel"``, ``d_norm="spectral"``
remain available). With batch norm, use the generator in eval mode to look at it,
as ``gan_monitor.dissect`` does: running statistics are then used and an image
depends only on its own latent. Loss: the non-saturating GAN loss.

``ToyGAN`` is a LightningModule with manual optimisation (one discriminator step,
then one generator step per batch, on the same generated images) and its own
``train_dataloader`` over the toy-world scenes, so
``lightning.pytorch.Trainer(max_steps=2 * batches).fit(ToyGAN())`` trains it
(Lightning counts both optimizer steps in ``global_step``).
"""
from __future__ import annotations

import math
from typing import Sequence

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import nn

from .scenes import SceneDataset

__all__ = ["ToyGenerator", "ToyDiscriminator", "ToyGAN", "load_toygan"]


def upsample2x(x: torch.Tensor) -> torch.Tensor:
    """Nearest-neighbour 2x upsampling of ``[N, C, H, W]`` (same values as
    ``F.interpolate(x, scale_factor=2)``)."""
    n, c, h, w = x.shape
    return x[:, :, :, None, :, None].expand(n, c, h, 2, w, 2).reshape(n, c, 2 * h, 2 * w)


def _phase_kernels(weight: torch.Tensor) -> list[list[torch.Tensor]]:
    """Split a 3x3 kernel applied after 2x nearest upsampling into four 2x2 kernels on
    the low-resolution input, one per output phase (row parity a, column parity b).

    Output row 2i+a of the upsampled convolution reads upsampled rows 2i+a-1..2i+a+1,
    i.e. input rows (i-1, i, i) for a = 0 and (i, i, i+1) for a = 1; taps that read the
    same input row add up. Same for columns.
    """
    w = weight
    rows = (
        torch.stack([w[:, :, 0], w[:, :, 1] + w[:, :, 2]], 2),  # a = 0: input rows i-1, i
        torch.stack([w[:, :, 0] + w[:, :, 1], w[:, :, 2]], 2),  # a = 1: input rows i, i+1
    )
    return [
        [
            torch.stack([r[..., 0], r[..., 1] + r[..., 2]], 3),  # b = 0: columns j-1, j
            torch.stack([r[..., 0] + r[..., 1], r[..., 2]], 3),  # b = 1: columns j, j+1
        ]
        for r in rows
    ]


def upsample_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``conv2d(upsample2x(x), weight, bias, padding=1)`` for a 3x3 ``weight``, computed
    exactly on the low-resolution input (4 taps per output pixel instead of 9, and no
    upsampled tensor): about twice as fast on CPU, forward and backward.
    """
    n, _, h, w = x.shape
    out = weight.shape[0]
    kernels = _phase_kernels(weight)
    if out < 16:  # few output channels: one convolution with 4x the channels, then interleave
        big = weight.new_zeros(out, 2, 2, weight.shape[1], 3, 3)
        for a in (0, 1):
            for b in (0, 1):
                big[:, a, b, :, a:a + 2, b:b + 2] = kernels[a][b]
        y = F.conv2d(x, big.reshape(out * 4, -1, 3, 3), None if bias is None else bias.repeat_interleave(4),
                     padding=1)
        return F.pixel_shuffle(y, 2)
    padded = F.pad(x, (1, 1, 1, 1))
    phases = [
        torch.stack([F.conv2d(padded[:, :, a:a + h + 1, b:b + w + 1], kernels[a][b], bias) for b in (0, 1)], -1)
        for a in (0, 1)
    ]  # each [N, out, H, W, 2]
    return torch.stack(phases, 3).reshape(n, out, 2 * h, 2 * w)


class PixelNorm(nn.Module):
    """Scale each pixel's feature vector to unit root-mean-square (ProGAN)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(dim=1, keepdim=True) + 1e-8)


def _generator_activation(kind: str) -> nn.Module:
    if kind == "leaky":
        return nn.LeakyReLU(0.2)
    if kind == "relu":
        return nn.ReLU()
    raise ValueError(f"generator activation must be 'leaky' or 'relu', got {kind!r}.")


def _generator_norm(kind: str, channels: int) -> nn.Module:
    if kind == "pixel":
        return PixelNorm()
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    raise ValueError(f"generator norm must be 'pixel' or 'batch', got {kind!r}.")


class InputBlock(nn.Module):
    """Latent ``[N, latent_dim]`` -> featuremap ``[N, channels, 4, 4]``."""

    def __init__(self, latent_dim: int, channels: int, norm: str = "pixel", activation: str = "leaky"):
        super().__init__()
        self.channels = channels
        self.linear = nn.Linear(latent_dim, channels * 16)
        self.norm = _generator_norm(norm, channels)
        self.act = _generator_activation(activation)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.linear(z).view(z.shape[0], self.channels, 4, 4)
        return self.act(self.norm(x))


class UpBlock(nn.Module):
    """Double the resolution: nearest upsample, 3x3 conv, norm, leaky ReLU (or ReLU)."""

    def __init__(self, in_channels: int, out_channels: int, norm: str = "pixel", activation: str = "leaky"):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm = _generator_norm(norm, out_channels)
        self.act = _generator_activation(activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(upsample_conv2d(x, self.conv.weight, self.conv.bias)))


class ToRGB(nn.Module):
    """Last block: nearest upsample, 3x3 conv to 3 channels, tanh -> image in [-1, 1]."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(upsample_conv2d(x, self.conv.weight, self.conv.bias))


def _check_architecture(image_size: int, channels: Sequence[int], what: str) -> None:
    if image_size < 8 or image_size & (image_size - 1):
        raise ValueError(
            f"image_size must be a power of two >= 8, got {image_size}; use e.g. 32, 64 or 128."
        )
    needed = int(math.log2(image_size)) - 2
    if len(channels) != needed or any(int(c) < 1 for c in channels):
        raise ValueError(
            f"{what} must list {needed} positive channel widths for image_size={image_size} "
            f"(one per resolution from 4x4 up to {image_size // 2}x{image_size // 2}), "
            f"got {tuple(channels)}; e.g. {tuple(min(512, 32 * 2 ** i) for i in reversed(range(needed)))}."
        )


class ToyGenerator(nn.Module):
    """Maps latents ``z [N, latent_dim]`` to images ``[N, 3, S, S]`` in [-1, 1].

    Blocks are named ``layer1`` ... ``layerK`` (K = ``len(channels)``), each returning a
    featuremap ``[N, channels[i], 4 * 2**i, 4 * 2**i]``; the final block ``output``
    returns the image. ``layer_names`` lists the dissectable blocks.
    """

    def __init__(
        self,
        latent_dim: int = 128,
        image_size: int = 64,
        channels: Sequence[int] = (256, 128, 64, 32),
        norm: str = "batch",
        activation: str = "leaky",
    ):
        super().__init__()
        _check_architecture(image_size, channels, "generator channels")
        if latent_dim < 1:
            raise ValueError(f"latent_dim must be a positive integer, got {latent_dim}.")
        self.latent_dim = int(latent_dim)
        self.image_size = int(image_size)
        channels = [int(c) for c in channels]
        self.layer_names = [f"layer{i + 1}" for i in range(len(channels))]
        self.add_module("layer1", InputBlock(self.latent_dim, channels[0], norm, activation))
        for i in range(1, len(channels)):
            self.add_module(f"layer{i + 1}", UpBlock(channels[i - 1], channels[i], norm, activation))
        self.output = ToRGB(channels[-1])

    def featuremap_shapes(self) -> dict[str, tuple[int, int, int]]:
        """``{layer name: (units, height, width)}`` of each named block's output."""
        return {
            name: (getattr(self, name).channels if i == 0 else getattr(self, name).conv.out_channels,
                   4 * 2**i, 4 * 2**i)
            for i, name in enumerate(self.layer_names)
        }

    def sample_latents(self, n: int, seed: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """``n`` standard-normal latents from a private seeded generator (global RNG untouched)."""
        gen = torch.Generator().manual_seed(int(seed))
        return torch.randn(int(n), self.latent_dim, generator=gen).to(device)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if z.dim() != 2 or z.shape[1] != self.latent_dim:
            raise ValueError(
                f"the generator takes latents of shape [N, {self.latent_dim}], got {tuple(z.shape)}; "
                f"draw them with e.g. torch.randn(N, {self.latent_dim})."
            )
        x = z
        for name in self.layer_names:
            x = getattr(self, name)(x)
        return self.output(x)


class ToyDiscriminator(nn.Module):
    """Images ``[N, 3, S, S]`` -> one realness logit per image ``[N]``.

    Strided 4x4 convolutions halve the resolution down to 4x4 (``channels`` from the
    finest to the coarsest resolution), then a linear layer; leaky ReLU activations;
    ``norm="batch"``: batch norm after every convolution but the first (DCGAN),
    ``norm="spectral"``: all weights under spectral norm.
    """

    def __init__(
        self, image_size: int = 64, channels: Sequence[int] = (32, 64, 128, 256), norm: str = "batch"
    ):
        super().__init__()
        _check_architecture(image_size, channels, "discriminator channels")
        if norm not in ("spectral", "batch"):
            raise ValueError(f"discriminator norm must be 'spectral' or 'batch', got {norm!r}.")
        sn = nn.utils.parametrizations.spectral_norm if norm == "spectral" else (lambda m: m)
        layers: list[nn.Module] = []
        prev = 3
        for i, c in enumerate(channels):
            layers.append(sn(nn.Conv2d(prev, int(c), 4, stride=2, padding=1)))
            if norm == "batch" and i > 0:
                layers.append(nn.BatchNorm2d(int(c)))
            layers.append(nn.LeakyReLU(0.2))
            prev = int(c)
        self.features = nn.Sequential(*layers)
        self.classifier = sn(nn.Linear(prev * 16, 1))
        self.image_size = int(image_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != 3 or x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            raise ValueError(
                f"the discriminator takes images of shape [N, 3, {self.image_size}, {self.image_size}], "
                f"got {tuple(x.shape)}."
            )
        return self.classifier(self.features(x).flatten(1)).squeeze(1)


class ToyGAN(pl.LightningModule):
    """The toy GAN as a LightningModule: ``Trainer(max_steps=...).fit(ToyGAN())``.

    Args:
        latent_dim: size of the latent vector z.
        image_size: side of the square images (power of two >= 8).
        g_channels: generator widths from 4x4 up to image_size/2 (``layer1``...).
        d_channels: discriminator widths from image_size/2 down to 4x4.
        lr_g, lr_d: Adam learning rates of generator and discriminator.
        betas: Adam betas (shared).
        batch_size: scenes per training batch.
        num_scenes: number of procedural training scenes rendered once at start.
        data_seed: seed of the scene renderer and of the shuffling order.
        g_norm: ``"batch"`` (default) or ``"pixel"`` normalisation in the generator.
        d_norm: ``"batch"`` (default) or ``"spectral"`` normalisation in the discriminator.
        ema_decay: if > 0, also keep ``generator_ema``, the moving average of the generator's
            weights (``w_ema <- decay w_ema + (1 - decay) w`` per generator step; its batch-norm
            statistics are recomputed before every checkpoint save). Default 0: off.
        g_activation: ``"leaky"`` (leaky ReLU 0.2, default) or ``"relu"`` (DCGAN's generator)
            after every generator block. ReLU units are off (0) on most pixels, so ablating
            a unit (forcing it to 0) switches it off; see the README's intervention numbers.
        lr_decay: ``(start, end)`` in training batches: both learning rates fall linearly
            from their value at batch ``start`` to 0 at batch ``end`` (the weights settle,
            so the trained generator itself is clean, not only an average). Default: constant.

    Logs ``g_loss`` and ``d_loss``. Latents during training come from the global RNG
    (seed it, e.g. ``lightning.pytorch.seed_everything``); data rendering and
    shuffling use private generators seeded with ``data_seed``.
    """

    def __init__(
        self,
        latent_dim: int = 128,
        image_size: int = 64,
        g_channels: Sequence[int] = (256, 128, 64, 32),
        d_channels: Sequence[int] = (32, 64, 128, 256),
        lr_g: float = 2e-4,
        lr_d: float = 2e-4,
        betas: Sequence[float] = (0.5, 0.99),
        batch_size: int = 16,
        num_scenes: int = 4096,
        data_seed: int = 0,
        g_norm: str = "batch",
        d_norm: str = "batch",
        ema_decay: float = 0.0,
        g_activation: str = "leaky",
        lr_decay: Sequence[int] | None = None,
    ):
        super().__init__()
        if lr_decay is not None and (len(lr_decay) != 2 or not 0 <= int(lr_decay[0]) < int(lr_decay[1])):
            raise ValueError(f"lr_decay must be (start, end) training batches with 0 <= start < end, got {lr_decay}.")
        if not 0.0 <= float(ema_decay) < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1) (0 turns the average off), got {ema_decay}; "
                             "typical values are 0.999 or 0.9999.")
        if batch_size < 1 or num_scenes < batch_size:
            raise ValueError(
                f"need 1 <= batch_size <= num_scenes, got batch_size={batch_size}, "
                f"num_scenes={num_scenes}; render more scenes or use smaller batches."
            )
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.generator = ToyGenerator(latent_dim, image_size, g_channels, g_norm, g_activation)
        g_args = (latent_dim, image_size, g_channels, g_norm, g_activation)
        self.discriminator = ToyDiscriminator(image_size, d_channels, d_norm)
        self.generator_ema = None
        if ema_decay > 0:
            self.generator_ema = ToyGenerator(*g_args).requires_grad_(False)
            self.generator_ema.load_state_dict(self.generator.state_dict())

    def eval_generator(self) -> ToyGenerator:
        """``generator_ema`` if kept, else ``generator``."""
        return self.generator if self.generator_ema is None else self.generator_ema

    @torch.no_grad()
    def _update_ema(self) -> None:
        decay = float(self.hparams.ema_decay)
        for avg, cur in zip(self.generator_ema.parameters(), self.generator.parameters()):
            avg.lerp_(cur.detach(), 1.0 - decay)
        for avg, cur in zip(self.generator_ema.buffers(), self.generator.buffers()):
            avg.copy_(cur)  # batch-norm statistics of the live generator until refreshed

    @torch.no_grad()
    def refresh_ema_batch_norm(self, batches: int = 32, batch_size: int = 64, seed: int = 0) -> None:
        """Recompute ``generator_ema``'s batch-norm statistics as plain averages over
        ``batches`` batches of seeded latents (global RNG untouched); no-op without it."""
        g = self.generator_ema
        norms = [m for m in (g.modules() if g is not None else []) if isinstance(m, nn.BatchNorm2d)]
        if not norms:
            return
        was_training, momenta = g.training, [m.momentum for m in norms]
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the batches below
        g.train()
        device = next(g.parameters()).device
        z = torch.randn(batches * batch_size, g.latent_dim, generator=torch.Generator().manual_seed(seed))
        for chunk in z.to(device).split(batch_size):
            g(chunk)
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        g.train(was_training)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self.generator_ema is None:
            return
        self.refresh_ema_batch_norm()
        state = checkpoint.get("state_dict")
        if state is not None:  # the state dict was taken before this hook ran
            for name, value in self.generator_ema.state_dict().items():
                state[f"generator_ema.{name}"] = value.detach().clone()

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.generator(z)

    def train_dataloader(self) -> torch.utils.data.DataLoader:
        hp = self.hparams
        data = SceneDataset(hp.num_scenes, seed=hp.data_seed, size=hp.image_size)
        order = torch.Generator().manual_seed(hp.data_seed)  # shuffling leaves the global RNG alone
        return torch.utils.data.DataLoader(
            data, batch_size=hp.batch_size, shuffle=True, drop_last=True, generator=order
        )

    def configure_optimizers(self):
        hp = self.hparams
        betas = tuple(float(b) for b in hp.betas)
        opt_g = torch.optim.Adam(self.generator.parameters(), lr=hp.lr_g, betas=betas)
        opt_d = torch.optim.Adam(self.discriminator.parameters(), lr=hp.lr_d, betas=betas)
        return [opt_g, opt_d]

    def learning_rate_factor(self, batches: int) -> float:
        """Factor applied to both learning rates after ``batches`` training batches."""
        if self.hparams.get("lr_decay") is None:
            return 1.0
        start, end = (int(b) for b in self.hparams.lr_decay)
        return min(1.0, max(0.0, (end - batches) / (end - start)))

    def _decay_learning_rates(self, opt_g, opt_d) -> None:
        factor = self.learning_rate_factor(self.global_step // 2)  # two optimizer steps per batch
        for opt, base in ((opt_g, self.hparams.lr_g), (opt_d, self.hparams.lr_d)):
            for group in opt.param_groups:
                group["lr"] = float(base) * factor

    def training_step(self, batch, batch_idx):
        real = batch[0] if isinstance(batch, (list, tuple)) else batch
        real = real.float()
        opt_g, opt_d = self.optimizers()
        self._decay_learning_rates(opt_g, opt_d)
        z = torch.randn(real.shape[0], self.hparams.latent_dim, device=self.device)
        fake = self.generator(z)

        # Discriminator: non-saturating loss, softplus(-D(real)) + softplus(D(fake)).
        self.toggle_optimizer(opt_d)
        d_loss = F.softplus(-self.discriminator(real)).mean() + F.softplus(
            self.discriminator(fake.detach())
        ).mean()
        opt_d.zero_grad()
        self.manual_backward(d_loss)
        opt_d.step()
        self.untoggle_optimizer(opt_d)

        # Generator: softplus(-D(G(z))) through the freshly updated discriminator.
        self.toggle_optimizer(opt_g)
        g_loss = F.softplus(-self.discriminator(fake)).mean()
        opt_g.zero_grad()
        self.manual_backward(g_loss)
        opt_g.step()
        self.untoggle_optimizer(opt_g)
        if self.generator_ema is not None:
            self._update_ema()

        self.log_dict({"g_loss": g_loss.detach(), "d_loss": d_loss.detach()}, prog_bar=True)


def load_toygan(checkpoint_path: str, map_location: str | torch.device = "cpu") -> ToyGAN:
    """Load a ToyGAN saved by a Lightning Trainer (e.g. ``scripts/train_toygan.py``)."""
    return ToyGAN.load_from_checkpoint(checkpoint_path, map_location=map_location, weights_only=True)
