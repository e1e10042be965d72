"""Training signals in the DissectionMonitor: callback_metrics drive ModelCheckpoint, history
keeps the signals and marks collapsed dissections."""
from __future__ import annotations

import warnings

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from planted_world import PlantedGenerator, PlantedSegmenter
from torch import nn

from gan_monitor.callbacks.dissection_monitor import DissectionMonitor
from gan_monitor.callbacks.training_signals import SignalOptions
from gan_monitor.core.errors import SignalError
from gan_monitor.core.inputs import make_inputs
from gan_monitor.signals import ConceptStats

TREE = 3  # planted_world's concept index of "tree" (an object: image channel 1)
# share of held-out images whose trees the generator drops, per training batch: the best
# (lowest) divergence from the real images is at batch 4
DROP = [0.9, 0.5, 0.7, 0.3, 0.0, 0.95]


class DroppingGenerator(nn.Module):
    """The planted generator, but the trees of a ``drop`` share of the images are not drawn
    (a sample drops them when its first latent's normal CDF is below ``drop``)."""

    def __init__(self, collapse: bool = False):
        super().__init__()
        self.inner = PlantedGenerator()
        self.latent_dim = self.inner.latent_dim
        self.register_buffer("drop", torch.zeros(()))
        self.collapse = collapse

    def forward(self, z):
        if self.collapse:
            z = z[:1].expand_as(z).contiguous()
        out = self.inner(z).clone()
        gone = (torch.special.ndtr(z[:, 0]) < self.drop).view(-1, 1, 1)
        obj = out[:, 1]
        out[:, 1] = torch.where(gone & ((obj + 1) * 5).round().eq(TREE), torch.full_like(obj, -1.0), obj)
        return out


class ScriptedModule(pl.LightningModule):
    def __init__(self, collapse: bool = False):
        super().__init__()
        self.generator = DroppingGenerator(collapse)
        self.w = nn.Parameter(torch.zeros(1))

    def training_step(self, batch, batch_idx):
        self.generator.drop.fill_(DROP[min(batch_idx + 1, len(DROP) - 1)])  # what the next dissection sees
        return (self.w - 1).pow(2).sum()

    def train_dataloader(self):
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.zeros(5, 1)), batch_size=1)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def real_stats(n=24):
    """"Real" images: the planted generator's own held-out images (the monitor's seed 0), trees and all."""
    g = PlantedGenerator()
    with torch.no_grad():
        maps = PlantedSegmenter(multilabel=True).segment(g(make_inputs(g, n, 0)))
    return ConceptStats.from_label_maps([maps], PlantedSegmenter.concepts, {"segmenter": "PlantedSegmenter"})


def trainer_for(tmp_path, callbacks, **kw):
    return pl.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_progress_bar=False,
                      enable_model_summary=False, callbacks=callbacks, default_root_dir=str(tmp_path), **kw)


def test_model_checkpoint_keeps_the_checkpoint_with_the_lowest_divergence(tmp_path):
    monitor = DissectionMonitor("inner.features", PlantedSegmenter(multilabel=True), every_n_steps=1, n=24,
                                batch_size=24, signals=SignalOptions(real_stats=real_stats()))
    key = "gan_monitor/signals/concept_js_divergence"
    best = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor=key, mode="min", save_top_k=1,
                           every_n_train_steps=1, filename="best-{step}")
    trainer_for(tmp_path, [monitor, best]).fit(ScriptedModule())
    js = {h["batches"]: h["signals"]["js_divergence"] for h in monitor.history if h["batches"] > 0}
    assert sorted(js) == [1, 2, 3, 4, 5]
    assert len(set(round(v, 6) for v in js.values())) == 5  # the script makes them differ
    winner = min(js, key=js.get)
    assert winner == 4 and js[4] == 0.0  # no tree dropped: the same statistics as the real images
    assert best.best_model_score.item() == pytest.approx(js[winner], rel=1e-6)
    assert best.best_model_path.endswith(f"best-step={winner}.ckpt")
    assert [p.name for p in (tmp_path / "ckpt").iterdir()] == ["best-step=4.ckpt"]  # save_top_k=1
    saved = torch.load(best.best_model_path, weights_only=True)
    assert saved["global_step"] == winner
    # the history entry carries the signals, and the monitor's state keeps the unit timeline
    entry = monitor.history[-1]["signals"]
    assert {"diversity", "js_divergence", "ratio", "under_generated", "units"} <= set(entry)
    assert entry["ratio"]["tree"] == 0.0 and entry["ratio"]["sky"] == 1.0  # batch 5: every image loses its trees
    assert entry["under_generated"] == ["tree"]
    assert "signals" in monitor.state_dict() and monitor.state_dict()["signals"]["timeline"]["first_steps"] is not None


def test_a_collapsed_generator_is_warned_about_and_marked(tmp_path):
    monitor = DissectionMonitor("inner.features", PlantedSegmenter(multilabel=True), every_n_steps=5, n=16,
                                batch_size=16, signals=SignalOptions())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer_for(tmp_path, [monitor], enable_checkpointing=False).fit(ScriptedModule(collapse=True))
    assert [h.get("collapsed") for h in monitor.history] == [True, True]
    assert monitor.history[0]["signals"]["diversity"]["pixel_diversity"] == 0.0
    assert sum("nearly identical" in str(w.message) for w in caught) == 1  # warned once
    assert "js_divergence" not in monitor.history[0]["signals"]  # no real statistics given


def test_signal_options_are_checked():
    with pytest.raises(SignalError, match="under_ratio"):
        SignalOptions(under_ratio=-1)
    with pytest.raises(SignalError, match="real_stats"):
        SignalOptions(real_stats=3)
    with pytest.raises(TypeError, match="SignalOptions"):
        DissectionMonitor("inner.features", PlantedSegmenter(), signals={"real_stats": None})


def test_a_failing_signal_warns_and_training_goes_on_strict_raises(tmp_path):
    wrong = ConceptStats(["-", "cat"], [0, 5], [0, 1], 1, 5)  # another segmenter's concepts
    monitor = DissectionMonitor("inner.features", PlantedSegmenter(multilabel=True), every_n_steps=5, n=16,
                                batch_size=16, signals=SignalOptions(real_stats=wrong))
    with pytest.warns(UserWarning, match="training signals at step 0 failed.*segmenter"):
        trainer_for(tmp_path, [monitor], enable_checkpointing=False).fit(ScriptedModule())
    assert len(monitor.history) == 2 and all("signals" not in h for h in monitor.history)
    strict = DissectionMonitor("inner.features", PlantedSegmenter(multilabel=True), every_n_steps=5, n=16,
                               batch_size=16, signals=SignalOptions(real_stats=wrong), strict=True)
    with pytest.raises(SignalError, match="segmenter"):
        trainer_for(tmp_path, [strict], enable_checkpointing=False).fit(ScriptedModule())
