"""``--segmenter`` specs: every accepted form, clear errors for the rest, and
``gan-monitor dissect --segmenter ade20k:PATH`` / ``color`` / ``toyworld+parts`` end to end
on a tiny random generator (equal to the Python API's numbers)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from gan_monitor.cli.main import main
from gan_monitor.dissection.pipeline import dissect
from gan_monitor.dissection.results import DissectionResult
from gan_monitor.segmenters.base import validate_segmentation
from gan_monitor.segmenters.color import ColorSegmenter
from gan_monitor.segmenters.huggingface import HFSegmenter
from gan_monitor.segmenters.parts import PartSegmenter
from gan_monitor.segmenters.specs import load_segmenter_spec
from gan_monitor.toyworld.gan import ToyGenerator
from gan_monitor.toyworld.segmenter import ToySegmenter

from tiny_hf_models import ade_id2label, make_segformer, make_upernet

N = 16


def tiny_generator():
    """--generator-factory target: an untrained toy generator (32x32 images)."""

    return ToyGenerator(16, 32, (32, 16, 8), "batch")


def my_segmenter():
    """pkg.module:function target: a user-written segmenter."""

    return ColorSegmenter(output_size=8)


NOT_A_FUNCTION = 42


@pytest.fixture(scope="module")
def hf_folders(tmp_path_factory):
    pytest.importorskip("transformers")

    root = tmp_path_factory.mktemp("hf_specs")
    return {"ade": make_segformer(root / "ade", ade_id2label(), size=32),
            "other": make_upernet(root / "other", {0: "cat", 1: "dog"}, shortest_edge=32)}


@pytest.fixture(scope="module")
def generator_file(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("gen") / "g.pt"
    torch.save(tiny_generator().state_dict(), path)
    return path


def test_builtin_specs():
    assert isinstance(load_segmenter_spec("toyworld"), ToySegmenter)
    assert isinstance(load_segmenter_spec("color"), ColorSegmenter)
    assert isinstance(load_segmenter_spec(" colour "), ColorSegmenter)
    parts = load_segmenter_spec("toyworld+parts")
    assert isinstance(parts, PartSegmenter) and isinstance(parts.base, ToySegmenter)
    assert {"tree-t", "tree-b", "tree-l", "tree-r", "building-t", "cloud-r"} <= set(parts.concepts)
    assert not any(c.startswith(("sky-", "door-")) for c in parts.concepts)  # material / part: not split
    user = load_segmenter_spec("test_segmenter_specs:my_segmenter")
    assert isinstance(user, ColorSegmenter) and user.output_size == (8, 8)


@pytest.mark.parametrize("spec, error, message", [
    ("nope", ValueError, "'ade20k:PATH_OR_HUB_ID'"),
    ("", ValueError, "non-empty"),
    ("ade20k:", ValueError, "give a model after the prefix"),
    ("color+parts", ValueError, "no concept to split"),
    ("gan_monitor.nothing:load", ValueError, "cannot import module"),
    ("test_segmenter_specs:NOT_A_FUNCTION", ValueError, "not a function"),
    ("test_segmenter_specs:tiny_generator", ValueError, "is not a segmenter"),
])
def test_bad_specs(spec, error, message):
    with pytest.raises(error, match=message.replace("(", r"\(").replace("+", r"\+")):
        load_segmenter_spec(spec)


def test_transformers_specs(hf_folders, tmp_path):
    ade = load_segmenter_spec(f"ade20k:{hf_folders['ade']}")
    assert isinstance(ade, HFSegmenter) and ade.is_ade20k and ade.concepts[3] == "sky"
    with_parts = load_segmenter_spec(f"ade20k:{hf_folders['ade']}+parts")
    assert isinstance(with_parts, PartSegmenter) and "tree-t" in with_parts.concepts
    assert "sky-t" not in with_parts.concepts and "door-t" not in with_parts.concepts
    other = load_segmenter_spec(f"hf:{hf_folders['other']}")
    assert other.concepts == ["-", "cat", "dog"]
    with pytest.raises(ValueError, match="does not predict the 150 ADE20K classes"):
        load_segmenter_spec(f"ade20k:{hf_folders['other']}")
    with pytest.raises(FileNotFoundError, match="not a folder"):
        load_segmenter_spec(f"ade20k:{tmp_path / 'nothing_here'}")


def _dissect_cli(generator_file, out, segmenter):
    return main(["dissect", str(generator_file), "--generator-factory", "test_segmenter_specs:tiny_generator",
                 "--layers", "layer3", "--out", str(out), "--n", str(N), "--segmenter", segmenter,
                 "--no-progress", "--images", "1"])


@pytest.mark.parametrize("kind", ["ade20k", "color", "toyworld+parts"])
def test_cli_dissect_end_to_end(kind, generator_file, tmp_path, request):
    # only the ade20k case needs transformers (the fixture skips without it)
    spec = f"ade20k:{request.getfixturevalue('hf_folders')['ade']}" if kind == "ade20k" else kind
    out = tmp_path / "o"
    assert _dissect_cli(generator_file, out, spec) == 0
    got = DissectionResult.from_json(out / "g" / "dissection.json")["layer3"]
    segmenter = load_segmenter_spec(spec)
    assert got.concepts == list(segmenter.concepts) and got.categories == list(segmenter.categories)
    generator = tiny_generator()
    generator.load_state_dict(torch.load(generator_file, weights_only=True))
    expected = dissect(generator.eval(), "layer3", segmenter, n=N, seed=0, topk=1)["layer3"]
    assert torch.equal(got.iou, expected.iou.float()) and got.labels == expected.labels
    assert json.loads((out / "timeline.json").read_text())["settings"]["segmenter"] == spec
    if kind == "color":
        assert set(got.categories[1:]) == {"color"}
    elif kind == "toyworld+parts":
        assert "tree-t" in got.concepts and got.categories[got.concepts.index("tree-t")] == "part"
    else:
        assert {"object", "stuff"} <= set(got.categories[1:])


def test_cli_bad_spec_one_line(generator_file, hf_folders, tmp_path, capsys):
    capsys.readouterr()
    assert _dissect_cli(generator_file, tmp_path / "o", f"ade20k:{hf_folders['other']}") == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("gan-monitor dissect: error: --segmenter ade20k:")
    assert "hf:" in err[0]


def test_example_custom_segmenter(monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[2] / "examples"))
    seg = load_segmenter_spec("custom_segmenter:make_segmenter")
    assert seg.concepts[:3] == ["-", "sky", "shadow"] and seg.concepts[3:] == load_segmenter_spec("color").concepts[1:]
    images = torch.full((2, 3, 8, 8), -0.9)  # dark everywhere ...
    images[0, 2, :4] = 0.9  # ... but a bright blue upper half in image 0
    images[0, :2, :4] = 0.2
    labels = validate_segmentation(seg.segment(images), 2, len(seg.concepts))
    assert labels.shape == (2, 2, 8, 8)
    sky, shadow = seg.concepts.index("sky"), seg.concepts.index("shadow")
    assert (labels[0, 0, :4] == sky).all() and (labels[0, 0, 4:] == shadow).all() and (labels[1, 0] == shadow).all()
    assert seg.concepts[int(labels[0, 1, 0, 0])] == "blue" and seg.concepts[int(labels[1, 1, 0, 0])] == "black"
