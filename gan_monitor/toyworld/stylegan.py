"""Training the toy StyleGAN: ``ToyStyleGAN``, a LightningModule around
:class:`gan_monitor.toyworld.stylegan_networks.ToyStyleGenerator` (re-exported here).

Per batch (manual optimisation, like ``ToyGAN``): one discriminator step, then one
generator step on the same generated images, with the non-saturating loss
``D: softplus(-D(real)) + softplus(D(fake))``, ``G: softplus(-D(fake))``. Every
``r1_every`` batches the discriminator step adds the lazy R1 penalty (StyleGAN2)
``r1_every * r1_gamma / 2 * mean_n ||d D(real_n) / d real_n||^2``, pulling the
discriminator's gradient on real images towards 0. The discriminator is the toy GAN's
(``ToyDiscriminator``: strided convolutions, batch norm or spectral norm).
``generator_ema`` (on by default, like StyleGAN2) is the moving average of the generator's
weights (decay ``ema_decay`` after a warm-up, ``ema_decay_at``); it is the one to look at
and dissect (``eval_generator()``). Training noise is
fresh at every step (``noise_mode="random"``, from the global RNG: seed it with
``lightning.pytorch.seed_everything``).
"""
from __future__ import annotations

from typing import Sequence

import lightning.pytorch as pl
import torch
import torch.nn.functional as F

from .gan import ToyDiscriminator, ToyGAN, check_training_data
from .stylegan_networks import NOISE_MODES, ToyStyleGenerator

__all__ = ["ToyStyleGAN", "ToyStyleGenerator", "load_toystylegan", "NOISE_MODES"]


class ToyStyleGAN(pl.LightningModule):
    """The toy StyleGAN as a LightningModule: ``Trainer(max_steps=2 * batches).fit(ToyStyleGAN())``.

    Args:
        latent_dim, w_dim, image_size, g_channels, mapping_layers, mapping_lr_mul,
            noise_strength_init, shared_activation: the generator (``ToyStyleGenerator``;
            ``g_channels`` from 4x4 up to ``image_size``).
        d_channels, d_norm: the discriminator (``ToyDiscriminator``, widths from
            ``image_size / 2`` down to 4x4; ``"batch"`` or ``"spectral"``).
        lr_g, lr_d, betas: Adam. The generator's weights are stored at unit scale
            (equalised learning rate), hence its larger rate.
        r1_gamma, r1_every: lazy R1 regularisation (0 turns it off).
        ema_decay: weight average of the generator (0 turns it off).
        batch_size, num_scenes, data_seed: the training scenes, as in ``ToyGAN``.
        lr_decay: ``(start, end)`` batches: learning rates fall linearly to 0.
    """

    def __init__(self, latent_dim: int = 128, w_dim: int = 128, image_size: int = 64,
                 g_channels: Sequence[int] = (128, 128, 64, 32, 16), d_channels: Sequence[int] = (32, 64, 128, 256),
                 mapping_layers: int = 4, mapping_lr_mul: float = 0.01, noise_strength_init: float = 0.1,
                 shared_activation: bool = False, d_norm: str = "batch", lr_g: float = 2e-3, lr_d: float = 2e-4,
                 betas: Sequence[float] = (0.5, 0.99), r1_gamma: float = 0.1, r1_every: int = 16,
                 ema_decay: float = 0.999, batch_size: int = 16, num_scenes: int = 4096, data_seed: int = 0,
                 lr_decay: Sequence[int] | None = None):
        super().__init__()
        check_training_data(batch_size, num_scenes, lr_decay)
        if not 0.0 <= float(ema_decay) < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1) (0 turns the average off), got {ema_decay}.")
        if r1_gamma < 0 or int(r1_every) < 1:
            raise ValueError(f"need r1_gamma >= 0 (0: no R1) and r1_every >= 1, got {r1_gamma} and {r1_every}.")
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.generator = self._make_generator()
        self.discriminator = ToyDiscriminator(image_size, d_channels, d_norm)
        self.generator_ema = None
        if ema_decay > 0:
            self.generator_ema = self._make_generator().requires_grad_(False)
            self.generator_ema.load_state_dict(self.generator.state_dict())

    def _make_generator(self) -> ToyStyleGenerator:
        hp = self.hparams
        return ToyStyleGenerator(hp.latent_dim, hp.w_dim, hp.image_size, hp.g_channels, hp.mapping_layers,
                                 hp.mapping_lr_mul, "random", hp.noise_strength_init, hp.shared_activation)

    # Shared with ToyGAN: data loader over the scenes, Adam optimisers, learning-rate decay.
    train_dataloader = ToyGAN.train_dataloader
    configure_optimizers = ToyGAN.configure_optimizers
    learning_rate_factor = ToyGAN.learning_rate_factor
    _decay_learning_rates = ToyGAN._decay_learning_rates
    eval_generator = ToyGAN.eval_generator
    generator_step = ToyGAN.generator_step

    def ema_decay_at(self, iteration: int) -> float:
        """Decay of the weight average after ``iteration`` batches: ``min(ema_decay,
        (1 + t) / (10 + t))``, a warm-up so that a short run's average is not dominated by
        the initial weights (StyleGAN2 ramps its average up similarly)."""
        return min(float(self.hparams.ema_decay), (1.0 + iteration) / (10.0 + iteration))

    @torch.no_grad()
    def _update_ema(self, iteration: int) -> None:
        decay = self.ema_decay_at(iteration)
        for avg, cur in zip(self.generator_ema.parameters(), self.generator.parameters()):
            avg.lerp_(cur.detach(), 1.0 - decay)
        for avg, cur in zip(self.generator_ema.buffers(), self.generator.buffers()):
            avg.copy_(cur)  # w_avg and the constant noise

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.generator(z)

    def r1_penalty(self, real: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(D(real), mean_n ||grad_x D(real_n)||^2)``, differentiable in D's weights."""
        real = real.detach().requires_grad_(True)
        logits = self.discriminator(real)
        (grad,) = torch.autograd.grad(logits.sum(), real, create_graph=True)
        return logits, grad.square().sum((1, 2, 3)).mean()

    def training_step(self, batch, batch_idx):
        real = (batch[0] if isinstance(batch, (list, tuple)) else batch).float()
        hp = self.hparams
        opt_g, opt_d = self.optimizers()
        self._decay_learning_rates(opt_g, opt_d)
        iteration = self.global_step // 2  # two optimizer steps per batch
        z = torch.randn(real.shape[0], hp.latent_dim, device=self.device)
        fake = self.generator(z)

        self.toggle_optimizer(opt_d)
        lazy_r1 = hp.r1_gamma > 0 and iteration % int(hp.r1_every) == 0
        if lazy_r1:
            real_logits, r1 = self.r1_penalty(real)
        else:
            real_logits, r1 = self.discriminator(real), None
        d_loss = F.softplus(-real_logits).mean() + F.softplus(self.discriminator(fake.detach())).mean()
        total = d_loss if r1 is None else d_loss + float(hp.r1_gamma) / 2 * int(hp.r1_every) * r1
        opt_d.zero_grad()
        self.manual_backward(total)
        opt_d.step()
        self.untoggle_optimizer(opt_d)

        g_loss = self.generator_step(opt_g, fake)
        if self.generator_ema is not None:
            self._update_ema(iteration)
        logs = {"g_loss": g_loss.detach(), "d_loss": d_loss.detach()}
        if r1 is not None:
            logs["r1"] = r1.detach()
        self.log_dict(logs, prog_bar=True)


def load_toystylegan(checkpoint_path: str, map_location: str | torch.device = "cpu") -> ToyStyleGAN:
    """Load a ToyStyleGAN saved by a Lightning Trainer (``scripts/train_toygan.py --arch stylegan``)."""
    return ToyStyleGAN.load_from_checkpoint(checkpoint_path, map_location=map_location, weights_only=True)
