"""Command-line options shared by the subcommands: the dissection settings' flags, with
their choices taken from the library (``THRESHOLD_MODES``, ``IOU_VARIANTS``) and their
values checked by the library's own validation (``DissectionOptions``,
``gan_monitor.core.validation``), the message naming the flag instead of the argument.

>>> dissection_options(threshold="iqr", topk=5).topk
5
>>> dissection_options(topk=0)
Traceback (most recent call last):
...
gan_monitor.core.errors.UsageError: --images must be a positive integer, got 0.
"""
from __future__ import annotations

import argparse
from typing import Any, Callable, Mapping

from gan_monitor.core.checkpoints import import_object
from gan_monitor.core.errors import CheckpointError, CommandError, UsageError
from gan_monitor.dissection.options import IOU_VARIANTS, DissectionOptions
from gan_monitor.dissection.thresholds.modes import THRESHOLD_MODES

__all__ = ["FLAGS", "add_threshold_argument", "add_iou_argument", "add_generator_arguments", "add_memory_arguments",
           "load_input_fn", "dissection_options", "checked", "memory_size"]

#: ``DissectionOptions`` field -> the command-line flag that sets it.
FLAGS: dict[str, str] = {"threshold": "--threshold", "iou": "--iou", "cutoff": "--cutoff", "topk": "--images",
                         "batch_size": "--batch-size", "memory_budget": "--memory-budget",
                         "allow_nondeterministic": "--allow-nondeterministic"}

_SIZE_UNITS = {"": 1, "B": 1, "K": 1 << 10, "KB": 1 << 10, "KIB": 1 << 10, "M": 1 << 20, "MB": 1 << 20,
               "MIB": 1 << 20, "G": 1 << 30, "GB": 1 << 30, "GIB": 1 << 30, "T": 1 << 40, "TB": 1 << 40,
               "TIB": 1 << 40}


def add_generator_arguments(p: argparse.ArgumentParser) -> None:
    """Where the generator and its inputs come from: ``--module``, ``--generator-factory``,
    ``--generator-attr`` and ``--input-fn`` (modules are imported from ``sys.path`` or the
    current folder)."""
    p.add_argument("--module", default="gan_monitor.toyworld.gan:ToyGAN",
                   help="LightningModule class of .ckpt files (default: the toy GAN)")
    p.add_argument("--generator-factory", default=None, metavar="pkg.mod:function",
                   help="function building the generator, for plain state dicts (a module in the current folder "
                        "is found too)")
    p.add_argument("--generator-attr", default="generator",
                   help="attribute of the LightningModule holding the generator (default generator)")
    p.add_argument("--input-fn", default=None, metavar="pkg.mod:function",
                   help="function input_fn(n, generator) -> the generator's inputs for n samples, drawn from the "
                        "torch.Generator it is given (a tensor: G(x); a tuple: G(*x); a dict: G(**x)), e.g. latents "
                        "and class labels for G(z, labels) or images for an image-to-image generator "
                        "(default: Gaussian latents of the generator's latent_dim)")


def load_input_fn(spec: str | None) -> Callable | None:
    """``--input-fn pkg.mod:function`` -> the function (None when not given)."""
    if spec is None:
        return None
    try:
        fn = import_object(spec, "--input-fn")
    except CheckpointError as err:
        raise CommandError(str(err)) from err
    if not callable(fn):
        raise CommandError(f"--input-fn {spec} is a {type(fn).__name__}, not a function; it must be a function "
                           "input_fn(n, generator: torch.Generator) returning the inputs of n samples.")
    return fn


def add_threshold_argument(p: argparse.ArgumentParser, default: str = "quantile") -> None:
    p.add_argument("--threshold", choices=THRESHOLD_MODES, default=default,
                   help=f"threshold mode (default {default})")


def add_iou_argument(p: argparse.ArgumentParser, default: str = "plain") -> None:
    p.add_argument("--iou", choices=IOU_VARIANTS, default=default,
                   help=f"IoU variant: plain, or category (union only over images showing the concept's "
                        f"category, as the 2019 code) (default {default})")


def memory_size(text: str) -> int:
    """``--memory-budget`` values: bytes, or a number with a binary unit (K, M, G, T; KB/KiB alike).

    >>> memory_size("512M"), memory_size("1.5G"), memory_size("4096")
    (536870912, 1610612736, 4096)
    """
    raw = str(text).strip().upper().replace(" ", "")
    number = raw.rstrip("KMGTIB")
    unit = raw[len(number):]
    try:
        value = float(number) * _SIZE_UNITS[unit]
    except (ValueError, KeyError):
        raise UsageError(f"--memory-budget {text!r}: not a size; write bytes or a number with K, M, G or T, "
                         "e.g. --memory-budget 2G.") from None
    if not value >= 1 or value != value:
        raise UsageError(f"--memory-budget {text!r} must be at least one byte, e.g. --memory-budget 2G.")
    return int(value)


def add_memory_arguments(p: argparse.ArgumentParser) -> None:
    """``--memory-budget`` and ``--allow-nondeterministic`` (``DissectionOptions``)."""
    p.add_argument("--memory-budget", default=None, metavar="SIZE",
                   help="memory a dissection may spend caching a held-out sample, e.g. 2G or 512M (default: a quarter "
                        "of the host's or the GPU's memory, at most 1G); above it the sample is generated again "
                        "instead of cached: the same results, memory independent of --n")
    p.add_argument("--allow-nondeterministic", action="store_true",
                   help="warn instead of failing when the generator gives different images for the same inputs "
                        "(the largest difference is recorded in the results)")


def _flag_message(err: Exception, flags: Mapping[str, str]) -> str:
    message = str(err)
    for name, flag in flags.items():
        if message.startswith(f"{name} "):
            return flag + message[len(name):]
    return message


def dissection_options(flags: Mapping[str, str] = FLAGS, **values: Any) -> DissectionOptions:
    """``DissectionOptions(**values)``; a bad value raises ``UsageError`` naming its flag."""
    try:
        return DissectionOptions(**values)
    except (ValueError, TypeError) as err:
        raise UsageError(_flag_message(err, flags)) from err


def checked(flag: str, check: Callable[..., Any], value: Any, **kwargs: Any) -> Any:
    """``check(flag, value, **kwargs)`` (a ``gan_monitor.core.validation`` function), with
    ``UsageError`` instead of ``ValueError``/``TypeError``."""
    try:
        return check(flag, value, **kwargs)
    except (ValueError, TypeError) as err:
        raise UsageError(str(err)) from err
