"""Bad inputs to the interventions (ace, single_unit_effects, insertion_values, causal_units,
trace_effects, contextual_insertion) and to per-unit FID / artifact ablation: each raises the
stated error type with a message naming the offending argument, before any long work. Plus
the regressions of issue 15 on this side: a concept absent from every image is an
``AbsentConceptError`` (not a bare NaN, not an arbitrary ranking) that the monitor's
causal-effect schedule skips per concept, and a causal optimisation that never saw the
concept says so. (The cases shared with the dissection are in tests/core/test_bad_inputs.py.)"""
from __future__ import annotations

import warnings

import pytest
import torch
from intervention_world import TREE, CausalGenerator, CausalSegmenter
from support import assert_raises_naming
from torch import nn

from gan_monitor.callbacks.ace import AceOptions, AceSchedule
from gan_monitor.callbacks.context import MonitorContext
from gan_monitor.core.errors import AbsentConceptError, GanMonitorError
from gan_monitor.core.held_out import HeldOutSample
from gan_monitor.core.inputs import make_inputs
from gan_monitor.dissection.pipeline import dissect
from gan_monitor.fid.features import ModuleFeatures, RealStats
from gan_monitor.fid.unit_fid import artifact_ablation, per_unit_fid
from gan_monitor.interventions.ace import ace, insertion_values, single_unit_effects
from gan_monitor.interventions.causal_units import causal_units
from gan_monitor.interventions.effects import contextual_insertion, trace_effects

G, SEG = CausalGenerator(), CausalSegmenter()
Z = make_inputs(G, 8, 0)
NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a torch without CUDA")


class WithLake(CausalSegmenter):
    """Knows a concept ('lake') the causal generator never draws."""

    concepts = CausalSegmenter.concepts + ["lake"]
    categories = CausalSegmenter.categories + ["object"]


class ConstantProbabilities(CausalSegmenter):
    """probabilities() that carry a gradient (of a parameter) but do not depend on the images."""

    def __init__(self):
        self.logits = torch.zeros(len(self.concepts), requires_grad=True)

    def probabilities(self, images):
        p = torch.softmax(self.logits, 0).view(1, -1, 1, 1)
        return p.expand(images.shape[0], -1, *images.shape[-2:])


class TwoInputs(nn.Module):
    """The causal generator behind a forward that needs a second input (StyleGAN-like)."""

    latent_dim = CausalGenerator.latent_dim

    def __init__(self):
        super().__init__()
        self.g = CausalGenerator()

    def forward(self, z, noise):
        return self.g(z + 0 * noise)


def _meta_generator():
    g = CausalGenerator()
    g.register_buffer("scale", torch.empty(1, device="meta"))  # e.g. built under init_empty_weights
    return g


_EXTRACTOR: list = []


def _extractor():
    if not _EXTRACTOR:
        torch.manual_seed(0)
        _EXTRACTOR.append(ModuleFeatures(nn.Sequential(nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(12, 4)),
                                         name="tiny-test-features"))
    return _EXTRACTOR[0]


def _real():
    images = torch.rand(24, 3, 32, 32, generator=torch.Generator().manual_seed(3)) * 2 - 1
    return RealStats.from_images([images], _extractor(), source="noise 32px")


def _ace(**kw):
    args = dict(generator=G, layer="features", units=TREE, concept="tree", segmenter=SEG, n=8)
    args.update(kw)
    return lambda: ace(args.pop("generator"), args.pop("layer"), args.pop("units"), args.pop("concept"), **args)


def _fid(**kw):
    args = dict(pool=8, k=2)
    args.update(kw)
    return lambda: per_unit_fid(args.pop("generator", G), "features", real_stats=_real(), extractor=_extractor(),
                                **args)


# (case id, call, exception type, substrings the message must contain)
CASES = [
    # ace: the held-out sample
    ("ace n=2.5", _ace(n=2.5), ValueError, ["n must be a positive integer", "2.5"]),
    ("ace n=0", _ace(n=0), ValueError, ["n must be"]),
    ("ace seed=None", _ace(seed=None), TypeError, ["seed must be an integer", "None"]),
    ("ace seed=1.0", _ace(seed=1.0), TypeError, ["seed"]),
    ("ace inputs with 0 samples", _ace(inputs=Z[:0]), ValueError, ["inputs=", "0 samples"]),
    ("ace inputs a string", _ace(inputs="z"), TypeError, ["inputs=", "str"]),
    ("ace inputs on meta", _ace(inputs=torch.empty(4, G.latent_dim, device="meta")), ValueError,
     ["inputs=", "meta device"]),
    ("ace input_fn not callable", _ace(input_fn=3), TypeError, ["input_fn"]),
    ("ace input_fn wrong n", _ace(input_fn=lambda n, gen: torch.randn(n + 1, G.latent_dim, generator=gen)),
     ValueError, ["input_fn", "exactly n"]),
    # ace: where and on what
    ("ace device gpu7", _ace(device="gpu7"), ValueError, ["device", "gpu7"]),
    ("ace device meta", _ace(device="meta"), ValueError, ["device", "meta"]),
    ("ace meta generator", _ace(generator=_meta_generator()), ValueError,
     ["generator", "meta device", "load_state_dict"]),
    ("ace no units", _ace(units=[]), ValueError, ["unit"]),
    ("ace concept index 0", _ace(concept=0), ValueError, ["concept index 0", "1..4"]),
    ("ace concept index 9", _ace(concept=9), ValueError, ["concept index 9"]),
    ("ace region per sample, wrong n", _ace(region=torch.ones(3, 8, 8)), ValueError, ["region", "(8, 8, 8)"]),
    ("ace region inf", _ace(region=torch.full((8, 8), float("inf"))), ValueError, ["region", "NaN/inf"]),
    ("ace insert values shape", _ace(mode="insert", values=torch.ones(7)), ValueError, ["values", "20 units"]),
    ("ace batch_size=0", _ace(batch_size=0), ValueError, ["batch_size"]),
    # own inputs= and a second sample nobody described (insertion values at seed + 1, evaluation images)
    ("ace insert, own inputs, no values/input_fn", _ace(mode="insert", inputs=Z), ValueError,
     ["inputs=", "values=", "input_fn="]),
    ("causal_units own inputs, no values/input_fn",
     lambda: causal_units(G, "features", "tree", segmenter=SEG, inputs=Z, evaluate=False), ValueError,
     ["values=", "input_fn="]),
    ("causal_units own inputs + values, evaluate",
     lambda: causal_units(G, "features", "tree", segmenter=SEG, inputs=Z, values=torch.ones(20)), ValueError,
     ["evaluate=False", "input_fn="]),
    ("contextual_insertion own inputs, no values",
     lambda: contextual_insertion(G, "features", TREE, "tree", segmenter=SEG, inputs=Z), ValueError,
     ["values=", "input_fn="]),
    ("ace forward needs more inputs", _ace(generator=TwoInputs(), layer="g.features"), TypeError,
     ["TwoInputs", "input_fn=", "forward"]),
    # single-unit effects, insertion values
    ("single_unit_effects forward needs more inputs",
     lambda: single_unit_effects(TwoInputs(), "g.features", segmenter=SEG, n=4), TypeError, ["input_fn="]),
    ("single_unit_effects n=2.5", lambda: single_unit_effects(G, "features", segmenter=SEG, n=2.5), ValueError,
     ["n must be", "2.5"]),
    ("single_unit_effects seed=None", lambda: single_unit_effects(G, "features", segmenter=SEG, n=4, seed=None),
     TypeError, ["seed"]),
    ("single_unit_effects device", lambda: single_unit_effects(G, "features", segmenter=SEG, n=4, device="gpu7"),
     ValueError, ["device", "gpu7"]),
    ("single_unit_effects units", lambda: single_unit_effects(G, "features", segmenter=SEG, n=4, units=[-1]),
     IndexError, ["[-1]", "20 units"]),
    ("insertion_values n=2.5", lambda: insertion_values(G, "features", SEG, n=2.5), ValueError, ["n must be"]),
    ("insertion_values seed='1'", lambda: insertion_values(G, "features", SEG, n=4, seed="1"), TypeError,
     ["seed"]),
    ("insertion_values inputs 0", lambda: insertion_values(G, "features", SEG, inputs=Z[:0]), ValueError,
     ["inputs=", "0 samples"]),
    ("insertion_values meta generator", lambda: insertion_values(_meta_generator(), "features", SEG, n=4),
     ValueError, ["generator", "meta device"]),
    # causal units
    ("causal_units n=2.5", lambda: causal_units(G, "features", "tree", segmenter=SEG, n=2.5), ValueError,
     ["n must be", "2.5"]),
    ("causal_units inputs 0", lambda: causal_units(G, "features", "tree", segmenter=SEG, inputs=Z[:0]), ValueError,
     ["inputs=", "0 samples"]),
    ("causal_units device", lambda: causal_units(G, "features", "tree", segmenter=SEG, n=4, device="gpu7"),
     ValueError, ["device", "gpu7"]),
    ("causal_units unknown concept", lambda: causal_units(G, "features", "lake", segmenter=SEG, n=4), ValueError,
     ["'lake'", "tree"]),
    ("causal_units probabilities independent of the images",
     lambda: causal_units(G, "features", "tree", segmenter=ConstantProbabilities(), n=4, evaluate=False),
     ValueError, ["probabilities", "does not depend", "single_unit_effects"]),
    # where an edit acts
    ("trace_effects mask NaN", lambda: trace_effects(G, "features", TREE, n=4, mask=torch.full((8, 8), float("nan"))),
     ValueError, ["mask", "NaN/inf"]),
    ("trace_effects mask 0-255", lambda: trace_effects(G, "features", TREE, n=4, mask=torch.full((8, 8), 255.0)),
     ValueError, ["mask", "[0, 1]", "255"]),
    ("trace_effects n=2.5", lambda: trace_effects(G, "features", TREE, n=2.5), ValueError, ["n must be"]),
    ("trace_effects device", lambda: trace_effects(G, "features", TREE, n=4, device="meta"), ValueError,
     ["device", "meta"]),
    ("contextual_insertion n=2.5", lambda: contextual_insertion(G, "features", TREE, "tree", segmenter=SEG, n=2.5),
     ValueError, ["n must be"]),
    ("contextual_insertion seed=None",
     lambda: contextual_insertion(G, "features", TREE, "tree", segmenter=SEG, n=2, seed=None), TypeError, ["seed"]),
    # per-unit FID and artifact ablation
    ("per_unit_fid pool=2.5", _fid(pool=2.5), ValueError, ["pool must be", "2.5"]),
    ("per_unit_fid seed=None", _fid(seed=None), TypeError, ["seed"]),
    ("per_unit_fid k=2.5", _fid(k=2.5), ValueError, ["k (top images per unit)"]),
    ("per_unit_fid k > pool", _fid(k=9), ValueError, ["k=9", "pool"]),
    ("per_unit_fid inputs 0", _fid(inputs=Z[:0]), ValueError, ["inputs=", "0 samples"]),
    ("per_unit_fid device", _fid(device="gpu7"), ValueError, ["device", "gpu7"]),
    ("per_unit_fid forward needs more inputs", lambda: per_unit_fid(TwoInputs(), "g.features", pool=8, k=2,
                                                                    real_stats=_real(), extractor=_extractor()),
     TypeError, ["input_fn=", "G(z, labels)"]),
    ("per_unit_fid meta generator", _fid(generator=_meta_generator()), ValueError, ["generator", "meta device"]),
    ("artifact_ablation n=2.5", lambda: artifact_ablation(G, "features", [0], real_stats=_real(),
                                                          extractor=_extractor(), n=2.5), ValueError, ["n must be"]),
    ("artifact_ablation n_random_draws=0", lambda: artifact_ablation(G, "features", [0], real_stats=_real(),
                                                                     extractor=_extractor(), n=4, n_random_draws=0),
     ValueError, ["n_random_draws"]),
    ("artifact_ablation units twice", lambda: artifact_ablation(G, "features", [0, 0], real_stats=_real(),
                                                                extractor=_extractor(), n=4),
     ValueError, ["units", "distinct"]),
    ("artifact_ablation device", lambda: artifact_ablation(G, "features", [0], real_stats=_real(),
                                                           extractor=_extractor(), n=4, device="gpu7"),
     ValueError, ["device", "gpu7"]),
]


@pytest.mark.parametrize("case, call, error, words", CASES, ids=[c[0] for c in CASES])
def test_bad_intervention_input_names_the_argument(case, call, error, words):
    assert_raises_naming(case, call, error, words)


@NO_CUDA
@pytest.mark.parametrize("call", [_ace(device="cuda"), _fid(device="cuda"),
                                  lambda: trace_effects(G, "features", TREE, n=4, device="cuda")],
                         ids=["ace", "per_unit_fid", "trace_effects"])
def test_cuda_on_a_cpu_torch_says_this_torch_has_none(call):
    with pytest.raises(ValueError) as info:
        call()
    assert "device='cuda'" in str(info.value) and "without CUDA" in str(info.value)
    assert "pytorch.org/get-started" in str(info.value)


def test_numpy_integers_are_accepted_where_ints_are():
    np = pytest.importorskip("numpy")
    given = ace(G, "features", TREE, "tree", segmenter=SEG, n=np.int64(8), seed=np.int32(0))
    plain = ace(G, "features", TREE, "tree", segmenter=SEG, n=8, seed=0)
    assert given.mean == plain.mean and given.settings["n"] == 8


# ---- a concept absent from every held-out image ----------------------------------------------------
def test_absent_concept_is_an_error_naming_it_not_a_nan():
    with pytest.raises(AbsentConceptError) as info:
        ace(G, "features", TREE, "lake", segmenter=WithLake(), n=8)
    assert isinstance(info.value, (ValueError, GanMonitorError)) and info.value.concept == "lake"
    assert "'lake' appears in none of the 8 held-out images" in str(info.value)
    # single-unit effects keep NaN in the table (documented) but refuse to rank an absent concept:
    # the old ranking was 0, 1, 2, ... (every score NaN -> -1), an order that means nothing
    effects = single_unit_effects(G, "features", segmenter=WithLake(), n=8, units=[0, 4])
    lake = WithLake.concepts.index("lake")
    assert torch.isnan(effects.removed[:, lake]).all() and float(effects.baseline[lake]) == 0
    assert effects.ranking("tree")[0] == 0  # a present concept still ranks
    with pytest.raises(AbsentConceptError, match="'lake' appears in none"):
        effects.ranking("lake")


def test_monitor_ace_skips_an_absent_concept_and_still_logs_the_others():
    """Before: ace gave NaN and the schedule left the key out; when ace started raising on an
    absent concept, the whole evaluation failed (every concept, every layer lost). Now: only
    the absent concept is left out, even with strict=True."""
    seg = WithLake()
    result = dissect(G, "features", seg, n=8)
    context = MonitorContext(layers=("features",), segmenter=seg, sample=HeldOutSample(8, 0),
                             resolve_generator=lambda module: module, latest_dissection=lambda: result,
                             batch_size=8, strict=True)
    schedule = AceSchedule(AceOptions(["tree", "lake"], top_n=4, n=8), context)
    metrics = schedule._measure(G, result, torch.device("cpu"))
    assert list(metrics) == ["gan_monitor/features/ace/tree/iou_top4_removed"]
    units = torch.argsort(result["features"].iou[:, 2], descending=True, stable=True)[:4].tolist()
    direct = ace(G, "features", units, "tree", segmenter=seg, inputs=context.sample.inputs(G, "cpu"))
    assert metrics["gan_monitor/features/ace/tree/iou_top4_removed"] == pytest.approx(direct.fraction_removed)


def test_causal_units_warns_when_the_concept_was_never_seen():
    with pytest.warns(UserWarning, match="'lake' was neither segmented nor insertable"):
        out = causal_units(G, "features", "lake", segmenter=WithLake(), n=4, epochs=1, evaluate=False,
                           iou=torch.linspace(1, 0, 20))
    assert out.ranking == list(range(20))  # the IoU initialisation, as the warning says
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        causal_units(G, "features", "tree", segmenter=SEG, n=4, epochs=1, evaluate=False, iou=torch.linspace(1, 0, 20))


def test_insertion_with_own_inputs_draws_only_what_the_user_described():
    """Before: ace(mode="insert", inputs=...) computed the insertion values on N(0, 1) latents at
    seed + 1 whatever the user's inputs were (here: low temperature). Now it refuses; with
    input_fn= the second sample is drawn by the user's function, exactly as with values=."""
    fn = lambda n, gen: 0.5 * torch.randn(n, G.latent_dim, generator=gen)  # noqa: E731
    own = fn(8, torch.Generator().manual_seed(11))
    with pytest.raises(ValueError, match="input_fn="):
        ace(G, "features", TREE, "tree", segmenter=SEG, mode="insert", inputs=own)
    drawn = ace(G, "features", TREE, "tree", segmenter=SEG, mode="insert", inputs=own, input_fn=fn, seed=3, n=8)
    values = insertion_values(G, "features", SEG, inputs=fn(8, torch.Generator().manual_seed(4)))
    given = ace(G, "features", TREE, "tree", segmenter=SEG, mode="insert", inputs=own, values=values)
    assert torch.equal(drawn.after, given.after) and drawn.mean == given.mean
    # without inputs= the default (Gaussian latents, documented) still applies
    assert ace(G, "features", TREE, "tree", segmenter=SEG, mode="insert", n=8).mean == pytest.approx(
        ace(G, "features", TREE, "tree", segmenter=SEG, mode="insert", inputs=make_inputs(G, 8, 0),
            values=insertion_values(G, "features", SEG, n=8, seed=1)).mean)


def test_insertion_with_all_zero_values_warns_that_it_is_an_ablation():
    values = insertion_values(G, "features", WithLake(), n=8)
    lake = WithLake.concepts.index("lake")
    assert values[lake].abs().max() == 0  # never seen: 0 (documented)
    with pytest.warns(UserWarning, match="'tree' are 0 for every unit inserted"):
        ace(G, "features", TREE, "tree", segmenter=SEG, mode="insert", n=8, values=torch.zeros(20))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ace(G, "features", TREE, "tree", segmenter=SEG, mode="insert", n=8)
