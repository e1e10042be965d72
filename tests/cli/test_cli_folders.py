"""`gan-monitor dissect --out`: a folder of another run is refused unless --overwrite, a run
with the same settings completes or extends it, an interrupted run (SIGINT, SIGKILL) never
looks finished (`report` and `compare` refuse it, saying how to fix it) and rerunning the
same command completes it, with every TensorBoard step written once (issue 15, silent
failure 3)."""
from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from gan_monitor.cli.main import main

from toy_checkpoints import N, ckpts  # noqa: F401  (module-scoped fixture)

LAYERS = ["layer2", "layer3"]


def dissect(ckpts, out, *checkpoints, extra=()):
    files = [str(ckpts / f"{name}.ckpt") for name in checkpoints or ("early", "late")]
    return main(["dissect", *files, "--layers", ",".join(LAYERS), "--out", str(out), "--n", str(N), "--seed", "3",
                 "--no-progress", *extra])


def tensorboard_steps(out):
    """Steps per layer as TensorBoard shows them (the x-axis note must be there once)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(out / "tensorboard"), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    assert [e.step for e in acc.Tensors("gan_monitor/x_axis/text_summary")] == [0]
    return {layer: [e.step for e in acc.Scalars(f"gan_monitor/{layer}/interpretable_units")] for layer in LAYERS}


def one_line_error(capsys, *needles):
    err = capsys.readouterr().err.strip()
    assert "\n" not in err, err
    for needle in needles:
        assert needle in err, err
    return err


def test_out_that_is_a_file_is_one_line_error(ckpts, tmp_path, capsys):
    target = tmp_path / "out.txt"
    target.write_text("mine")
    assert dissect(ckpts, target, "early") == 1
    one_line_error(capsys, f"--out {target} is an existing file")
    assert target.read_text() == "mine"


def test_other_run_refused_overwrite_replaces_it_whole(ckpts, tmp_path, capsys):
    out = tmp_path / "out"
    assert dissect(ckpts, out) == 0
    before = (out / "timeline.json").read_text()
    capsys.readouterr()
    # other settings: refused, nothing touched
    assert dissect(ckpts, out, "late", extra=["--n", "16"]) == 1
    one_line_error(capsys, "already holds another run", "n 32 -> 16", "--overwrite")
    assert (out / "timeline.json").read_text() == before
    # --overwrite: the old run is gone (its checkpoint folder too), each step once in TensorBoard
    assert dissect(ckpts, out, "late", extra=["--n", "16", "--overwrite"]) == 0
    assert not (out / "early").exists()
    index = json.loads((out / "timeline.json").read_text())
    assert [c["name"] for c in index["checkpoints"]] == ["late"] and index["settings"]["n"] == 16
    assert json.loads((out / "run.json").read_text())["state"] == "finished"
    assert tensorboard_steps(out) == {layer: [6] for layer in LAYERS}
    assert main(["report", str(out)]) == 0


def test_same_settings_extend_the_folder_without_redoing(ckpts, tmp_path):
    out = tmp_path / "out"
    assert dissect(ckpts, out, "early") == 0
    early = (out / "early" / "dissection.json").stat().st_mtime_ns
    assert dissect(ckpts, out, "early", "late") == 0
    assert (out / "early" / "dissection.json").stat().st_mtime_ns == early  # kept, not dissected again
    index = json.loads((out / "timeline.json").read_text())
    assert [c["name"] for c in index["checkpoints"]] == ["early", "late"]
    assert tensorboard_steps(out) == {layer: [2, 6] for layer in LAYERS}
    rows = (out / "summary.csv").read_text().splitlines()
    assert len(rows) == 1 + 2 * len(LAYERS)
    # a later run with only "late" keeps "early" in the timeline (the folder is extended, not cut)
    assert dissect(ckpts, out, "late") == 0
    assert [c["name"] for c in json.loads((out / "timeline.json").read_text())["checkpoints"]] == ["early", "late"]


def test_a_checkpoint_rewritten_since_its_dissection_is_not_kept(ckpts, tmp_path, capsys):
    import os

    mine = tmp_path / "ckpts"
    mine.mkdir()
    shutil.copy(ckpts / "early.ckpt", mine / "early.ckpt")
    out = tmp_path / "out"
    assert dissect(mine, out, "early") == 0
    before = (out / "run.json").read_text()
    os.utime(mine / "early.ckpt", ns=(1, 1))  # the file changed (e.g. last.ckpt saved again)
    capsys.readouterr()
    assert dissect(mine, out, "early") == 1
    one_line_error(capsys, "made before the file changed", "--overwrite")
    assert (out / "run.json").read_text() == before  # refused without touching the folder


def test_unreadable_run_record_is_refused_then_replaced_by_overwrite(ckpts, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "run.json").write_text("{ half written")
    assert dissect(ckpts, out, "early") == 1
    one_line_error(capsys, "cannot read", "run.json", "--overwrite")
    assert main(["report", str(out)]) == 1
    assert dissect(ckpts, out, "early", extra=["--overwrite"]) == 0
    assert json.loads((out / "run.json").read_text())["state"] == "finished"


def test_overwrite_never_deletes_files_it_did_not_write(ckpts, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    assert dissect(ckpts, out, "early") == 1
    one_line_error(capsys, "other files (thesis.tex)")
    assert dissect(ckpts, out, "early", extra=["--overwrite"]) == 1
    one_line_error(capsys, "did not write (thesis.tex)")
    assert (out / "thesis.tex").read_text() == "precious" and sorted(p.name for p in out.iterdir()) == ["thesis.tex"]


def test_report_and_compare_refuse_a_mixed_folder(ckpts, tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    assert dissect(ckpts, a) == 0 and dissect(ckpts, b, extra=["--seed", "4"]) == 0
    (a / "run.json").unlink()  # a folder written before run.json existed
    shutil.copy(b / "late" / "dissection.json", a / "late" / "dissection.json")
    capsys.readouterr()
    assert main(["report", str(a)]) == 1
    one_line_error(capsys, "mixes dissections made with different settings", "seed 3 vs 4", "--overwrite")
    assert main(["compare", str(a)]) == 1
    one_line_error(capsys, "mixes dissections")


_INTERRUPTIBLE = textwrap.dedent("""
    import signal, sys, time
    from pathlib import Path
    # a launcher without job control (e.g. `cmd &` in a script) starts us with SIGINT ignored: Ctrl-C must work here
    signal.signal(signal.SIGINT, signal.default_int_handler)
    import gan_monitor.cli.dissect as d
    from gan_monitor.cli.main import main
    marker, where = Path(sys.argv[1]), sys.argv[2]
    calls = []

    def pause(original, when):
        def wrapped(*args, **kwargs):
            calls.append(1)
            if where == "before_second" and len(calls) == 2:
                marker.write_text("paused"); time.sleep(300)
            result = original(*args, **kwargs)
            if where == "after_first_json" and len(calls) == 1:
                marker.write_text("paused"); time.sleep(300)
            return result
        return wrapped

    if where == "before_second":
        d._write_outputs = pause(d._write_outputs, where)
    else:
        d.OutputFolder.write_dissection = pause(d.OutputFolder.write_dissection, where)
    sys.exit(main(sys.argv[3:]))
""")


@pytest.mark.parametrize("sig, where", [(signal.SIGINT, "before_second"), (signal.SIGKILL, "after_first_json")])
def test_interrupted_run_is_refused_then_completed_by_a_rerun(ckpts, tmp_path, capsys, sig, where):
    out, marker, script = tmp_path / "out", tmp_path / "paused", tmp_path / "interruptible.py"
    script.write_text(_INTERRUPTIBLE)
    args = [str(ckpts / "early.ckpt"), str(ckpts / "late.ckpt"), "--layers", ",".join(LAYERS), "--out", str(out),
            "--n", str(N), "--seed", "3", "--no-progress"]
    proc = subprocess.Popen([sys.executable, str(script), str(marker), where, "dissect", *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert proc.poll() is None and time.monotonic() < deadline, "the run ended before it was interrupted"
            time.sleep(0.05)
        proc.send_signal(sig)
        assert proc.wait(timeout=60) != 0
    finally:
        proc.kill()
    assert (out / "early" / "dissection.json").is_file()  # something was written ...
    assert json.loads((out / "run.json").read_text())["state"] == "running"  # ... and it does not look finished
    capsys.readouterr()
    assert main(["report", str(out)]) == 1
    err = one_line_error(capsys, "unfinished dissection", "Rerun the same command to complete it", "--overwrite")
    assert "gan-monitor dissect" in err and "--seed 3" in err
    assert not (out / "index.html").exists()
    assert main(["compare", str(out)]) == 1
    one_line_error(capsys, "unfinished dissection")

    done = json.loads((out / "run.json").read_text())["done"]
    kept = (out / "early" / "dissection.json").stat().st_mtime_ns
    assert main(["dissect", *args]) == 0  # the same command completes it
    assert ((out / "early" / "dissection.json").stat().st_mtime_ns == kept) == bool(done)  # finished ones kept
    assert json.loads((out / "run.json").read_text())["state"] == "finished"
    assert main(["report", str(out)]) == 0 and (out / "index.html").is_file()
    assert tensorboard_steps(out) == {layer: [2, 6] for layer in LAYERS}  # each step once
