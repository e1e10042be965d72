"""Trace / Edit context managers and held-out inputs."""
from __future__ import annotations

import doctest

import pytest
import torch
from torch import nn

import gan_monitor.core.tracing as tracing
from gan_monitor.core.inputs import call_generator, infer_latent_shape, iterate_batches, make_inputs, num_samples
from gan_monitor.core.tracing import Edit, Trace, eval_mode, layer_names, module_device, resolve_layer

torch.set_num_threads(1)


class Counter(nn.Module):
    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return x


def small_net():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(4, 6, 3, padding=1),
        nn.Sequential(nn.ReLU(), nn.Conv2d(6, 5, 1)),
        nn.Flatten(),
        Counter(),
    )


def no_hooks(model):
    return all(not m._forward_hooks for m in model.modules())


def test_layer_names_and_unknown_layer_lists_names():
    net = small_net()
    assert layer_names(net) == ["0", "1", "1.0", "1.1", "2", "3"]
    assert resolve_layer(net, "1.1") is net[1][1]
    with pytest.raises(KeyError, match=r"no layer named 'conv9'.*0, 1, 1\.0, 1\.1, 2, 3"):
        resolve_layer(net, "conv9")
    with pytest.raises(KeyError):
        Trace(net, ["0", "nope"])


def test_trace_records_outputs_and_removes_hooks():
    net = small_net()
    x = torch.randn(2, 4, 5, 5)
    with Trace(net, ["0", "1.1"]) as trace:
        net(x)
    assert no_hooks(net)
    assert torch.equal(trace["0"], net[0](x))
    assert torch.equal(trace["1.1"], net[1](net[0](x)))
    with pytest.raises(RuntimeError):
        with Trace(net, "0"):
            net(torch.randn(2, 3, 5, 5))  # wrong channel count
    assert no_hooks(net)


def test_trace_requires_featuremaps_when_asked():
    net = small_net()
    with pytest.raises(ValueError, match="spatial featuremaps"):
        with Trace(net, "2", require_featuremap=True):
            net(torch.randn(1, 4, 3, 3))
    assert no_hooks(net)


def test_trace_stop_skips_the_rest():
    net = small_net()
    with Trace(net, "1.1", stop=True) as trace:
        net(torch.randn(1, 4, 3, 3))
    assert trace["1.1"].shape == (1, 5, 3, 3)
    assert net[3].calls == 0
    assert no_hooks(net)


def test_edit_rule_ablation_and_gradients():
    net = small_net()
    x = torch.randn(3, 4, 5, 5)
    r = net[0](x)
    with Trace(net, "2") as base:
        net(x)
    with Edit.ablate(net, "0", units=[1, 4]), Trace(net, "0") as trace:
        net(x)
    expected = r.clone()
    expected[:, [1, 4]] = 0
    assert torch.equal(trace["0"], expected)
    assert no_hooks(net)

    a = torch.rand(6, requires_grad=True)
    m = torch.rand(5, 5)
    k = torch.randn(6)
    with Edit(net, "0", coefficients=a, mask=m, value=k), Trace(net, "0") as trace:
        out = net(x)
    am = a.view(1, 6, 1, 1) * m.view(1, 1, 5, 5)
    assert torch.allclose(trace["0"], r * (1 - am) + k.view(1, 6, 1, 1) * am)
    out.sum().backward()
    assert a.grad is not None and a.grad.abs().sum() > 0
    assert not torch.equal(out, base["2"])


def test_edit_errors():
    net = small_net()
    x = torch.randn(1, 4, 5, 5)
    with pytest.raises(ValueError, match="exactly one"):
        Edit(net, "0")
    with pytest.raises(ValueError, match="featuremap is 5x5"):
        with Edit(net, "0", units=[0], mask=torch.ones(3, 3)):
            net(x)
    with pytest.raises(IndexError, match="has 6 units"):
        with Edit(net, "0", units=[9]):
            net(x)
    assert no_hooks(net)


class WithLatentDim(nn.Module):
    latent_dim = (3, 2)

    def forward(self, z):
        return z


def test_latent_shape_inference_and_seeded_inputs():
    mlp = nn.Sequential(nn.Linear(7, 3))
    dcgan = nn.Sequential(nn.ConvTranspose2d(16, 4, 4))
    assert infer_latent_shape(mlp) == (7,)
    assert infer_latent_shape(dcgan) == (16, 1, 1)
    assert infer_latent_shape(WithLatentDim()) == (3, 2)
    with pytest.raises(ValueError, match="input_fn"):
        infer_latent_shape(nn.Sequential(nn.ReLU()))
    state = torch.get_rng_state()
    a = make_inputs(dcgan, 5, seed=3)
    assert torch.equal(torch.get_rng_state(), state)  # global RNG untouched
    assert a.shape == (5, 16, 1, 1)
    assert torch.equal(a, make_inputs(dcgan, 5, seed=3))
    assert not torch.equal(a, make_inputs(dcgan, 5, seed=4))
    with pytest.raises(ValueError, match="exactly n"):
        make_inputs(mlp, 4, 0, input_fn=lambda n, g: torch.randn(n + 1, 7, generator=g))


def test_batches_of_tuples_and_dicts():
    z, labels = torch.randn(10, 3), torch.arange(10)
    tup = (z, labels)
    dct = {"z": z, "labels": labels, "truncation": 0.7}
    assert num_samples(tup) == num_samples(dct) == 10
    seen = []
    for start, batch in iterate_batches(dct, 4):
        assert batch["truncation"] == 0.7
        seen.append((start, call_generator(lambda z, labels, truncation: labels, batch).tolist()))
    assert seen == [(0, [0, 1, 2, 3]), (4, [4, 5, 6, 7]), (8, [8, 9])]
    starts = [(s, call_generator(lambda z, labels: z.shape[0], b)) for s, b in iterate_batches(tup, 7)]
    assert starts == [(0, 7), (7, 3)]
    with pytest.raises(ValueError, match="disagree"):
        num_samples((torch.zeros(3), torch.zeros(4)))


def test_eval_mode_restores_mixed_flags_even_on_error():
    net = nn.Sequential(nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2), nn.Sequential(nn.Dropout(), nn.ReLU()))
    net.train()
    net[1].eval()                      # a submodule deliberately left in eval mode
    before = [m.training for m in net.modules()]
    with pytest.raises(RuntimeError):
        with eval_mode(net, "not a module"):
            assert not any(m.training for m in net.modules())
            raise RuntimeError("boom")
    assert [m.training for m in net.modules()] == before


def test_module_device_reads_parameters_then_buffers_then_default():
    assert module_device(nn.Linear(2, 2)) == torch.device("cpu")
    bn = nn.BatchNorm2d(3, affine=False)         # buffers only
    assert module_device(bn) == torch.device("cpu")
    assert module_device(nn.ReLU(), None) is None
    assert module_device("not a module", "fallback") == "fallback"


def test_docstring_examples_run():
    """The ``>>>`` examples of ``Trace`` and ``Edit`` are executed, not just shown."""
    result = doctest.testmod(tracing)
    assert result.attempted >= 10 and result.failed == 0
