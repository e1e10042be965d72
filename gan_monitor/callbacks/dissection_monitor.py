"""``DissectionMonitor``: a Lightning callback that dissects the generator during training
(docs/method.md §8).

Thin glue: it schedules the work, keeps the held-out sample and the checkpoint state, and
applies the failure policy (:mod:`gan_monitor.callbacks.failure_policy`). The numbers come
from :func:`gan_monitor.dissect`, run on every DDP rank by
:mod:`gan_monitor.callbacks.distributed_dissection`; the logging from :mod:`gan_monitor.report`;
per-unit FID and causal effects from :mod:`gan_monitor.callbacks.unit_fid` and
:mod:`gan_monitor.callbacks.ace`, which see the monitor only through a
:class:`~gan_monitor.callbacks.context.MonitorContext`. The keywords of gan_monitor 0.1 are
translated in :mod:`gan_monitor.callbacks.legacy_arguments`.

Two classes share one implementation: :class:`DissectionMonitor` for ``lightning.pytorch``
and :class:`DissectionMonitorPL` for ``pytorch_lightning`` (a Trainer accepts only callbacks
of its own framework; ``pytorch_lightning`` is imported only when that class is asked for).
"""
from __future__ import annotations

import time
import warnings
from typing import Any, Callable, Sequence

import lightning.pytorch as pl
from torch import nn

from gan_monitor.callbacks.ace import AceOptions, AceSchedule
from gan_monitor.callbacks.context import (
    MonitorContext,
    PictureOptions,
    find_generator,
    logging_step,
)
from gan_monitor.callbacks.distributed_dissection import communicator, dissect_on_every_rank, log_dissection
from gan_monitor.callbacks.failure_policy import CountsFailures, FailurePolicy
from gan_monitor.callbacks.legacy_arguments import translate_legacy_arguments
from gan_monitor.callbacks.resume import KEY_PREFIX, monitor_config, restore_under_other_settings
from gan_monitor.callbacks.training_signals import SignalOptions, SignalSchedule
from gan_monitor.callbacks.unit_fid import UnitFIDOptions, UnitFIDSchedule
from gan_monitor.core.held_out import HeldOutSample
from gan_monitor.core.validation import integer, positive_int
from gan_monitor.dissection.options import DissectionOptions
from gan_monitor.dissection.thresholds.modes import IQR, Quantile
from gan_monitor.report.tensorboard import DissectionWriter
from gan_monitor.segmenters.base import validate_segmenter

__all__ = ["DissectionMonitor", "PictureOptions", "UnitFIDOptions", "AceOptions"]  # and DissectionMonitorPL (lazy)

_STATE_VERSION = 1

def _summary_numbers(summary: dict[str, Any]) -> dict[str, Any]:
    return {k: summary[k] for k in ("units", "interpretable_units", "concept_diversity", "mean_iou",
                                    "per_category")}


class _MonitorLogic(CountsFailures):
    """Dissect generator layers during training and log what emerges.

    ``DissectionMonitor(layers, segmenter, every_n_steps=500)`` is the common case; the
    per-unit FID and the causal effects are off unless their options are given.

    Args:
        layers: module names inside the generator (``gan_monitor.core.tracing.layer_names``).
        segmenter: a :class:`gan_monitor.segmenters.base.Segmenter`.
        generator: attribute path on the LightningModule (``"generator"``, ``"nets.g_ema"``)
            or a callable ``module -> nn.Module``.
        every_n_steps: dissect every this many *training batches* (counted by the callback;
            with manual optimisation ``trainer.global_step`` counts optimizer steps
            instead). When given, it replaces ``every_n_epochs`` (a warning says so when
            ``every_n_epochs`` was also set to something other than its default 1).
        every_n_epochs: dissect at the end of every this many epochs.
        on_train_start: also dissect once before the first batch (step 0).
        n, seed, input_fn: the held-out sample, drawn by ``gan_monitor.core.inputs.make_inputs``
            (``input_fn(n, torch_generator) -> inputs``; default Gaussian latents) from a
            private seeded ``torch.Generator`` on the module's device; the global RNG is
            never touched.
        threshold: ``"quantile"``, ``"iqr"``, ``Quantile(q)`` or ``IQR(...)``
            (``gan_monitor.dissection.thresholds.modes``).
        iou: ``"plain"`` or ``"category"`` (``gan_monitor.dissection.options.IOU_VARIANTS``).
        cutoff: a unit is interpretable when the IoU of its label is >= ``cutoff``.
        batch_size: samples per forward pass (results do not depend on it).
        image_range: ``(low, high)`` of the generator's images (default ``(-1, 1)``; e.g.
            ``(0, 1)`` or ``(0, 255)``: mapped to [-1, 1] before segmenting).
            ``threshold``, ``iou``, ``cutoff``, ``batch_size`` and ``image_range`` are checked by
            :class:`gan_monitor.dissection.options.DissectionOptions` (``self.options``).
        allow_nondeterministic: each dissection (and ACE) first runs a few held-out inputs twice
            and refuses a generator whose images differ (e.g. StyleGAN noise drawn fresh at every
            call; fix: noise as an input, a constant noise mode); True warns and goes on.
        pictures: :class:`~gan_monitor.callbacks.context.PictureOptions` ``(top_units=8,
            top_images=5, log_images=True)``: the unit grid shows the ``top_units`` best
            units of each layer with their ``top_images`` top-activating held-out images;
            ``log_images=False`` sends scalars only.
        unit_fid: :class:`~gan_monitor.callbacks.unit_fid.UnitFIDOptions` ``(real_stats,
            extractor=None, k=50, layers=None, every_n_steps=None, every_n_epochs=None,
            max_unit_fid=None, artifact_ablation_on_save=False, artifact_units=20,
            random_draws=3)``: per-unit FID on the held-out sample (pool M = ``n``; ``k``
            top images per unit, fixed for the whole run) on its own schedule; with
            ``max_unit_fid``, dissections leave units with a higher FID out of labelling
            (the history records ``unit_fid_step``); with ``artifact_ablation_on_save``,
            the artifact ablation at every checkpoint save. None (default): off.
        ace: :class:`~gan_monitor.callbacks.ace.AceOptions` ``(concepts, top_n=20, n=100,
            on_save=True, every_n_epochs=None, causal=False)``: the fraction of each
            concept's pixels removed by ablating each layer's ``top_n`` IoU units (and,
            with ``causal``, its optimised causal units). None (default): off.
        signals: :class:`~gan_monitor.callbacks.training_signals.SignalOptions`: concept statistics
            vs real images, sample diversity (collapse) and unit churn after every dissection, also
            in ``trainer.callback_metrics`` and ``history[i]["signals"]``. None (default): off.
        strict: raise when monitoring work fails (default: warn once per kind of work,
            count the failures, keep training).

    The keywords of gan_monitor 0.1 (``quantile``, ``dissect_options``, ``top_units``,
    ``top_images``, ``log_images``, ``fid_*``, ``artifact_*``, ``max_unit_fid``,
    ``ace_concepts``, ``ace_options``) still work for this release, with a ``FutureWarning``
    (``gan_monitor.callbacks.legacy_arguments``).

    Logged, at Lightning's logging step (the x-axis of ``self.log``):

    * every logger: ``gan_monitor/<layer>/interpretable_units``, ``concept_diversity``,
      ``mean_iou`` and ``interpretable_<category>``; with ``unit_fid``: ``fid_max``,
      ``fid_median`` and, at saves, ``fid_before``, ``fid_artifacts_ablated``,
      ``fid_random_ablated``; with ``ace``: ``ace/<concept>/iou_top<n>_removed`` and
      ``ace/<concept>/causal_top<n>_removed``;
    * TensorBoard loggers also: ``unit_iou`` (histogram), ``units_per_concept`` and
      ``top_units`` (images), ``interpretable_units_table`` (text), a custom-scalar layout;
      with ``unit_fid``: ``unit_fid`` (histogram), ``artifact_units`` (images),
      ``artifact_ablation`` (text). Other loggers get the scalars and one warning.

    ``history`` keeps every dissection's summary numbers (``step``, ``batches``, ``epoch``,
    ``layers``, ``seconds``) and ``last_result`` the last
    :class:`~gan_monitor.dissection.results.DissectionResult`; ``unit_fid`` and ``ace`` are
    the two schedules (their ``history``/``fids``, ``failures``); ``failures`` counts failed
    dissections.

    DDP (e.g. ``Trainer(strategy="ddp", devices=N)``): every rank dissects its share
    ``rank::N`` of the held-out sample at the same batches; all ranks hold the same result,
    history and scalars (equal to one process dissecting rank 0's generator); pictures are
    built and logged on rank 0 only. A failure on any rank abandons that dissection on every
    rank (the warning names the rank). Per-unit FID and causal effects run on rank 0, whose
    per-unit FIDs are sent to every rank before a dissection that filters by them.

    Resume: the checkpoint keeps the batch counter, the history, the failure counts, the
    held-out sample's ``(n, seed)`` with a checksum of its inputs, and the schedules'
    state (the per-unit FIDs and their step, the causal-effect history). A resumed run
    draws the same held-out inputs (and warns if they differ), continues the history and
    never logs a step twice. ``state_key`` names the layers, generator, sample, threshold,
    IoU variant, cutoff and schedule, so several monitors can run in one Trainer. Resumed
    with other settings (e.g. another ``n`` or ``seed``), the monitor still finds its own
    state (same layers and generator), keeps the batch counter and history, warns once with
    what changed and from which step, and records sample changes in ``sample_changes``
    (:mod:`gan_monitor.callbacks.resume`).
    """

    def __init__(
        self,
        layers: str | Sequence[str],
        segmenter,
        *,
        generator: str | Callable[[nn.Module], nn.Module] = "generator",
        every_n_steps: int | None = None,
        every_n_epochs: int | None = 1,
        on_train_start: bool = True,
        n: int = 1000,
        seed: int = 0,
        input_fn: Callable | None = None,
        threshold: str | Quantile | IQR = "quantile",
        iou: str = "plain",
        cutoff: float = 0.05,
        batch_size: int = 100,
        image_range: tuple[float, float] = (-1.0, 1.0),
        allow_nondeterministic: bool = False,
        pictures: PictureOptions | None = None,
        unit_fid: UnitFIDOptions | None = None,
        ace: AceOptions | None = None,
        signals: SignalOptions | None = None,
        strict: bool = False,
        **legacy: Any,
    ):
        super().__init__()
        new = translate_legacy_arguments(legacy, threshold=threshold, pictures=pictures, unit_fid=unit_fid,
                                         ace=ace, owner=type(self).__name__)
        layers = [layers] if isinstance(layers, str) else list(layers)
        if not layers or not all(isinstance(x, str) and x for x in layers):
            raise ValueError(
                f"layers must be a non-empty list of module names, e.g. ['layer3', 'layer4'], got {layers!r}.")
        if len(set(layers)) != len(layers):
            raise ValueError(f"layers lists a name twice: {layers!r}.")
        validate_segmenter(segmenter)
        if not (isinstance(generator, str) and generator) and not callable(generator):
            raise TypeError(
                "generator must be an attribute path on the LightningModule (e.g. 'generator' or "
                f"'nets.g_ema') or a callable module -> nn.Module, got {generator!r}.")
        every_n_steps = positive_int("every_n_steps", every_n_steps, allow_none=True)
        every_n_epochs = positive_int("every_n_epochs", every_n_epochs, allow_none=True)
        if every_n_steps is None and every_n_epochs is None and not on_train_start:
            raise ValueError("nothing is scheduled: set every_n_steps (training batches) or every_n_epochs.")
        if every_n_steps is not None and every_n_epochs not in (None, 1):
            warnings.warn(f"DissectionMonitor: every_n_steps={every_n_steps} replaces every_n_epochs={every_n_epochs} "
                          "(one schedule per monitor); pass only one of them to silence this warning.", stacklevel=2)
        if input_fn is not None and not callable(input_fn):
            raise TypeError(f"input_fn must be callable or None, got {type(input_fn).__name__}.")
        for name, value, cls in (("pictures", new["pictures"], PictureOptions),
                                 ("unit_fid", new["unit_fid"], UnitFIDOptions), ("ace", new["ace"], AceOptions)):
            if value is not None and not isinstance(value, cls):
                raise TypeError(f"{name} must be a {cls.__name__}(...) or None, got {type(value).__name__}.")
        self.pictures = new["pictures"] or PictureOptions()
        self.options = DissectionOptions(threshold=new["threshold"], iou=iou, cutoff=cutoff,
                                         topk=self.pictures.top_images, batch_size=batch_size,
                                         image_range=image_range,
                                         allow_nondeterministic=allow_nondeterministic)
        self.layers = layers
        self.segmenter = segmenter
        self.generator = generator
        self.every_n_steps = every_n_steps
        self.every_n_epochs = every_n_epochs if every_n_steps is None else None  # a step schedule replaces it
        self.dissect_on_train_start = bool(on_train_start)
        self.sample = HeldOutSample(positive_int("n", n), integer("seed", seed), input_fn)
        self.strict = bool(strict)
        self._writer = DissectionWriter(log_images=self.pictures.log_images, top_units=self.pictures.top_units)
        self._policy = FailurePolicy("dissection", strict=self.strict)
        self.context = MonitorContext(
            layers=tuple(layers), segmenter=segmenter, sample=self.sample, resolve_generator=self.resolve_generator,
            batches_seen=self._batches_seen, latest_dissection=self._latest_dissection,
            batch_size=self.options.batch_size, strict=self.strict, pictures=self.pictures,
            allow_nondeterministic=self.options.allow_nondeterministic,
            select_image_loggers=self._writer.rich_loggers)
        self.unit_fid = UnitFIDSchedule(new["unit_fid"], self.context)  # per-unit FID, artifact ablation
        self.ace = AceSchedule(new["ace"], self.context)  # causal effects
        self.signals = SignalSchedule(signals, self.strict)  # training signals (off when None)
        # state kept in checkpoints
        self.batches_seen = 0  # training batches completed (not optimizer steps)
        self.last_step: int | None = None  # logger step of the last dissection
        self.history: list[dict[str, Any]] = []
        self.sample_changes: list[dict[str, Any]] = []  # resumes under another (n, seed): resume.py
        # runtime only
        self.last_result = None

    # ---- read-only views of the configuration -------------------------------------
    @property
    def n(self) -> int:
        """Size of the held-out sample."""
        return self.sample.n

    @property
    def seed(self) -> int:
        """Seed of the held-out sample."""
        return self.sample.seed

    @property
    def threshold(self) -> Quantile | IQR:
        return self.options.threshold

    @property
    def iou(self) -> str:
        return self.options.iou

    @property
    def cutoff(self) -> float:
        return self.options.cutoff

    @property
    def batch_size(self) -> int:
        return self.options.batch_size

    def _batches_seen(self) -> int:
        return self.batches_seen

    def _latest_dissection(self):
        return self.last_result

    # ---- identity and checkpoint state -----------------------------------------
    @property
    def state_key(self) -> str:
        return f"{KEY_PREFIX}{monitor_config(self)!r}"

    def state_dict(self) -> dict[str, Any]:
        return {
            "version": _STATE_VERSION,
            "batches_seen": self.batches_seen,
            "last_step": self.last_step,
            "history": [dict(h) for h in self.history],
            "failures": self.failures,
            "inputs": self.sample.state_dict(),  # what rebuilds the held-out inputs, and their checksum
            "unit_fid": self.unit_fid.state_dict(),
            "ace": self.ace.state_dict(),
            "signals": self.signals.state_dict(),
            "config": monitor_config(self),
            "sample_changes": [dict(c) for c in self.sample_changes],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.batches_seen = int(state.get("batches_seen", 0))
        self.last_step = state.get("last_step")
        self.history = [dict(h) for h in state.get("history", [])]
        self.failures = int(state.get("failures", 0))
        self.sample.load_state_dict(state.get("inputs", {}))
        self.unit_fid.load_state_dict(state.get("unit_fid"))
        self.ace.load_state_dict(state.get("ace"))
        self.signals.load_state_dict(state.get("signals"))
        self.sample_changes = [dict(c) for c in state.get("sample_changes", [])]

    def on_load_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        restore_under_other_settings(self, trainer, checkpoint)  # e.g. another n or seed (resume.py)

    # ---- Lightning hooks ------------------------------------------------------------
    def setup(self, trainer, pl_module, stage: str | None = None) -> None:
        if stage not in (None, "fit"):
            return
        self.resolve_generator(pl_module)  # raises now, before training starts
        self.unit_fid.setup(pl_module)

    def on_train_start(self, trainer, pl_module) -> None:
        if self._skip(trainer) or not self.dissect_on_train_start:
            return
        if self.batches_seen == 0 and self.last_step is None:
            self._dissect(trainer, pl_module, self._log_step(trainer, after_batch=False))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.sanity_checking:
            return
        self.batches_seen += 1
        if self._skip(trainer):
            return
        if trainer.is_global_zero:  # first: a dissection at this batch uses its FIDs
            self.unit_fid.after_batch(trainer, pl_module)
        if self.every_n_steps is not None and self.batches_seen % self.every_n_steps == 0:
            self._dissect(trainer, pl_module, self._log_step(trainer, after_batch=True))

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if self._skip(trainer):
            return
        if trainer.is_global_zero:
            self.unit_fid.epoch_end(trainer, pl_module)
        if self.every_n_epochs is not None and (trainer.current_epoch + 1) % self.every_n_epochs == 0:
            self._dissect(trainer, pl_module, self._log_step(trainer, after_batch=False))
        if trainer.is_global_zero:
            self.ace.epoch_end(trainer, pl_module)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        if not self._skip(trainer) and trainer.is_global_zero:
            self.unit_fid.on_save(trainer, pl_module)
            self.ace.on_save(trainer, pl_module)
        saved = checkpoint.get("callbacks", {})
        if self.state_key in saved:  # Lightning took the state before this hook: add what it just ran
            saved[self.state_key] = self.state_dict()

    # ---- the work --------------------------------------------------------------------
    def resolve_generator(self, pl_module) -> nn.Module:
        """The generator to dissect; checks that the configured layers exist in it."""
        return find_generator(pl_module, self.generator, self.layers)

    def _skip(self, trainer) -> bool:  # the same on every rank
        return bool(trainer.sanity_checking or getattr(trainer, "fast_dev_run", False))

    def _log_step(self, trainer, after_batch: bool) -> int:
        step = logging_step(trainer, self.batches_seen, after_batch)
        if self.last_step is not None and step <= self.last_step:
            step = self.last_step + 1  # never log one step twice
        return step

    def _dissect(self, trainer, pl_module, step: int) -> None:
        started = time.perf_counter()
        device = pl_module.device

        def work():
            comm = communicator(trainer)
            result, generator, inputs = dissect_on_every_rank(self.context, self.options, self.unit_fid,
                                                              pl_module, comm)
            self.last_step = step  # from here on this step counts as logged
            log_dissection(self._writer, self.context, trainer, result, generator, inputs, step, device, comm)
            return result

        ok, result = self._policy.run(work, step=step, device=device)
        if not ok:
            return
        self.last_result = result
        self.history.append({
            "step": step, "batches": self.batches_seen, "epoch": int(trainer.current_epoch),
            "layers": {name: _summary_numbers(ld.summary) for name, ld in result.items()},
            "seconds": round(time.perf_counter() - started, 3),
            **({"unit_fid_step": self.unit_fid.last_step} if self.unit_fid.filters_units else {}),
        })
        self.history[-1].update(self.signals.after_dissection(trainer, result, step))


class DissectionMonitor(_MonitorLogic, pl.Callback):
    __doc__ = _MonitorLogic.__doc__


def __getattr__(name: str):
    # pytorch_lightning is imported only when its flavour is asked for.
    if name == "DissectionMonitorPL":
        import pytorch_lightning

        cls = type("DissectionMonitorPL", (_MonitorLogic, pytorch_lightning.Callback),
                   {"__doc__": _MonitorLogic.__doc__, "__module__": __name__})
        globals()[name] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
