"""`gan-monitor dissect --real-stats`: the generated-vs-real training signals of saved
checkpoints reach dissection.json, TensorBoard (scalars, bar chart, the x-axis note) and the
HTML report, and equal the signals computed directly from the Python API's result."""
from __future__ import annotations

import pytest

from gan_monitor.cli.main import main

from toy_checkpoints import N, ckpts  # noqa: F401  (module-scoped fixture)


@pytest.fixture(scope="module")
def real_file(tmp_path_factory):
    from gan_monitor.signals.concept_stats import toyworld_real_stats

    path = tmp_path_factory.mktemp("real") / "real_stats.json"
    toyworld_real_stats(64, size=32, segmenter="exact").save(path)
    return path


@pytest.fixture(scope="module")
def signals_run(ckpts, real_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("signals")
    rc = main(["dissect", str(ckpts / "early.ckpt"), str(ckpts / "late.ckpt"), "--layers", "layer2",
               "--out", str(out), "--n", str(N), "--seed", "3", "--no-progress", "--real-stats", str(real_file)])
    assert rc == 0
    return out


def test_signals_in_json_equal_a_direct_computation(signals_run, real_file):
    from gan_monitor.dissection.results import DissectionResult
    from gan_monitor.signals.compare import compare_concepts
    from gan_monitor.signals.concept_stats import ConceptStats

    real = ConceptStats.load(real_file)
    for name in ("early", "late"):
        result = DissectionResult.from_json(signals_run / name / "dissection.json")
        stored = result.settings["signals"]
        direct = compare_concepts(real, ConceptStats.from_result(result))
        assert stored["js_divergence"] == pytest.approx(direct.js_divergence, abs=1e-12)
        assert stored["under_generated"] == list(direct.under_generated)
        assert 0.0 <= stored["js_divergence"] <= 1.0
        assert stored["diversity"]["pixel_diversity"] == pytest.approx(result.sample_stats["pixel_diversity"])
    # the second checkpoint also carries the units' churn since the first
    late = DissectionResult.from_json(signals_run / "late" / "dissection.json").settings["signals"]
    assert set(late["units"]["layer2"]) >= {"label_churn", "units_gained", "units_lost"}


def test_tensorboard_gets_signal_scalars_chart_and_axis_note(signals_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from gan_monitor.dissection.results import DissectionResult

    acc = EventAccumulator(str(signals_run / "tensorboard"), size_guidance={"images": 0, "scalars": 0, "tensors": 0})
    acc.Reload()
    events = acc.Scalars("gan_monitor/signals/concept_js_divergence")
    expected = [DissectionResult.from_json(signals_run / n / "dissection.json").settings["signals"]["js_divergence"]
                for n in ("early", "late")]
    assert [e.step for e in events] == [2, 6]
    assert [e.value for e in events] == pytest.approx(expected, rel=1e-6)
    assert "gan_monitor/signals/concept_bars" in acc.Tags()["images"]
    (note,) = acc.Tensors("gan_monitor/x_axis/text_summary")
    text = note.tensor_proto.string_val[0].decode()
    assert "global_step" in text  # these checkpoints were saved without a monitor


def test_report_shows_the_divergence_column(signals_run):
    from gan_monitor.report.html import build_report

    page = build_report(signals_run).read_text()
    assert "concept JS divergence (generated vs real)" in page and "under-generated concepts" in page


def test_unreadable_real_stats_is_one_line_naming_the_flag(ckpts, tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    rc = main(["dissect", str(ckpts / "early.ckpt"), "--layers", "layer2", "--out", str(tmp_path / "o"),
               "--n", "8", "--no-progress", "--real-stats", str(bad)])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and "--real-stats" in err and "ConceptStats" in err and len(err.splitlines()) == 1


def test_miniature_demo_with_signals(tmp_path, capsys, monkeypatch):
    import gan_monitor.cli.demo as demo
    import gan_monitor.cli.dissect as dissect_cli
    from toy_checkpoints import TINY_GAN

    for module in (demo, dissect_cli):  # fewer real scenes: the same code, faster
        monkeypatch.setattr(module, "REAL_SCENES", 48)
    summary = demo.run_demo(minutes=2, out=tmp_path / "demo", layers=["layer2"], n=16, every_n_steps=2,
                            max_batches=4, threads=1, progress=False, gan_kwargs=TINY_GAN, signals=True)
    out = capsys.readouterr().out
    history = summary["history"]
    assert [h["step"] for h in history] == [0, 2, 4]
    js = [h["signals"]["js_divergence"] for h in history]
    assert all(0.0 <= v <= 1.0 for v in js)
    assert "concept JS divergence (generated vs real), by step: " + ", ".join(
        f"{h['step']}: {v:.4f}" for h, v in zip(history, js)) in out
    assert summary["settings"]["signals"] is True
    page = open(summary["report"]).read()
    assert "concept JS divergence (generated vs real)" in page
