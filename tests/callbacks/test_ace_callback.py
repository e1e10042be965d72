"""DissectionMonitor's causal-effect option (``ace=AceOptions(...)``) in a real Lightning run,
and the schedule on its own with a MonitorContext."""
from __future__ import annotations

import pytest
import torch
from support import RecordingLogger
from test_callback import ColorSegmenter, TinyGAN, monitor, trainer

from gan_monitor.callbacks.ace import AceOptions, AceSchedule
from gan_monitor.core.inputs import index_inputs
from gan_monitor.interventions.ace import ace


def test_ace_logged_every_epoch_matches_direct_measurement(tmp_path):
    from lightning.pytorch.loggers import CSVLogger

    logger = CSVLogger(str(tmp_path), name="csv", version=0)
    mon = monitor(ace=AceOptions(["red", "blue"], every_n_epochs=1, on_save=False, top_n=4, n=8))
    # Seeded: with some initialisations the tiny generator paints no blue at all, and a
    # concept absent from every image is (correctly) left out of the metrics.
    torch.manual_seed(5)
    model = TinyGAN()
    trainer(tmp_path, [mon], logger=logger).fit(model)
    assert mon.ace.failures == 0 and [h["step"] for h in mon.ace.history] == [3, 6]
    metrics = mon.ace.history[-1]["metrics"]
    key = "gan_monitor/layer2/ace/red/iou_top4_removed"
    assert key in metrics and "gan_monitor/layer1/ace/blue/iou_top4_removed" in metrics
    # the same number measured directly on the final generator and dissection
    gen = model.generator
    units = torch.argsort(mon.last_result["layer2"].iou[:, 1], descending=True, stable=True)[:4].tolist()
    inputs = index_inputs(mon.sample.inputs(gen, "cpu"), torch.arange(8))
    direct = ace(gen, "layer2", units, "red", segmenter=ColorSegmenter(), inputs=inputs)
    assert metrics[key] == pytest.approx(direct.fraction_removed, abs=1e-6)
    logged = (tmp_path / "csv" / "version_0" / "metrics.csv").read_text()
    assert key in logged


def test_ace_at_checkpoint_saves(tmp_path):
    from lightning.pytorch.callbacks import ModelCheckpoint

    mon = monitor(ace=AceOptions("green", top_n=3, n=8))
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_top_k=-1, every_n_epochs=1)
    trainer(tmp_path, [mon, ckpt], enable_checkpointing=True).fit(TinyGAN())
    assert len(mon.ace.history) == 2
    # each checkpoint holds the evaluations up to and including the one run while saving it
    files = sorted((tmp_path / "ckpt").glob("*.ckpt"), key=lambda f: f.stat().st_mtime)
    saved = [torch.load(f, weights_only=True)["callbacks"][mon.state_key]["ace"]["history"] for f in files]
    assert saved == [mon.ace.history[:1], mon.ace.history]
    assert all(set(h["metrics"]) <= {f"gan_monitor/{l}/ace/green/iou_top3_removed" for l in ("layer1", "layer2")}
               for h in mon.ace.history)


def test_ace_option_errors():
    with pytest.raises(ValueError, match="not concepts of the segmenter; known: red, green, blue"):
        monitor(ace=AceOptions(["tree"]))
    with pytest.raises(TypeError, match="unexpected keyword argument 'topn'"):
        AceOptions(["red"], topn=3)
    with pytest.raises(TypeError, match="probabilities"):
        monitor(ace=AceOptions(["red"], causal=True))
    with pytest.raises(ValueError, match="never evaluated"):
        AceOptions(["red"], on_save=False)
    assert not monitor().ace.enabled


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(concepts=[]), ValueError, r"AceOptions\(concepts\) must name at least one concept"),
    (dict(concepts=["red", 3]), ValueError, r"AceOptions\(concepts\)"),
    (dict(top_n=0), ValueError, r"AceOptions\(top_n\) must be a positive integer"),
    (dict(n=1.5), ValueError, r"AceOptions\(n\) must be a positive integer"),
    (dict(every_n_epochs=0), ValueError, r"AceOptions\(every_n_epochs\) must be a positive integer or None"),
    (dict(on_save=1), TypeError, r"AceOptions\(on_save\) must be True or False"),
    (dict(causal="yes"), TypeError, r"AceOptions\(causal\) must be True or False"),
])
def test_ace_options_reject_bad_values_naming_the_field(kwargs, error, match):
    with pytest.raises(error, match=match):
        AceOptions(**{"concepts": ["red"], **kwargs})


def test_legacy_ace_keywords_warn_and_give_the_same_options():
    with pytest.warns(FutureWarning, match=r"ace=AceOptions\(concepts=\('red',\), top_n=3, causal=True\)"):
        legacy = monitor(segmenter=SoftColorSegmenter(), ace_concepts="red", ace_options={"top_n": 3, "causal": True})
    assert legacy.ace.options == AceOptions(["red"], top_n=3, causal=True)
    with pytest.raises(ValueError, match="unknown ace_options"):
        monitor(ace_concepts=["red"], ace_options={"topn": 3})
    with pytest.raises(ValueError, match="use ace= only"):
        monitor(ace=AceOptions(["red"]), ace_concepts=["red"])


class SoftColorSegmenter(ColorSegmenter):
    """ColorSegmenter with differentiable probabilities (a sharp softmax over the channels)."""

    def probabilities(self, images):
        p = torch.softmax(images * 20, dim=1)
        return torch.cat([torch.zeros_like(p[:, :1]), p], 1)


def test_causal_option_logged_and_state_survives_checkpoints(tmp_path):
    from gan_monitor.core.inputs import default_input_fn, make_inputs
    from gan_monitor.interventions.causal_units import causal_units

    seg = SoftColorSegmenter()
    mon = monitor(segmenter=seg, ace=AceOptions(["red"], every_n_epochs=1, on_save=False, top_n=3, n=8, causal=True))
    torch.manual_seed(5)
    model = TinyGAN()
    trainer(tmp_path, [mon]).fit(model)
    assert mon.ace.failures == 0 and [h["step"] for h in mon.ace.history] == [3, 6]
    metrics = mon.ace.history[-1]["metrics"]
    key = "gan_monitor/layer2/ace/red/causal_top3_removed"
    assert key in metrics and "gan_monitor/layer1/ace/red/iou_top3_removed" in metrics
    # the same number directly: optimised on seed + 1 images, evaluated on the held-out ones
    gen, dissection = model.generator, mon.last_result["layer2"]
    cu = causal_units(gen, "layer2", "red", segmenter=seg, inputs=make_inputs(gen, 8, mon.sample.seed + 1),
                      seed=mon.sample.seed + 1, input_fn=default_input_fn(gen), dissection=dissection, top_n=3,
                      evaluate=False, epochs=1, batch_size=8)
    inputs = index_inputs(mon.sample.inputs(gen, "cpu"), torch.arange(8))
    assert metrics[key] == pytest.approx(ace(gen, "layer2", cu.ranking[:3], "red", segmenter=seg,
                                             inputs=inputs).fraction_removed, abs=1e-6)
    # state: plain values through torch.save / torch.load(weights_only=True)
    path = tmp_path / "ace_state.pt"
    mon.ace.failures = 1
    torch.save(mon.ace.state_dict(), path)
    fresh = AceSchedule(AceOptions(["red"], causal=True), monitor(segmenter=seg).context)
    fresh.load_state_dict(torch.load(path, weights_only=True))
    assert fresh.history == mon.ace.history and fresh.last_step == 6 and fresh.failures == 1
    fresh.load_state_dict(None)  # a checkpoint without this state
    assert fresh.history == [] and fresh.last_step is None and fresh.failures == 0


def test_schedule_runs_with_a_context_and_no_monitor():
    """AceSchedule sees only a MonitorContext: here one built from a generator, a held-out
    sample and a dissection, with a stand-in trainer; no DissectionMonitor exists."""
    from types import SimpleNamespace

    from test_callback import TinyGenerator

    from gan_monitor.callbacks.context import MonitorContext
    from gan_monitor.core.held_out import HeldOutSample
    from gan_monitor.dissection.pipeline import dissect

    torch.manual_seed(5)
    generator = TinyGenerator()
    module = SimpleNamespace(nets=SimpleNamespace(g=generator), device=torch.device("cpu"))
    sample = HeldOutSample(16, 3)
    inputs = sample.inputs(generator, "cpu")
    result = dissect(generator, ["layer2"], ColorSegmenter(), inputs=inputs, batch_size=8, topk=2)
    context = MonitorContext(layers=("layer2",), segmenter=ColorSegmenter(), sample=sample,
                             resolve_generator=lambda m: m.nets.g, batches_seen=lambda: 7,
                             latest_dissection=lambda: result, batch_size=8)
    schedule = AceSchedule(AceOptions(["red", "green"], top_n=2, n=8), context)
    logger = RecordingLogger()
    trainer = SimpleNamespace(loggers=[logger], current_epoch=0)  # no fit loop: the step is batches_seen
    schedule.on_save(trainer, module)
    schedule.on_save(trainer, module)  # a second file saved at the same step: evaluated once
    (step, metrics), = logger.logged
    assert step == 7 and schedule.history == [{"step": 7, "metrics": metrics}]
    for c, concept in ((1, "red"), (2, "green")):
        units = torch.argsort(result["layer2"].iou[:, c], descending=True, stable=True)[:2].tolist()
        direct = ace(generator, "layer2", units, concept, segmenter=ColorSegmenter(),
                     inputs=index_inputs(inputs, torch.arange(8)))
        assert metrics[f"gan_monitor/layer2/ace/{concept}/iou_top2_removed"] == pytest.approx(
            direct.fraction_removed, abs=1e-6)
