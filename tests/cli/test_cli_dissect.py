"""`gan-monitor dissect` end to end on tiny toy-GAN checkpoints saved here: the JSON
equals the Python API's numbers, TensorBoard gets the callback's tags at the
checkpoints' steps, and bad inputs give a one-line error with exit code 1."""
from __future__ import annotations

import argparse
import csv
import json

import pytest
import torch

from gan_monitor.cli.main import main

from toy_checkpoints import N, TINY_GAN, ckpts, timeline  # noqa: F401  (module-scoped fixtures)


def test_json_equals_python_api(ckpts, timeline):
    from gan_monitor.dissection.pipeline import dissect
    from gan_monitor.dissection.results import DissectionResult
    from gan_monitor.toyworld.gan import load_toygan
    from gan_monitor.toyworld.segmenter import load_segmenter

    index = json.loads((timeline / "timeline.json").read_text())
    assert [(c["name"], c["step"]) for c in index["checkpoints"]] == [("early", 2), ("late", 6)]
    seg = load_segmenter()
    for name in ("early", "late"):
        got = DissectionResult.from_json(timeline / name / "dissection.json")
        expected = dissect(load_toygan(str(ckpts / f"{name}.ckpt")).generator, ["layer2", "layer3"], seg,
                           n=N, seed=3, topk=5)
        for layer in ("layer2", "layer3"):
            a, b = got[layer], expected[layer]
            assert torch.equal(a.iou, b.iou.float()) and torch.equal(a.thresholds, b.thresholds)
            assert a.labels == b.labels and torch.equal(a.interpretable, b.interpretable)
            assert torch.equal(a.topk, b.topk)
            assert a.summary == b.summary
            pictures = sorted(p.name for p in (timeline / name / "units" / layer).glob("unit_*.png"))
            assert len(pictures) == a.num_units
        rows = [r for r in csv.DictReader(open(timeline / "summary.csv")) if r["checkpoint"] == name]
        assert [int(r["interpretable_units"]) for r in rows] == \
            [expected[layer].summary["interpretable_units"] for layer in ("layer2", "layer3")]


def test_tensorboard_tags_and_steps(timeline):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from gan_monitor.dissection.results import DissectionResult

    acc = EventAccumulator(str(timeline / "tensorboard"), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    tags = acc.Tags()
    for layer in ("layer2", "layer3"):
        events = acc.Scalars(f"gan_monitor/{layer}/interpretable_units")
        assert [e.step for e in events] == [2, 6]
        expected = [DissectionResult.from_json(timeline / n / "dissection.json")[layer].summary["interpretable_units"]
                    for n in ("early", "late")]
        assert [e.value for e in events] == expected
        assert f"gan_monitor/{layer}/mean_iou" in tags["scalars"]
        assert f"gan_monitor/{layer}/units_per_concept" in tags["images"]
        assert f"gan_monitor/{layer}/top_units" in tags["images"]


class _Other(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Linear(2, 2)


@pytest.fixture(scope="module")
def bad_files(ckpts, tmp_path_factory):
    folder = tmp_path_factory.mktemp("bad")
    (folder / "notes.ckpt").write_text("not a checkpoint at all")
    torch.save({"state_dict": {"net.weight": torch.zeros(2, 2)}, "pytorch-lightning_version": "2.6",
                "global_step": 1}, folder / "other.ckpt")
    blob = torch.load(ckpts / "early.ckpt", weights_only=True)
    blob["extra_object"] = argparse.Namespace(note="a pickled object")
    torch.save(blob, folder / "pickled.ckpt")
    torch.save(_Other().state_dict(), folder / "plain.pt")
    return folder


@pytest.mark.parametrize("case, extra, message", [
    ("missing", [], "no such file"),
    ("notes", [], "is not a PyTorch checkpoint"),
    ("other", [], "missing keys: generator."),
    ("pickled", [], "--trust-checkpoint"),
    ("plain", [], "--generator-factory"),
    ("early", ["--layers", "layer9"], "available: "),
    ("early", ["--segmenter", "nope"], "unknown segmenter 'nope'"),
    ("early", ["--segmenter", "gan_monitor.nothing:load"], "cannot import module 'gan_monitor.nothing'"),
])
def test_bad_inputs_one_line_exit_1(case, extra, message, ckpts, bad_files, tmp_path, capsys):
    paths = {"missing": tmp_path / "gone.ckpt", "notes": bad_files / "notes.ckpt", "other": bad_files / "other.ckpt",
             "pickled": bad_files / "pickled.ckpt", "plain": bad_files / "plain.pt", "early": ckpts / "early.ckpt"}
    argv = ["dissect", str(paths[case]), "--layers", "layer3", "--out", str(tmp_path / "o"), "--n", "8",
            "--no-progress"] + extra
    capsys.readouterr()
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("gan-monitor dissect: error: ") and message in last, err
    if case == "other":
        assert "unexpected keys: net.weight" in last
    if case == "layer9" or extra[:1] == ["--layers"]:
        assert "layer3" in last.split("available: ")[1]
    with pytest.raises(Exception):
        main(argv + ["--debug"])


def test_trusted_pickle_loads_and_usage_errors_exit_2(bad_files, tmp_path, capsys):
    out = tmp_path / "o"
    assert main(["dissect", str(bad_files / "pickled.ckpt"), "--layers", "layer3", "--out", str(out), "--n", "8",
                 "--no-progress", "--trust-checkpoint"]) == 0
    assert (out / "pickled" / "dissection.json").is_file()
    assert main(["dissect", str(bad_files / "pickled.ckpt"), "--layers", "layer3", "--out", str(out),
                 "--n", "0"]) == 2
    with pytest.raises(SystemExit) as info:
        main(["dissect", "--help"])
    assert info.value.code == 0 and "Examples:" in capsys.readouterr().out


def tiny_generator():
    """--generator-factory target for the plain state dict test."""
    from gan_monitor.toyworld.gan import ToyGenerator

    return ToyGenerator(TINY_GAN["latent_dim"], TINY_GAN["image_size"], TINY_GAN["g_channels"], "batch")


def test_plain_state_dict_with_generator_factory(ckpts, tmp_path):
    from gan_monitor.dissection.pipeline import dissect
    from gan_monitor.dissection.results import DissectionResult
    from gan_monitor.toyworld.gan import load_toygan
    from gan_monitor.toyworld.segmenter import load_segmenter

    generator = load_toygan(str(ckpts / "late.ckpt")).generator
    torch.save(generator.state_dict(), tmp_path / "g.pt")
    out = tmp_path / "o"
    assert main(["dissect", str(tmp_path / "g.pt"), "--generator-factory", "test_cli_dissect:tiny_generator",
                 "--layers", "layer3", "--out", str(out), "--n", "16", "--no-progress"]) == 0
    got = DissectionResult.from_json(out / "g" / "dissection.json")["layer3"]
    expected = dissect(generator, "layer3", load_segmenter(), n=16, seed=0, topk=5)["layer3"]
    assert torch.equal(got.iou, expected.iou.float()) and got.labels == expected.labels
    index = json.loads((out / "timeline.json").read_text())
    assert index["checkpoints"][0]["step"] is None and index["checkpoints"][0]["x"] == 0


@pytest.mark.parametrize("extra, message", [
    (["--images", "0"], "--images must be a positive integer, got 0."),
    (["--batch-size", "-1"], "--batch-size must be a positive integer, got -1."),
    (["--cutoff", "2"], "--cutoff must lie in [0, 1]"),
    (["--n", "0"], "--n must be a positive integer, got 0."),
    (["--devices", "0"], "--devices must be a positive integer, got 0."),
    (["--timeout", "0"], "--timeout must be a finite number > 0, got 0.0."),
    (["--layers", ","], "--layers needs at least one layer name"),
    (["--memory-budget", "lots"], "--memory-budget 'lots': not a size"),
    (["--memory-budget", "0.5"], "--memory-budget '0.5' must be at least one byte"),
])
def test_bad_values_name_their_flag_and_exit_2(extra, message, tmp_path, capsys):
    argv = ["dissect", str(tmp_path / "never_read.ckpt"), "--layers", "layer3", "--out", str(tmp_path / "o")]
    assert main(argv + extra) == 2
    err = capsys.readouterr().err
    assert f"gan-monitor dissect: error: {message}" in err and "usage:" in err
    assert not (tmp_path / "o").exists()


def test_threshold_and_iou_choices_come_from_the_library(capsys):
    from gan_monitor.dissection.options import IOU_VARIANTS
    from gan_monitor.dissection.thresholds.modes import THRESHOLD_MODES

    with pytest.raises(SystemExit) as info:
        main(["dissect", "x.ckpt", "--layers", "layer3", "--out", "o", "--iou", "nope"])
    assert info.value.code == 2
    assert f"choose from {', '.join(repr(v) for v in IOU_VARIANTS)}" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["dissect", "x.ckpt", "--layers", "layer3", "--out", "o", "--threshold", "nope"])
    assert f"choose from {', '.join(repr(v) for v in THRESHOLD_MODES)}" in capsys.readouterr().err


def test_memory_budget_flag_takes_the_streaming_path_with_the_same_numbers(ckpts, timeline, tmp_path):
    from gan_monitor.dissection.results import DissectionResult

    out = tmp_path / "low"
    assert main(["dissect", str(ckpts / "late.ckpt"), "--layers", "layer2,layer3", "--out", str(out), "--n", str(N),
                 "--seed", "3", "--memory-budget", "1K", "--allow-nondeterministic", "--no-progress"]) == 0
    low = DissectionResult.from_json(out / "late" / "dissection.json")
    cached = DissectionResult.from_json(timeline / "late" / "dissection.json")
    assert low.settings["quantile_path"] == "streaming" and low.settings["memory_budget"] == 1024
    assert cached.settings["quantile_path"] == "cached"
    for layer in ("layer2", "layer3"):
        assert torch.equal(low[layer].iou, cached[layer].iou) and low[layer].labels == cached[layer].labels
        assert torch.equal(low[layer].thresholds, cached[layer].thresholds)


@pytest.mark.parametrize("text, size", [("4096", 4096), ("1K", 1024), ("512m", 512 << 20), ("1.5GiB", 3 << 29),
                                        ("2 GB", 2 << 30)])
def test_memory_sizes(text, size):
    from gan_monitor.cli.options import memory_size

    assert memory_size(text) == size
