"""Add the DissectionMonitor to your own GAN: a minimal, complete training script.

    python examples/train_with_monitor.py --steps 600      # then: tensorboard --logdir runs/example
"""
import argparse

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import nn

from gan_monitor import DissectionMonitor
from gan_monitor.toyworld import SceneDataset, load_segmenter


def up(cin, cout):  # 2x nearest upsample + conv + batch norm + ReLU
    return nn.Sequential(nn.Upsample(scale_factor=2), nn.Conv2d(cin, cout, 3, padding=1),
                         nn.BatchNorm2d(cout), nn.ReLU())


class MyGAN(pl.LightningModule):
    def __init__(self, latent_dim=64):
        super().__init__()
        self.automatic_optimization = False  # one D and one G step per batch
        self.latent_dim = latent_dim
        self.generator = nn.Sequential()  # blocks named "0".."4": dissect e.g. "2" and "3"
        self.generator.append(nn.Sequential(nn.Linear(latent_dim, 128 * 16), nn.Unflatten(1, (128, 4, 4))))
        self.generator.extend([up(128, 128), up(128, 64), up(64, 32)])
        self.generator.append(nn.Sequential(nn.Upsample(scale_factor=2), nn.Conv2d(32, 3, 3, padding=1), nn.Tanh()))
        self.generator.latent_dim = latent_dim  # lets gan_monitor draw held-out latents
        self.discriminator = nn.Sequential(
            nn.Conv2d(3, 32, 4, 2, 1), nn.LeakyReLU(0.2), nn.Conv2d(32, 64, 4, 2, 1), nn.LeakyReLU(0.2),
            nn.Conv2d(64, 128, 4, 2, 1), nn.LeakyReLU(0.2), nn.Flatten(), nn.Linear(128 * 64, 1))

    def train_dataloader(self):  # images in [-1, 1]; labels unused
        return torch.utils.data.DataLoader(SceneDataset(1024, seed=0), batch_size=32, shuffle=True)

    def configure_optimizers(self):
        return [torch.optim.Adam(self.generator.parameters(), 2e-4, betas=(0.5, 0.99)),
                torch.optim.Adam(self.discriminator.parameters(), 2e-4, betas=(0.5, 0.99))]

    def training_step(self, batch, batch_idx):
        real, _ = batch
        opt_g, opt_d = self.optimizers()
        fake = self.generator(torch.randn(len(real), self.latent_dim, device=self.device))
        d_loss = F.softplus(-self.discriminator(real)).mean() + F.softplus(self.discriminator(fake.detach())).mean()
        opt_d.zero_grad(); self.manual_backward(d_loss); opt_d.step()
        g_loss = F.softplus(-self.discriminator(fake)).mean()
        opt_g.zero_grad(); self.manual_backward(g_loss); opt_g.step()
        self.log_dict({"g_loss": g_loss, "d_loss": d_loss}, prog_bar=True)


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=600, help="training batches")
    p.add_argument("--n", type=int, default=200, help="held-out samples per dissection")
    args = p.parse_args()
    monitor = DissectionMonitor(
        ["2", "3"], load_segmenter(),      # layers of self.generator, and a segmenter
        generator="generator",             # attribute path (or a callable module -> nn.Module)
        every_n_steps=max(1, args.steps // 6), n=args.n, seed=0,
        # more: threshold=IQR(n=100), pictures=PictureOptions(top_units=8), ace=AceOptions(["tree"]),
        #       unit_fid=UnitFIDOptions(real_stats, every_n_steps=1000)   (see DissectionMonitor's docstring)
    )
    trainer = pl.Trainer(max_steps=2 * args.steps,  # manual optimisation: 2 optimizer steps per batch
                         callbacks=[monitor], default_root_dir="runs/example", log_every_n_steps=10)
    trainer.fit(MyGAN())
    for h in monitor.history:
        print(h["step"], {layer: s["interpretable_units"] for layer, s in h["layers"].items()})
