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

from typing import Sequence

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import nn

from .gan_networks import ToyDiscriminator, ToyGenerator
from .scenes import SceneDataset

__all__ = ["ToyGenerator", "ToyDiscriminator", "ToyGAN", "load_toygan", "check_training_data"]


def check_training_data(batch_size: int, num_scenes: int, lr_decay: Sequence[int] | None) -> None:
    """The training-data arguments every toy family shares: ``1 <= batch_size <= num_scenes``
    and ``lr_decay`` None or ``(start, end)`` batches with ``0 <= start < end``."""
    if batch_size < 1 or num_scenes < batch_size:
        raise ValueError(f"need 1 <= batch_size <= num_scenes, got batch_size={batch_size}, "
                         f"num_scenes={num_scenes}; render more scenes or use smaller batches.")
    if lr_decay is not None and (len(lr_decay) != 2 or not 0 <= int(lr_decay[0]) < int(lr_decay[1])):
        raise ValueError(f"lr_decay must be (start, end) training batches with 0 <= start < end, got {lr_decay}.")


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
        check_training_data(batch_size, num_scenes, lr_decay)
        if not 0.0 <= float(ema_decay) < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1) (0 turns the average off), got {ema_decay}; "
                             "typical values are 0.999 or 0.9999.")
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

    def generator_step(self, opt_g, fake: torch.Tensor) -> torch.Tensor:
        """One step of the non-saturating generator loss ``softplus(-D(fake))`` (the
        discriminator frozen while it runs); returns the loss. Shared with ToyStyleGAN."""
        self.toggle_optimizer(opt_g)
        g_loss = F.softplus(-self.discriminator(fake)).mean()
        opt_g.zero_grad()
        self.manual_backward(g_loss)
        opt_g.step()
        self.untoggle_optimizer(opt_g)
        return g_loss

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
        g_loss = self.generator_step(opt_g, fake)
        if self.generator_ema is not None:
            self._update_ema()

        self.log_dict({"g_loss": g_loss.detach(), "d_loss": d_loss.detach()}, prog_bar=True)


def load_toygan(checkpoint_path: str, map_location: str | torch.device = "cpu") -> ToyGAN:
    """Load a ToyGAN saved by a Lightning Trainer (e.g. ``scripts/train_toygan.py``)."""
    return ToyGAN.load_from_checkpoint(checkpoint_path, map_location=map_location, weights_only=True)
