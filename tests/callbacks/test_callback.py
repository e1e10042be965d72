"""DissectionMonitor inside real Lightning training runs, with a tiny GAN and a
colour-threshold segmenter written here (fast, and independent of the toy world)."""
from __future__ import annotations

import io
import math
import warnings

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from gan_monitor.callbacks.context import PictureOptions
from gan_monitor.callbacks.dissection_monitor import DissectionMonitor
from gan_monitor.dissection.thresholds.modes import IQR

LATENT = 8
N_HELD_OUT = 24


# ---- stand-ins ------------------------------------------------------------------------
class TinyGenerator(nn.Module):
    """z [N, 8] -> layer1 [N,16,4,4] -> layer2 [N,8,8,8] (with BatchNorm) -> image [N,3,16,16]."""

    def __init__(self):
        super().__init__()
        self.latent_dim = LATENT
        self.layer1 = nn.Sequential(nn.Linear(LATENT, 16 * 16), nn.Unflatten(1, (16, 4, 4)), nn.ReLU())
        self.layer2 = nn.Sequential(nn.Upsample(scale_factor=2), nn.Conv2d(16, 8, 3, padding=1),
                                    nn.BatchNorm2d(8), nn.ReLU())
        self.output = nn.Sequential(nn.Upsample(scale_factor=2), nn.Conv2d(8, 3, 3, padding=1), nn.Tanh())

    def forward(self, z):
        return self.output(self.layer2(self.layer1(z)))


class ColorSegmenter:
    """Labels every pixel by its dominant colour channel."""

    concepts = ["-", "red", "green", "blue"]
    categories = ["-", "color", "material", "material"]

    def segment(self, images):
        return images.argmax(dim=1) + 1


class BrokenSegmenter(ColorSegmenter):
    def segment(self, images):
        raise RuntimeError("segmenter exploded")


def make_gan_class(base):
    class TinyGAN(base):
        """Manual optimisation, one D and one G step per batch (like a real GAN)."""

        def __init__(self, z_from_step: bool = False):
            super().__init__()
            self.automatic_optimization = False
            self.z_from_step = z_from_step
            self.generator = TinyGenerator()
            self.discriminator = nn.Sequential(nn.Conv2d(3, 8, 4, 2, 1), nn.LeakyReLU(0.2),
                                               nn.Flatten(), nn.Linear(8 * 8 * 8, 1))

        def train_dataloader(self):
            g = torch.Generator().manual_seed(123)
            real = torch.rand(24, 3, 16, 16, generator=g) * 2 - 1
            return torch.utils.data.DataLoader(real, batch_size=8, shuffle=False)

        def configure_optimizers(self):
            return [torch.optim.Adam(self.generator.parameters(), 1e-2),
                    torch.optim.Adam(self.discriminator.parameters(), 1e-2)]

        def training_step(self, batch, batch_idx):
            opt_g, opt_d = self.optimizers()
            if self.z_from_step:  # reproducible across a resume (the global RNG is not restored)
                z = torch.randn(len(batch), LATENT, generator=torch.Generator().manual_seed(self.global_step))
            else:
                z = torch.randn(len(batch), LATENT)
            fake = self.generator(z)
            d_loss = F.softplus(-self.discriminator(batch)).mean() + F.softplus(self.discriminator(fake.detach())).mean()
            opt_d.zero_grad()
            self.manual_backward(d_loss)
            opt_d.step()
            g_loss = F.softplus(-self.discriminator(fake)).mean()
            opt_g.zero_grad()
            self.manual_backward(g_loss)
            opt_g.step()
            self.log("g_loss", g_loss.detach())

    return TinyGAN


TinyGAN = make_gan_class(pl.LightningModule)


def monitor(**kw):
    """The tests' monitor; ``top_units``/``top_images``/``log_images`` go into its PictureOptions."""
    pictures = dict(top_units=3, top_images=2)
    pictures.update({k: kw.pop(k) for k in ("top_units", "top_images", "log_images") if k in kw})
    args = dict(layers=["layer1", "layer2"], segmenter=ColorSegmenter(), n=N_HELD_OUT, seed=3,
                batch_size=8, pictures=PictureOptions(**pictures), every_n_steps=2)
    args.update(kw)
    return DissectionMonitor(args.pop("layers"), args.pop("segmenter"), **args)


def trainer(tmp_path=None, callbacks=(), logger=False, max_epochs=2, **kw):
    return pl.Trainer(max_epochs=max_epochs, accelerator="cpu", callbacks=list(callbacks), logger=logger,
                      enable_checkpointing=kw.pop("enable_checkpointing", False), enable_progress_bar=False,
                      enable_model_summary=False, log_every_n_steps=1, default_root_dir=tmp_path, **kw)


def read_events(log_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(log_dir), size_guidance={k: 0 for k in (
        "compressedHistograms", "images", "audio", "scalars", "histograms", "tensors")})
    ea.Reload()
    return ea


# ---- tests ------------------------------------------------------------------------------
def test_tensorboard_events_have_every_tag(tmp_path):
    from lightning.pytorch.loggers import TensorBoardLogger

    logger = TensorBoardLogger(str(tmp_path), name="tb", version=0)
    mon = monitor()
    model = TinyGAN()
    trainer(tmp_path, [mon], logger=logger).fit(model)  # 2 epochs x 3 batches
    ea = read_events(logger.log_dir)
    tags = ea.Tags()
    expected_steps = [0, 2, 4, 6]  # on_train_start + every 2 batches
    assert mon.failures == 0
    assert [h["step"] for h in mon.history] == expected_steps
    for layer in ("layer1", "layer2"):
        for name in ("interpretable_units", "concept_diversity", "mean_iou",
                     "interpretable_color", "interpretable_material"):
            events = ea.Scalars(f"gan_monitor/{layer}/{name}")
            assert [e.step for e in events] == expected_steps
            assert all(math.isfinite(e.value) for e in events)
        hist = ea.Histograms(f"gan_monitor/{layer}/unit_iou")
        assert [h.step for h in hist] == expected_steps
        units = 16 if layer == "layer1" else 8
        assert all(h.histogram_value.num == units for h in hist)
        for name in ("units_per_concept", "top_units"):
            imgs = ea.Images(f"gan_monitor/{layer}/{name}")
            assert [i.step for i in imgs] == expected_steps
            for i in imgs:
                pic = Image.open(io.BytesIO(i.encoded_image_string))
                pic.load()
                assert pic.size == (i.width, i.height) and pic.width > 10
        texts = ea.Tensors(f"gan_monitor/{layer}/interpretable_units_table/text_summary")
        assert [t.step for t in texts] == expected_steps
        assert layer in texts[-1].tensor_proto.string_val[0].decode()
        # the logged numbers are the history's, which are dissect()'s summaries
        last = ea.Scalars(f"gan_monitor/{layer}/interpretable_units")[-1].value
        assert last == mon.history[-1]["layers"][layer]["interpretable_units"]
    from tensorboard.plugins.custom_scalar import layout_pb2

    layout = layout_pb2.Layout()
    layout.ParseFromString(ea.Tensors("custom_scalars__config__")[0].tensor_proto.string_val[0])
    charts = {chart.title: list(chart.multiline.tag) for cat in layout.category for chart in cat.chart}
    assert charts["interpretable units"] == ["gan_monitor/layer1/interpretable_units",
                                             "gan_monitor/layer2/interpretable_units"]
    assert charts["layer2: interpretable units per category"] == [
        "gan_monitor/layer2/interpretable_color", "gan_monitor/layer2/interpretable_material"]
    assert all(tag in tags["scalars"] for tags_ in charts.values() for tag in tags_)
    # Lightning's own metric shares the x-axis: batches 0..5 logged at steps 0..5
    assert [e.step for e in ea.Scalars("g_loss")] == list(range(6))


def test_logged_result_equals_direct_dissection():
    from gan_monitor.core.inputs import make_inputs
    from gan_monitor.dissection.pipeline import dissect

    mon = monitor(every_n_steps=None, every_n_epochs=1, on_train_start=False)
    model = TinyGAN()
    trainer(callbacks=[mon], max_epochs=1).fit(model)
    inputs = make_inputs(model.generator, N_HELD_OUT, 3)
    direct = dissect(model.generator, ["layer1", "layer2"], ColorSegmenter(), inputs=inputs,
                     batch_size=8, topk=2)
    for layer in ("layer1", "layer2"):
        torch.testing.assert_close(mon.last_result[layer].iou, direct[layer].iou)
        assert mon.last_result[layer].summary == direct[layer].summary


def test_training_bit_identical_with_and_without_monitor():
    weights = []
    for callbacks in ([], [monitor(every_n_steps=1)]):
        pl.seed_everything(7, verbose=False)
        model = TinyGAN()
        trainer(callbacks=callbacks).fit(model)
        weights.append({k: v.clone() for k, v in model.generator.state_dict().items()})
        if callbacks:
            assert len(callbacks[0].history) == 7 and callbacks[0].failures == 0
    assert weights[0].keys() == weights[1].keys()
    for k in weights[0]:  # includes BatchNorm running statistics
        assert torch.equal(weights[0][k], weights[1][k]), k


def test_resume_dissects_the_same_samples_and_logs_no_step_twice(tmp_path):
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import TensorBoardLogger

    def run(max_epochs, root, ckpt_path=None, checkpoint=False):
        mon = monitor(every_n_steps=None, every_n_epochs=1)
        cbs = [mon]
        if checkpoint:
            cbs.append(ModelCheckpoint(dirpath=root / "ckpt", save_top_k=-1, every_n_epochs=1))
        logger = TensorBoardLogger(str(root), name="tb", version=0)
        pl.seed_everything(1, verbose=False)
        trainer(root, cbs, logger=logger, max_epochs=max_epochs,
                enable_checkpointing=checkpoint).fit(TinyGAN(z_from_step=True), ckpt_path=ckpt_path)
        return mon, logger.log_dir

    continuous, _ = run(4, tmp_path / "a")
    first, log_dir = run(2, tmp_path / "b", checkpoint=True)
    ckpt = sorted((tmp_path / "b" / "ckpt").glob("*.ckpt"))[-1]
    resumed, log_dir2 = run(4, tmp_path / "b", ckpt_path=str(ckpt))
    assert log_dir == log_dir2
    steps = [h["step"] for h in continuous.history]
    assert steps == [0, 3, 6, 9, 12]
    assert [h["step"] for h in first.history] == steps[:3]
    assert [h["step"] for h in resumed.history] == steps  # history restored + continued
    def numbers(history):
        return [{k: v for k, v in h.items() if k != "seconds"} for h in history]

    assert numbers(resumed.history) == numbers(continuous.history)
    for layer in ("layer1", "layer2"):
        torch.testing.assert_close(resumed.last_result[layer].iou, continuous.last_result[layer].iou,
                                   rtol=0, atol=0)
        events = read_events(log_dir).Scalars(f"gan_monitor/{layer}/mean_iou")
        assert [e.step for e in events] == steps, "a step was logged twice or skipped"


def test_csv_logger_gets_scalars_and_one_warning(tmp_path):
    from lightning.pytorch.loggers import CSVLogger

    logger = CSVLogger(str(tmp_path), name="csv", version=0)
    mon = monitor()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer(tmp_path, [mon], logger=logger).fit(TinyGAN())
    assert mon.failures == 0, [str(w.message) for w in caught]
    image_warnings = [w for w in caught if "cannot show images" in str(w.message)]
    assert len(image_warnings) == 1 and "CSVLogger" in str(image_warnings[0].message)
    import csv

    with open(f"{logger.log_dir}/metrics.csv") as f:
        rows = list(csv.DictReader(f))
    col = "gan_monitor/layer2/interpretable_units"
    logged = [(int(r["step"]), float(r[col])) for r in rows if r.get(col)]
    assert [s for s, _ in logged] == [0, 2, 4, 6]
    assert all(v >= 0 and math.isfinite(v) for _, v in logged)


def test_failing_segmenter_warns_once_and_training_completes():
    mon = monitor(segmenter=BrokenSegmenter())
    model = TinyGAN()
    with pytest.warns(UserWarning, match="segmenter exploded") as record:
        t = trainer(callbacks=[mon])
        t.fit(model)
    assert sum("dissection at step" in str(w.message) for w in record) == 1
    assert mon.failures == 4 and mon.history == [] and t.current_epoch == 2
    assert model.generator.training  # modes restored after the failure
    with pytest.raises(RuntimeError, match="segmenter exploded"):
        trainer(callbacks=[monitor(segmenter=BrokenSegmenter(), strict=True)]).fit(TinyGAN())


def test_unknown_layer_fails_before_training_and_lists_layers():
    model = TinyGAN()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=r"layer3.*Available layers:.*layer2"):
        trainer(callbacks=[monitor(layers=["layer2", "layer3"])]).fit(model)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with pytest.raises(AttributeError, match="g_ema"):
        trainer(callbacks=[monitor(generator="g_ema")]).fit(TinyGAN())


@pytest.mark.parametrize("kwargs, match", [
    (dict(layers=[]), "non-empty"),
    (dict(layers=["layer1", "layer1"]), "twice"),
    (dict(every_n_steps=0), "every_n_steps"),
    (dict(every_n_steps=None, every_n_epochs=None, on_train_start=False), "nothing is scheduled"),
    (dict(threshold="median"), "threshold"),
    (dict(iou="mean"), "iou"),
    (dict(cutoff=2.0), "cutoff"),
    (dict(n=0), "n must"),
    (dict(generator=3), "generator"),
    (dict(segmenter=object()), "not a segmenter"),
    (dict(dissect_options={"quantile": 0.1}), "not extra arguments"),
    (dict(dissect_options=[1]), "dissect_options"),
])
def test_bad_arguments_are_rejected_in_init(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        monitor(**kwargs)


def test_fast_dev_run_and_state_keys():
    mon = monitor(every_n_steps=1)
    trainer(callbacks=[mon], fast_dev_run=2).fit(TinyGAN())
    assert mon.history == [] and mon.batches_seen >= 1  # batches ran, nothing dissected
    a, b = monitor(), monitor(layers=["layer2"])
    assert a.state_key != b.state_key and a.state_key == monitor().state_key
    assert monitor(threshold=IQR(n=8)).state_key != a.state_key
    t = trainer(callbacks=[a, b], max_epochs=1)
    t.fit(TinyGAN())
    assert len(a.history) == len(b.history) == 2 and list(b.last_result.layers) == ["layer2"]


class ForeignGAN(pl.LightningModule):
    """A generator under another name that takes (z, class label) as a dict."""

    class Conditional(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(3, LATENT)
            self.body = TinyGenerator()

        def forward(self, z, label):
            return self.body(z + self.embed(label))

    def __init__(self):
        super().__init__()
        self.nets = nn.ModuleDict({"g_ema": self.Conditional()})

    def train_dataloader(self):
        return torch.utils.data.DataLoader(torch.zeros(4, 1), batch_size=2)

    def training_step(self, batch, batch_idx):
        return self.nets["g_ema"].body.layer1[0].weight.sum() * 0 + batch.sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def test_callable_generator_and_input_fn():
    def input_fn(n, generator):
        return {"z": torch.randn(n, LATENT, generator=generator),
                "label": torch.randint(0, 3, (n,), generator=generator)}

    mon = monitor(generator=lambda m: m.nets["g_ema"], input_fn=input_fn, every_n_steps=None,
                  every_n_epochs=1, layers=["body.layer2"])
    trainer(callbacks=[mon], max_epochs=1).fit(ForeignGAN())
    assert [h["step"] for h in mon.history] == [0, 2]
    assert mon.last_result["body.layer2"].num_units == 8


def test_pytorch_lightning_flavour():
    import pytorch_lightning as ptl

    from gan_monitor.callbacks.dissection_monitor import DissectionMonitorPL

    mon = DissectionMonitorPL(["layer2"], ColorSegmenter(), n=16, seed=0, batch_size=8,
                              every_n_steps=3, pictures=PictureOptions(top_units=2, top_images=2))
    assert isinstance(mon, ptl.Callback) and not isinstance(mon, pl.Callback)
    model = make_gan_class(ptl.LightningModule)()
    ptl.Trainer(max_epochs=1, accelerator="cpu", callbacks=[mon], logger=False,
                enable_checkpointing=False, enable_progress_bar=False,
                enable_model_summary=False).fit(model)
    assert [h["step"] for h in mon.history] == [0, 3]


def test_held_out_sample_rebuilds_from_state_and_detects_changes():
    from gan_monitor.core.held_out import HeldOutSample

    g = TinyGenerator()
    first = HeldOutSample(5, 3)
    rng = torch.get_rng_state()
    a = first.inputs(g, "cpu")
    assert torch.equal(rng, torch.get_rng_state()), "the global RNG was used"
    assert a.shape == (5, LATENT) and first.inputs(g, "cpu") is a  # drawn once
    resumed = HeldOutSample(7, 9)  # constructor values are overridden by the checkpoint
    resumed.load_state_dict(first.state_dict())
    assert torch.equal(resumed.inputs(g, "cpu"), a) and resumed.checksum == first.checksum
    changed = HeldOutSample(5, 3, input_fn=lambda n, gen: torch.zeros(n, LATENT))
    changed.load_state_dict(first.state_dict())
    with pytest.warns(UserWarning, match="differ"):
        changed.inputs(g, "cpu")

