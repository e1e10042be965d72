"""Monitor a generator written elsewhere: other attribute names, an EMA copy, a
class-conditional signature with per-layer noise, and a custom ``input_fn``.

    python examples/foreign_generator.py --steps 600     # then: tensorboard --logdir runs/foreign

What differs from examples/train_with_monitor.py:
* the generator to dissect is ``module.G_ema.module`` (a torch AveragedModel around
  ``module.G``): pass a callable ``generator=lambda m: m.G_ema.module``;
* it is called as ``G(z, c, noise_mode=...)`` and injects random noise per layer:
  ``input_fn`` returns a dict of keyword arguments, with ``noise_mode="const"`` so
  every dissection measures the same deterministic images (docs/method.md §1);
* its layers are named ``synthesis.b8``, ``synthesis.b16``, ... (list them with
  ``gan_monitor.core.tracing.layer_names(G)``).
"""
import argparse

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from gan_monitor import DissectionMonitor
from gan_monitor.toyworld import SceneDataset, load_segmenter


class NoisyBlock(nn.Module):  # "their" code: upsample, conv, per-pixel noise, activation
    def __init__(self, cin, cout):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1)
        self.noise_strength = nn.Parameter(torch.zeros(()))

    def forward(self, x, noise_mode):
        x = self.conv(F.interpolate(x, scale_factor=2))
        if noise_mode == "random":
            x = x + self.noise_strength * torch.randn_like(x[:, :1])
        return F.leaky_relu(x, 0.2)


class Synthesis(nn.Module):
    def __init__(self, w_dim):
        super().__init__()
        self.const = nn.Linear(w_dim, 128 * 16)
        self.b8, self.b16, self.b32 = NoisyBlock(128, 128), NoisyBlock(128, 64), NoisyBlock(64, 32)
        self.to_rgb = nn.Conv2d(32, 3, 3, padding=1)

    def forward(self, w, noise_mode):
        x = self.const(w).view(len(w), 128, 4, 4)
        for block in (self.b8, self.b16, self.b32):
            x = block(x, noise_mode)
        return torch.tanh(self.to_rgb(F.interpolate(x, scale_factor=2)))


class ConditionalGenerator(nn.Module):
    def __init__(self, z_dim=64, num_classes=4):
        super().__init__()
        self.z_dim, self.num_classes = z_dim, num_classes
        self.embed = nn.Embedding(num_classes, z_dim)
        self.mapping = nn.Sequential(nn.Linear(2 * z_dim, z_dim), nn.LeakyReLU(0.2))
        self.synthesis = Synthesis(z_dim)

    def forward(self, z, c, noise_mode="random"):
        return self.synthesis(self.mapping(torch.cat([z, self.embed(c)], 1)), noise_mode)


class TheirGAN(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.automatic_optimization = False
        self.G = ConditionalGenerator()
        self.G_ema = AveragedModel(self.G, multi_avg_fn=get_ema_multi_avg_fn(0.99))
        self.D = nn.Sequential(nn.Conv2d(3, 32, 4, 2, 1), nn.LeakyReLU(0.2), nn.Conv2d(32, 64, 4, 2, 1),
                               nn.LeakyReLU(0.2), nn.Flatten(), nn.Linear(64 * 16 * 16, 1))

    def train_dataloader(self):
        return torch.utils.data.DataLoader(SceneDataset(1024, seed=1), batch_size=32, shuffle=True)

    def configure_optimizers(self):
        return [torch.optim.Adam(self.G.parameters(), 2e-4, betas=(0.5, 0.99)),
                torch.optim.Adam(self.D.parameters(), 2e-4, betas=(0.5, 0.99))]

    def training_step(self, batch, batch_idx):
        real, _ = batch
        opt_g, opt_d = self.optimizers()
        z = torch.randn(len(real), self.G.z_dim, device=self.device)
        c = torch.randint(0, self.G.num_classes, (len(real),), device=self.device)
        fake = self.G(z, c)
        d_loss = F.softplus(-self.D(real)).mean() + F.softplus(self.D(fake.detach())).mean()
        opt_d.zero_grad(); self.manual_backward(d_loss); opt_d.step()
        g_loss = F.softplus(-self.D(fake)).mean()
        opt_g.zero_grad(); self.manual_backward(g_loss); opt_g.step()
        self.G_ema.update_parameters(self.G)
        self.log_dict({"g_loss": g_loss, "d_loss": d_loss}, prog_bar=True)


def held_out_inputs(n, gen):
    """n keyword-argument sets for G(**inputs), drawn from the seeded CPU generator ``gen``."""
    return {"z": torch.randn(n, 64, generator=gen),
            "c": torch.randint(0, 4, (n,), generator=gen),
            "noise_mode": "const"}  # non-tensor entries are passed unchanged to every batch


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=600, help="training batches")
    p.add_argument("--n", type=int, default=200, help="held-out samples per dissection")
    args = p.parse_args()
    monitor = DissectionMonitor(
        ["synthesis.b16", "synthesis.b32"], load_segmenter(),
        generator=lambda module: module.G_ema.module,  # dissect the EMA weights
        input_fn=held_out_inputs, every_n_steps=max(1, args.steps // 6), n=args.n,
    )
    trainer = pl.Trainer(max_steps=2 * args.steps, callbacks=[monitor],
                         default_root_dir="runs/foreign", log_every_n_steps=10)
    trainer.fit(TheirGAN())
    for h in monitor.history:
        print(h["step"], {layer: s["interpretable_units"] for layer, s in h["layers"].items()})
