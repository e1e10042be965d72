"""`gan-monitor report`: the HTML parses, its unit cards match the JSON, text is
escaped, a timeline chart appears for several checkpoints, and `compare` tables."""
from __future__ import annotations

import json
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pytest
from toy_checkpoints import ckpts, timeline  # noqa: F401  (module-scoped fixtures)

from gan_monitor.cli.main import main
from gan_monitor.dissection.results import DissectionResult


class _Collect(HTMLParser):
    def __init__(self):
        super().__init__()
        self.cards, self.tags, self.stack_errors, self.images = [], [], 0, []
        self.open: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append(tag)
        if tag not in ("img", "input", "meta", "br", "circle", "rect", "line", "polyline", "option"):
            self.open.append(tag)
        if tag == "div" and "card" in a.get("class", "").split():
            self.cards.append(a)
        if tag == "img":
            self.images.append(a["src"])

    def handle_endtag(self, tag):
        if tag in ("circle", "rect", "line", "polyline", "option"):
            return
        if not self.open or self.open[-1] != tag:
            self.stack_errors += 1
        else:
            self.open.pop()


def _parse(path):
    p = _Collect()
    p.feed(path.read_text(encoding="utf-8"))
    return p


def test_report_matches_json(timeline, capsys):  # noqa: F811
    assert main(["report", str(timeline)]) == 0
    page = timeline / "index.html"
    assert str(page) in capsys.readouterr().out
    p = _parse(page)
    assert p.stack_errors == 0 and not p.open
    late = DissectionResult.from_json(timeline / "late" / "dissection.json")
    for layer, ld in late.items():
        cards = [c for c in p.cards if c["data-layer"] == layer]
        assert len(cards) == ld.num_units
        interp = [c for c in cards if "interpretable" in c["class"].split()]
        assert len(interp) == ld.summary["interpretable_units"]
        by_unit = {int(c["data-unit"]): c for c in cards}
        for u in range(ld.num_units):
            assert by_unit[u]["data-concept"] == ld.labels[u]
            assert float(by_unit[u]["data-iou"]) == pytest.approx(float(ld.unit_iou[u]), abs=1e-6)
    for src in p.images:  # every picture is a file inside the folder
        assert (timeline / src).is_file() and not src.startswith(("http", "/"))
    assert "svg" in p.tags and 'id="timeline"' in page.read_text()


def test_concept_names_are_escaped(timeline, tmp_path):  # noqa: F811
    folder = tmp_path / "evil"
    shutil.copytree(timeline / "late", folder / "late")
    data = json.loads((folder / "late" / "dissection.json").read_text())
    evil = "<script>alert(1)</script>"
    for layer in data["layers"].values():
        label = layer["label_index"][0]
        layer["concepts"][label] = evil
    (folder / "late" / "dissection.json").write_text(json.dumps(data))
    (folder / "timeline.json").write_text(json.dumps({"checkpoints": [
        {"name": "late", "step": 6, "x": 6, "json": "late/dissection.json",
         "unit_pictures": {k: f"late/units/{k}" for k in data["layers"]}}]}))
    assert main(["report", str(folder)]) == 0
    html = (folder / "index.html").read_text()
    assert evil not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    p = _parse(folder / "index.html")
    assert p.stack_errors == 0
    assert any(c["data-concept"] == evil for c in p.cards)  # the parser unescapes it back
    assert "svg" not in p.tags  # one checkpoint: no timeline chart


def test_report_errors(tmp_path, capsys):
    assert main(["report", str(tmp_path / "none")]) == 1
    assert "no such folder" in capsys.readouterr().err
    assert main(["report", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "neither timeline.json nor dissection.json" in err and "Traceback" not in err


def test_compare_rows_png_and_errors(timeline, tmp_path, capsys):  # noqa: F811
    from PIL import Image

    csv_path, png = tmp_path / "c.csv", tmp_path / "c.png"
    assert main(["compare", str(timeline), str(timeline / "early" / "dissection.json"), "--layers", "layer3",
                 "--csv", str(csv_path), "--png", str(png)]) == 0
    lines = csv_path.read_text().strip().splitlines()
    assert len(lines) == 1 + 3  # early, late from the folder + the single JSON
    header = lines[0].split(",")
    for line in lines[1:]:
        row = dict(zip(header, line.split(",")))
        ld = DissectionResult.from_json(timeline / row["checkpoint"] / "dissection.json")["layer3"]
        per_cat = ld.summary["per_category"]
        assert int(row["interpretable_units"]) == sum(per_cat.values()) == ld.summary["interpretable_units"]
        assert all(int(row[f"units_{c}"]) == n for c, n in per_cat.items())
    assert Image.open(png).size[1] > 3 * 20
    capsys.readouterr()
    assert main(["compare", str(timeline), "--layers", "layer7"]) == 1
    err = capsys.readouterr().err
    assert "no dissection of layer(s) layer7" in err and "layer2, layer3" in err


def test_demo_reports_its_last_checkpoint(tmp_path, capsys):
    from toy_checkpoints import TINY_GAN

    from gan_monitor.cli.demo import run_demo

    summary = run_demo(minutes=2, out=tmp_path, layers=["layer3"], n=8, every_n_steps=2, max_batches=2,
                       threshold="quantile", threads=1, progress=False, gan_kwargs=TINY_GAN)
    page = summary["report"]
    assert f"HTML report of the last checkpoint:  {page}" in capsys.readouterr().out
    p = _parse(Path(page))
    ld = DissectionResult.from_json(Path(page).parent / "last" / "dissection.json")["layer3"]
    assert len(p.cards) == ld.num_units == TINY_GAN["g_channels"][2]


# ---- the output folder (gan_monitor.report.store) ------------------------------------------------
def test_store_round_trip(timeline, tmp_path):  # noqa: F811
    from gan_monitor.report.store import (
        OutputFolder,
        read_dissection_file,
        summary_rows,
    )

    source = OutputFolder(timeline).read_entries()
    store = OutputFolder(tmp_path / "copy")
    written = []
    for old in source:
        entry = store.new_entry(f"runs/{old.name}.ckpt", step=old.step, x=old.x)
        store.write_dissection(entry, old.result)
        store.unit_picture_path(entry, "layer3", 0).write_bytes(b"png")
        written.append(entry)
    twin = store.new_entry("other/late.ckpt", step=None, x=9)
    assert twin.name == "late_2" and twin.json == "late_2/dissection.json"  # unique folder names
    settings = {"n": 32, "seed": 3, "threshold": "quantile", "iou": "plain", "cutoff": 0.05}
    store.write_timeline(["layer2", "layer3"], written, settings)
    rows = [row for e in written for row in summary_rows(e.result, e.name, e.step)]
    table = store.write_summary(rows)

    index = json.loads((store.root / "timeline.json").read_text())
    assert index["layers"] == ["layer2", "layer3"] and index["settings"] == settings
    assert list(index["checkpoints"][0]) == ["name", "checkpoint", "step", "x", "json", "unit_pictures"]
    back = OutputFolder(store.root).read_entries()
    assert [e.to_dict() for e in back] == [e.to_dict() for e in written]
    assert all(a.result.to_dict() == b.result.to_dict() for a, b in zip(back, written))
    assert back[0].unit_pictures == {"layer3": "early/units/layer3"}
    assert OutputFolder(store.root).unit_picture(back[0], "layer3", 0) == "early/units/layer3/unit_0.png"
    assert OutputFolder(store.root).unit_picture(back[0], "layer3", 1) is None
    assert OutputFolder(store.root).read_summary() == [{k: str(v) for k, v in row.items()} for row in rows]
    assert (store.root / "summary.csv").read_text() == table
    single = read_dissection_file(store.root / "late" / "dissection.json")
    assert single.name == "late" and single.step is None and single.result.to_dict() == back[1].result.to_dict()
    assert not list(store.root.rglob("*.tmp"))


def test_atomic_write_leaves_no_partial_file(tmp_path):
    from gan_monitor.report.store import (
        OutputFolder,
        atomic_write,
        save_image,
        write_text,
    )

    target = write_text(tmp_path / "timeline.json", '{"old": true}')
    with pytest.raises(RuntimeError, match="midway"):
        with atomic_write(target) as f:
            f.write('{"new": ')
            raise RuntimeError("stopped midway")
    assert target.read_text() == '{"old": true}'

    class FailingImage:  # writes half a PNG, then fails (e.g. disk full)
        def save(self, f, format):
            f.write(b"\x89PNG\r\n\x1a\n half")
            raise OSError("no space left on device")

    with pytest.raises(OSError, match="no space"):
        save_image(tmp_path / "unit_0.png", FailingImage())
    store = OutputFolder(tmp_path)
    entry = store.new_entry("a.ckpt", step=1, x=1)
    with pytest.raises(TypeError):  # a value JSON cannot hold: nothing written
        store.write_timeline(["layer3"], [entry], {"bad": object()})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["timeline.json"]
    assert target.read_text() == '{"old": true}'


def test_compare_and_report_read_the_rows_dissect_wrote(timeline, tmp_path, capsys):  # noqa: F811
    import re

    from gan_monitor.cli.compare import compare_rows
    from gan_monitor.report.store import OutputFolder

    written = OutputFolder(timeline).read_summary()  # summary.csv, as `gan-monitor dissect` wrote it
    assert [(r["checkpoint"], r["layer"]) for r in written] == [(c, layer) for c in ("early", "late")
                                                                 for layer in ("layer2", "layer3")]
    compared = compare_rows([timeline])
    assert [{k: str(v) for k, v in row.items() if k != "input"} for row in compared] == written
    folder = tmp_path / "copy"
    shutil.copytree(timeline, folder)
    assert main(["report", str(folder)]) == 0
    html = (folder / "index.html").read_text()
    for row in (r for r in written if r["checkpoint"] == "late"):  # the page shows the last checkpoint
        section = html.split(f'id="layer-{row["layer"]}"')[1].split("</table>")[0]
        header = re.findall(r"<th>(.*?)</th>", section)
        cells = dict(zip(header, re.findall(r"<td>(.*?)</td>", section)))
        assert cells["units"] == row["units"] and cells["interpretable"] == row["interpretable_units"]
        assert cells["concepts"] == row["concept_diversity"]
        assert float(cells["mean IoU"]) == float(row["mean_iou"])
        categories = [k[len("units_"):] for k in row if k.startswith("units_")]
        assert header[4:] == categories and all(cells[c] == row[f"units_{c}"] for c in categories)


# ---- TensorBoard: per-unit FID and artifact ablation (gan_monitor.report.tensorboard) --------------
def _tiny_generator():
    import torch
    from torch import nn

    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 3 * 4 * 4), nn.Unflatten(1, (3, 4, 4)), nn.Conv2d(3, 6, 1),
                         nn.Upsample(scale_factor=2), nn.Conv2d(6, 3, 1), nn.Tanh())


def test_unit_fid_and_ablation_reach_every_logger(tmp_path):
    import csv

    import torch
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from gan_monitor.fid.unit_fid import ArtifactAblation, UnitFID
    from gan_monitor.report.tensorboard import (
        as_loggers,
        write_artifact_ablation,
        write_unit_fid,
    )

    inputs = torch.randn(10, 4, generator=torch.Generator().manual_seed(1))
    fid = torch.tensor([5.0, 40.0, 12.0, 3.0, 25.0, 8.0], dtype=torch.float64)
    result = UnitFID(layer="2", fid=fid, topk=torch.arange(18).view(6, 3) % 10, topk_values=torch.zeros(6, 3),
                     pool=10, k=3, extractor="pixels", real_count=50, seed=0, pool_fid=9.0, inputs=inputs)
    ablation = ArtifactAblation(layer="2", units=[1, 4], before=9.0, ablated=7.5, random=[8.5, 9.5],
                                random_units=[[0, 3], [2, 5]], n=10, extractor="pixels", real_count=50)
    tb = TensorBoardLogger(str(tmp_path), name="tb", version=0)
    table = CSVLogger(str(tmp_path), name="csv", version=0)
    write_unit_fid([tb, table], {"2": result}, 3, generator=_tiny_generator(), n_units=2, n_images=2)
    write_artifact_ablation([tb, table], ablation, 4)
    write_unit_fid([tb, table], result, 5, log_images=False)
    tb.experiment.flush()
    events = EventAccumulator(tb.log_dir, size_guidance={k: 0 for k in ("images", "scalars", "histograms",
                                                                         "tensors")}).Reload()
    assert [(e.step, e.value) for e in events.Scalars("gan_monitor/2/fid_max")] == [(3, 40.0), (5, 40.0)]
    assert [e.value for e in events.Scalars("gan_monitor/2/fid_median")] == [8.0, 8.0]  # torch: the lower middle
    assert [(e.step, e.value) for e in events.Scalars("gan_monitor/2/fid_random_ablated")] == [(4, 9.0)]
    assert [h.step for h in events.Histograms("gan_monitor/2/unit_fid")] == [3]  # log_images=False: scalars only
    (image,) = events.Images("gan_monitor/2/artifact_units")
    assert image.step == 3 and image.height > 2 * 8  # two unit rows of 8x8 pictures
    (text,) = events.Tensors("gan_monitor/2/artifact_ablation/text_summary")
    assert "2 artifact units ablated | 7.50" in text.tensor_proto.string_val[0].decode()
    table.save()
    with open(tmp_path / "csv" / "version_0" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [float(r["gan_monitor/2/fid_max"]) for r in rows if r.get("gan_monitor/2/fid_max")] == [40.0, 40.0]
    assert [float(r["gan_monitor/2/fid_before"]) for r in rows if r.get("gan_monitor/2/fid_before")] == [9.0]
    with pytest.raises(TypeError, match="Lightning loggers or a SummaryWriter"):
        as_loggers(["not a logger"])
