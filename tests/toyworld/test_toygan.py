"""Tests of the toy GAN (gan_monitor.toyworld.gan): shapes, named layers, training
with a Lightning Trainer, checkpoint round trip, global RNG left alone."""
from __future__ import annotations

import copy
import math

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F

from gan_monitor.toyworld.gan_networks import PixelNorm, upsample2x, upsample_conv2d
from gan_monitor.toyworld.gan import (
    ToyDiscriminator,
    ToyGAN,
    ToyGenerator,
    load_toygan,
)

TINY = dict(
    latent_dim=16, image_size=32, g_channels=(32, 16, 8), d_channels=(8, 16, 32),
    batch_size=4, num_scenes=8, lr_g=1e-3, lr_d=1e-3,
)


def _trainer(iterations: int) -> pl.Trainer:
    return pl.Trainer(
        max_steps=2 * iterations,  # manual optimisation: one D and one G optimizer step per batch
        logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, accelerator="cpu",
    )


def _layer_outputs(generator: ToyGenerator, z: torch.Tensor) -> tuple[dict, torch.Tensor]:
    outputs = {}
    hooks = [
        getattr(generator, name).register_forward_hook(
            lambda m, i, o, name=name: outputs.__setitem__(name, o)
        )
        for name in generator.layer_names
    ]
    try:
        images = generator(z)
    finally:
        for h in hooks:
            h.remove()
    return outputs, images


def test_default_generator_layers_and_output():
    g = ToyGenerator()
    assert g.latent_dim == 128 and g.layer_names == ["layer1", "layer2", "layer3", "layer4"]
    z = torch.randn(3, g.latent_dim, generator=torch.Generator().manual_seed(0))
    outputs, images = _layer_outputs(g, z)
    expected = {"layer1": (256, 4, 4), "layer2": (128, 8, 8), "layer3": (64, 16, 16), "layer4": (32, 32, 32)}
    assert g.featuremap_shapes() == expected
    for name, (units, h, w) in expected.items():
        assert outputs[name].shape == (3, units, h, w), name
    assert images.shape == (3, 3, 64, 64)
    assert images.min() >= -1 and images.max() <= 1 and images.std() > 0
    assert not any(isinstance(m, torch.nn.ConvTranspose2d) for m in g.modules())
    assert ToyDiscriminator()(images).shape == (3,)


def test_pixel_norm_matches_per_pixel_loop():
    x = torch.randn(2, 5, 3, 4, generator=torch.Generator().manual_seed(1))
    expected = torch.empty_like(x)
    for n in range(2):
        for i in range(3):
            for j in range(4):
                v = x[n, :, i, j]
                expected[n, :, i, j] = v / math.sqrt(float((v * v).sum()) / 5 + 1e-8)
    torch.testing.assert_close(PixelNorm()(x), expected)


def test_upsample2x_is_nearest_neighbour_interpolation():
    x = torch.randn(2, 3, 4, 5, generator=torch.Generator().manual_seed(4))
    up = upsample2x(x)
    assert torch.equal(up, F.interpolate(x, scale_factor=2, mode="nearest"))
    for i in range(8):
        for j in range(10):
            assert torch.equal(up[:, :, i, j], x[:, :, i // 2, j // 2])


@pytest.mark.parametrize("out_channels", [3, 16])  # both code paths (pixel shuffle, four 2x2 convs)
def test_upsample_conv2d_equals_conv_of_upsampled_input(out_channels):
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(2, 6, 5, 7, generator=gen, dtype=torch.float64, requires_grad=True)
    w = torch.randn(out_channels, 6, 3, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    b = torch.randn(out_channels, generator=gen, dtype=torch.float64, requires_grad=True)
    up = F.interpolate(x, scale_factor=2, mode="nearest")
    expected = F.conv2d(up, w, b, padding=1)
    got = upsample_conv2d(x, w, b)
    assert got.shape == (2, out_channels, 10, 14)
    torch.testing.assert_close(got, expected)
    weights = torch.randn(expected.shape, generator=gen, dtype=torch.float64)
    grads_expected = torch.autograd.grad((expected * weights).sum(), (x, w, b))
    grads_got = torch.autograd.grad((got * weights).sum(), (x, w, b))
    for g_got, g_exp in zip(grads_got, grads_expected):
        torch.testing.assert_close(g_got, g_exp)


def test_generator_output_per_latent_independent_of_batch():
    # Pixel norm: no batch statistics at all, same image in train and eval mode.
    g = ToyGenerator(latent_dim=16, image_size=32, channels=(32, 16, 8), norm="pixel")
    z = torch.randn(5, 16, generator=torch.Generator().manual_seed(2))
    batch = g.train()(z)
    torch.testing.assert_close(g(z[2:3]), batch[2:3])
    torch.testing.assert_close(g.eval()(z), batch)
    # Batch norm (default): in eval mode (as dissection runs it) an image depends only on its latent.
    g = ToyGenerator(latent_dim=16, image_size=32, channels=(32, 16, 8)).eval()
    torch.testing.assert_close(g(z[2:3]), g(z)[2:3])


def test_bad_arguments_give_clear_errors():
    g = ToyGenerator(latent_dim=16, image_size=32, channels=(32, 16, 8))
    with pytest.raises(ValueError, match=r"\[N, 16\]"):
        g(torch.randn(2, 15))
    with pytest.raises(ValueError, match="channel widths"):
        ToyGenerator(image_size=64, channels=(64, 32))
    with pytest.raises(ValueError, match="power of two"):
        ToyGenerator(image_size=48)
    with pytest.raises(ValueError, match="batch_size"):
        ToyGAN(batch_size=16, num_scenes=8)


def test_sample_latents_is_seeded_and_leaves_global_rng_alone():
    g = ToyGenerator(latent_dim=16, image_size=32, channels=(32, 16, 8))
    state = torch.get_rng_state()
    a, b = g.sample_latents(4, seed=7), g.sample_latents(4, seed=7)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a, b) and a.shape == (4, 16)
    assert not torch.equal(a, g.sample_latents(4, seed=8))


def test_dataloader_yields_scene_batches_without_touching_global_rng():
    model = ToyGAN(**TINY)
    state = torch.get_rng_state()
    loader = model.train_dataloader()
    batch = next(iter(loader))
    assert torch.equal(torch.get_rng_state(), state)
    images = batch[0] if isinstance(batch, (list, tuple)) else batch
    assert images.shape == (4, 3, 32, 32) and images.dtype == torch.float32
    assert images.min() >= -1 and images.max() <= 1 and images.std() > 0.05
    # Same data seed, same order.
    again = next(iter(ToyGAN(**TINY).train_dataloader()))
    torch.testing.assert_close(again[0] if isinstance(again, (list, tuple)) else again, images)


def test_training_steps_update_both_networks_and_checkpoint_round_trips(tmp_path):
    pl.seed_everything(0, verbose=False)
    model = ToyGAN(**TINY)
    g_before = {k: v.clone() for k, v in model.generator.state_dict().items()}
    d_before = {k: v.clone() for k, v in model.discriminator.named_parameters()}
    trainer = _trainer(iterations=3)
    trainer.fit(model)

    assert trainer.global_step == 6
    for name in ("g_loss", "d_loss"):
        assert name in trainer.callback_metrics, f"{name} not logged"
        assert math.isfinite(float(trainer.callback_metrics[name]))
    for k, v in model.generator.state_dict().items():
        assert not torch.equal(v, g_before[k]), f"generator {k} did not change"
    for k, v in model.discriminator.named_parameters():
        assert not torch.equal(v, d_before[k]), f"discriminator {k} did not change"

    z = model.generator.sample_latents(6, seed=3)
    model.eval()
    with torch.no_grad():
        images = model(z)
    assert images.shape == (6, 3, 32, 32) and images.min() >= -1 and images.max() <= 1
    outputs, _ = _layer_outputs(model.generator, z)
    assert [tuple(o.shape) for o in outputs.values()] == [(6, 32, 4, 4), (6, 16, 8, 8), (6, 8, 16, 16)]

    path = tmp_path / "toygan.ckpt"
    trainer.save_checkpoint(path)
    loaded = load_toygan(str(path))
    assert dict(loaded.hparams) == dict(model.hparams)
    assert loaded.hparams.latent_dim == loaded.generator.latent_dim == 16
    loaded.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(z), images, rtol=0, atol=0)


def test_ema_generator_averages_weights_and_round_trips(tmp_path):
    model = ToyGAN(ema_decay=0.9, **TINY)
    assert model.eval_generator() is model.generator_ema and ToyGAN(**TINY).generator_ema is None
    start = copy.deepcopy(model.generator)
    trainer = _trainer(iterations=1)
    torch.manual_seed(0)
    trainer.fit(model)
    for name, avg in model.generator_ema.named_parameters():  # one step: 0.9 w0 + 0.1 w1
        w0, w1 = start.get_parameter(name), model.generator.get_parameter(name)
        assert torch.allclose(avg, 0.9 * w0 + 0.1 * w1, atol=1e-6), name
    assert not any(p.requires_grad for p in model.generator_ema.parameters())
    path = tmp_path / "ema.ckpt"
    trainer.save_checkpoint(path)  # refreshes the average's batch-norm statistics first
    # brute force: running mean = mean over the 32 seeded batches of each batch's mean
    g = copy.deepcopy(model.generator_ema).train()
    inputs = []
    hook = g.layer2.norm.register_forward_pre_hook(lambda m, a: inputs.append(a[0].mean((0, 2, 3))))
    z = torch.randn(32 * 64, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for chunk in z.split(64):
            g(chunk)
    hook.remove()
    expected = torch.stack(inputs).mean(0)
    assert torch.allclose(model.generator_ema.layer2.norm.running_mean, expected, atol=1e-5)
    loaded = load_toygan(str(path))
    for (name, a), b in zip(model.generator_ema.state_dict().items(), loaded.generator_ema.state_dict().values()):
        assert torch.equal(a, b), name
    with pytest.raises(ValueError, match="ema_decay must be in"):
        ToyGAN(ema_decay=1.0, **TINY)


def test_relu_generator_units_are_off_on_most_pixels_and_checkpoint_round_trips(tmp_path):
    g = ToyGenerator(latent_dim=16, image_size=32, channels=(32, 16, 8), activation="relu").eval()
    outputs, _ = _layer_outputs(g, torch.randn(4, 16, generator=torch.Generator().manual_seed(0)))
    for name, out in outputs.items():
        assert out.min() >= 0, name  # ReLU: exactly zero when off
        assert 0.2 < float((out == 0).float().mean()) < 0.8, name  # batch norm centres, ReLU cuts half
    leaky, _ = _layer_outputs(ToyGenerator(latent_dim=16, image_size=32, channels=(32, 16, 8)).eval(),
                              torch.randn(4, 16))
    assert all(out.min() < 0 for out in leaky.values())
    with pytest.raises(ValueError, match="'leaky' or 'relu'"):
        ToyGenerator(activation="tanh")
    pl.seed_everything(0, verbose=False)
    model = ToyGAN(**TINY, g_activation="relu")
    trainer = _trainer(iterations=2)
    trainer.fit(model)
    trainer.save_checkpoint(tmp_path / "relu.ckpt")
    loaded = load_toygan(str(tmp_path / "relu.ckpt"))
    assert isinstance(loaded.generator.layer2.act, torch.nn.ReLU)
    z = model.generator.sample_latents(3, seed=1)
    model.eval(), loaded.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(z), model(z), rtol=0, atol=0)


class _RecordLearningRates(pl.Callback):
    def __init__(self):
        self.rates = []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.rates.append([opt.param_groups[0]["lr"] for opt in trainer.optimizers])


def test_lr_decay_falls_linearly_to_zero_between_start_and_end():
    pl.seed_everything(0, verbose=False)
    model = ToyGAN(**TINY, lr_decay=(2, 6))
    record = _RecordLearningRates()
    trainer = _trainer(iterations=8)
    trainer.callbacks.append(record)
    trainer.fit(model)
    # batch b (0-based) runs with factor clip((6 - b) / 4, 0, 1)
    expected = [min(1.0, max(0.0, (6 - b) / 4)) * 1e-3 for b in range(8)]
    assert [r[0] for r in record.rates] == pytest.approx(expected)
    assert [r[1] for r in record.rates] == pytest.approx(expected)
    with pytest.raises(ValueError, match="start < end"):
        ToyGAN(**TINY, lr_decay=(5, 5))
