"""dissect()'s arguments: threshold objects equal the strings, the legacy keywords of
release 0.1 warn and give identical results, ``exclude_units`` never labels an excluded
unit interpretable (and changes nothing else), and dissection does not import FID."""
from __future__ import annotations

import doctest
import subprocess
import sys

import pytest
import torch

import gan_monitor.dissection.exclusion as exclusion
import gan_monitor.dissection.legacy_keywords as legacy_keywords
import gan_monitor.dissection.options as options
import gan_monitor.dissection.thresholds.modes as modes
from gan_monitor import dissect
from gan_monitor.dissection.thresholds.modes import IQR, Quantile

from planted_world import PlantedGenerator, PlantedSegmenter

torch.set_num_threads(1)

SMALL = {"planted": 10, "sky": 2, "noise": 10, "phantom": 2, "antisky": 1, "sparse": 2, "dead": 1}
UNITS = sum(SMALL.values())


def run(**kwargs):
    g, s = PlantedGenerator(SMALL), PlantedSegmenter(multilabel=True)
    return dissect(g, "features", s, **{"n": 48, "seed": 2, "batch_size": 16, **kwargs})


@pytest.mark.parametrize("string, objects", [
    ("quantile", [Quantile(), Quantile(0.01)]),
    ("iqr", [IQR(), IQR(levels=100, max_fraction=0.2, min_lift=2.0, subsample=65536, fallback=0.01)]),
])
def test_threshold_objects_give_the_results_of_the_strings(string, objects):
    expected = run(threshold=string).to_dict()
    assert expected["settings"]["threshold"] == string
    for mode in objects:
        assert run(threshold=mode).to_dict() == expected


def test_non_default_objects_change_the_result():  # so the comparisons above are not vacuous
    assert run(threshold=Quantile(0.05)).to_dict() != run(threshold="quantile").to_dict()
    assert run(threshold=IQR(levels=10)).to_dict() != run(threshold="iqr").to_dict()


@pytest.mark.parametrize("old, new, spelling", [
    (dict(quantile=0.02), dict(threshold=Quantile(0.02)), "threshold=Quantile(q=0.02)"),
    (dict(threshold="iqr", iqr_n=30, iqr_levels=20, iqr_max_fraction=0.3, iqr_min_lift=1.5, iqr_subsample=4000,
          quantile=0.05),
     dict(threshold=IQR(n=30, levels=20, max_fraction=0.3, min_lift=1.5, subsample=4000, fallback=0.05)),
     "threshold=IQR(n=30, levels=20, max_fraction=0.3, min_lift=1.5, subsample=4000, fallback=0.05)"),
    (dict(iqr_n=30), dict(), "drop iqr_n= (no effect with threshold='quantile')"),
])
def test_legacy_keywords_warn_and_give_identical_results(old, new, spelling):
    with pytest.warns(FutureWarning, match="deprecated") as caught:
        legacy = run(**old).to_dict()
    assert spelling in str(caught[0].message)
    assert legacy == run(**new).to_dict()


def test_legacy_iqr_inputs_is_iqr_inputs():
    z = torch.randn(24, PlantedGenerator(SMALL).latent_dim, generator=torch.Generator().manual_seed(7))
    with pytest.warns(FutureWarning, match=r"threshold=IQR\(inputs=<your iqr inputs>\)"):
        legacy = run(threshold="iqr", iqr_inputs=z).to_dict()
    new = run(threshold=IQR(inputs=z)).to_dict()
    assert legacy == new
    assert new["settings"]["iqr_n"] == 24 and "iqr_seed" not in new["settings"]


def test_removed_and_unknown_keywords_say_what_to_do():
    with pytest.raises(TypeError, match=r"exclude_units=\{layer: gan_monitor\.fid\.unit_fid\.unrealistic_units"):
        run(unit_fid={"features": torch.zeros(UNITS)}, max_unit_fid=1.0)
    with pytest.raises(TypeError, match="max_unit_fid"):
        run(max_unit_fid=1.0)
    with pytest.raises(TypeError, match=r"unexpected keyword argument\(s\) \['quantiles'\]"):
        run(quantiles=0.1)
    with pytest.raises(TypeError, match="give every setting in the threshold object"):
        run(threshold=IQR(), iqr_n=20)
    with pytest.raises(ValueError, match=r"IQR\(n\) must be a positive integer"):
        run(threshold=IQR(n=0))
    for bad, name in ((dict(iou="union"), "iou"), (dict(cutoff=1.5), "cutoff"), (dict(topk=0), "topk"),
                      (dict(batch_size=2.5), "batch_size")):
        with pytest.raises(ValueError, match=name):
            run(**bad)


@pytest.mark.parametrize("threshold", ["quantile", "iqr"])
def test_excluded_units_are_never_interpretable(threshold):
    plain = run(threshold=threshold)["features"]
    assert plain.settings.get("excluded_units") is None and "excluded" not in plain.extras
    interpretable = plain.interpretable.nonzero().flatten().tolist()
    assert len(interpretable) >= 5
    chosen = interpretable[:3] + [UNITS - 1]  # three interpretable units and one (dead) that is not
    mask = torch.zeros(UNITS, dtype=torch.bool)
    mask[chosen] = True
    by_mask = run(threshold=threshold, exclude_units={"features": mask})["features"]
    by_index = run(threshold=threshold, exclude_units={"features": chosen})["features"]
    assert by_mask.to_dict() == by_index.to_dict()
    assert not by_mask.interpretable[mask].any()
    assert torch.equal(by_mask.interpretable, plain.interpretable & ~mask)
    for field in ("thresholds", "iou", "label_index", "unit_iou", "topk", "topk_values"):
        assert torch.equal(getattr(by_mask, field), getattr(plain, field)), field
    assert by_mask.settings["excluded_units"] == 4
    assert by_mask.extras["excluded"] == mask.tolist()
    assert by_mask.summary["interpretable_units"] == plain.summary["interpretable_units"] - 3
    nothing = run(threshold=threshold, exclude_units={})["features"]
    assert nothing.settings["excluded_units"] == 0 and torch.equal(nothing.interpretable, plain.interpretable)


def test_bad_exclusions_get_clear_errors():
    with pytest.raises(ValueError, match=rf"mask of 3 entries, but layer 'features' has {UNITS} units"):
        run(exclude_units={"features": torch.ones(3, dtype=torch.bool)})
    with pytest.raises(IndexError, match=rf"unit indices \[{UNITS}\] out of range"):
        run(exclude_units={"features": [0, UNITS]})
    with pytest.raises(ValueError, match=r"not dissected; the dissected layers are \['features'\]"):
        run(exclude_units={"layer4": [0]})
    with pytest.raises(TypeError, match="integer unit indices"):
        run(exclude_units={"features": [0.5]})


def test_dissection_does_not_import_fid():
    code = ("import sys, gan_monitor.dissection.pipeline; "
            "print(sorted(m for m in sys.modules if m.startswith('gan_monitor.fid')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("module", [options, modes, exclusion, legacy_keywords])
def test_docstring_examples_run(module):
    result = doctest.testmod(module)
    assert result.attempted >= 1 and result.failed == 0
