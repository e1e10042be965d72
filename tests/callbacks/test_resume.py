"""Resuming a run with changed monitor settings (issue 15, silent failure 2): the monitor
finds its own earlier state, keeps its batch counter and history, warns once with what
changed and from which step, and never logs a step at or below one already logged."""
from __future__ import annotations

import warnings
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from test_callback import N_HELD_OUT, TinyGAN, monitor, read_events, trainer

from gan_monitor.callbacks.resume import parse_state_key

STEPS = [0, 3, 6, 9, 12]  # on_train_start + the end of each of 4 epochs of 3 batches


def _run(root, max_epochs, ckpt_path=None, **kw):
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import TensorBoardLogger

    mon = monitor(every_n_steps=None, every_n_epochs=1, log_images=False, **kw)
    cbs = [mon, ModelCheckpoint(dirpath=root / "ckpt", save_top_k=-1, every_n_epochs=1)]
    logger = TensorBoardLogger(str(root), name="tb", version=0)  # one folder for both runs, as users resume
    pl.seed_everything(1, verbose=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer(root, cbs, logger=logger, max_epochs=max_epochs, enable_checkpointing=True).fit(
            TinyGAN(z_from_step=True), ckpt_path=ckpt_path)
    messages = [str(w.message) for w in caught if "DissectionMonitor(layers=" in str(w.message)]
    return mon, logger.log_dir, messages


def logged_steps(log_dir, tag):
    """The steps of ``tag`` in the order they were written, over all event files of the folder
    (EventAccumulator(size_guidance 0) per file, files in the order of their first event: two runs
    in one test process can get file names that sort the other way round)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    runs = []
    for path in log_dir.glob("events.out.tfevents.*"):
        ea = EventAccumulator(str(path), size_guidance={"scalars": 0})
        ea.Reload()
        if tag in ea.Tags()["scalars"]:
            events = ea.Scalars(tag)
            runs.append((events[0].wall_time, [e.step for e in events]))
    return [step for _, steps in sorted(runs) for step in steps]


def _checkpoint(root, epoch):
    (path,) = (root / "ckpt").glob(f"epoch={epoch}-*.ckpt")
    return path


@pytest.mark.parametrize("change, expected", [
    ({"n": 16}, f"n {N_HELD_OUT} -> 16"),
    ({"seed": 5}, "seed 3 -> 5"),
])
def test_resume_with_changed_sample_keeps_history_and_steps(tmp_path, change, expected):
    first, log_dir, ours = _run(tmp_path, 2)
    assert ours == [] and [h["step"] for h in first.history] == STEPS[:3]
    ckpt = _checkpoint(tmp_path, 1)
    saved = torch.load(ckpt, weights_only=True)["callbacks"]
    assert first.state_key in saved

    resumed, log_dir2, ours = _run(tmp_path, 4, ckpt_path=str(ckpt), **change)
    assert log_dir2 == log_dir and resumed.state_key != first.state_key
    # one warning, saying what changed and from which step the new sample applies
    assert len(ours) == 1, ours
    assert "resumed its own state" in ours[0] and expected in ours[0] and "after 6" in ours[0], ours[0]
    # counter and history kept, continued after the last logged step
    assert resumed.batches_seen == 12
    assert [h["step"] for h in resumed.history] == STEPS
    assert resumed.history[:3] == first.history
    assert resumed.sample_changes == [{"after_step": 6, "from": {"n": N_HELD_OUT, "seed": 3},
                                       "to": {"n": change.get("n", N_HELD_OUT), "seed": change.get("seed", 3)}}]
    # the new sample is really used: the resumed run draws (n, seed) from its own settings
    assert (resumed.n, resumed.seed) == (change.get("n", N_HELD_OUT), change.get("seed", 3))
    # TensorBoard: every curve strictly increasing, no step logged twice
    assert len(list(Path(log_dir).glob("events.out.tfevents.*"))) == 2  # one event file per run
    for layer in ("layer1", "layer2"):
        steps = logged_steps(Path(log_dir), f"gan_monitor/{layer}/mean_iou")
        assert steps == STEPS, steps
        assert [e.step for e in read_events(log_dir).Scalars(f"gan_monitor/{layer}/mean_iou")] == sorted(steps)
    # the state saved by the resumed run is found by its own key and records the change
    last = torch.load(_checkpoint(tmp_path, 3), weights_only=True)["callbacks"][resumed.state_key]
    assert last["sample_changes"] == resumed.sample_changes and last["config"]["n"] == resumed.n


def test_resume_with_other_layers_continues_counter_and_steps(tmp_path):
    """No state of its own (other layers): the history starts anew, but the batch counter and
    the logging steps continue (no on_train_start dissection at an already logged step)."""
    _run(tmp_path, 2)
    resumed, log_dir, ours = _run(tmp_path, 4, ckpt_path=str(_checkpoint(tmp_path, 1)), layers=["layer2"])
    assert len(ours) == 1 and "holds no state of this monitor" in ours[0] and "continues at 6" in ours[0] and "after step 6" in ours[0], ours
    assert resumed.batches_seen == 12 and [h["step"] for h in resumed.history] == STEPS[3:]
    steps = logged_steps(Path(log_dir), "gan_monitor/layer2/mean_iou")
    assert steps == STEPS, steps  # strictly increasing in the order written, each once


def test_exact_resume_does_not_warn_and_ambiguous_state_is_not_guessed(tmp_path):
    first, _, _ = _run(tmp_path, 1)
    ckpt = _checkpoint(tmp_path, 0)
    resumed, _, ours = _run(tmp_path, 2, ckpt_path=str(ckpt))
    assert ours == [] and [h["step"] for h in resumed.history] == STEPS[:3] and resumed.sample_changes == []

    # two monitors on the same layers under new settings: which one was saved is ambiguous
    from gan_monitor.callbacks.resume import find_earlier_state

    a, b = monitor(n=10), monitor(n=12)
    checkpoint = {"callbacks": {first.state_key: first.state_dict()}}

    class FakeTrainer:
        callbacks = [a, b]

    with pytest.warns(UserWarning, match="none is resumed"):
        assert find_earlier_state(a, FakeTrainer, checkpoint) is None
    FakeTrainer.callbacks = [a, monitor(layers=["layer2"])]  # another layer set does not compete
    key, state = find_earlier_state(a, FakeTrainer, checkpoint)
    assert key == first.state_key and state["batches_seen"] == first.batches_seen


def test_state_keys_parse_back_to_their_configuration():
    mon = monitor()
    config = parse_state_key(mon.state_key)
    assert config["layers"] == ["layer1", "layer2"] and config["n"] == N_HELD_OUT and config["seed"] == 3
    assert parse_state_key("ModelCheckpoint{'monitor': None}") is None
    assert parse_state_key("DissectionMonitor{not python") is None
