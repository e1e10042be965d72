"""DissectionMonitor's causal-effect option (ace_concepts) in a real Lightning run."""
from __future__ import annotations

import pytest
import torch

from gan_monitor.core.inputs import index_inputs
from gan_monitor.interventions.ace import ace
from test_callback import ColorSegmenter, TinyGAN, monitor, trainer


def test_ace_logged_every_epoch_matches_direct_measurement(tmp_path):
    from lightning.pytorch.loggers import CSVLogger

    logger = CSVLogger(str(tmp_path), name="csv", version=0)
    mon = monitor(ace_concepts=["red", "blue"], ace_options={"every_n_epochs": 1, "on_save": False, "top_n": 4,
                                                              "n": 8})
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

    mon = monitor(ace_concepts="green", ace_options={"top_n": 3, "n": 8})
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
        monitor(ace_concepts=["tree"])
    with pytest.raises(ValueError, match="unknown ace_options"):
        monitor(ace_concepts=["red"], ace_options={"topn": 3})
    with pytest.raises(TypeError, match="probabilities"):
        monitor(ace_concepts=["red"], ace_options={"causal": True})
    with pytest.raises(ValueError, match="never evaluated"):
        monitor(ace_concepts=["red"], ace_options={"on_save": False})
    assert not monitor().ace.enabled


class SoftColorSegmenter(ColorSegmenter):
    """ColorSegmenter with differentiable probabilities (a sharp softmax over the channels)."""

    def probabilities(self, images):
        p = torch.softmax(images * 20, dim=1)
        return torch.cat([torch.zeros_like(p[:, :1]), p], 1)


def test_causal_option_logged_and_state_survives_checkpoints(tmp_path):
    from gan_monitor.callbacks.ace import AceSchedule
    from gan_monitor.interventions.causal_units import causal_units
    from gan_monitor.core.inputs import make_inputs

    seg = SoftColorSegmenter()
    mon = monitor(segmenter=seg, ace_concepts=["red"],
                  ace_options={"every_n_epochs": 1, "on_save": False, "top_n": 3, "n": 8, "causal": True})
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
                      seed=mon.sample.seed + 1, dissection=dissection, top_n=3, evaluate=False, epochs=1,
                      batch_size=8)
    inputs = index_inputs(mon.sample.inputs(gen, "cpu"), torch.arange(8))
    assert metrics[key] == pytest.approx(ace(gen, "layer2", cu.ranking[:3], "red", segmenter=seg,
                                             inputs=inputs).fraction_removed, abs=1e-6)
    # state: plain values through torch.save / torch.load(weights_only=True)
    path = tmp_path / "ace_state.pt"
    mon.ace.failures = 1
    torch.save(mon.ace.state_dict(), path)
    fresh = AceSchedule(monitor(segmenter=seg), ["red"], causal=True)
    fresh.load_state_dict(torch.load(path, weights_only=True))
    assert fresh.history == mon.ace.history and fresh.last_step == 6 and fresh.failures == 1
    fresh.load_state_dict(None)  # a checkpoint without this state
    assert fresh.history == [] and fresh.last_step is None and fresh.failures == 0
