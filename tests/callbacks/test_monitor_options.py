"""The monitor's grouped options (``PictureOptions``; ``DissectionOptions`` through
``threshold``/``iou``/``cutoff``/``batch_size``), its checkpoint identity, and the keywords of
gan_monitor 0.1 (``gan_monitor.callbacks.legacy_arguments``): they warn once and behave as
the new spelling. The FID and ACE groups are tested in test_fid_callback / test_ace_callback."""
from __future__ import annotations

import pytest
import torch
from test_callback import N_HELD_OUT, ColorSegmenter, TinyGAN, monitor, trainer

from gan_monitor.callbacks.context import PictureOptions
from gan_monitor.callbacks.dissection_monitor import DissectionMonitor
from gan_monitor.dissection.thresholds.modes import IQR, Quantile


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(top_units=0), ValueError, r"PictureOptions\(top_units\) must be a positive integer"),
    (dict(top_images=2.5), ValueError, r"PictureOptions\(top_images\) must be a positive integer"),
    (dict(log_images="yes"), TypeError, r"PictureOptions\(log_images\) must be True or False"),
])
def test_picture_options_reject_bad_values_naming_the_field(kwargs, error, match):
    with pytest.raises(error, match=match):
        PictureOptions(**kwargs)


def test_grouped_options_of_the_wrong_type_are_refused():
    with pytest.raises(TypeError, match=r"pictures must be a PictureOptions\(\.\.\.\) or None, got dict"):
        monitor(pictures={"top_units": 3})
    with pytest.raises(TypeError, match="unexpected keyword argument 'top_unit'"):
        monitor(top_unit=3)
    with pytest.raises(ValueError, match="use pictures= only"):
        DissectionMonitor(["layer1"], ColorSegmenter(), pictures=PictureOptions(), top_units=3)
    with pytest.raises(TypeError, match="give every setting in the threshold object"):
        monitor(threshold=IQR(n=8), quantile=0.02)


def the_generator(module):
    return module.generator


def test_state_keys_are_those_of_release_0_1():
    """A checkpoint written by gan_monitor 0.1 resumes with its monitor state (Lightning
    finds it by state_key): the keys below are what 0.1 computed for these arguments."""
    assert monitor().state_key == (
        "DissectionMonitor{'layers': ['layer1', 'layer2'], 'generator': 'generator', 'n': 24, 'seed': 3, "
        "'threshold': 'quantile', 'quantile': 0.01, 'iou': 'plain', 'cutoff': 0.05, 'every_n_steps': 2, "
        "'every_n_epochs': None}")
    assert monitor(threshold=IQR(n=8, levels=20, fallback=0.02)).state_key == (
        "DissectionMonitor{'layers': ['layer1', 'layer2'], 'generator': 'generator', 'n': 24, 'seed': 3, "
        "'threshold': 'iqr', 'quantile': 0.02, 'iou': 'plain', 'cutoff': 0.05, 'every_n_steps': 2, "
        "'every_n_epochs': None, 'options': [('iqr_levels', 20), ('iqr_n', 8)]}")
    assert DissectionMonitor("layer2", ColorSegmenter(), generator=the_generator, every_n_epochs=3,
                             threshold=Quantile(0.05), cutoff=0.1, iou="category").state_key == (
        "DissectionMonitor{'layers': ['layer2'], 'generator': 'the_generator', 'n': 1000, 'seed': 0, "
        "'threshold': 'quantile', 'quantile': 0.05, 'iou': 'category', 'cutoff': 0.1, 'every_n_steps': None, "
        "'every_n_epochs': 3}")


def test_legacy_keywords_warn_once_and_behave_identically():
    with pytest.warns(FutureWarning) as record:
        legacy = DissectionMonitor(["layer1", "layer2"], ColorSegmenter(), n=N_HELD_OUT, seed=3, batch_size=8,
                                   every_n_steps=None, every_n_epochs=1, quantile=0.05, top_units=3,
                                   top_images=2, log_images=False)
    (warning,) = record  # one warning for all of them, pointing at the caller's line
    message = str(warning.message)
    assert warning.filename == __file__
    assert "removed in the next release" in message
    assert "threshold=Quantile(q=0.05)" in message
    assert "pictures=PictureOptions(top_units=3, top_images=2, log_images=False)" in message
    new = monitor(every_n_steps=None, every_n_epochs=1, threshold=Quantile(0.05), log_images=False)
    assert legacy.options == new.options and legacy.pictures == new.pictures
    assert legacy.state_key == new.state_key
    for mon in (legacy, new):
        torch.manual_seed(0)
        trainer(callbacks=[mon], max_epochs=1).fit(TinyGAN())
    assert [h["step"] for h in legacy.history] == [0, 3]

    def numbers(history):
        return [{k: v for k, v in h.items() if k != "seconds"} for h in history]

    assert numbers(legacy.history) == numbers(new.history)
    for layer in ("layer1", "layer2"):
        assert torch.equal(legacy.last_result[layer].iou, new.last_result[layer].iou)
        assert legacy.last_result[layer].settings["quantile"] == 0.05


def test_legacy_dissect_options_become_the_threshold_object():
    with pytest.warns(FutureWarning, match=r"threshold=IQR\(levels=20, n=8, fallback=0.02\)"):
        legacy = monitor(threshold="iqr", quantile=0.02, dissect_options={"iqr_n": 8, "iqr_levels": 20})
    assert legacy.threshold == IQR(n=8, levels=20, fallback=0.02)
    assert legacy.state_key == monitor(threshold=IQR(n=8, levels=20, fallback=0.02)).state_key
    # quantile mode never used the iqr settings (as in 0.1): dropped, and the warning says so
    with pytest.warns(FutureWarning, match="iqr_n did nothing in quantile mode"):
        assert monitor(dissect_options={"iqr_n": 8}).threshold == Quantile(0.01)
