"""Read and edit the outputs of named submodules of any ``nn.Module``.

Layers are named with the dotted names of ``model.named_modules()`` (e.g.
``"layer4"`` or ``"blocks.3.conv"``), optionally followed by ``#call`` (which call of a
module run several times per forward pass) and ``:selector`` (an element of a tuple or
dict output): ``"synthesis.b16:0"``, ``"block:feat"``, ``"block.act#1"``; see
:mod:`gan_monitor.core.layer_selectors`. A module that runs more than once per forward
pass must be named with its call. Both context managers always remove their
hooks on exit, also when the forward pass raises::

    with Trace(generator, ["layer3", "layer4"]) as trace:
        images = generator(z)
    feats = trace["layer4"]                     # [N, units, h, w]

    # Ablate units 3 and 7 of layer4 everywhere (paper Eq. 3, docs/method.md §6):
    with Edit(generator, "layer4", units=[3, 7]):
        ablated = generator(z)

The edit rule (docs/method.md §6) is ``r' = r * (1 - a*m) + k * (a*m)`` with ``a`` a
per-unit coefficient in [0, 1], ``m`` a spatial mask in [0, 1] at featuremap
resolution and ``k`` the value forced (0 ablates; a per-unit mean activation inserts).
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterable, Iterator, Sequence

import torch
from torch import nn

from gan_monitor.core.layer_selectors import LayerTap, describe_output, parse_layer_name

__all__ = ["layer_names", "resolve_layer", "unknown_layers", "as_layer_list", "check_featuremap", "module_device", "eval_mode", "Trace",
           "Edit", "StopForward"]


def module_device(module: Any, default: Any = torch.device("cpu")) -> Any:
    """Device of ``module``'s first parameter or buffer; ``default`` when it has none
    (or is not an ``nn.Module``)."""
    if isinstance(module, nn.Module):
        for t in module.parameters():
            return t.device
        for t in module.buffers():
            return t.device
    return default


@contextmanager
def eval_mode(*objects: Any) -> Iterator[None]:
    """Put every ``nn.Module`` among ``objects`` in eval mode (other objects are
    ignored) and restore every submodule's own training flag on exit, so a
    measurement never changes a model's mode or BatchNorm statistics."""
    modules = [m for o in objects if isinstance(o, nn.Module) for m in o.modules()]
    flags = [m.training for m in modules]
    for m in modules:
        m.training = False
    try:
        yield
    finally:
        for m, flag in zip(modules, flags):
            m.training = flag


def layer_names(model: nn.Module) -> list[str]:
    """Dotted names of every submodule of ``model`` (the root itself excluded)."""
    return [name for name, _ in model.named_modules() if name]


def resolve_layer(model: nn.Module, name: str) -> nn.Module:
    """The submodule that layer ``name`` designates (``module[#call][:selector]``, see
    :mod:`gan_monitor.core.layer_selectors`); a KeyError lists the available names otherwise."""
    if not isinstance(name, str):
        raise TypeError(f"layer names are strings such as 'layer4', got {type(name).__name__}.")
    modules = dict(model.named_modules())
    spec = parse_layer_name(name, modules)
    if spec.module and spec.module in modules:
        return modules[spec.module]
    available = layer_names(model)
    raise KeyError(
        f"{type(model).__name__} has no layer named {spec.module!r}. Available layers "
        f"(dotted names as in named_modules(), optionally with #call and :selector): {', '.join(available) or '(none)'}"
    )


def unknown_layers(model: nn.Module, names: Iterable[str]) -> list[str]:
    """The names among ``names`` that designate no module of ``model`` (``#call`` and
    ``:selector`` suffixes allowed; whether they fit the output is seen when it runs)."""
    unknown = []
    for name in names:
        try:
            resolve_layer(model, name)
        except (KeyError, TypeError, ValueError):
            unknown.append(name)
    return unknown


def _spec(model: nn.Module, name: str):
    return parse_layer_name(name, dict(model.named_modules()))


def as_layer_list(layers: str | Iterable[str]) -> list[str]:
    """``layers`` (one dotted name or several) as a list of distinct names."""
    names = [layers] if isinstance(layers, str) else list(layers)
    if not names:
        raise ValueError("give at least one layer name.")
    if len(set(names)) != len(names):
        raise ValueError(f"layer names must be distinct, got {names}.")
    return names


def check_featuremap(name: str, output: object) -> torch.Tensor:
    """Return ``output`` if it is a 4-D featuremap ``[N, units, h, w]``, else raise."""
    if isinstance(output, torch.Tensor) and output.dim() == 4:
        return output
    if isinstance(output, (tuple, list, dict)):
        raise ValueError(
            f"layer {name!r} outputs {describe_output(output)}; dissection needs one featuremap [N, units, height, "
            f"width]. Pick it with a selector after the name: '{name}:0' (position in a tuple/list) or "
            f"'{name}:<key>' (dict key); see gan_monitor.core.layer_selectors.")
    what = (f"a tensor of shape {tuple(output.shape)}" if isinstance(output, torch.Tensor)
            else f"a {type(output).__name__}")
    raise ValueError(
        f"layer {name!r} outputs {what}; dissection needs spatial featuremaps of shape "
        "[N, units, height, width] (a fully connected/MLP layer or generator has none). "
        "Pick a convolutional layer of the generator."
    )


class StopForward(Exception):
    """Raised by ``Trace(..., stop=True)`` once every traced layer has run."""


class Trace:
    """Record the outputs of one or more layers during forward passes.

    Args:
        model: any ``nn.Module``.
        layers: a dotted layer name or a list of them.
        detach: store ``output.detach()`` instead of the output itself.
        require_featuremap: raise when a layer's output is not ``[N, U, h, w]``.
        stop: abort the forward pass (by raising ``StopForward``, which the
            context manager swallows) once all layers have run: useful to compute
            featuremaps without paying for the rest of the network.
        allow_repeated: do not refuse a layer (named without ``#call``) whose module runs
            more than once per forward pass: keep its last call's output and list it in
            ``trace.repeated`` (e.g. to trace every module of a network and skip those).

    ``trace[layer]`` is the output of the latest forward pass; ``trace.outputs``
    is the dict of all of them.

    >>> import torch
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Conv2d(1, 2, kernel_size=1), nn.ReLU())
    >>> _ = nn.init.constant_(net[0].weight, 2.0), nn.init.zeros_(net[0].bias)
    >>> with Trace(net, "0") as trace:
    ...     image = net(torch.tensor([[[[1.0, -1.0]]]]))  # [1, 1, 1, 2]
    >>> trace["0"].flatten().tolist()  # the convolution's output, before the ReLU
    [2.0, -2.0, 2.0, -2.0]
    >>> image.flatten().tolist()
    [2.0, 0.0, 2.0, 0.0]
    """

    def __init__(self, model: nn.Module, layers: str | Iterable[str], *, detach: bool = False,
                 require_featuremap: bool = False, stop: bool = False, allow_repeated: bool = False):
        self.model = model
        self.layers = as_layer_list(layers)
        self.modules = {name: resolve_layer(model, name) for name in self.layers}
        self.specs = {name: _spec(model, name) for name in self.layers}
        self.detach = detach
        self.require_featuremap = require_featuremap
        self.stop = stop
        self.allow_repeated = bool(allow_repeated)
        self.outputs: dict[str, torch.Tensor] = {}
        self._handles: list = []
        self._taps: list[LayerTap] = []

    @property
    def repeated(self) -> list[str]:
        """Traced layers whose module ran more than once in a forward pass (``allow_repeated``)."""
        return [tap.spec.text for tap in self._taps if tap.repeated]

    def _hook_for(self, name: str):
        def record(output):
            if self.require_featuremap:
                check_featuremap(name, output)
            self.outputs[name] = output.detach() if self.detach and isinstance(output, torch.Tensor) else output
            if self.stop and all(layer in self.outputs for layer in self.layers):
                raise StopForward()
        return record

    def __enter__(self) -> "Trace":
        self.outputs = {}
        self._taps = [LayerTap(self.model, self.specs[name], module, self._hook_for(name), self.allow_repeated)
                      for name, module in self.modules.items()]
        try:
            for tap in self._taps:
                self._handles.append(tap.attach())
        except BaseException:
            self.remove()
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        self.remove()
        return exc_type is not None and issubclass(exc_type, StopForward)

    def remove(self) -> None:
        for tap in self._handles:
            tap.remove()
        self._handles = []

    def clear(self) -> None:
        self.outputs = {}

    def __getitem__(self, layer: str) -> torch.Tensor:
        if layer not in self.outputs:
            if layer not in self.layers:
                raise KeyError(f"layer {layer!r} is not traced; traced layers: {', '.join(self.layers)}")
            raise KeyError(f"layer {layer!r} has not run yet; call the model inside the `with` block.")
        return self.outputs[layer]


def _per_unit(value, units: int, name: str, what: str, like: torch.Tensor) -> torch.Tensor:
    """Scalar or ``[U]`` tensor -> broadcastable ``[1, U, 1, 1]`` (other 4-D shapes kept)."""
    v = torch.as_tensor(value, dtype=like.dtype, device=like.device)
    if v.dim() == 0:
        return v
    if v.dim() == 1:
        if v.numel() != units:
            raise ValueError(f"{what} for layer {name!r} has {v.numel()} entries but the layer has {units} units.")
        return v.view(1, units, 1, 1)
    if v.dim() == 4:
        return v
    raise ValueError(f"{what} must be a scalar, a [units] vector or a 4-D tensor, got shape {tuple(v.shape)}.")


def _spatial_mask(mask, out: torch.Tensor, name: str) -> torch.Tensor:
    m = torch.as_tensor(mask, dtype=out.dtype, device=out.device)
    h, w = out.shape[-2:]
    if m.shape[-2:] != (h, w):
        raise ValueError(
            f"the mask for layer {name!r} has spatial size {tuple(m.shape[-2:])} but the featuremap is "
            f"{h}x{w}; give the mask at featuremap resolution."
        )
    if m.dim() == 2:
        return m.view(1, 1, h, w)
    if m.dim() == 3:
        return m.unsqueeze(1)
    if m.dim() == 4:
        return m
    raise ValueError(f"mask must be [h,w], [N,h,w] or [N,1,h,w], got shape {tuple(m.shape)}.")


class Edit:
    """Replace a layer's output by ``r * (1 - a*m) + k * (a*m)`` while active.

    Args:
        model, layer: the module and the dotted name of the layer to edit.
        units: unit indices to edit fully (``a = 1`` there, 0 elsewhere), or
        coefficients: per-unit ``a`` in [0, 1] (shape ``[U]``; may require grad,
            e.g. to optimise a causal unit set). Give exactly one of the two.
        mask: spatial mask ``m`` in [0, 1] at featuremap resolution, ``[h, w]``,
            ``[N, h, w]`` or ``[N, 1, h, w]``; default: everywhere.
        value: the forced value ``k``: a scalar, a per-unit ``[U]`` vector or a
            tensor broadcastable to the featuremap. 0 (default) ablates.

    The attributes ``coefficients``, ``mask`` and ``value`` may be changed between
    forward passes.

    >>> import torch
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Conv2d(1, 2, kernel_size=1), nn.ReLU())
    >>> _ = nn.init.constant_(net[0].weight, 2.0), nn.init.zeros_(net[0].bias)
    >>> x = torch.tensor([[[[1.0, 3.0]]]])  # [1, 1, 1, 2]: unit outputs 2 and 6
    >>> with Edit(net, "0", units=[1]):  # ablate unit 1
    ...     net(x).flatten().tolist()
    [2.0, 6.0, 0.0, 0.0]
    >>> with Edit(net, "0", units=[0], value=5.0, mask=torch.tensor([[1.0, 0.0]])):  # force unit 0 to 5, left only
    ...     net(x).flatten().tolist()
    [5.0, 6.0, 2.0, 6.0]
    >>> with Edit(net, "0", coefficients=torch.tensor([0.5, 0.0])):  # halfway to 0 for unit 0
    ...     net(x).flatten().tolist()
    [1.0, 3.0, 2.0, 6.0]
    >>> net(x).flatten().tolist()  # the hook is gone after the block
    [2.0, 6.0, 2.0, 6.0]
    """

    def __init__(self, model: nn.Module, layer: str, *, units: Sequence[int] | None = None,
                 coefficients: torch.Tensor | None = None, mask=None, value=0.0):
        if (units is None) == (coefficients is None):
            raise ValueError("give exactly one of `units` (indices to edit) or `coefficients` (per-unit a in [0,1]).")
        self.model = model
        self.layer = layer
        self.module = resolve_layer(model, layer)
        self.spec = _spec(model, layer)
        self.units = None if units is None else [int(u) for u in units]
        self.coefficients = coefficients
        self.mask = mask
        self.value = value
        self._handle = None

    @classmethod
    def ablate(cls, model: nn.Module, layer: str, units: Sequence[int], mask=None) -> "Edit":
        """Force ``units`` to zero (within ``mask``)."""
        return cls(model, layer, units=units, mask=mask, value=0.0)

    @classmethod
    def insert(cls, model: nn.Module, layer: str, units: Sequence[int], value, mask=None) -> "Edit":
        """Force ``units`` to ``value`` (scalar or per-unit ``[U]``) within ``mask``."""
        return cls(model, layer, units=units, mask=mask, value=value)

    def _coefficients(self, out: torch.Tensor) -> torch.Tensor:
        n_units = out.shape[1]
        if self.units is not None:
            bad = [u for u in self.units if not 0 <= u < n_units]
            if bad:
                raise IndexError(f"units {bad} do not exist in layer {self.layer!r}, which has {n_units} units.")
            a = torch.zeros(n_units, dtype=out.dtype, device=out.device)
            a[self.units] = 1.0
            return a.view(1, n_units, 1, 1)
        return _per_unit(self.coefficients, n_units, self.layer, "coefficients", out)

    def edit(self, out: torch.Tensor) -> torch.Tensor:
        """Apply the edit rule to a featuremap ``out`` ``[N, U, h, w]``."""
        out = check_featuremap(self.layer, out)
        am = self._coefficients(out)
        if self.mask is not None:
            am = am * _spatial_mask(self.mask, out, self.layer)
        k = _per_unit(self.value, out.shape[1], self.layer, "value", out)
        return out * (1 - am) + k * am

    def __enter__(self) -> "Edit":
        self._handle = LayerTap(self.model, self.spec, self.module, self.edit).attach()
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        return False
