"""The StyleGAN-like and pix2pix toy families (gan_monitor.toyworld.stylegan, .pix2pix) and
their input factories (gan_monitor.core.input_factories): shapes and ranges, noise control,
weight demodulation against a brute-force per-sample convolution, deterministic inputs,
pix2pix conditioning and L1 learning, training modules, and dissection end to end."""
from __future__ import annotations

import math

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F

from gan_monitor import dissect
from gan_monitor.core.held_out import checksum
from gan_monitor.core.input_factories import (
    dataset_inputs,
    one_hot_maps,
    stylegan_inputs,
    stylegan_w_inputs,
)
from gan_monitor.core.inputs import call_generator, make_inputs
from gan_monitor.toyworld import CONCEPT_NAMES
from gan_monitor.toyworld.pix2pix import (
    ToyPix2Pix,
    ToyPix2PixGenerator,
    load_toypix2pix,
    pix2pix_inputs,
)
from gan_monitor.toyworld.scenes import render_scenes
from gan_monitor.toyworld.segmenter import load_segmenter
from gan_monitor.toyworld.stylegan import (
    ToyStyleGAN,
    ToyStyleGenerator,
    load_toystylegan,
)
from gan_monitor.toyworld.stylegan_networks import ModulatedConv2d

SG = dict(latent_dim=16, w_dim=16, image_size=32, channels=(32, 16, 16, 8), mapping_layers=2)
P2P = dict(image_size=32, channels=(8, 16, 16, 16))
C = len(CONCEPT_NAMES)


def _outputs(model, names, *args, **kwargs):
    """Outputs of the named submodules (forward hooks) and the model's output."""
    got = {}
    hooks = [model.get_submodule(n).register_forward_hook(lambda m, i, o, n=n: got.__setitem__(n, o))
             for n in names]
    try:
        out = model(*args, **kwargs)
    finally:
        for h in hooks:
            h.remove()
    return got, out


def _z(n=3, dim=16, seed=0):
    return torch.randn(n, dim, generator=torch.Generator().manual_seed(seed))


# ---- StyleGAN: architecture, noise, modulation ---------------------------------------------------
def test_stylegan_layers_shapes_and_tuple_blocks():
    g = ToyStyleGenerator(**SG).eval()
    assert g.layer_names == ["synthesis.b4.conv1", "synthesis.b8.conv0", "synthesis.b8.conv1",
                             "synthesis.b16.conv0", "synthesis.b16.conv1", "synthesis.b32.conv0",
                             "synthesis.b32.conv1"]
    assert g.block_names == ["synthesis.b4", "synthesis.b8", "synthesis.b16", "synthesis.b32"]
    assert g.noise_shapes()["noise_b16_conv0"] == (1, 16, 16) and len(g.noise_names) == 7
    got, images = _outputs(g, g.layer_names + g.block_names, _z())
    for name, (units, h, w) in g.featuremap_shapes().items():
        assert got[name].shape == (3, units, h, w), name
    x, rgb = got["synthesis.b16"]  # blocks return (featuremap, RGB skip sum), like StyleGAN2 code
    assert x.shape == (3, 16, 16, 16) and rgb.shape == (3, 3, 16, 16)
    assert torch.equal(x, got["synthesis.b16.conv1"])
    assert images.shape == (3, 3, 32, 32) and images.abs().max() <= 1 and images.std() > 0.01
    torch.testing.assert_close(images, torch.tanh(got["synthesis.b32"][1]))
    assert not any(isinstance(m, torch.nn.ConvTranspose2d) for m in g.modules())
    assert g(w=g.mapping(_z())).shape == (3, 3, 32, 32)


def test_noise_modes_const_deterministic_random_not_explicit_noise_wins():
    g = ToyStyleGenerator(**SG).eval()
    z = _z()
    with torch.no_grad():
        random_a, random_b = g(z), g(z)
        assert not torch.equal(random_a, random_b)
        g.noise_mode = "const"
        const = g(z)
        assert torch.equal(const, g(z)) and not torch.equal(const, random_a)
        g.noise_mode = "none"
        none = g(z)
        assert torch.equal(none, g(z)) and not torch.equal(none, const)
        # given noise is used whatever the mode, in every accepted form
        g.noise_mode = "random"
        noise = {name: torch.randn(3, *shape) for name, shape in g.noise_shapes().items()}
        by_keyword = g(z, **noise)
        assert torch.equal(by_keyword, g(z, **noise))
        assert torch.equal(by_keyword, g(z, noise=noise))
        assert torch.equal(by_keyword, g(z, [noise[n] for n in g.noise_names]))
        # the constant buffers are exactly the const mode's noise
        consts = {n: g.get_submodule(layer).noise_const.expand(3, -1, -1, -1)
                  for n, layer in zip(g.noise_names, g.layer_names)}
        assert torch.equal(g(z, **consts), const)
    with pytest.raises(ValueError, match="noise_mode"):
        g.noise_mode = "fixed"
    with pytest.raises(TypeError, match="noise_b4_conv1"):
        g(z, noise_b5_conv1=torch.zeros(3, 1, 4, 4))
    with pytest.raises(ValueError, match=r"noise_b8_conv0 must have shape \[N, 1, 8, 8\]"):
        g(z, noise_b8_conv0=torch.zeros(3, 1, 4, 4))
    with pytest.raises(ValueError, match=r"\[N, 16\]"):
        g(torch.zeros(3, 15))


def test_truncation_pulls_w_to_its_average():
    g = ToyStyleGenerator(**SG, noise_mode="none").eval()
    g.mapping.w_avg.normal_()
    z = _z(4)
    w = g.mapping(z)
    torch.testing.assert_close(g.mapping(z, truncation_psi=0.5), g.mapping.w_avg + 0.5 * (w - g.mapping.w_avg))
    at_average = g(z, truncation_psi=0.0)  # every sample at w_avg: one image
    torch.testing.assert_close(at_average, at_average[:1].expand(4, -1, -1, -1))
    start = g.mapping.w_avg.clone()
    g.train()(z)  # a training-mode call moves w_avg towards the batch's mean w
    torch.testing.assert_close(g.mapping.w_avg, start + (1 - 0.995) * (w.mean(0) - start))


@pytest.mark.parametrize("up", [False, True])
def test_demodulated_conv_equals_explicit_per_sample_normalised_weights(up):
    gen = torch.Generator().manual_seed(3)
    layer = ModulatedConv2d(5, 4, w_dim=6, up=up).double()
    x = torch.randn(3, 5, 6, 6, generator=gen, dtype=torch.float64)
    w = torch.randn(3, 6, generator=gen, dtype=torch.float64)
    got = layer(x, w)
    styles = w @ (layer.affine.weight * layer.affine.weight_gain).T + layer.affine.bias * layer.affine.lr_mul
    base = layer.weight * layer.weight_gain
    for n in range(3):
        modulated = base * styles[n].view(1, -1, 1, 1)  # scale input channel i by s_i
        norms = modulated.pow(2).sum((1, 2, 3), keepdim=True).add(1e-8).sqrt()
        effective = modulated / norms
        torch.testing.assert_close(effective.pow(2).sum((1, 2, 3)), torch.ones(4, dtype=torch.float64))
        inp = F.interpolate(x[n:n + 1], scale_factor=2, mode="nearest") if up else x[n:n + 1]
        torch.testing.assert_close(got[n:n + 1], F.conv2d(inp, effective, padding=1))
    # demodulated output channels have unit scale for unit-variance input, whatever the style
    big = torch.randn(64, 5, 16, 16, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        out = layer(big, 10 * torch.randn(64, 6, generator=gen, dtype=torch.float64))
    assert 0.8 < float(out[..., 2:-2, 2:-2].std()) < 1.2


def test_shared_activation_variant_runs_one_module_twice_per_block():
    g = ToyStyleGenerator(**SG, shared_activation=True).eval()
    calls = []
    g.get_submodule("synthesis.b16.act").register_forward_hook(lambda m, i, o: calls.append(o.shape))
    g(_z())
    assert calls == [(3, 16, 16, 16)] * 2
    assert g.synthesis.b16.conv1.act is None  # convK outputs are pre-activation here


# ---- input factories -----------------------------------------------------------------------------
def test_stylegan_inputs_are_seeded_and_make_generation_deterministic():
    g = ToyStyleGenerator(**SG).eval()  # noise_mode "random": only the given noise fixes it
    fn = stylegan_inputs(g.latent_dim, g.noise_shapes(), truncation_psi=0.7)
    a, b = make_inputs(g, 5, 11, fn), make_inputs(g, 5, 11, fn)
    assert checksum(a) == checksum(b) and checksum(a) != checksum(make_inputs(g, 5, 12, fn))
    assert set(a) == {"z", "truncation_psi", *g.noise_names} and a["truncation_psi"] == 0.7
    assert a["noise_b32_conv1"].shape == (5, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(call_generator(g, a), call_generator(g, b))
        torch.testing.assert_close(g(**a)[2:3], g(**{k: v[2:3] if torch.is_tensor(v) else v for k, v in a.items()}))
    # w-space inputs: same draws of z and noise, mapped once
    g.mapping.w_avg.normal_()
    wfn = stylegan_w_inputs(g.mapping, g.latent_dim, g.noise_shapes(), truncation_psi=0.7)
    w_inputs = make_inputs(g, 5, 11, wfn)
    assert checksum(w_inputs) == checksum(make_inputs(g, 5, 11, wfn))
    assert torch.equal(w_inputs["noise_b8_conv1"], a["noise_b8_conv1"])
    with torch.no_grad():
        torch.testing.assert_close(g(**w_inputs), g(**a))
    assert checksum(make_inputs(g, 5, 11, g.input_fn(0.7))) == checksum(a)
    with pytest.raises(ValueError, match="noise input names"):
        stylegan_inputs(8, {"z": (1, 4, 4)})


def test_pix2pix_inputs_are_seeded_one_hot_held_out_label_maps():
    fn, g = pix2pix_inputs(size=32), ToyPix2PixGenerator(**P2P)
    a, b = make_inputs(g, 6, 4, fn), make_inputs(g, 6, 4, fn)
    assert a.shape == (6, C, 32, 32) and torch.equal(a, b)
    assert torch.equal(a.sum(1), torch.ones(6, 32, 32))
    assert not torch.equal(a, make_inputs(g, 6, 5, fn))
    training = one_hot_maps(render_scenes(6, seed=0, size=32)[1], C)  # the training scenes' seed
    assert not torch.equal(a, training)
    labels = a.argmax(1)
    brute = torch.zeros_like(a)
    for n, i, j in torch.cartesian_prod(torch.arange(6), torch.arange(32), torch.arange(32)).tolist():
        brute[n, labels[n, i, j], i, j] = 1
    assert torch.equal(one_hot_maps(labels, C), brute)


def test_dataset_inputs_draw_distinct_items_from_the_seed():
    data = torch.arange(20).view(20, 1).float()
    fn = dataset_inputs(data, transform=lambda x: x * 2)
    a = fn(8, torch.Generator().manual_seed(1))
    assert torch.equal(a, fn(8, torch.Generator().manual_seed(1)))
    assert len(set(a.flatten().tolist())) == 8 and set(a.flatten().tolist()) <= {2.0 * i for i in range(20)}
    with pytest.raises(ValueError, match="replace=True"):
        fn(21, torch.Generator().manual_seed(1))
    assert dataset_inputs(data, replace=True)(30, torch.Generator().manual_seed(1)).shape == (30, 1)


# ---- pix2pix ------------------------------------------------------------------------------------
def test_pix2pix_shapes_and_output_depends_on_labels():
    g = ToyPix2PixGenerator(**P2P).eval()
    assert g.layer_names == ["down1", "down2", "down3", "down4", "up3", "up2", "up1"]
    x = make_inputs(g, 4, 0, g.input_fn())
    got, images = _outputs(g, g.layer_names, x)
    for name, (units, h, w) in g.featuremap_shapes().items():
        assert got[name].shape == (4, units, h, w), name
    assert images.shape == (4, 3, 32, 32) and images.abs().max() <= 1
    assert torch.equal(images, g(x))  # dropout is off in eval mode
    other = x.clone()
    other[:, :, 20:, :] = 0
    other[:, 5, 20:, :] = 1  # paint road over the bottom rows
    changed = (g(other) - images).abs().amax(1)
    assert changed[:, 20:].mean() > 10 * changed[:, :4].mean() > 0  # mostly where the labels changed
    with pytest.raises(ValueError, match="one-hot label maps"):
        g(torch.zeros(2, 3, 32, 32))


def test_pix2pix_training_steps_reduce_l1_on_a_fixed_batch(tmp_path):
    pl.seed_everything(0, verbose=False)
    model = ToyPix2Pix(image_size=32, g_channels=P2P["channels"], d_channels=(8, 16), dropout=0.0,
                       batch_size=8, num_scenes=8, lr_g=2e-3, lr_d=2e-4)
    images, labels = next(iter(model.train_dataloader()))  # the only batch
    with torch.no_grad():
        before = model.losses(images, labels)["l1"]
    trainer = pl.Trainer(max_steps=2 * 25, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu")
    trainer.fit(model)
    with torch.no_grad():
        after = model.losses(images, labels)["l1"]
    assert after < 0.6 * before, (before, after)
    trainer.save_checkpoint(tmp_path / "p.ckpt")
    loaded = load_toypix2pix(str(tmp_path / "p.ckpt")).generator.eval()
    x = one_hot_maps(labels, C)
    torch.testing.assert_close(loaded(x), model.generator.eval()(x))


def test_stylegan_module_trains_with_r1_and_weight_average(tmp_path):
    pl.seed_everything(0, verbose=False)
    model = ToyStyleGAN(latent_dim=16, w_dim=16, image_size=32, g_channels=SG["channels"], d_channels=(8, 16, 32),
                        mapping_layers=2, batch_size=4, num_scenes=8, r1_every=2, ema_decay=0.99)
    before = {k: v.clone() for k, v in model.generator.state_dict().items()}
    trainer = pl.Trainer(max_steps=2 * 3, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu")
    trainer.fit(model)
    assert "r1" in trainer.callback_metrics and math.isfinite(float(trainer.callback_metrics["r1"]))
    after = model.generator.state_dict()
    assert not torch.equal(after["synthesis.b8.conv0.conv.weight"], before["synthesis.b8.conv0.conv.weight"])
    assert not torch.equal(after["mapping.w_avg"], before["mapping.w_avg"])
    ema = model.eval_generator().state_dict()
    assert torch.equal(ema["mapping.w_avg"], after["mapping.w_avg"])
    assert not torch.equal(ema["synthesis.b8.conv0.conv.weight"], after["synthesis.b8.conv0.conv.weight"])
    assert model.ema_decay_at(0) == 0.1 and model.ema_decay_at(10**6) == 0.99
    trainer.save_checkpoint(tmp_path / "s.ckpt")
    loaded = load_toystylegan(str(tmp_path / "s.ckpt")).eval_generator().eval()
    inputs = make_inputs(loaded, 3, 0, loaded.input_fn())
    torch.testing.assert_close(loaded(**inputs), model.eval_generator().eval()(**inputs))


# ---- dissection end to end ----------------------------------------------------------------------
@pytest.mark.parametrize("threshold", ["quantile", "iqr"])
@pytest.mark.parametrize("family", ["stylegan", "pix2pix"])
def test_dissect_runs_on_each_family(family, threshold):
    torch.manual_seed(1)
    if family == "stylegan":
        g = ToyStyleGenerator(**SG)  # random noise mode: the input factory fixes the noise
        layers = ["synthesis.b8.conv1", "synthesis.b16.conv0"]
    else:
        g = ToyPix2PixGenerator(**P2P)
        layers = ["down2", "up2"]
    args = dict(n=12, seed=3, input_fn=g.input_fn(), threshold=threshold, batch_size=5)
    result = dissect(g, layers, load_segmenter(), **args)
    again = dissect(g, layers, load_segmenter(), **args)
    shapes = g.featuremap_shapes()
    for name in layers:
        layer = result[name]
        assert layer.iou.shape == (shapes[name][0], C)
        assert torch.isfinite(layer.iou).all() and (layer.iou >= 0).all() and (layer.iou <= 1).all()
        assert torch.equal(layer.iou, again[name].iou)  # fixed inputs, fixed noise: same numbers


# ---- training script ----------------------------------------------------------------------------
def test_training_script_arch_option(tmp_path, monkeypatch):
    import importlib.util
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "scripts" / "train_toygan.py"
    spec = importlib.util.spec_from_file_location("train_toygan_script", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)  # leave the test process's threads alone
    common = ["--iterations", "1", "--minutes", "0", "--num-scenes", "4", "--batch-size", "4"]
    timing = script.main(["--arch", "pix2pix", "--g-channels", "8", "8", "16", "16", "16", "--l1-weight", "50",
                          "--out", str(tmp_path / "p"), *common])
    assert timing["arch"] == "pix2pix" and timing["hparams"]["l1_weight"] == 50
    assert {"toypix2pix.ckpt", "samples.png", "inputs.png", "timing.json"} <= {p.name for p in (tmp_path / "p").iterdir()}
    assert load_toypix2pix(str(tmp_path / "p" / "toypix2pix.ckpt")).generator.channels == (8, 8, 16, 16, 16)
    assert json.loads((tmp_path / "p" / "timing.json").read_text())["iterations"] == 1
    with pytest.raises(SystemExit):
        script.main(["--arch", "pix2pix", "--g-activation", "relu", *common])


def test_w_space_inputs_leave_a_training_mapping_alone():
    g = ToyStyleGenerator(**SG).train()
    start = g.mapping.w_avg.clone()
    inputs = make_inputs(g, 4, 0, g.input_fn(w_space=True))
    assert inputs["w"].shape == (4, 16) and g.mapping.training
    assert torch.equal(g.mapping.w_avg, start)
