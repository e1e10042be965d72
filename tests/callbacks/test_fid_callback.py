"""Per-unit FID and the artifact ablation inside DissectionMonitor (gan_monitor.callbacks.unit_fid):
a tiny toy GAN trained with TensorBoard and checkpoints, the logged values against
direct gan_monitor.fid.unit_fid calls on the same held-out inputs, schedules, failures, arguments."""
from __future__ import annotations

import io
import math

import lightning.pytorch as pl
import pytest
import torch
from PIL import Image
from support import RecordingLogger
from torch import nn

from gan_monitor.callbacks.context import PictureOptions
from gan_monitor.callbacks.dissection_monitor import DissectionMonitor
from gan_monitor.callbacks.unit_fid import UnitFIDOptions
from gan_monitor.core.inputs import make_inputs
from gan_monitor.fid.features import ModuleFeatures, RealStats
from gan_monitor.fid.unit_fid import artifact_ablation, per_unit_fid_layers
from gan_monitor.toyworld.gan import ToyGAN

torch.set_num_threads(1)

TINY = dict(latent_dim=16, image_size=32, g_channels=(32, 16, 8), d_channels=(8, 16, 32),
            batch_size=4, num_scenes=12)  # 3 batches per epoch; layer2: 16 units, layer3: 8 units
N, SEED, K = 40, 5, 10
LAYERS = ["layer2", "layer3"]


class ColorSegmenter:
    """Labels every pixel by its dominant colour channel (cheap; independent of the toy world)."""

    concepts = ["-", "red", "green", "blue"]
    categories = ["-", "color", "color", "color"]

    def segment(self, images):
        return images.argmax(dim=1) + 1


def pooled_extractor():
    """12-d features: 2x2 average pooling of the RGB image (small d, so few real images suffice)."""
    return ModuleFeatures(nn.Sequential(nn.AdaptiveAvgPool2d(2), nn.Flatten()), name="avgpool2x2")


@pytest.fixture(scope="module")
def real_stats():
    from gan_monitor.toyworld.scenes import render_scenes

    scenes, _ = render_scenes(60, seed=21, size=32)
    return RealStats.from_images(scenes.split(30), pooled_extractor(), source="toy scenes n=60")


class RaisingExtractor:
    name = "avgpool2x2"

    def __call__(self, images):
        raise RuntimeError("extractor exploded")


def fid_options(stats, **kw):
    return UnitFIDOptions(**{"real_stats": stats, "extractor": pooled_extractor(), "k": K, "every_n_steps": 2, **kw})


def monitor(stats, fid=None, **kw):
    """The tests' monitor; ``fid``: changes to the UnitFIDOptions (per-unit FID every 2nd batch)."""
    args = dict(n=N, seed=SEED, batch_size=20, pictures=PictureOptions(top_units=2, top_images=2),
                every_n_steps=None, every_n_epochs=1, on_train_start=False,
                unit_fid=fid_options(stats, **(fid or {})))
    args.update(kw)
    return DissectionMonitor(args.pop("layers", LAYERS), ColorSegmenter(), **args)


def fit(callbacks, root=None, logger=False, checkpoint=False, max_epochs=2):
    pl.seed_everything(0, verbose=False)
    model = ToyGAN(**TINY)
    pl.Trainer(max_epochs=max_epochs, accelerator="cpu", callbacks=list(callbacks), logger=logger,
               enable_checkpointing=checkpoint, enable_progress_bar=False, enable_model_summary=False,
               log_every_n_steps=1, default_root_dir=root).fit(model)
    return model


def read_events(log_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(log_dir), size_guidance={k: 0 for k in (
        "compressedHistograms", "images", "audio", "scalars", "histograms", "tensors")})
    ea.Reload()
    return ea


def test_toygan_logs_unit_fid_and_ablation_at_checkpoints(tmp_path, real_stats):
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    logger = TensorBoardLogger(str(tmp_path), name="tb", version=0)
    csv_logger = CSVLogger(str(tmp_path), name="csv", version=0)
    mon = monitor(real_stats, fid=dict(artifact_ablation_on_save=True, artifact_units=3, random_draws=2))
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_top_k=-1, every_n_epochs=1)
    with pytest.warns(UserWarning, match="CSVLogger cannot show images"):
        model = fit([mon, ckpt], tmp_path, logger=[logger, csv_logger], checkpoint=True)  # 2 epochs x 3 batches
    assert mon.failures == 0 and mon.unit_fid.failures == 0
    assert len(list((tmp_path / "ckpt").glob("*.ckpt"))) == 2
    ea = read_events(logger.log_dir)
    fid_steps, save_steps = [2, 4, 6], [3, 6]  # every 2nd batch; checkpoints at the ends of epochs
    assert mon.unit_fid.steps == fid_steps and mon.unit_fid.ablation_steps == save_steps
    assert [h["step"] for h in mon.history] == save_steps  # dissections (epoch ends) unaffected

    # the logged numbers are those of a direct computation on the same held-out inputs
    inputs = make_inputs(model.generator, N, SEED)
    direct = per_unit_fid_layers(model.generator, LAYERS, k=K, real_stats=real_stats, extractor=pooled_extractor(),
                                 inputs=inputs, batch_size=7)
    for layer, units in (("layer2", 16), ("layer3", 8)):
        fid = direct[layer].fid
        torch.testing.assert_close(mon.unit_fid.fids[layer], fid, rtol=1e-9, atol=1e-9)
        hist = ea.Histograms(f"gan_monitor/{layer}/unit_fid")
        assert [h.step for h in hist] == fid_steps
        last = hist[-1].histogram_value
        assert last.num == units and math.isclose(last.min, float(fid.min()), rel_tol=1e-9)
        assert math.isclose(last.max, float(fid.max()), rel_tol=1e-9)
        assert math.isclose(last.sum, float(fid.sum()), rel_tol=1e-9)
        for name, value in (("fid_max", fid.max()), ("fid_median", fid.median())):
            events = ea.Scalars(f"gan_monitor/{layer}/{name}")
            assert [e.step for e in events] == fid_steps
            assert math.isclose(events[-1].value, float(value), rel_tol=1e-5)
        images = ea.Images(f"gan_monitor/{layer}/artifact_units")
        assert [i.step for i in images] == fid_steps
        pic = Image.open(io.BytesIO(images[-1].encoded_image_string))
        pic.load()
        assert pic.size == (images[-1].width, images[-1].height) and pic.height > 2 * 32  # 2 unit rows

        # the three ablation values; the last save used the FIDs of batch 6 = the final generator
        top3 = torch.argsort(fid, descending=True, stable=True)[:3].tolist()
        table = artifact_ablation(model.generator, layer, top3, real_stats=real_stats, extractor=pooled_extractor(),
                                  inputs=inputs, n_random_draws=2, random_seed=SEED, batch_size=13)
        assert math.isclose(table.before, direct[layer].pool_fid, rel_tol=1e-9)  # unchanged = whole pool
        for name, value in (("before", table.before), ("artifacts_ablated", table.ablated),
                            ("random_ablated", table.random_mean)):
            events = ea.Scalars(f"gan_monitor/{layer}/fid_{name}")
            assert [e.step for e in events] == save_steps
            assert all(math.isfinite(e.value) for e in events)
            assert math.isclose(events[-1].value, value, rel_tol=1e-5), (layer, name)
        assert mon.unit_fid.last_ablation[layer].units == top3
        texts = ea.Tensors(f"gan_monitor/{layer}/artifact_ablation/text_summary")
        assert [t.step for t in texts] == save_steps
        assert "3 artifact units ablated" in texts[-1].tensor_proto.string_val[0].decode()

    # scalars reach every logger
    import csv

    with open(f"{csv_logger.log_dir}/metrics.csv") as f:
        rows = list(csv.DictReader(f))
    for name, steps in (("fid_max", fid_steps), ("fid_artifacts_ablated", save_steps)):
        col = f"gan_monitor/layer3/{name}"
        assert [int(r["step"]) for r in rows if r.get(col)] == steps

    # the checkpoint keeps the FIDs' step and values (small), and loads with weights_only
    saved = torch.load(sorted((tmp_path / "ckpt").glob("*.ckpt"))[-1], weights_only=True)
    (state,) = [v for k, v in saved["callbacks"].items() if k.startswith("DissectionMonitor")]
    assert state["unit_fid"]["last_step"] == 6 and state["unit_fid"]["last_batches"] == 6
    resumed = monitor(real_stats)
    resumed.load_state_dict(state)
    torch.testing.assert_close(resumed.unit_fid.fids["layer3"], direct["layer3"].fid)


def test_epoch_schedule_and_unrealistic_unit_filter(real_stats):
    mon = monitor(real_stats, every_n_steps=2, fid=dict(every_n_steps=None, every_n_epochs=1,
                                                        layers=LAYERS + ["layer1"], max_unit_fid=1e-9))
    fit([mon])
    assert mon.unit_fid.steps == [3, 6] and mon.unit_fid.layers == LAYERS + ["layer1"]
    # dissections at batches 2, 4, 6: before the first FIDs no filter; after, every unit's FID > 1e-9
    assert [h["step"] for h in mon.history] == [2, 4, 6]
    assert [h["unit_fid_step"] for h in mon.history] == [None, 3, 3]
    for layer in LAYERS:
        assert "unrealistic" in mon.last_result[layer].extras
        assert all(mon.last_result[layer].extras["unrealistic"])
        assert mon.history[-1]["layers"][layer]["interpretable_units"] == 0
        assert mon.last_result[layer].settings["max_unit_fid"] == 1e-9


def test_training_bit_identical_with_fid_and_one_ablation_per_save_step(tmp_path, real_stats):
    from lightning.pytorch.callbacks import ModelCheckpoint

    def run(with_monitor):
        mon = monitor(real_stats, fid=dict(every_n_steps=1, artifact_ablation_on_save=True, artifact_units=2,
                                           random_draws=1))
        ckpt = ModelCheckpoint(dirpath=tmp_path / str(with_monitor), save_top_k=-1, every_n_epochs=1, save_last=True)
        model = fit([mon, ckpt] if with_monitor else [ckpt], tmp_path, checkpoint=True)
        return mon, {k: v.clone() for k, v in model.generator.state_dict().items()}

    mon, weights = run(True)
    _, plain = run(False)
    assert mon.unit_fid.steps == [1, 2, 3, 4, 5, 6] and mon.unit_fid.ablation_steps == [3, 6]  # once per step
    assert weights.keys() == plain.keys()
    assert all(torch.equal(weights[k], plain[k]) for k in weights), "the monitor changed training"


def test_failing_extractor_warns_once_and_strict_raises(real_stats):
    mon = monitor(real_stats, fid=dict(extractor=RaisingExtractor()))
    with pytest.warns(UserWarning, match="extractor exploded") as record:
        fit([mon])
    assert sum("per-unit FID at step" in str(w.message) for w in record) == 1
    assert mon.unit_fid.failures == 3 and mon.unit_fid.fids == {} and mon.unit_fid.steps == []
    assert mon.failures == 0 and [h["step"] for h in mon.history] == [3, 6]  # dissections still ran
    with pytest.raises(RuntimeError, match="extractor exploded"):
        fit([monitor(real_stats, fid=dict(extractor=RaisingExtractor()), strict=True)])


def test_unusable_real_stats_fail_in_setup(real_stats):
    other = RealStats(real_stats.mean, real_stats.cov, real_stats.count, "another-extractor")
    with pytest.raises(ValueError, match="another-extractor"):
        fit([monitor(other)])
    with pytest.raises(ValueError, match=r"UnitFIDOptions\(layers\) 'layer9'"):
        fit([monitor(real_stats, fid=dict(layers=["layer9"]))])


@pytest.mark.parametrize("kwargs, match", [
    (dict(real_stats="stats.pt"), r"UnitFIDOptions\(real_stats\) must be a .*RealStats"),
    (dict(every_n_steps=None), "not scheduled"),
    (dict(every_n_steps=0), r"UnitFIDOptions\(every_n_steps\) must be a positive integer"),
    (dict(every_n_epochs=-1), r"UnitFIDOptions\(every_n_epochs\) must be a positive integer"),
    (dict(k=1), r"UnitFIDOptions\(k\) \(top images per unit\) must be an integer >= 2"),
    (dict(layers=[]), r"UnitFIDOptions\(layers\) must be a non-empty list"),
    (dict(layers=["layer2", "layer2"]), r"UnitFIDOptions\(layers\) must be a non-empty list of distinct"),
    (dict(artifact_units=0), r"UnitFIDOptions\(artifact_units\) must be a positive integer"),
    (dict(random_draws=0), r"UnitFIDOptions\(random_draws\) must be a positive integer"),
    (dict(max_unit_fid=-1.0), r"UnitFIDOptions\(max_unit_fid\) must be a finite number > 0"),
    (dict(artifact_ablation_on_save="yes"), r"UnitFIDOptions\(artifact_ablation_on_save\) must be True or False"),
    (dict(extractor=42), "extractor must be None"),
])
def test_unit_fid_options_reject_bad_values_naming_the_field(real_stats, kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        fid_options(real_stats, **kwargs)


@pytest.mark.parametrize("fid, match", [
    (dict(k=N + 1), "held-out"),
    (dict(max_unit_fid=5.0, layers=["layer2"]), "lacks"),
])
def test_unit_fid_options_checked_against_the_monitor(real_stats, fid, match):
    with pytest.raises(ValueError, match=match):
        monitor(real_stats, fid=fid)


def legacy_monitor(**kw):
    args = dict(n=N, seed=SEED, batch_size=20, top_units=2, top_images=2, every_n_steps=None, every_n_epochs=1,
                on_train_start=False, fid_extractor=pooled_extractor(), fid_k=K, fid_every_n_steps=2)
    args.update(kw)
    return DissectionMonitor(LAYERS, ColorSegmenter(), **args)


@pytest.mark.parametrize("kwargs, match", [
    (dict(fid_real_stats=None, artifact_ablation_on_save=True), "artifact_ablation_on_save need"),
    (dict(fid_real_stats=None, max_unit_fid=5.0), "max_unit_fid need"),
    (dict(fid_real_stats=None, fid_every_n_steps=3), "fid_every_n_steps need"),
    (dict(fid_k=1), r"UnitFIDOptions\(k\)"),
    (dict(max_unit_fid=5.0, dissect_options={"max_unit_fid": 3.0, "unit_fid": {}}), "one or the other"),
])
def test_bad_legacy_fid_keywords_are_rejected_in_init(real_stats, kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        legacy_monitor(**{"fid_real_stats": real_stats, **kwargs})


def test_legacy_fid_keywords_warn_and_give_the_same_options(real_stats):
    extractor = pooled_extractor()
    with pytest.warns(FutureWarning, match=r"unit_fid=UnitFIDOptions\(real_stats=<RealStats>, extractor=<ModuleFeatures>, "
                                           r"k=10, every_n_steps=2, max_unit_fid=5.0, artifact_units=3, "
                                           r"random_draws=2\)"):
        legacy = legacy_monitor(fid_real_stats=real_stats, fid_extractor=extractor, max_unit_fid=5.0,
                                artifact_units=3, artifact_random_draws=2)
    new = monitor(real_stats, fid=dict(extractor=extractor, max_unit_fid=5.0, artifact_units=3, random_draws=2))
    assert legacy.unit_fid.options == new.unit_fid.options and legacy.pictures == new.pictures
    with pytest.raises(ValueError, match="use unit_fid= only"):
        monitor(real_stats, fid_k=3)


def test_schedule_runs_with_a_context_and_no_monitor(real_stats):
    """UnitFIDSchedule sees only a MonitorContext: here one built from a generator and a held-out
    sample, with a stand-in trainer (its loggers) and module; no DissectionMonitor exists."""
    from types import SimpleNamespace

    from gan_monitor.callbacks.context import MonitorContext
    from gan_monitor.callbacks.unit_fid import UnitFIDSchedule
    from gan_monitor.core.held_out import HeldOutSample
    from gan_monitor.dissection.pipeline import dissect

    pl.seed_everything(0, verbose=False)
    generator = ToyGAN(**TINY).generator
    module = SimpleNamespace(g=generator, device=torch.device("cpu"))
    inputs = make_inputs(generator, N, SEED)
    direct = per_unit_fid_layers(generator, LAYERS, k=K, real_stats=real_stats, extractor=pooled_extractor(),
                                 inputs=inputs, batch_size=7)
    max_fid = float(direct["layer2"].fid.median())  # about half of layer2's units are "unrealistic"
    batches = [4]
    context = MonitorContext(layers=tuple(LAYERS), segmenter=ColorSegmenter(), sample=HeldOutSample(N, SEED),
                             resolve_generator=lambda m: m.g, batches_seen=lambda: batches[0], batch_size=20)
    schedule = UnitFIDSchedule(fid_options(real_stats, every_n_steps=4, max_unit_fid=max_fid), context)
    schedule.setup(module)
    logger = RecordingLogger()
    trainer = SimpleNamespace(loggers=[logger], current_epoch=0)  # no fit loop: the step is batches_seen
    assert schedule.exclude_units() is None  # no FIDs yet: nothing left out
    schedule.after_batch(trainer, module)
    batches[0] = 5
    schedule.after_batch(trainer, module)  # not a multiple of every_n_steps
    (step, metrics), = logger.logged
    assert step == 4 and schedule.steps == [4] and schedule.last_batches == 4
    for layer in LAYERS:
        fid = direct[layer].fid
        torch.testing.assert_close(schedule.fids[layer], fid, rtol=1e-9, atol=1e-9)
        assert math.isclose(metrics[f"gan_monitor/{layer}/fid_max"], float(fid.max()), rel_tol=1e-9)
        assert torch.equal(schedule.exclude_units()[layer], fid > max_fid)
    assert 0 < int(schedule.exclude_units()["layer2"].sum()) < 16
    # the monitor's dissections leave those units out and record what was used
    result = dissect(generator, LAYERS, ColorSegmenter(), inputs=inputs, batch_size=20,
                     exclude_units=schedule.exclude_units())
    schedule.annotate(result)
    for layer in LAYERS:
        ld, unrealistic = result[layer], direct[layer].fid > max_fid
        assert ld.extras["unrealistic"] == unrealistic.tolist() and ld.settings["max_unit_fid"] == max_fid
        assert ld.extras["unit_fid"] == direct[layer].fid.tolist()
        assert not (ld.interpretable & unrealistic).any()
def test_feature_off_by_default_adds_no_work():
    mon = DissectionMonitor(LAYERS, ColorSegmenter(), n=8, every_n_steps=None, every_n_epochs=1,
                            on_train_start=False, batch_size=8)  # unit_fid=None: off
    assert not mon.unit_fid.enabled and mon.unit_fid.extractor is None
    assert mon.unit_fid.exclude_units() is None
    assert "UnitFIDOptions" in type(mon).__doc__ and "fixed for the whole run" in type(mon).__doc__
