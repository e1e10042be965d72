"""Layer names that pick one featuremap (gan_monitor.core.layer_selectors), for Trace and
Edit alike and so for dissect and ace: a module run twice per forward is refused unless
its call is named ("block.act#1", then that same call is recorded and edited); tuple and
dict outputs are selected with ":0" / ":key" (an edit changes only the selected element)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gan_monitor import dissect
from gan_monitor.core.errors import LayerSelectionError
from gan_monitor.core.layer_selectors import parse_layer_name
from gan_monitor.core.tracing import Edit, Trace, resolve_layer
from gan_monitor.interventions.ace import ace
from gan_monitor.toyworld.segmenter import load_segmenter
from gan_monitor.toyworld.stylegan import ToyStyleGenerator

torch.set_num_threads(1)
SG = dict(latent_dim=16, w_dim=16, image_size=32, channels=(32, 16, 16, 8), mapping_layers=2, noise_mode="const")


def _gen(shared=False):
    torch.manual_seed(0)
    return ToyStyleGenerator(**SG, shared_activation=shared).eval()


def _z(n=3):
    return torch.randn(n, 16, generator=torch.Generator().manual_seed(1))


def _act(x):  # the toy StyleGAN's activation, written out
    return F.leaky_relu(x, 0.2) * math.sqrt(2.0)


# ---- modules called more than once per forward ------------------------------------------------------
def test_module_run_twice_is_refused_for_trace_edit_and_dissect():
    g, z = _gen(shared=True), _z()
    with pytest.raises(LayerSelectionError) as err:
        with Trace(g, "synthesis.b8.act"):
            g(z)
    for word in ("'synthesis.b8.act#0'", "'synthesis.b8.act#1'", "more than once", "measure different things"):
        assert word in str(err.value), word
    with pytest.raises(LayerSelectionError, match="synthesis.b8.act#1"):
        with Edit(g, "synthesis.b8.act", units=[0]):
            g(z)
    with pytest.raises(LayerSelectionError, match="runs more than once"):
        dissect(g, "synthesis.b8.act", load_segmenter(), n=4, batch_size=4)
    # a module that runs once per forward is unaffected, over several forward passes in one block
    with Trace(g, "synthesis.b8.conv1") as trace:
        g(z)
        g(z)
    assert trace["synthesis.b8.conv1"].shape == (3, 16, 8, 8)


def test_named_call_is_recorded_and_edited_at_the_same_call():
    g, z = _gen(shared=True), _z()
    names = ["synthesis.b8.conv0", "synthesis.b8.conv1", "synthesis.b8.act#0", "synthesis.b8.act#1", "synthesis.b8"]
    with torch.no_grad(), Trace(g, names) as plain:
        images = g(z)
    # brute force: with a shared activation the convolutions' outputs are pre-activation
    torch.testing.assert_close(plain["synthesis.b8.act#0"], _act(plain["synthesis.b8.conv0"]))
    torch.testing.assert_close(plain["synthesis.b8.act#1"], _act(plain["synthesis.b8.conv1"]))
    assert torch.equal(plain["synthesis.b8.act#1"], plain["synthesis.b8"][0])
    # editing call 1 edits exactly what tracing call 1 records; call 0 and everything before are untouched
    with torch.no_grad(), Edit(g, "synthesis.b8.act#1", units=[2, 5]), Trace(g, names) as edited:
        out = g(z)
    assert torch.equal(edited["synthesis.b8.act#0"], plain["synthesis.b8.act#0"])
    assert torch.equal(edited["synthesis.b8.conv1"], plain["synthesis.b8.conv1"])
    after = edited["synthesis.b8.act#1"]
    assert (after[:, [2, 5]] == 0).all()
    keep = [u for u in range(after.shape[1]) if u not in (2, 5)]
    assert torch.equal(after[:, keep], plain["synthesis.b8.act#1"][:, keep])
    assert not torch.equal(out, images)
    # editing call 0 changes what conv1 sees, and call 1 is then the activation of that
    with torch.no_grad(), Edit(g, "synthesis.b8.act#0", units=[1]), Trace(g, names) as first:
        g(z)
    assert (first["synthesis.b8.act#0"][:, 1] == 0).all()
    assert not torch.equal(first["synthesis.b8.conv1"], plain["synthesis.b8.conv1"])
    torch.testing.assert_close(first["synthesis.b8.act#1"], _act(first["synthesis.b8.conv1"]))


def test_named_call_that_never_happens_and_direct_calls():
    g, z = _gen(shared=True), _z()
    with pytest.raises(LayerSelectionError, match=r"ran 2 time\(s\).*call 0\.\.1"):
        with Trace(g, "synthesis.b8.act#2"):
            g(z)
    # a submodule called directly (outside the model's forward) keeps the old behaviour
    act = g.synthesis.b8.act
    with Trace(g, "synthesis.b8.act") as trace:
        act(torch.ones(1, 2, 1, 1))
        act(-torch.ones(1, 2, 1, 1))
    assert (trace["synthesis.b8.act"] < 0).all()  # the last call


def test_dissect_and_ace_at_a_named_call_match_the_equivalent_layer():
    g, seg = _gen(shared=True), load_segmenter()
    own = _gen(shared=False)  # the same weights, one activation per convolution (inside convK)
    own.load_state_dict(g.state_dict())
    args = dict(n=8, seed=2, batch_size=4)
    named = dissect(g, "synthesis.b16.act#1", seg, **args)["synthesis.b16.act#1"]
    same = dissect(own, "synthesis.b16.conv1", seg, **args)["synthesis.b16.conv1"]
    block = dissect(g, "synthesis.b16:0", seg, **args)["synthesis.b16:0"]  # the block's featuremap = act call 1
    assert torch.equal(named.iou, same.iou) and torch.equal(named.thresholds, same.thresholds)
    assert torch.equal(named.iou, block.iou)
    a = ace(g, "synthesis.b16.act#1", [0, 1, 2], "sky", segmenter=seg, n=6)
    b = ace(own, "synthesis.b16.conv1", [0, 1, 2], "sky", segmenter=seg, n=6)
    assert torch.equal(a.before, b.before) and torch.equal(a.after, b.after) and not torch.equal(a.after, a.before)


# ---- tuple and dict outputs -------------------------------------------------------------------------
def test_tuple_output_traced_and_edited_selects_only_that_element():
    g, z = _gen(), _z()
    with torch.no_grad(), Trace(g, ["synthesis.b16:0", "synthesis.b16:1", "synthesis.b16:-1",
                                    "synthesis.b16.conv1", "synthesis.b16"]) as t:
        images = g(z)
    assert torch.equal(t["synthesis.b16:0"], t["synthesis.b16.conv1"])
    assert t["synthesis.b16:1"].shape == (3, 3, 16, 16) and torch.equal(t["synthesis.b16:-1"], t["synthesis.b16:1"])
    # brute force of "only the selected element": the next block's inputs, captured by a pre-hook
    seen = {}
    hook = g.synthesis.b32.register_forward_pre_hook(lambda m, args: seen.update(x=args[0], rgb=args[1]))
    try:
        with torch.no_grad(), Edit(g, "synthesis.b16:0", units=[3]):
            edited = g(z)
    finally:
        hook.remove()
    x0 = t["synthesis.b16:0"]
    assert (seen["x"][:, 3] == 0).all() and torch.equal(seen["x"][:, :3], x0[:, :3])
    assert torch.equal(seen["rgb"], t["synthesis.b16:1"])  # the block's RGB output left as it was
    assert not torch.equal(edited, images)
    # editing the RGB element (3 "units") instead: the featuremap element is untouched
    with torch.no_grad(), Edit(g, "synthesis.b16:1", units=[0], value=0.5), Trace(g, "synthesis.b16") as t2:
        g(z)
    x, rgb = t2["synthesis.b16"]
    assert isinstance(t2["synthesis.b16"], tuple) and torch.equal(x, x0)
    assert (rgb[:, 0] == 0.5).all() and torch.equal(rgb[:, 1:], t["synthesis.b16:1"][:, 1:])


class DictBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 1)

    def forward(self, x):
        return {"feat": self.conv(x), "aux": x.mean((1, 2, 3))}


class DictNet(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.block = DictBlock()
        self.head = nn.Conv2d(4, 3, 1)

    def forward(self, x):
        out = self.block(x)
        return torch.tanh(self.head(out["feat"])) + out["aux"].view(-1, 1, 1, 1)


def test_dict_output_traced_and_edited():
    net, x = DictNet(), torch.randn(2, 2, 5, 5, generator=torch.Generator().manual_seed(3))
    with torch.no_grad(), Trace(net, ["block:feat", "block:aux"]) as t:
        net(x)
    assert torch.equal(t["block:feat"], net.block.conv(x)) and torch.equal(t["block:aux"], x.mean((1, 2, 3)))
    with torch.no_grad(), Edit(net, "block:feat", units=[1, 3]), Trace(net, "block") as t2:
        out = net(x)
    feat = net.block.conv(x)
    feat[:, [1, 3]] = 0
    expected = torch.tanh(net.head(feat)) + x.mean((1, 2, 3)).view(-1, 1, 1, 1)  # brute force
    torch.testing.assert_close(out, expected)
    assert torch.equal(t2["block"]["aux"], x.mean((1, 2, 3))) and set(t2["block"]) == {"feat", "aux"}


def test_unknown_selectors_list_what_the_output_holds():
    g, z = _gen(), _z()
    with pytest.raises(LayerSelectionError) as err:
        with Trace(g, "synthesis.b16:2"):
            g(z)
    assert "[0] tensor (3, 16, 16, 16)" in str(err.value) and "[1] tensor (3, 3, 16, 16)" in str(err.value)
    with pytest.raises(LayerSelectionError, match="'feat'.*'aux'"):
        net = DictNet()
        with Trace(net, "block:nope"):
            net(torch.zeros(1, 2, 3, 3))
    with pytest.raises(LayerSelectionError, match="drop the selector"):
        with Trace(g, "synthesis.b16.conv1:0"):
            g(z)
    with pytest.raises(ValueError, match=r"synthesis\.b16:0"):  # no selector on a tuple layer: the hint
        dissect(g, "synthesis.b16", load_segmenter(), n=4, batch_size=4)
    with pytest.raises(LayerSelectionError, match="cannot read"):
        resolve_layer(g, "synthesis.b16#x")
    with pytest.raises(KeyError, match="no layer named 'synthesis.b99'"):
        resolve_layer(g, "synthesis.b99:0")
    assert parse_layer_name("a.b#3:x:0").selectors == ("x", "0") and parse_layer_name("a.b#3").call == 3


class SharedReLU(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv1, self.conv2, self.relu = nn.Conv2d(3, 4, 1), nn.Conv2d(4, 3, 1), nn.ReLU()

    def forward(self, x):
        return torch.tanh(self.relu(self.conv2(self.relu(self.conv1(x)))))


def test_tracing_every_module_skips_reused_ones():
    from gan_monitor.interventions.effects import trace_effects

    net, x = SharedReLU().eval(), torch.randn(4, 3, 5, 5, generator=torch.Generator().manual_seed(0))
    with Trace(net, ["conv1", "relu", "conv2"], allow_repeated=True) as trace:
        net(x)
    assert trace.repeated == ["relu"]  # kept the last call, and says so
    assert torch.equal(trace["relu"], torch.relu(net.conv2(torch.relu(net.conv1(x)))))
    effects = trace_effects(net, "conv1", [0, 1], inputs=x)
    assert list(effects) == ["conv2"] and effects["conv2"] > 0  # the reused ReLU is left out
    with pytest.raises(LayerSelectionError, match="'relu#0', 'relu#1'"):
        trace_effects(net, "relu", [0], inputs=x)
    assert list(trace_effects(net, "relu#0", [0], inputs=x)) == ["conv2"]


def test_unknown_layers_accepts_calls_and_selectors():
    from gan_monitor.core.tracing import unknown_layers

    g = _gen(shared=True)
    names = ["synthesis.b16:0", "synthesis.b8.act#1", "synthesis.b8.conv0", "synthesis.b99", "nope:0", "a#b"]
    assert unknown_layers(g, names) == ["synthesis.b99", "nope:0", "a#b"]
