"""Bad inputs a hostile but realistic user gives, over the API, the callback, the CLI, the
interventions and per-unit FID: each must raise the stated error type with a message that
names the offending argument (or flag), never a torch traceback from deep inside or a silent
wrong number. Plus regression tests of the silent failures of issue 15 (iqr inputs, images
out of range, NaN activations, bad regions, gradient-free probabilities, absent concepts)."""
from __future__ import annotations

import pickle
import warnings

import pytest
import torch
from intervention_world import CausalGenerator, CausalSegmenter, SegmentOnly
from planted_world import PlantedGenerator, PlantedSegmenter
from support import assert_raises_naming
from torch import nn

from gan_monitor.callbacks.dissection_monitor import DissectionMonitor
from gan_monitor.cli.main import main
from gan_monitor.core.errors import CheckpointError
from gan_monitor.core.inputs import make_inputs
from gan_monitor.dissection.pipeline import dissect
from gan_monitor.dissection.thresholds.modes import IQR, Quantile
from gan_monitor.fid.features import ModuleFeatures, RealStats
from gan_monitor.fid.unit_fid import per_unit_fid
from gan_monitor.interventions.ace import ace
from gan_monitor.interventions.causal_units import causal_units

COUNTS = {"planted": 5, "noise": 3}
G = PlantedGenerator(COUNTS)
SEG = PlantedSegmenter()
Z = make_inputs(G, 8, 0)
CG, CSEG = CausalGenerator(), CausalSegmenter()
NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a torch without CUDA")


class Scaled(nn.Module):
    """The planted generator with images mapped to another range, e.g. [0, 255]."""

    def __init__(self, low: float, high: float):
        super().__init__()
        self.g, self.low, self.high = PlantedGenerator(COUNTS), low, high
        self.latent_dim = self.g.latent_dim

    def forward(self, z):
        return (self.g(z) + 1) / 2 * (self.high - self.low) + self.low


class TwoInputs(nn.Module):
    """A generator with ``latent_dim`` whose forward needs a second input (StyleGAN-like)."""

    latent_dim = PlantedGenerator(COUNTS).latent_dim

    def __init__(self):
        super().__init__()
        self.g = PlantedGenerator(COUNTS)

    def forward(self, z, noise):
        return self.g(z + 0 * noise)


class Seg:
    def __init__(self, concepts, categories, segment=True):
        self.concepts, self.categories = concepts, categories
        if segment:
            self.segment = SEG.segment


class WithAbsentConcept(CausalSegmenter):
    concepts = CausalSegmenter.concepts + ["lake"]
    categories = CausalSegmenter.categories + ["object"]


class NoGradient(CausalSegmenter):
    def probabilities(self, images):
        with torch.no_grad():
            return super().probabilities(images)


def _meta_generator():
    g = PlantedGenerator(COUNTS)
    g.head = nn.Linear(4, 4, device="meta")  # e.g. built under init_empty_weights, weights never loaded
    return g


def _dissect(**kw):
    args = dict(n=8, batch_size=8)
    args.update(kw)
    return lambda: dissect(args.pop("generator", G), args.pop("layers", "features"), args.pop("segmenter", SEG),
                           **args)


# (case id, call, exception type, substrings the message must contain)
API_CASES = [
    ("n=0", _dissect(n=0), ValueError, ["n must be a positive integer"]),
    ("n=2.5", _dissect(n=2.5), ValueError, ["n must be", "2.5"]),
    ("n=-3", _dissect(n=-3), ValueError, ["n must be"]),
    ("seed=None", _dissect(seed=None), TypeError, ["seed must be an integer", "None"]),
    ("seed='1'", _dissect(seed="1"), TypeError, ["seed"]),
    ("threshold=median", _dissect(threshold="median"), ValueError, ["threshold", "'median'"]),
    ("IQR(levels=0)", lambda: dissect(G, "features", SEG, n=8, threshold=IQR(levels=0)), ValueError,
     ["IQR(levels)"]),
    ("iqr_levels=0 (0.1)", _dissect(threshold="iqr", iqr_levels=0), ValueError, ["levels"]),
    ("Quantile(q=0)", lambda: Quantile(0), ValueError, ["Quantile(q)"]),
    ("Quantile(q=1.5)", lambda: Quantile(1.5), ValueError, ["Quantile(q)"]),
    ("iou=dice", _dissect(iou="dice"), ValueError, ["iou", "'dice'"]),
    ("cutoff=2", _dissect(cutoff=2), ValueError, ["cutoff"]),
    ("cutoff=-0.1", _dissect(cutoff=-0.1), ValueError, ["cutoff"]),
    ("topk=0", _dissect(topk=0), ValueError, ["topk"]),
    ("batch_size=0", _dissect(batch_size=0), ValueError, ["batch_size"]),
    ("batch_size=1.5", _dissect(batch_size=1.5), ValueError, ["batch_size"]),
    ("unknown layer", _dissect(layers="nope"), (KeyError, ValueError), ["nope", "features"]),
    ("no layers", _dissect(layers=[]), ValueError, ["layer"]),
    ("non-spatial layer", _dissect(layers="flat"), ValueError, ["flat"]),
    ("generator not a module", _dissect(generator=lambda z: z), TypeError, ["generator"]),
    ("segmenter without segment", _dissect(segmenter=Seg(["-", "a"], ["-", "x"], segment=False)), TypeError,
     ["segment"]),
    ("segmenter categories", _dissect(segmenter=Seg(["-", "a", "b"], ["-", "x"])), ValueError, ["categories"]),
    ("duplicate concept names", _dissect(segmenter=Seg(["-", "tree", "tree"], ["-", "x", "x"])), ValueError,
     ["'tree'", "more than once"]),
    ("inputs with 0 samples", _dissect(inputs=Z[:0]), ValueError, ["inputs=", "0 samples"]),
    ("inputs a string", _dissect(inputs="z"), TypeError, ["inputs", "str"]),
    ("inputs disagree on dim 0", _dissect(inputs=(Z, Z[:3])), ValueError, ["dim 0"]),
    ("input_fn wrong n", _dissect(input_fn=lambda n, gen: torch.randn(n + 1, G.latent_dim, generator=gen)),
     ValueError, ["input_fn", "exactly n"]),
    ("input_fn not callable", _dissect(input_fn=3), TypeError, ["input_fn"]),
    ("iqr with inputs only", _dissect(inputs=Z, threshold="iqr"), ValueError, ["iqr_inputs=", "input_fn="]),
    ("device nonsense", _dissect(device="gpu7"), ValueError, ["device", "gpu7"]),
    ("device meta", _dissect(device="meta"), ValueError, ["device", "meta"]),
    ("meta generator", lambda: dissect(_meta_generator(), "features", SEG, inputs=Z), ValueError,
     ["generator", "meta device", "load_state_dict"]),
    ("meta inputs", _dissect(inputs=torch.empty(4, G.latent_dim, device="meta")), ValueError,
     ["inputs=", "meta device"]),
    ("image_range reversed", _dissect(image_range=(1, 0)), ValueError, ["image_range"]),
    ("image_range not a pair", _dissect(image_range="x"), ValueError, ["image_range"]),
    ("images in [0, 255]", _dissect(generator=Scaled(0, 255), layers="g.features"), ValueError,
     ["image_range", "range over [0, 153]", "image_range=(0, 255)"]),
    ("NaN activations", _dissect(generator=PlantedGenerator(COUNTS, nan_units=(2,))), ValueError,
     ["'features'", "NaN/inf activations", "[2]"]),
    ("forward needs more inputs", _dissect(generator=TwoInputs(), layers="g.features"), TypeError, ["input_fn=", "forward"]),
    ("exclude_units unknown layer", _dissect(exclude_units={"nope": [0]}), ValueError, ["exclude_units", "nope"]),
    ("unknown keyword", _dissect(quantiles=0.1), TypeError, ["quantiles"]),
    # the callback, at construction (before any training)
    ("monitor layers=[]", lambda: DissectionMonitor([], SEG), ValueError, ["layers"]),
    ("monitor layer twice", lambda: DissectionMonitor(["a", "a"], SEG), ValueError, ["twice"]),
    ("monitor every_n_steps=0", lambda: DissectionMonitor("features", SEG, every_n_steps=0), ValueError,
     ["every_n_steps"]),
    ("monitor every_n_epochs=0", lambda: DissectionMonitor("features", SEG, every_n_epochs=0), ValueError,
     ["every_n_epochs"]),
    ("monitor nothing scheduled", lambda: DissectionMonitor("features", SEG, every_n_epochs=None,
                                                            on_train_start=False), ValueError, ["every_n_steps"]),
    ("monitor n=2.5", lambda: DissectionMonitor("features", SEG, n=2.5), ValueError, ["n must be", "2.5"]),
    ("monitor seed=None", lambda: DissectionMonitor("features", SEG, seed=None), TypeError, ["seed"]),
    ("monitor input_fn=5", lambda: DissectionMonitor("features", SEG, input_fn=5), TypeError, ["input_fn"]),
    ("monitor threshold", lambda: DissectionMonitor("features", SEG, threshold="x"), ValueError, ["threshold"]),
    ("monitor pictures dict", lambda: DissectionMonitor("features", SEG, pictures={"top_units": 3}), TypeError,
     ["pictures", "PictureOptions"]),
    ("monitor generator=5", lambda: DissectionMonitor("features", SEG, generator=5), TypeError, ["generator"]),
    ("monitor segmenter", lambda: DissectionMonitor("features", object()), TypeError, ["segment"]),
    ("monitor signals str", lambda: DissectionMonitor("features", SEG, signals="yes"), TypeError, ["signals"]),
    ("monitor image_range", lambda: DissectionMonitor("features", SEG, image_range=(0, 0)), ValueError,
     ["image_range"]),
    ("monitor cutoff", lambda: DissectionMonitor("features", SEG, cutoff=1.5), ValueError, ["cutoff"]),
    # interventions
    ("ace region NaN", lambda: ace(CG, "features", [0], "tree", segmenter=CSEG, n=8,
                                   region=torch.full((8, 8), float("nan"))), ValueError, ["region", "NaN"]),
    ("ace region > 1", lambda: ace(CG, "features", [0], "tree", segmenter=CSEG, n=8,
                                   region=torch.full((8, 8), 255.0)), ValueError, ["region", "[0, 1]", "255"]),
    ("ace region < 0", lambda: ace(CG, "features", [0], "tree", segmenter=CSEG, n=8,
                                   region=-torch.ones(8, 8)), ValueError, ["region", "[0, 1]"]),
    ("ace region shape", lambda: ace(CG, "features", [0], "tree", segmenter=CSEG, n=8,
                                     region=torch.ones(4, 4)), ValueError, ["region", "8x8"]),
    ("ace mode", lambda: ace(CG, "features", [0], "tree", segmenter=CSEG, n=8, mode="remove"), ValueError,
     ["mode", "'remove'"]),
    ("ace unknown concept", lambda: ace(CG, "features", [0], "lake", segmenter=CSEG, n=8), ValueError,
     ["'lake'", "tree"]),
    ("ace unit out of range", lambda: ace(CG, "features", [99], "tree", segmenter=CSEG, n=8), IndexError,
     ["99", "20 units"]),
    ("ace absent concept", lambda: ace(CG, "features", [0], "lake", segmenter=WithAbsentConcept(), n=8), ValueError,
     ["'lake'", "appears in none"]),
    ("causal_units without probabilities", lambda: causal_units(CG, "features", "tree", segmenter=SegmentOnly(),
                                                                n=8), TypeError, ["probabilities"]),
    ("causal_units gradient-free probabilities", lambda: causal_units(CG, "features", "tree", segmenter=NoGradient(),
                                                                      n=8, evaluate=False), ValueError,
     ["probabilities", "gradient", "no_grad"]),
    # per-unit FID
    ("per_unit_fid pool=0", lambda: per_unit_fid(CG, "features", pool=0, k=2, real_stats=_real_stats(32),
                                                  extractor=_extractor()),
     ValueError, ["pool must be"]),
    ("per_unit_fid k=1", lambda: per_unit_fid(CG, "features", pool=8, k=1, real_stats=_real_stats(32),
                                              extractor=_extractor()),
     ValueError, ["k (top images per unit)"]),
    ("per_unit_fid real_stats type", lambda: per_unit_fid(CG, "features", pool=8, k=2, real_stats={"mean": 0}),
     TypeError, ["real_stats", "RealStats"]),
    ("per_unit_fid real images of another size",
     lambda: per_unit_fid(CG, "features", pool=8, k=2, real_stats=_real_stats(16), extractor=_extractor()),
     ValueError, ["16x16", "32x32", "real statistics"]),
]

_EXTRACTOR = None


def _extractor():
    global _EXTRACTOR
    if _EXTRACTOR is None:
        torch.manual_seed(0)
        _EXTRACTOR = ModuleFeatures(nn.Sequential(nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(12, 4)),
                                    name="tiny-test-features")
    return _EXTRACTOR


def _real_stats(size: int) -> RealStats:
    images = torch.rand(24, 3, size, size, generator=torch.Generator().manual_seed(size)) * 2 - 1
    return RealStats.from_images([images], _extractor(), source=f"noise {size}px")


@pytest.mark.parametrize("case, call, error, words", API_CASES, ids=[c[0] for c in API_CASES])
def test_bad_input_names_the_argument(case, call, error, words):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # the 0.1 keywords still work, with a FutureWarning
        assert_raises_naming(case, call, error, words)


@NO_CUDA
def test_cuda_device_on_a_cpu_torch_says_how_to_get_one():
    with pytest.raises(ValueError) as info:
        dissect(G, "features", SEG, n=8, device="cuda")
    assert "device='cuda'" in str(info.value) and "CUDA" in str(info.value) and "cpu" in str(info.value)


# ---- command line: exit code and one message naming the flag -----------------------------------------
@pytest.fixture(scope="module")
def raw_pickle(tmp_path_factory):
    path = tmp_path_factory.mktemp("raw") / "generator.pkl"
    with open(path, "wb") as f:
        pickle.dump({"weights": [1.0, 2.0]}, f)
    return path


CLI_CASES = [
    ("--n 0", ["dissect", "{ckpt}", "--layers", "layer2", "--out", "{out}", "--n", "0"], 2, ["--n"]),
    ("--n 2.5", ["dissect", "{ckpt}", "--layers", "layer2", "--out", "{out}", "--n", "2.5"], 2, ["--n"]),
    ("empty --layers", ["dissect", "{ckpt}", "--layers", ",", "--out", "{out}"], 2, ["--layers"]),
    ("--threshold bogus", ["dissect", "{ckpt}", "--layers", "l", "--out", "{out}", "--threshold", "bogus"], 2,
     ["--threshold"]),
    ("--iou bogus", ["dissect", "{ckpt}", "--layers", "l", "--out", "{out}", "--iou", "dice"], 2, ["--iou"]),
    ("--cutoff 3", ["dissect", "{ckpt}", "--layers", "l", "--out", "{out}", "--cutoff", "3"], 2, ["cutoff"]),
    ("--devices 0", ["dissect", "{ckpt}", "--layers", "l", "--out", "{out}", "--devices", "0"], 2, ["--devices"]),
    ("--device gpu7", ["dissect", "{ckpt}", "--layers", "l", "--out", "{out}", "--device", "gpu7"], 2,
     ["--device"]),
    ("missing checkpoint", ["dissect", "{missing}", "--layers", "l", "--out", "{out}"], 1, ["no such file"]),
    ("raw pickle", ["dissect", "{raw}", "--layers", "l", "--out", "{out}"], 1, ["plain pickle", "--trust-checkpoint"]),
    ("--real-stats missing", ["dissect", "{raw}", "--layers", "l", "--out", "{out}", "--trust-checkpoint",
                              "--real-stats", "{missing}"], 2, ["--real-stats", "no such file"]),
    ("demo --minutes 0", ["demo", "--minutes", "0"], 2, ["--minutes"]),
    ("demo --n 0", ["demo", "--n", "0"], 2, ["--n"]),
    ("demo --quantile 2", ["demo", "--quantile", "2"], 2, ["--quantile"]),
]


@pytest.mark.parametrize("case, argv, code, words", CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_bad_command_line_names_the_flag(case, argv, code, words, raw_pickle, tmp_path, capsys):
    fill = {"ckpt": str(raw_pickle), "raw": str(raw_pickle), "out": str(tmp_path / "out"),
            "missing": str(tmp_path / "missing.ckpt")}
    try:
        rc = main([a.format(**fill) for a in argv])
    except SystemExit as stop:  # argparse's own refusals (choices, types) exit with 2
        rc = stop.code
    err = capsys.readouterr().err
    assert rc == code, f"{case}: exit {rc}, stderr {err!r}"
    for word in words:
        assert word in err, f"{case}: {word!r} not in {err!r}"
    assert "Traceback" not in err


@NO_CUDA
def test_cli_device_cuda_on_a_cpu_torch(raw_pickle, tmp_path, capsys):
    rc = main(["dissect", str(raw_pickle), "--layers", "l", "--out", str(tmp_path), "--device", "cuda"])
    err = capsys.readouterr().err
    assert rc == 2 and "--device='cuda'" in err and "CUDA" in err


def test_trusted_plain_pickle_is_read_and_judged_on_its_content(raw_pickle):
    from gan_monitor.core.checkpoints import read_checkpoint

    with pytest.raises(CheckpointError, match="--trust-checkpoint"):
        read_checkpoint(raw_pickle)
    assert read_checkpoint(raw_pickle, trust=True) == {"weights": [1.0, 2.0]}


# ---- the silent failures of issue 15, each reproduced ----------------------------------------------
def test_iqr_levels_are_never_chosen_on_inputs_the_user_did_not_describe():
    low_temperature = 0.3 * make_inputs(G, 16, 5)
    with pytest.raises(ValueError, match="iqr_inputs="):
        dissect(G, "features", SEG, inputs=low_temperature, threshold="iqr")
    # with input_fn the iqr sample is drawn by the user's own function (here: the same temperature)
    fn = lambda n, gen: 0.3 * torch.randn(n, G.latent_dim, generator=gen)  # noqa: E731
    drawn = dissect(G, "features", SEG, inputs=low_temperature, input_fn=fn, threshold="iqr")
    given = dissect(G, "features", SEG, inputs=low_temperature,
                    threshold=IQR(inputs=fn(16, torch.Generator().manual_seed(1_000_003))))
    assert torch.equal(drawn["features"].thresholds, given["features"].thresholds)


def test_images_in_0_1_warn_and_a_declared_range_gives_the_numbers_of_minus1_1():
    reference = dissect(G, "features", SEG, n=16)
    with pytest.warns(UserWarning, match=r"image_range=\(0, 1\)"):
        try:  # (this segmenter then also refuses the labels it makes of such images)
            dissect(Scaled(0, 1), "g.features", SEG, n=16)
        except ValueError:
            pass
    for low, high in ((0, 1), (0, 255)):
        declared = dissect(Scaled(low, high), "g.features", SEG, n=16, image_range=(low, high))
        assert declared.settings["image_range"] == [low, high]
        assert torch.equal(declared["g.features"].iou, reference["features"].iou)
        assert declared["g.features"].labels == reference["features"].labels


def test_nan_activations_are_reported_as_such_not_as_missing_concepts():
    with pytest.raises(ValueError) as info:
        dissect(PlantedGenerator(COUNTS, nan_units=(0, 3)), "features", SEG, n=8)
    assert "NaN/inf activations in units [0, 3]" in str(info.value) and "no concept" not in str(info.value)


def test_ace_interval_stays_in_the_range_of_the_effect():
    from intervention_world import TREE

    result = ace(CG, "features", TREE, "tree", segmenter=CSEG, n=16)
    assert result.ci[1] <= 1.0 + 1e-9 and result.ci[0] <= result.mean <= result.ci[1]
    inserted = ace(CG, "features", TREE, "tree", segmenter=CSEG, n=16, mode="insert")
    assert inserted.ci[0] >= -1.0 - 1e-9


def test_both_schedules_given_warns_which_one_is_used():
    with pytest.warns(UserWarning, match="every_n_steps=5 replaces every_n_epochs=2"):
        DissectionMonitor("features", SEG, every_n_steps=5, every_n_epochs=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        DissectionMonitor("features", SEG, every_n_steps=5)  # the default epoch schedule: no warning


class NanReachesImage(nn.Module):
    """NaN activations in units 1 and 4 of ``g.features`` that reach the image (a diverged
    generator); with ``after=True`` the traced layer is finite and the NaN comes later."""

    def __init__(self, after: bool = False):
        super().__init__()
        self.g = PlantedGenerator(COUNTS, nan_units=() if after else (1, 4))
        self.latent_dim, self.after, self.last = self.g.latent_dim, after, None
        self.g.features.register_forward_hook(lambda module, args, out: setattr(self, "last", out))

    def forward(self, z):
        image = self.g(z)
        poison = float("nan") if self.after else 0.0
        return image + (poison + 0 * self.last.mean((1, 2, 3))).view(-1, 1, 1, 1)


def test_nan_that_reaches_the_image_is_named_as_nan_activations_not_as_a_segmenter_problem():
    # before: "segment() returned concept index range [-9223372036854775808, ...] ... the concept
    # list and the model's outputs do not match" (the segmenter blamed for the generator's NaN)
    with pytest.raises(ValueError) as info:
        dissect(NanReachesImage(), "g.features", SEG, n=8, batch_size=8)
    assert "layer 'g.features' has NaN/inf activations in units [1, 4]" in str(info.value)
    assert "segment()" not in str(info.value) and "concept" not in str(info.value)
    with pytest.raises(ValueError, match=r"images contain NaN/inf .* traced layers \['g.features'\] are finite"):
        dissect(NanReachesImage(after=True), "g.features", SEG, n=8, batch_size=8)


def test_toy_extractor_against_real_images_that_are_not_toy_scenes_warns():
    from gan_monitor.fid.features import toy_real_stats

    faces = torch.rand(100, 3, 32, 32, generator=torch.Generator().manual_seed(4)) * 2 - 1  # not toy scenes
    real = RealStats.from_images([faces], source="my faces")
    with pytest.warns(UserWarning, match="not toy scenes.*'my faces'.*InceptionFeatures"):
        per_unit_fid(CG, "features", pool=8, k=2, real_stats=real)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        per_unit_fid(CG, "features", pool=8, k=2, real_stats=toy_real_stats(100, size=32))
