"""The determinism check (gan_monitor.core.determinism) run by dissect, ace and
single_unit_effects: it fires on a generator with fresh random noise, not on one whose
noise is an input or constant; allow_nondeterministic=True warns instead; its cost is two
forward passes of 4 samples."""
from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from gan_monitor import dissect
from gan_monitor.callbacks.dissection_monitor import DissectionMonitor
from gan_monitor.core.determinism import DETERMINISM_SAMPLES, check_deterministic
from gan_monitor.core.errors import GanMonitorError, NondeterministicGeneratorError
from gan_monitor.dissection.options import DissectionOptions
from gan_monitor.interventions.ace import ace, single_unit_effects
from gan_monitor.toyworld.segmenter import load_segmenter
from gan_monitor.toyworld.stylegan import ToyStyleGenerator

torch.set_num_threads(1)
SG = dict(latent_dim=16, w_dim=16, image_size=32, channels=(32, 16, 16, 8), mapping_layers=2)
LAYER = "synthesis.b16.conv0"


def _style(mode="random"):
    torch.manual_seed(0)
    return ToyStyleGenerator(**SG, noise_mode=mode)


class Counting(nn.Module):
    """A deterministic toy generator counting its forward calls and their batch sizes."""

    def __init__(self, jitter=0.0):
        super().__init__()
        self.conv = nn.Conv2d(4, 6, 1)
        self.to_rgb = nn.Conv2d(6, 3, 1)
        self.jitter, self.sizes = jitter, []

    def forward(self, z):
        self.sizes.append(z.shape[0])
        x = self.conv(z.view(-1, 4, 1, 1).expand(-1, 4, 8, 8))
        return torch.tanh(self.to_rgb(x) + self.jitter * torch.randn(z.shape[0], 3, 8, 8))


def test_dissect_refuses_fresh_random_noise_and_names_the_fixes():
    g = _style("random")
    with pytest.raises(NondeterministicGeneratorError) as err:
        dissect(g, LAYER, load_segmenter(), n=8, batch_size=4)  # plain z: noise drawn at every call
    message = str(err.value)
    for fix in ("noise as an input", "noise_mode='const'", "allow_nondeterministic=True", "stylegan_inputs"):
        assert fix in message, fix
    assert isinstance(err.value, GanMonitorError)


@pytest.mark.parametrize("how", ["noise as inputs", "const noise"])
def test_dissect_accepts_fixed_noise(how):
    g = _style("random" if how == "noise as inputs" else "const")
    input_fn = g.input_fn() if how == "noise as inputs" else None
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        result = dissect(g, LAYER, load_segmenter(), n=8, batch_size=4, input_fn=input_fn)
    assert "nondeterministic" not in result.settings
    assert result[LAYER].iou.shape[0] == g.featuremap_shapes()[LAYER][0]


def test_allow_nondeterministic_warns_and_records_the_difference():
    g = _style("random")
    with pytest.warns(UserWarning, match="allow_nondeterministic=True"):
        result = dissect(g, LAYER, load_segmenter(), n=8, batch_size=4, allow_nondeterministic=True)
    assert result.settings["nondeterministic"] > 1e-3  # the largest pixel difference seen
    assert DissectionOptions(allow_nondeterministic=True).allow_nondeterministic
    with pytest.raises(TypeError, match="allow_nondeterministic"):
        DissectionOptions(allow_nondeterministic="yes")


def test_ace_and_single_unit_effects_check_too():
    seg = load_segmenter()
    noisy, fixed = _style("random"), _style("const")
    with pytest.raises(NondeterministicGeneratorError, match="ace"):
        ace(noisy, LAYER, [0, 1], "sky", segmenter=seg, n=6)
    with pytest.raises(NondeterministicGeneratorError, match="single-unit ablation"):
        single_unit_effects(noisy, LAYER, segmenter=seg, units=[0], n=4)
    with pytest.warns(UserWarning, match="different images"):
        single_unit_effects(noisy, LAYER, segmenter=seg, units=[0], n=4, allow_nondeterministic=True)
    # fixed noise passes; ablating unit 0 of a deterministic generator is reproducible
    a = single_unit_effects(fixed, LAYER, segmenter=seg, units=[0], n=4)
    b = single_unit_effects(fixed, LAYER, segmenter=seg, units=[0], n=4)
    assert torch.equal(a.removed.nan_to_num(-7), b.removed.nan_to_num(-7))


def test_check_cost_and_tolerance():
    g = Counting()

    class Halves:
        concepts, categories = ["-", "left", "right"], ["-", "side", "side"]

        def segment(self, images):
            out = torch.ones(images.shape[0], 1, *images.shape[-2:], dtype=torch.long)
            out[..., images.shape[-1] // 2:] = 2
            return out

    dissect(g, "conv", Halves(), n=10, batch_size=5)
    # the check: two passes over the first 4 inputs, then the two batches of the measurement
    assert g.sizes == [DETERMINISM_SAMPLES, DETERMINISM_SAMPLES, 5, 5]
    # differences under the tolerance (e.g. non-deterministic GPU kernels) do not count
    assert check_deterministic(Counting(jitter=1e-7).eval(), torch.zeros(3, 4)) == 0.0
    with pytest.raises(NondeterministicGeneratorError, match="first 3 sample"):
        check_deterministic(Counting(jitter=1e-2).eval(), torch.zeros(3, 4))


def test_monitor_passes_the_option_on():
    seg = load_segmenter()
    m = DissectionMonitor(layers=[LAYER], segmenter=seg, allow_nondeterministic=True)
    assert m.options.allow_nondeterministic and m.context.allow_nondeterministic
    assert not DissectionMonitor(layers=[LAYER], segmenter=seg).options.allow_nondeterministic
