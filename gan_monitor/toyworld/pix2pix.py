"""The toy pix2pix: a U-Net that paints a scene from its label map, trained with a
PatchGAN discriminator and an L1 loss against the rendered scene (Isola et al., 2017).

The toy world renders every scene with its exact label map, so the generator is
conditioned on true labels (one-hot, ``len(CONCEPT_NAMES)`` channels, channel c = concept
c). Generator (default 64x64, ``channels=(32, 64, 64, 128, 128)``)::

    labels one-hot [N, 11, 64, 64]
    down1   4x4 conv stride 2, leaky ReLU                        [N,  32, 32, 32]
    down2   4x4 conv stride 2, batch norm, leaky ReLU            [N,  64, 16, 16]
    down3   same                                                 [N,  64,  8,  8]
    down4   same                                                 [N, 128,  4,  4]
    down5   4x4 conv stride 2, leaky ReLU (innermost)            [N, 128,  2,  2]
    up4     2x upsample, 3x3 conv, batch norm, ReLU, dropout     [N, 128,  4,  4]  (input down5)
    up3     same on [up4, down4] (skip connection)               [N,  64,  8,  8]
    up2     same on [up3, down3], dropout                        [N,  64, 16, 16]
    up1     same on [up2, down2], no dropout                     [N,  32, 32, 32]
    output  2x upsample, 3x3 conv to RGB on [up1, down1], tanh   [N,   3, 64, 64]

Every named block returns one tensor (``generator.layer_names``): ``downK`` and ``upK``
have the same resolution and are joined by a skip connection. Dropout (p = 0.5 in the
three innermost decoder blocks) is pix2pix's only noise; in eval mode (as ``dissect``
runs it) it is off and the generator is deterministic. Upsampling is nearest neighbour
followed by a convolution (``gan.upsample_conv2d``), never a transposed convolution.

Losses: the discriminator sees ``(label map, image)`` pairs and gives one realness logit
per patch (``PatchDiscriminator``); non-saturating GAN loss, and for the generator
``l1_weight * mean |G(labels) - image|`` added (pix2pix: 100). Held-out inputs for
dissection: :func:`pix2pix_inputs` (label maps of unseen scenes).
"""
from __future__ import annotations

import math
from typing import Sequence

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import nn

from gan_monitor.core.input_factories import one_hot_maps
from gan_monitor.core.validation import positive_int

from . import CONCEPT_NAMES
from .gan import ToyGAN, check_training_data
from .gan_networks import ToRGB, upsample_conv2d
from .scenes import MAX_SIZE, MIN_SIZE, render_scenes

__all__ = ["ToyPix2PixGenerator", "PatchDiscriminator", "ToyPix2Pix", "load_toypix2pix", "pix2pix_inputs"]


def pix2pix_inputs(size: int = 64, num_classes: int = len(CONCEPT_NAMES)):
    """``input_fn(n, gen)`` for ``dissect``: one-hot label maps ``[n, num_classes, size, size]``
    of ``n`` toy-world scenes rendered from a seed drawn from ``gen`` (a 62-bit seed: the
    training scenes use small seeds, so these are held out). Same ``gen`` state, same maps."""
    if isinstance(size, bool) or not isinstance(size, int) or not MIN_SIZE <= size <= MAX_SIZE:
        raise ValueError(f"size must be an int between {MIN_SIZE} and {MAX_SIZE} (the generator's image size), "
                         f"got {size!r}.")
    positive_int("num_classes", num_classes)

    def draw(n: int, gen: torch.Generator) -> torch.Tensor:
        seed = int(torch.randint(2**62, (1,), generator=gen)) + 2**20
        _, labels = render_scenes(n, seed=seed, size=size)
        return one_hot_maps(labels, num_classes)

    return draw


class DownBlock(nn.Module):
    """Halve the resolution: 4x4 convolution with stride 2, optional batch norm, leaky ReLU."""

    def __init__(self, in_channels: int, out_channels: int, norm: bool):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 4, stride=2, padding=1, bias=not norm)
        self.norm = nn.BatchNorm2d(out_channels) if norm else nn.Identity()
        self.act = nn.LeakyReLU(0.2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.conv(x)))


class UpBlock(nn.Module):
    """Double the resolution: nearest upsample + 3x3 convolution, batch norm, ReLU, dropout."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.norm = nn.BatchNorm2d(out_channels)
        self.act = nn.ReLU()
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.act(self.norm(upsample_conv2d(x, self.conv.weight, None))))


class ToyPix2PixGenerator(nn.Module):
    """U-Net from one-hot label maps ``[N, in_channels, S, S]`` to images ``[N, 3, S, S]``
    in [-1, 1]; see the module docstring. ``channels``: widths of ``down1 ... downK``
    (K = log2(S) - 1, down to 2x2); ``upK`` has the width of ``downK``."""

    def __init__(self, image_size: int = 64, channels: Sequence[int] = (32, 64, 64, 128, 128),
                 in_channels: int = len(CONCEPT_NAMES), dropout: float = 0.5, dropout_blocks: int = 3):
        super().__init__()
        positive_int("in_channels", in_channels)
        if image_size < 8 or image_size & (image_size - 1):
            raise ValueError(f"image_size must be a power of two >= 8, got {image_size}; use e.g. 32 or 64.")
        depth = int(math.log2(image_size)) - 1
        if len(channels) != depth or any(int(c) < 1 for c in channels):
            raise ValueError(f"channels must list {depth} positive widths for image_size={image_size} (down1 at "
                             f"{image_size // 2}x{image_size // 2} to down{depth} at 2x2), got {tuple(channels)}.")
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must lie in [0, 1), got {dropout}.")
        self.image_size, self.in_channels = int(image_size), int(in_channels)
        channels = [int(c) for c in channels]
        self.channels = tuple(channels)
        prev = self.in_channels
        for k, c in enumerate(channels, start=1):
            self.add_module(f"down{k}", DownBlock(prev, c, norm=1 < k < depth))
            prev = c
        for k in range(depth - 1, 0, -1):  # up{depth-1} (innermost) ... up1
            inner = depth - 1 - k  # 0 for the innermost decoder block
            width_in = channels[k] if k == depth - 1 else 2 * channels[k]
            self.add_module(f"up{k}", UpBlock(width_in, channels[k - 1], dropout if inner < dropout_blocks else 0.0))
        self.output = ToRGB(2 * channels[0])  # nearest upsample + 3x3 conv to RGB, tanh (the toy GAN's)
        self.depth = depth
        #: dissectable featuremaps, encoder then decoder
        self.layer_names = [f"down{k}" for k in range(1, depth + 1)] + [f"up{k}" for k in range(depth - 1, 0, -1)]

    def featuremap_shapes(self) -> dict[str, tuple[int, int, int]]:
        """``{layer name: (units, height, width)}`` of each entry of ``layer_names``."""
        shapes = {f"down{k}": (c, self.image_size >> k, self.image_size >> k) for k, c in enumerate(self.channels, 1)}
        shapes.update({f"up{k}": (self.channels[k - 1], self.image_size >> k, self.image_size >> k)
                       for k in range(self.depth - 1, 0, -1)})
        return {name: shapes[name] for name in self.layer_names}

    def input_fn(self):
        """``input_fn(n, gen)`` drawing held-out label maps (:func:`pix2pix_inputs`)."""
        return pix2pix_inputs(self.image_size, self.in_channels)

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        shape = (self.in_channels, self.image_size, self.image_size)
        if labels.dim() != 4 or tuple(labels.shape[1:]) != shape:
            raise ValueError(f"the generator takes one-hot label maps of shape [N, {', '.join(map(str, shape))}], "
                             f"got {tuple(labels.shape)}; make them with core.input_factories.one_hot_maps.")
        skips = []
        x = labels
        for k in range(1, self.depth + 1):
            x = getattr(self, f"down{k}")(x)
            skips.append(x)
        x = self.get_submodule(f"up{self.depth - 1}")(x)
        for k in range(self.depth - 2, 0, -1):
            x = getattr(self, f"up{k}")(torch.cat([x, skips[k]], 1))
        return self.output(torch.cat([x, skips[0]], 1))


class PatchDiscriminator(nn.Module):
    """``(label maps [N, L, S, S], images [N, 3, S, S])`` -> realness logits per patch
    ``[N, 1, P, P]``: 4x4 convolutions with stride 2 (``channels``; batch norm after all but
    the first, leaky ReLU), then a 4x4 convolution with stride 1 to one logit per patch."""

    def __init__(self, in_channels: int = len(CONCEPT_NAMES) + 3, channels: Sequence[int] = (32, 64, 128)):
        super().__init__()
        layers: list[nn.Module] = []
        prev = in_channels
        for i, c in enumerate(int(c) for c in channels):
            layers += [nn.Conv2d(prev, c, 4, stride=2, padding=1, bias=i == 0)]
            layers += [nn.BatchNorm2d(c)] if i > 0 else []
            layers += [nn.LeakyReLU(0.2)]
            prev = c
        layers.append(nn.Conv2d(prev, 1, 4, stride=1, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, labels: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([labels, images], 1))


class ToyPix2Pix(pl.LightningModule):
    """The toy pix2pix as a LightningModule: ``Trainer(max_steps=2 * batches).fit(ToyPix2Pix())``.

    Args:
        image_size, g_channels, dropout: the generator (``ToyPix2PixGenerator``).
        d_channels: the patch discriminator's widths.
        l1_weight: weight of the L1 loss against the rendered scene (pix2pix: 100).
        lr_g, lr_d, betas: Adam (pix2pix: 2e-4, (0.5, 0.999)).
        batch_size, num_scenes, data_seed: training scenes (rendered once with their labels).
        lr_decay: ``(start, end)`` batches: learning rates fall linearly to 0 (like ToyGAN).

    Logs ``g_loss`` (adversarial part), ``l1`` and ``d_loss``. The scenes' label maps
    are the generator's input; ``generator`` is used for samples (no weight average).
    """

    def __init__(self, image_size: int = 64, g_channels: Sequence[int] = (32, 64, 64, 128, 128),
                 d_channels: Sequence[int] = (32, 64, 128), dropout: float = 0.5, l1_weight: float = 100.0,
                 lr_g: float = 2e-4, lr_d: float = 2e-4, betas: Sequence[float] = (0.5, 0.999),
                 batch_size: int = 16, num_scenes: int = 4096, data_seed: int = 0,
                 lr_decay: Sequence[int] | None = None):
        super().__init__()
        check_training_data(batch_size, num_scenes, lr_decay)
        if l1_weight < 0:
            raise ValueError(f"l1_weight must be >= 0 (pix2pix uses 100), got {l1_weight}.")
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.generator = ToyPix2PixGenerator(image_size, g_channels, dropout=dropout)
        self.discriminator = PatchDiscriminator(len(CONCEPT_NAMES) + 3, d_channels)
        self.generator_ema = None  # shared helpers below expect it

    # Shared with ToyGAN: data loader over the scenes, Adam optimisers, learning-rate decay.
    train_dataloader = ToyGAN.train_dataloader
    configure_optimizers = ToyGAN.configure_optimizers
    learning_rate_factor = ToyGAN.learning_rate_factor
    _decay_learning_rates = ToyGAN._decay_learning_rates
    eval_generator = ToyGAN.eval_generator

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        return self.generator(labels)

    def losses(self, real: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """The three losses on one batch without stepping (for tests and evaluation)."""
        x = one_hot_maps(labels, len(CONCEPT_NAMES))
        fake = self.generator(x)
        d_loss = F.softplus(-self.discriminator(x, real)).mean() + F.softplus(self.discriminator(x, fake)).mean()
        return {"d_loss": d_loss, "g_loss": F.softplus(-self.discriminator(x, fake)).mean(),
                "l1": (fake - real).abs().mean()}

    def training_step(self, batch, batch_idx):
        real, labels = batch[0].float(), batch[1]
        x = one_hot_maps(labels, len(CONCEPT_NAMES))
        opt_g, opt_d = self.optimizers()
        self._decay_learning_rates(opt_g, opt_d)
        fake = self.generator(x)

        self.toggle_optimizer(opt_d)
        d_loss = F.softplus(-self.discriminator(x, real)).mean() + F.softplus(
            self.discriminator(x, fake.detach())).mean()
        opt_d.zero_grad()
        self.manual_backward(d_loss)
        opt_d.step()
        self.untoggle_optimizer(opt_d)

        self.toggle_optimizer(opt_g)
        g_loss = F.softplus(-self.discriminator(x, fake)).mean()
        l1 = (fake - real).abs().mean()
        opt_g.zero_grad()
        self.manual_backward(g_loss + float(self.hparams.l1_weight) * l1)
        opt_g.step()
        self.untoggle_optimizer(opt_g)
        self.log_dict({"g_loss": g_loss.detach(), "l1": l1.detach(), "d_loss": d_loss.detach()}, prog_bar=True)


def load_toypix2pix(checkpoint_path: str, map_location: str | torch.device = "cpu") -> ToyPix2Pix:
    """Load a ToyPix2Pix saved by a Lightning Trainer (``scripts/train_toygan.py --arch pix2pix``)."""
    return ToyPix2Pix.load_from_checkpoint(checkpoint_path, map_location=map_location, weights_only=True)
