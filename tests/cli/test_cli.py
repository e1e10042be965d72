"""The gan-monitor command line: argument handling, and a miniature demo run on
the toy world (tiny GAN, few batches) end to end."""
from __future__ import annotations

from pathlib import Path

import pytest

from gan_monitor.cli.demo import format_table
from gan_monitor.cli.main import main

TINY_GAN = dict(latent_dim=16, image_size=32, g_channels=(32, 16, 8), d_channels=(8, 16, 32),
                batch_size=8, num_scenes=32)


def test_help_lists_subcommands(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    assert "demo" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    out = capsys.readouterr().out
    for option in ("--minutes", "--layers", "--out", "--threshold"):
        assert option in out


def test_no_command_prints_help_and_fails(capsys):
    assert main([]) == 2
    assert "COMMAND" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["demo", "--minutes", "0"], "--minutes must be positive"),
    (["demo", "--n", "0"], "--n must be a positive integer"),
    (["demo", "--iqr-n", "-1"], "--iqr-n must be a positive integer"),
    (["demo", "--layers", "layer9"], "no layer(s) ['layer9']"),
])
def test_bad_demo_arguments_exit_2_with_a_reason(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "gan-monitor demo: error" in err


def test_format_table_first_and_last():
    from gan_monitor.dissection.thresholds.modes import IQR, Quantile

    class Settings:
        n, seed, threshold, iou, cutoff = 100, 0, Quantile(0.01), "plain", 0.05

    def entry(step, units, diversity, iou):
        return {"step": step, "layers": {"layer3": {"units": 64, "interpretable_units": units,
                                                    "concept_diversity": diversity, "mean_iou": iou}}}

    text = format_table([entry(0, 1, 1, 0.051), entry(50, 3, 2, 0.07), entry(100, 17, 5, 0.094)], Settings())
    row = next(line for line in text.splitlines() if line.startswith("layer3"))
    assert row.split() == ["layer3", "64", "1", "->", "17", "1", "->", "5", "0.051", "->", "0.094"]
    assert "threshold mode: quantile (unit on in its top 1% of pixels)" in text
    assert "first dissection at step 0, last at step 100 (3 dissections)" in text
    assert "No dissection completed" in format_table([], Settings())
    Settings.threshold = IQR(n=25)
    assert "iqr (each unit's level" in format_table([], Settings()) and "separate sample of 25" in format_table([], Settings())


def test_miniature_demo_writes_logs_checkpoints_and_table(tmp_path, capsys):
    from gan_monitor.cli.demo import run_demo

    summary = run_demo(minutes=2, out=tmp_path / "demo", layers=["layer2", "layer3"], n=16,
                       every_n_steps=2, max_batches=4, threads=1, progress=False, gan_kwargs=TINY_GAN)
    out = capsys.readouterr().out
    assert f"tensorboard --logdir {tmp_path / 'demo'}" in out
    assert [h["step"] for h in summary["history"]] == [0, 2, 4]
    assert summary["batches"] == 4
    import json

    saved = json.loads((Path(summary["log_dir"]) / "demo_summary.json").read_text())
    assert saved["history"] == summary["history"] and saved["settings"]["n"] == 16
    assert any(p.name.startswith("events.out.tfevents") for p in (tmp_path / "demo").rglob("*"))
    assert list((tmp_path / "demo").rglob("*.ckpt")), "no checkpoint written"
    table_rows = [line.split() for line in out.splitlines() if line.startswith(("layer2 ", "layer3 "))]
    assert [r[0] for r in table_rows] == ["layer2", "layer3"]
    first, last = summary["history"][0]["layers"], summary["history"][-1]["layers"]
    assert table_rows[0][2] == str(first["layer2"]["interpretable_units"])
    assert table_rows[0][4] == str(last["layer2"]["interpretable_units"])


@pytest.mark.parametrize("script, layers", [
    ("train_with_monitor.py", ["2", "3"]),
    ("foreign_generator.py", ["synthesis.b16", "synthesis.b32"]),
])
def test_examples_run(script, layers, tmp_path, monkeypatch, capsys):
    import runpy
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "examples" / script
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", [str(path), "--steps", "2", "--n", "8"])
    runpy.run_path(str(path), run_name="__main__")
    lines = [line for line in capsys.readouterr().out.splitlines() if line[:1].isdigit()]
    assert [line.split()[0] for line in lines] == ["0", "1", "2"]  # dissected at steps 0, 1, 2
    assert all(f"'{layer}':" in lines[-1] for layer in layers)
    assert list(tmp_path.rglob("events.out.tfevents*")), "no TensorBoard log written"


def test_demo_plans_its_schedule_from_the_first_batches(tmp_path, capsys):
    from gan_monitor.cli.demo import plan_schedule, run_demo

    assert plan_schedule(100.0, 0.5, 4, margin=1.0) == (190, 47)
    assert plan_schedule(100.0, 0.5, 4, max_batches=40, margin=1.0) == (40, 10)
    summary = run_demo(minutes=2, out=tmp_path, layers=["layer3"], n=8, points=2, max_batches=34,
                       threshold="quantile", threads=1, progress=False,
                       gan_kwargs=dict(TINY_GAN, num_scenes=272))  # one epoch
    assert "dissecting every 31 batches" in capsys.readouterr().out  # max(30 + 1, 34 // 2)
    assert summary["every_n_steps"] == 31
    assert [h["step"] for h in summary["history"]] == [0, 31]
