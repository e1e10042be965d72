"""`gan-monitor report`: the HTML parses, its unit cards match the JSON, text is
escaped, a timeline chart appears for several checkpoints, and `compare` tables."""
from __future__ import annotations

import json
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pytest
from test_cli_dissect import ckpts, timeline  # noqa: F401  (module-scoped fixtures)

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
    from test_cli_dissect import TINY_GAN

    from gan_monitor.cli.demo import run_demo

    summary = run_demo(minutes=2, out=tmp_path, layers=["layer3"], n=8, every_n_steps=2, max_batches=2,
                       threshold="quantile", threads=1, progress=False, gan_kwargs=TINY_GAN)
    page = summary["report"]
    assert f"HTML report of the last checkpoint:  {page}" in capsys.readouterr().out
    p = _parse(Path(page))
    ld = DissectionResult.from_json(Path(page).parent / "last" / "dissection.json")["layer3"]
    assert len(p.cards) == ld.num_units == TINY_GAN["g_channels"][2]
