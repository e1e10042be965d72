"""Layer names that pick one featuremap: which call of a reused module, which element of
a tuple or dict output. Used by ``Trace`` and ``Edit`` (``gan_monitor.core.tracing``), and
so by dissection, interventions and every other measurement, for tracing and editing alike.

Syntax: ``module[#call][:selector[:selector...]]``

* ``module``: the dotted name of ``model.named_modules()``, e.g. ``"synthesis.b16"``.
* ``#call``: which call of the module within one forward pass of the model, counted from
  0 (``"synthesis.b8.act#1"``: the second time the shared activation runs). Without it,
  a module that runs more than once per forward pass is refused: tracing would keep one
  call's output while editing would edit every call, so a dissection and an intervention
  would silently measure different things.
* ``:selector``: an element of a tuple/list output by position (``"synthesis.b16:0"``: the
  featuremap of a StyleGAN2 block returning ``(x, rgb)``; negative positions count from
  the end) or of a dict output by key (``"block:feat"``); chain them for nested outputs
  (``"block:out:0"``). Editing replaces only the selected element and returns the rest of
  the output unchanged (same container type). An unknown selector raises
  :class:`~gan_monitor.core.errors.LayerSelectionError` listing what the output holds.

A module whose own name contains ``#`` or ``:`` is found by that name first.

Calls are counted per forward pass of the model given to ``Trace``/``Edit`` (reset when
its ``forward`` starts); the check for repeated calls applies inside such a forward pass
(a submodule called directly, outside the model's forward, keeps the old behaviour: the
last call traced, every call edited).

>>> parse_layer_name("synthesis.b8.act#1:0")
LayerSpec(text='synthesis.b8.act#1:0', module='synthesis.b8.act', call=1, selectors=('0',))
>>> select_output((1, {"feat": 2}), ("1", "feat"), "block:1:feat")
2
>>> replace_output((1, {"feat": 2, "aux": 3}), ("1", "feat"), 9)
(1, {'feat': 9, 'aux': 3})
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch
from torch import nn

from gan_monitor.core.errors import LayerSelectionError

__all__ = ["LayerSpec", "parse_layer_name", "describe_output", "select_output", "replace_output", "LayerTap"]

_SPEC = re.compile(r"^(?P<module>[^#:]+)(?:#(?P<call>[0-9]+))?(?P<selectors>(?::[^:#]+)*)$")


@dataclass(frozen=True)
class LayerSpec:
    """A parsed layer name: ``module`` (dotted), ``call`` (index per forward pass, or None:
    the module must run once) and ``selectors`` (path into the output, as strings)."""

    text: str
    module: str
    call: int | None
    selectors: tuple[str, ...]


def parse_layer_name(text: str, modules: Mapping[str, Any] | None = None) -> LayerSpec:
    """Split ``text`` into module, call and selectors (see the module docstring). With
    ``modules`` (``dict(model.named_modules())``), a name that is itself a module is taken
    as is."""
    if not isinstance(text, str):
        raise TypeError(f"layer names are strings such as 'layer4' or 'synthesis.b16:0', got {type(text).__name__}.")
    if modules is not None and text in modules or ("#" not in text and ":" not in text):
        return LayerSpec(text, text, None, ())
    match = _SPEC.match(text)
    if match is None:
        raise LayerSelectionError(
            f"cannot read the layer name {text!r}: write module[#call][:selector...], e.g. 'synthesis.b16:0' "
            "(element 0 of a tuple output), 'block:feat' (key 'feat' of a dict output) or 'block.act#1' "
            "(the second call of a module run twice per forward pass).")
    selectors = tuple(s for s in match["selectors"].split(":") if s)
    call = None if match["call"] is None else int(match["call"])
    return LayerSpec(text, match["module"], call, selectors)


def _describe_value(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"tensor {tuple(value.shape)}"
    if isinstance(value, Mapping):
        return f"dict of {len(value)}"
    if isinstance(value, (tuple, list)):
        return f"{type(value).__name__} of {len(value)}"
    return type(value).__name__


def describe_output(output: Any) -> str:
    """What a layer's output holds, one level deep, e.g. ``"a tuple of 2: [0] tensor (4, 16, 8, 8),
    [1] tensor (4, 3, 8, 8)"``."""
    if isinstance(output, Mapping):
        items = ", ".join(f"{k!r}: {_describe_value(v)}" for k, v in output.items())
        return f"a dict with keys {items or '(none)'}"
    if isinstance(output, (tuple, list)):
        items = ", ".join(f"[{i}] {_describe_value(v)}" for i, v in enumerate(output))
        return f"a {type(output).__name__} of {len(output)}: {items or '(empty)'}"
    return f"a {_describe_value(output)}" if not isinstance(output, torch.Tensor) else _describe_value(output)


def _key(container: Any, token: str, name: str) -> Any:
    """The index/key ``token`` designates in ``container``; LayerSelectionError if none."""
    if isinstance(container, Mapping):
        if token in container:
            return token
        if re.fullmatch(r"-?[0-9]+", token) and int(token) in container:
            return int(token)
        raise LayerSelectionError(f"layer {name!r}: the output has no key {token!r}; it is "
                                  f"{describe_output(container)}. Pick one of these keys after ':'.")
    if isinstance(container, (tuple, list)):
        if re.fullmatch(r"-?[0-9]+", token) and -len(container) <= int(token) < len(container):
            return int(token)
        raise LayerSelectionError(f"layer {name!r}: {token!r} is not a position of the output, which is "
                                  f"{describe_output(container)}. Use a position 0..{len(container) - 1} after ':'.")
    raise LayerSelectionError(f"layer {name!r}: selector {token!r} needs a tuple, list or dict output, but the "
                              f"output there is {describe_output(container)}; drop the selector.")


def select_output(output: Any, selectors: tuple[str, ...], name: str) -> Any:
    """The element of ``output`` that ``selectors`` designate (``output`` itself if none)."""
    for token in selectors:
        output = output[_key(output, token, name)]
    return output


def _rebuilt(container: Any, key: Any, value: Any) -> Any:
    if isinstance(container, Mapping):
        items = dict(container)
        items[key] = value
        try:
            return type(container)(items)
        except TypeError:
            return items
    items = list(container)
    items[key] = value
    if isinstance(container, list):
        return items
    return type(container)(*items) if hasattr(container, "_fields") else type(container)(items)


def replace_output(output: Any, selectors: tuple[str, ...], value: Any, name: str = "layer") -> Any:
    """A copy of ``output`` whose selected element is ``value`` (``value`` itself if no
    selector); the other elements are the same objects, the containers are new."""
    if not selectors:
        return value
    key = _key(output, selectors[0], name)
    return _rebuilt(output, key, replace_output(output[key], selectors[1:], value, name))


class LayerTap:
    """Forward hooks that hand one layer's selected featuremap to ``fn`` at the chosen
    call, and put ``fn``'s result (if not None) back into the module's output.

    ``attach()`` registers a forward hook on the module and a pre/post hook on ``model``
    (which reset and check the call count per forward pass); ``remove()`` removes them.

    ``allow_repeated``: a module without ``#call`` that runs more than once per forward is
    not refused; ``fn`` sees every call (the old behaviour) and ``repeated`` becomes True.
    """

    def __init__(self, model: nn.Module, spec: LayerSpec, module: nn.Module, fn: Callable[[Any], Any],
                 allow_repeated: bool = False):
        self.model, self.spec, self.module, self.fn = model, spec, module, fn
        self.allow_repeated, self.repeated = allow_repeated, False
        self.count = 0
        self._in_forward = False
        self._handles: list = []

    def attach(self) -> "LayerTap":
        self.count, self._in_forward = 0, False
        try:
            self._handles.append(self.model.register_forward_pre_hook(self._start))
            self._handles.append(self.module.register_forward_hook(self._hook))
            self._handles.append(self.model.register_forward_hook(self._end))
        except BaseException:
            self.remove()
            raise
        return self

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _start(self, module, inputs) -> None:
        self.count, self._in_forward = 0, True

    def _end(self, module, inputs, output) -> None:
        self._in_forward = False
        call = self.spec.call
        if call is not None and self.count <= call:
            raise LayerSelectionError(
                f"layer {self.spec.text!r} names call {call} (counted from 0) of module {self.spec.module!r}, but it "
                f"ran {self.count} time(s) in this forward pass of {type(self.model).__name__}; use a call "
                f"0..{max(self.count - 1, 0)}{' or no #call' if self.count == 1 else ''}.")

    def _hook(self, module, inputs, output):
        self.count += 1
        call = self.spec.call
        if call is None:
            if self.count > 1 and self._in_forward and self.allow_repeated:
                self.repeated = True
            elif self.count > 1 and self._in_forward:
                calls = ", ".join(f"'{self.spec.module}#{i}'" for i in range(self.count))
                raise LayerSelectionError(
                    f"module {self.spec.module!r} runs more than once in one forward pass of "
                    f"{type(self.model).__name__} (at least {self.count} times: it is reused, e.g. one activation "
                    "module applied after two convolutions). Tracing would keep one call's output while editing would "
                    f"edit every call, so dissection and intervention would measure different things. Name the call "
                    f"instead: {calls} (counted from 0, per forward pass), or pick a module that runs once.")
        elif self.count - 1 != call:
            return None
        value = select_output(output, self.spec.selectors, self.spec.text)
        new = self.fn(value)
        if new is None or new is value:
            return None
        return replace_output(output, self.spec.selectors, new, self.spec.text)
