"""Tiny toy-GAN checkpoints (two, a timeline) and their `gan-monitor dissect` folder, as
module-scoped fixtures shared by the CLI and report tests (import the fixtures by name)."""
from __future__ import annotations

import pytest

from gan_monitor.cli.main import main

TINY_GAN = dict(latent_dim=16, image_size=32, g_channels=(32, 16, 8), d_channels=(8, 16, 32),
                batch_size=8, num_scenes=32)
N = 32


def _trainer(steps):
    import lightning.pytorch as pl

    return pl.Trainer(max_steps=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, accelerator="cpu")


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    import lightning.pytorch as pl

    from gan_monitor.toyworld.gan import ToyGAN

    folder = tmp_path_factory.mktemp("ckpts")
    pl.seed_everything(0, verbose=False)
    model = ToyGAN(**TINY_GAN)
    trainer = _trainer(2)
    trainer.fit(model)
    trainer.save_checkpoint(folder / "early.ckpt")
    trainer = _trainer(6)
    trainer.fit(model, ckpt_path=folder / "early.ckpt")
    trainer.save_checkpoint(folder / "late.ckpt")
    return folder


@pytest.fixture(scope="module")
def timeline(ckpts, tmp_path_factory):
    out = tmp_path_factory.mktemp("dissect")
    # given late first: the timeline is still ordered by training step
    rc = main(["dissect", str(ckpts / "late.ckpt"), str(ckpts / "early.ckpt"), "--layers", "layer2,layer3",
               "--out", str(out), "--n", str(N), "--seed", "3", "--no-progress"])
    assert rc == 0
    return out
