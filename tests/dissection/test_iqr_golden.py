"""Dissection results are unchanged, bit for bit, from a stored golden file.

``tests/dissection/data/dissect_golden.pt`` holds the results of the code before the iqr-mode
counting was rewritten (issue 16): thresholds, labels, IoU, best IQR, level fractions
and top samples, in iqr and quantile mode, for

* ``toy``: a seeded, randomly initialised toy GAN generator with the shipped toy
  segmenter, layers layer2 (128 units 8x8) and layer3 (64 units 16x16), 64x64 labels;
* ``planted``: the planted world of ``tests/planted_world.py`` (one label map), and
  ``planted_multi``: its three label maps with the ``category`` IoU;

with the compiled counting kernels (``dissection.thresholds.kernels``) and without them.

Regenerate (only when a change of results is intended and explained) from a checkout
of the reference code::

    PYTHONPATH=<checkout>:<checkout>/tests python tests/dissection/test_iqr_golden.py --write
"""
from __future__ import annotations

import inspect
import sys
import warnings
from pathlib import Path

import pytest
import torch

GOLDEN = Path(__file__).parent / "data" / "dissect_golden.pt"
TOY_N, TOY_IQR_N = 64, 48
PLANTED_N, PLANTED_IQR_N = 120, 96


def _threshold_keywords(mode: str, iqr_n: int) -> dict:
    """``threshold=IQR(n=...)`` where ``dissect`` takes threshold objects, else the
    older ``threshold="iqr", iqr_n=...`` keywords."""
    from gan_monitor import dissect

    if mode == "quantile":
        return {"threshold": "quantile"}
    if "iqr_n" not in inspect.signature(dissect).parameters:
        from gan_monitor.dissection.thresholds.modes import IQR

        return {"threshold": IQR(n=iqr_n)}
    return {"threshold": "iqr", "iqr_n": iqr_n}


def _flatten(prefix: str, result) -> dict[str, torch.Tensor]:
    out = {}
    for name, ld in result.layers.items():
        key = f"{prefix}/{name}"
        out[f"{key}/thresholds"] = ld.thresholds
        out[f"{key}/label_index"] = ld.label_index
        out[f"{key}/unit_iou"] = ld.unit_iou
        out[f"{key}/iou"] = ld.iou
        out[f"{key}/topk"] = ld.topk
        out[f"{key}/topk_values"] = ld.topk_values
        for extra in ("iqr", "level_fraction"):
            if extra in ld.extras:
                out[f"{key}/{extra}"] = torch.tensor(ld.extras[extra], dtype=torch.float64)
    return out


def compute_results() -> dict[str, torch.Tensor]:
    """Every stored tensor, recomputed with the ``gan_monitor`` on the import path."""
    from gan_monitor import dissect
    from gan_monitor.toyworld.gan import ToyGenerator
    from gan_monitor.toyworld.segmenter import load_segmenter
    from planted_world import PlantedGenerator, PlantedSegmenter

    torch.set_num_threads(1)
    out: dict[str, torch.Tensor] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.manual_seed(1234)
        generator = ToyGenerator().eval()
        segmenter = load_segmenter()
        for mode in ("iqr", "quantile"):
            result = dissect(generator, ["layer2", "layer3"], segmenter, n=TOY_N, seed=3, batch_size=16,
                             **_threshold_keywords(mode, TOY_IQR_N))
            out.update(_flatten(f"toy/{mode}", result))
        planted = PlantedGenerator(noise=0.5)
        for case, multilabel, iou in (("planted", False, "plain"), ("planted_multi", True, "category")):
            for mode in ("iqr", "quantile"):
                result = dissect(planted, "features", PlantedSegmenter(multilabel=multilabel), n=PLANTED_N,
                                 seed=5, batch_size=40, iou=iou, **_threshold_keywords(mode, PLANTED_IQR_N))
                out.update(_flatten(f"{case}/{mode}", result))
    return out


@pytest.mark.parametrize("compiled", [True, False], ids=["compiled-kernels", "torch-only"])
def test_results_equal_the_golden_file(compiled, monkeypatch):
    from gan_monitor.core import native
    from gan_monitor.dissection.thresholds import kernels

    if compiled and kernels.count_levels() is None:
        pytest.skip(f"no compiled kernel here: {native.status(kernels.SOURCE)}")
    monkeypatch.setattr(kernels, "ENABLED", compiled)
    golden = torch.load(GOLDEN, weights_only=True)
    current = compute_results()
    assert sorted(current) == sorted(golden)
    different = [key for key in golden if not (current[key].dtype == golden[key].dtype
                                              and torch.equal(current[key], golden[key]))]
    assert not different, f"results differ from {GOLDEN.name} in {different}"
    # the file exercises what it should: iqr levels chosen, several labels, some units interpretable
    for case in ("toy", "planted", "planted_multi"):
        layer = "layer3" if case == "toy" else "features"
        fractions = golden[f"{case}/iqr/{layer}/level_fraction"]
        assert len(torch.unique(fractions)) > 3
        assert len(torch.unique(golden[f"{case}/iqr/{layer}/label_index"])) > 1


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit(__doc__)
    GOLDEN.parent.mkdir(exist_ok=True)
    results = compute_results()
    torch.save(results, GOLDEN)
    print(f"wrote {GOLDEN}: {len(results)} tensors, {GOLDEN.stat().st_size / 1e3:.0f} kB")
