"""What the :class:`~gan_monitor.callbacks.dissection_monitor.DissectionMonitor` shares with
its per-unit FID and causal-effect schedules, and nothing more.

A schedule (:class:`~gan_monitor.callbacks.unit_fid.UnitFIDSchedule`,
:class:`~gan_monitor.callbacks.ace.AceSchedule`) is built from its own options and a
:class:`MonitorContext`: the layers, the segmenter, the held-out sample, how to find the
generator in the LightningModule, the batch counter, the latest dissection, the failure
policy's ``strict`` flag and which loggers take pictures. It never reads the monitor
itself, so it can be built and run without one (``tests/callbacks/test_fid_callback.py`` does).

:func:`find_generator` finds the generator inside the LightningModule (the monitor's
``generator=`` argument); :func:`logging_step` puts every kind of monitoring work on
Lightning's own logging axis.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from torch import nn

from gan_monitor.core.held_out import HeldOutSample
from gan_monitor.core.tracing import layer_names, resolve_layer
from gan_monitor.core.validation import positive_int
from gan_monitor.report.tensorboard import supports_rich_media

__all__ = ["PictureOptions", "MonitorContext", "logging_step", "tensorboard_loggers", "find_generator",
           "describe_generator"]


def logging_step(trainer, batches_seen: int, after_batch: bool) -> int:
    """Step on Lightning's logging axis: batches that stepped (what ``self.log`` uses;
    with manual optimisation ``trainer.global_step`` counts two optimizer steps per GAN
    batch), counting the current batch in ``on_train_batch_end``. Falls back to the
    monitor's own batch counter (``batches_seen``) for a trainer without a fit loop."""
    loop = getattr(getattr(trainer, "fit_loop", None), "epoch_loop", None)
    step = getattr(loop, "_batches_that_stepped", None)
    return batches_seen if step is None else int(step) + int(after_batch)


def describe_generator(generator: str | Callable) -> str:
    """The monitor's ``generator`` argument in words (an attribute path, or the callable's name)."""
    if isinstance(generator, str):
        return generator
    return getattr(generator, "__qualname__", type(generator).__name__)


def find_generator(pl_module, generator: str | Callable, layers: Sequence[str]) -> nn.Module:
    """The generator inside ``pl_module``: ``generator`` is an attribute path
    (``"nets.g_ema"``) or a callable ``module -> nn.Module``. Raises an error that lists
    what exists when the path, the type or one of ``layers`` is wrong."""
    if callable(generator) and not isinstance(generator, str):
        gen = generator(pl_module)
        where = f"generator callable {describe_generator(generator)}"
    else:
        gen = pl_module
        for part in generator.split("."):
            if not hasattr(gen, part):
                children = [name for name, _ in pl_module.named_children()]
                raise AttributeError(
                    f"DissectionMonitor: {type(pl_module).__name__} has no attribute path {generator!r} "
                    f"(stopped at {part!r}); its submodules are {children}. Pass "
                    "generator='<attribute path>' or a callable module -> generator.")
            gen = getattr(gen, part)
        where = f"{type(pl_module).__name__}.{generator}"
    if not isinstance(gen, nn.Module):
        raise TypeError(f"DissectionMonitor: {where} is a {type(gen).__name__}, not an nn.Module.")
    missing = []
    for layer in layers:
        try:
            resolve_layer(gen, layer)
        except Exception:
            missing.append(layer)
    if missing:
        raise ValueError(f"DissectionMonitor: {where} has no layer(s) {missing}. Available layers: "
                         f"{', '.join(layer_names(gen))}.")
    return gen


def tensorboard_loggers(loggers: Sequence[Any]) -> list[Any]:
    """The loggers whose ``experiment`` is a TensorBoard ``SummaryWriter`` (no warning
    for the others; the monitor passes its ``DissectionWriter.rich_loggers``, which warns)."""
    return [logger for logger in loggers if supports_rich_media(logger)]


@dataclass(frozen=True)
class PictureOptions:
    """What the monitor draws for TensorBoard loggers.

    Args:
        top_units: units per layer in the unit grid (best IoU first) and in the
            per-unit FID grid (highest FID first).
        top_images: top-activating held-out images per unit in those grids (also the
            number of top samples each dissection keeps per unit).
        log_images: send histograms, images and tables to TensorBoard loggers; scalars go
            to every logger either way.

    >>> PictureOptions(top_units=3)
    PictureOptions(top_units=3, top_images=5, log_images=True)
    >>> PictureOptions(top_images=0)
    Traceback (most recent call last):
    ...
    ValueError: PictureOptions(top_images) must be a positive integer, got 0.
    """

    top_units: int = 8
    top_images: int = 5
    log_images: bool = True

    def __post_init__(self):
        positive_int("PictureOptions(top_units)", self.top_units)
        positive_int("PictureOptions(top_images)", self.top_images)
        if not isinstance(self.log_images, bool):
            raise TypeError(f"PictureOptions(log_images) must be True or False, got {self.log_images!r}.")


def _no_dissection():
    return None


def _no_batches() -> int:
    return 0


@dataclass(frozen=True)
class MonitorContext:
    """The monitor's view handed to its schedules (see the module docstring).

    Args:
        layers: the monitored (dissected) layers.
        segmenter: the monitor's segmenter.
        sample: the held-out sample (its inputs are drawn on first use, per device).
        resolve_generator: ``pl_module -> nn.Module``, the generator (raises a clear error).
        batches_seen: ``() -> int``, training batches completed so far.
        latest_dissection: ``() -> DissectionResult | None``, the last dissection.
        batch_size: samples per forward pass.
        strict: raise a failure instead of warning once and going on.
        pictures: the monitor's :class:`PictureOptions`.
        select_image_loggers: ``loggers -> the ones that take pictures``.
        allow_nondeterministic: warn instead of refusing a generator whose images change
            for the same inputs (``gan_monitor.core.determinism``).
    """

    layers: tuple[str, ...]
    segmenter: Any
    sample: HeldOutSample
    resolve_generator: Callable[[Any], nn.Module]
    batches_seen: Callable[[], int] = _no_batches
    latest_dissection: Callable[[], Any] = _no_dissection
    batch_size: int = 100
    strict: bool = False
    pictures: PictureOptions = field(default_factory=PictureOptions)
    select_image_loggers: Callable[[Sequence[Any]], list[Any]] = tensorboard_loggers
    allow_nondeterministic: bool = False

    def logging_step(self, trainer, after_batch: bool) -> int:
        """:func:`logging_step` at the current batch count."""
        return logging_step(trainer, self.batches_seen(), after_batch)

    def image_loggers(self, loggers: Sequence[Any]) -> list[Any]:
        """The loggers to send pictures to (none when ``pictures.log_images`` is off)."""
        return self.select_image_loggers(loggers) if self.pictures.log_images else []
