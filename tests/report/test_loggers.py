"""Training-signal pictures and tables reach W&B (offline mode) and MLflow (local file store),
read back from what they wrote; other loggers get the scalars and one warning."""
from __future__ import annotations

import csv
import json
import re
import warnings

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from PIL import Image
from planted_world import PlantedGenerator, PlantedSegmenter
from torch import nn

from gan_monitor.callbacks.dissection_monitor import DissectionMonitor
from gan_monitor.callbacks.training_signals import SignalOptions
from gan_monitor.core.inputs import make_inputs
from gan_monitor.report.loggers import MediaLogger, logger_kind
from gan_monitor.signals import ConceptStats

KEY = "gan_monitor/signals/concept_js_divergence"


class Module(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.generator = PlantedGenerator()
        self.w = nn.Parameter(torch.zeros(1))

    def training_step(self, batch, batch_idx):
        return (self.w - 1).pow(2).sum()

    def train_dataloader(self):
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.zeros(2, 1)), batch_size=1)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def real_stats():
    g = PlantedGenerator()
    with torch.no_grad():
        maps = PlantedSegmenter(multilabel=True).segment(g(make_inputs(g, 16, 9)))
    return ConceptStats.from_label_maps([maps], PlantedSegmenter.concepts)


def fit(tmp_path, loggers):
    monitor = DissectionMonitor("features", PlantedSegmenter(multilabel=True), every_n_steps=2, n=16, batch_size=16,
                                on_train_start=False, signals=SignalOptions(real_stats=real_stats()))
    pl.Trainer(max_epochs=1, accelerator="cpu", logger=loggers, enable_progress_bar=False, enable_model_summary=False,
               enable_checkpointing=False, log_every_n_steps=1, default_root_dir=str(tmp_path),
               callbacks=[monitor]).fit(Module())
    (entry,) = monitor.history
    return entry


def wandb_records(data: bytes) -> list[bytes]:
    """The records of a W&B run file: a 7-byte header (":W&B", magic, version), then 32 KiB
    blocks of records, each with a 7-byte header (crc32, little-endian length, type: 1 full,
    2 first, 3 middle, 4 last fragment of a record that crosses a block boundary)."""
    block, pos, out, pending = 32768, 7, [], b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # the tail of a block too short for a header is padding
            pos += left
            continue
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        if kind == 0:  # zero padding to the end of the block
            pos += left
            continue
        chunk = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind == 1:
            out.append(chunk)
        elif kind == 2:
            pending = chunk
        elif kind == 3:
            pending += chunk
        elif kind == 4:
            out.append(pending + chunk)
            pending = b""
    return out


def wandb_history(run_file) -> dict[str, str]:
    """``{key: value_json}`` of the history items in a W&B run file (protobuf HistoryItem:
    field 2 ``key``, field 16 ``value_json``), read from the reassembled records (a record
    may be split across blocks)."""
    data = b"".join(wandb_records(run_file.read_bytes()))
    items = {}
    for m in re.finditer(rb"\x12([\x01-\x7f])(gan_monitor/[\x20-\x7e]+?)\x82\x01([\x01-\x7f])", data):
        if len(m.group(2)) == m.group(1)[0]:
            start = m.end()
            items[m.group(2).decode()] = data[start:start + m.group(3)[0]].decode()
    return items


def test_wandb_offline_run_contains_the_pictures_tables_and_scalars(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    from lightning.pytorch.loggers import WandbLogger

    for name, value in {"WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path), "WANDB_SILENT": "true",
                        "WANDB_DISABLE_GIT": "true", "WANDB_CONSOLE": "off"}.items():
        monkeypatch.setenv(name, value)
    logger = WandbLogger(save_dir=str(tmp_path), offline=True, project="gan_monitor_test")
    assert logger_kind(logger) == "wandb"
    entry = fit(tmp_path, [logger])
    logger.experiment.finish()
    (run,) = (tmp_path / "wandb").glob("offline-run-*")
    media = run / "files" / "media"
    assert list((media / "images" / "gan_monitor" / "signals").glob("concept_bars_*.png"))
    (table,) = (media / "table" / "gan_monitor" / "signals").glob("concept_table_*.table.json")
    content = json.loads(table.read_text())
    assert content["columns"][:2] == ["concept", "real_pixels"]
    assert [row[0] for row in content["data"]] == PlantedSegmenter.concepts[1:]
    # the dissection's own pictures and table (not only the training signals')
    layer_media = media / "images" / "gan_monitor" / "features"
    assert Image.open(next(layer_media.glob("units_per_concept_*.png"))).size[0] > 100
    assert Image.open(next(layer_media.glob("top_units_*.png"))).size[1] > 50
    (units,) = (media / "table" / "gan_monitor" / "features").glob("interpretable_units_table_*.table.json")
    content = json.loads(units.read_text())
    assert content["columns"] == ["unit", "concept", "category", "iou", "threshold"]
    assert len(content["data"]) == entry["layers"]["features"]["interpretable_units"]
    assert {row[1] for row in content["data"]} <= set(PlantedSegmenter.concepts)
    history = wandb_history(next(run.glob("run-*.wandb")))
    assert float(history[KEY]) == pytest.approx(entry["signals"]["js_divergence"])
    assert "gan_monitor/signals/pixel_diversity" in history and "gan_monitor/features/interpretable_units" in history


def test_mlflow_file_store_contains_the_pictures_tables_and_scalars(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from lightning.pytorch.loggers import MLFlowLogger

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # mlflow >= 3.7 asks for a database otherwise
    logger = MLFlowLogger(experiment_name="gan_monitor_test", tracking_uri=f"file:{tmp_path / 'mlruns'}")
    assert logger_kind(logger) == "mlflow"
    entry = fit(tmp_path, [logger])
    client, run = logger.experiment, logger.run_id
    (metric,) = client.get_metric_history(run, KEY)
    assert metric.value == pytest.approx(entry["signals"]["js_divergence"]) and metric.step == 2
    artifacts = [a.path for a in client.list_artifacts(run, "gan_monitor/signals/concept_bars")]
    assert artifacts == ["gan_monitor/signals/concept_bars/step_00000002.png"]
    local = client.download_artifacts(run, artifacts[0], str(tmp_path / "down"))
    assert Image.open(local).size[0] > 100
    tables = [a.path for a in client.list_artifacts(run, "gan_monitor/signals/concept_table")]
    local = client.download_artifacts(run, tables[0], str(tmp_path / "down"))
    content = json.loads(open(local).read())
    assert content["step"] == 2 and [row[0] for row in content["data"]] == PlantedSegmenter.concepts[1:]
    # the dissection's own pictures and table
    for name in ("units_per_concept", "top_units"):
        (art,) = [a.path for a in client.list_artifacts(run, f"gan_monitor/features/{name}")]
        assert Image.open(client.download_artifacts(run, art, str(tmp_path / "down"))).size[0] > 100
    (art,) = [a.path for a in client.list_artifacts(run, "gan_monitor/features/interpretable_units_table")]
    content = json.loads(open(client.download_artifacts(run, art, str(tmp_path / "down"))).read())
    assert content["columns"][:2] == ["unit", "concept"] and content["step"] == 2
    assert len(content["data"]) == entry["layers"]["features"]["interpretable_units"]


def test_other_loggers_get_scalars_and_one_warning_tensorboard_gets_everything(tmp_path):
    csv_logger = CSVLogger(str(tmp_path), name="csv")
    tb = TensorBoardLogger(str(tmp_path), name="tb")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        entry = fit(tmp_path, [csv_logger, tb])
    ours = [w for w in caught if "training-signal scalars only" in str(w.message)]
    assert len(ours) == 1 and "CSVLogger" in str(ours[0].message)
    with open(tmp_path / "csv" / "version_0" / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get(KEY)]
    assert float(rows[0][KEY]) == pytest.approx(entry["signals"]["js_divergence"])
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(tb.log_dir, size_guidance={"images": 0, "tensors": 0}).Reload()
    assert "gan_monitor/signals/concept_bars" in events.Tags()["images"]
    assert any(t.startswith("gan_monitor/signals/concept_table") for t in events.Tags()["tensors"])
    assert events.Scalars(KEY)[0].value == pytest.approx(entry["signals"]["js_divergence"], rel=1e-6)
    # a second MediaLogger call to the CSV logger does not warn again
    media = MediaLogger()
    with warnings.catch_warnings(record=True) as again:
        warnings.simplefilter("always")
        media.log([csv_logger], 1, {"x": Image.new("RGB", (2, 2))})
        media.log([csv_logger], 2, {"x": Image.new("RGB", (2, 2))})
    assert len(again) == 1
