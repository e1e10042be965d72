"""``DissectionMonitor``: a Lightning callback that dissects the generator during training.

Thin glue: scheduling, held-out inputs, checkpoint state and error policy live
here; the numbers come from :func:`gan_monitor.dissection.pipeline.dissect`, the pictures
from :mod:`gan_monitor.report.unit_examples`/:mod:`gan_monitor.report.pictures` and the logging
from :mod:`gan_monitor.report.tensorboard`; per-unit FID from :mod:`gan_monitor.callbacks.unit_fid`.
Under DDP every rank dissects its shard of the held-out sample and holds the same
result (:mod:`gan_monitor.callbacks.ranks`); per-unit FID and causal effects run on rank 0.

Two classes share one implementation: :class:`DissectionMonitor` for
``lightning.pytorch`` and :class:`DissectionMonitorPL` for ``pytorch_lightning``
(a Trainer accepts only callbacks of its own framework).
"""
from __future__ import annotations

import time
from typing import Any, Callable, Sequence

from torch import nn

from gan_monitor.callbacks.ace import ACE_DOC, AceSchedule
from gan_monitor.callbacks.unit_fid import FID_DOC, UnitFIDSchedule
from gan_monitor.callbacks.guard import GuardedWork, logging_step
from gan_monitor.core.held_out import HeldOutSample

__all__ = ["DissectionMonitor", "DissectionMonitorPL"]

_THRESHOLD_MODES = ("quantile", "iqr")
_IOU_MODES = ("plain", "category")
_STATE_VERSION = 1


def _positive_int(name: str, value, allow_none: bool = False):
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        hint = " or None" if allow_none else ""
        raise ValueError(f"{name} must be a positive integer{hint}, got {value!r}.")
    return int(value)


def _describe(generator) -> str:
    if isinstance(generator, str):
        return generator
    return getattr(generator, "__qualname__", type(generator).__name__)


class _MonitorLogic:
    """The callback's behaviour, mixed into a framework's ``Callback`` class below."""

    failures = GuardedWork.counted()

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
        threshold: str = "quantile",
        quantile: float = 0.01,
        iou: str = "plain",
        cutoff: float = 0.05,
        batch_size: int = 100,
        top_units: int = 8,
        top_images: int = 5,
        log_images: bool = True,
        strict: bool = False,
        dissect_options: dict[str, Any] | None = None,
        fid_real_stats=None, fid_extractor=None, fid_k: int = 50, fid_layers: Sequence[str] | None = None,
        fid_every_n_steps: int | None = None, fid_every_n_epochs: int | None = None, max_unit_fid: float | None = None,
        artifact_ablation_on_save: bool = False, artifact_units: int = 20, artifact_random_draws: int = 3,
        ace_concepts: Sequence[str] | None = None, ace_options: dict[str, Any] | None = None,
    ):
        from gan_monitor.segmenters.base import validate_segmenter
        from gan_monitor.report.tensorboard import DissectionWriter

        super().__init__()
        if isinstance(layers, str):
            layers = [layers]
        layers = list(layers)
        if not layers or not all(isinstance(x, str) and x for x in layers):
            raise ValueError(
                f"layers must be a non-empty list of module names, e.g. ['layer3', 'layer4'], got {layers!r}."
            )
        if len(set(layers)) != len(layers):
            raise ValueError(f"layers lists a name twice: {layers!r}.")
        validate_segmenter(segmenter)
        if not (isinstance(generator, str) and generator) and not callable(generator):
            raise TypeError(
                "generator must be an attribute path on the LightningModule (e.g. 'generator' or "
                f"'nets.g_ema') or a callable module -> nn.Module, got {generator!r}."
            )
        every_n_steps = _positive_int("every_n_steps", every_n_steps, allow_none=True)
        every_n_epochs = _positive_int("every_n_epochs", every_n_epochs, allow_none=True)
        if every_n_steps is None and every_n_epochs is None and not on_train_start:
            raise ValueError(
                "nothing is scheduled: set every_n_steps (training batches) or every_n_epochs."
            )
        if threshold not in _THRESHOLD_MODES:
            raise ValueError(f"threshold must be one of {_THRESHOLD_MODES}, got {threshold!r}.")
        if iou not in _IOU_MODES:
            raise ValueError(f"iou must be one of {_IOU_MODES}, got {iou!r}.")
        if not 0.0 < float(quantile) < 1.0:
            raise ValueError(f"quantile must lie in (0, 1) (0.01 = top 1% of pixels), got {quantile!r}.")
        if not 0.0 <= float(cutoff) <= 1.0:
            raise ValueError(f"cutoff is an IoU and must lie in [0, 1], got {cutoff!r}.")
        if input_fn is not None and not callable(input_fn):
            raise TypeError(f"input_fn must be callable or None, got {type(input_fn).__name__}.")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed must be an integer, got {seed!r}.")
        self.layers = layers
        self.segmenter = segmenter
        self.generator = generator
        self.every_n_steps = every_n_steps
        # A step schedule replaces the epoch schedule (see the class docstring).
        self.every_n_epochs = every_n_epochs if every_n_steps is None else None
        self.dissect_on_train_start = bool(on_train_start)
        self.sample = HeldOutSample(_positive_int("n", n), seed, input_fn)
        self.threshold = threshold
        self.quantile = float(quantile)
        self.iou = iou
        self.cutoff = float(cutoff)
        self.batch_size = _positive_int("batch_size", batch_size)
        self.top_units = _positive_int("top_units", top_units)
        self.top_images = _positive_int("top_images", top_images)
        self.log_images = bool(log_images)
        self.strict = bool(strict)
        self.dissect_options = _check_dissect_options(dissect_options)
        self._writer = DissectionWriter(log_images=log_images, top_units=top_units)
        self.unit_fid = UnitFIDSchedule(  # per-unit FID, artifact ablation; off without fid_real_stats
            self, fid_real_stats, fid_extractor, k=fid_k, layers=fid_layers, every_n_steps=fid_every_n_steps,
            every_n_epochs=fid_every_n_epochs, ablation_on_save=artifact_ablation_on_save,
            artifact_units=artifact_units, random_draws=artifact_random_draws, max_unit_fid=max_unit_fid)
        self.ace = AceSchedule(self, ace_concepts, **AceSchedule.check_options(ace_options))  # causal effects
        # state kept in checkpoints
        self.batches_seen = 0  # training batches completed (not optimizer steps)
        self.last_step: int | None = None  # logger step of the last dissection
        self.history: list[dict[str, Any]] = []
        self._guard = GuardedWork("dissection")  # warn-once-or-strict; counts failures
        # runtime only
        self.last_result = None


    @property
    def n(self) -> int:
        """Size of the held-out sample."""
        return self.sample.n

    @property
    def seed(self) -> int:
        """Seed of the held-out sample."""
        return self.sample.seed

    # ---- identity and checkpoint state -----------------------------------------
    @property
    def state_key(self) -> str:
        config = dict(layers=self.layers, generator=_describe(self.generator), n=self.sample.n,
                      seed=self.sample.seed, threshold=self.threshold, quantile=self.quantile,
                      iou=self.iou, cutoff=self.cutoff,
                      every_n_steps=self.every_n_steps, every_n_epochs=self.every_n_epochs,
                      **({"options": sorted(self.dissect_options.items())} if self.dissect_options else {}))
        return f"DissectionMonitor{config!r}"

    def state_dict(self) -> dict[str, Any]:
        return {
            "version": _STATE_VERSION,
            "batches_seen": self.batches_seen,
            "last_step": self.last_step,
            "history": [dict(h) for h in self.history],
            "failures": self.failures,
            # what rebuilds the held-out inputs, and a checksum to verify them
            "inputs": self.sample.state_dict(),
            "unit_fid": self.unit_fid.state_dict(),
            "ace": self.ace.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.batches_seen = int(state.get("batches_seen", 0))
        self.last_step = state.get("last_step")
        self.history = [dict(h) for h in state.get("history", [])]
        self.failures = int(state.get("failures", 0))
        self.sample.load_state_dict(state.get("inputs", {}))
        self.unit_fid.load_state_dict(state.get("unit_fid"))
        self.ace.load_state_dict(state.get("ace"))

    # ---- Lightning hooks ------------------------------------------------------------
    def setup(self, trainer, pl_module, stage: str | None = None) -> None:
        if stage not in (None, "fit"):
            return
        self.resolve_generator(pl_module)  # raises now, before training starts
        self.unit_fid.setup(self, pl_module)

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
            self.unit_fid.after_batch(self, trainer, pl_module)
        if self.every_n_steps is not None and self.batches_seen % self.every_n_steps == 0:
            self._dissect(trainer, pl_module, self._log_step(trainer, after_batch=True))

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if self._skip(trainer):
            return
        if trainer.is_global_zero:
            self.unit_fid.epoch_end(self, trainer, pl_module)
        if self.every_n_epochs is not None and (trainer.current_epoch + 1) % self.every_n_epochs == 0:
            self._dissect(trainer, pl_module, self._log_step(trainer, after_batch=False))
        if trainer.is_global_zero:
            self.ace.epoch_end(self, trainer, pl_module)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        if not self._skip(trainer) and trainer.is_global_zero:
            self.unit_fid.on_save(self, trainer, pl_module)
            self.ace.on_save(self, trainer, pl_module)
        saved = checkpoint.get("callbacks", {})
        if self.state_key in saved:  # Lightning took the state before this hook: add what it just ran
            saved[self.state_key] = self.state_dict()

    # ---- the work --------------------------------------------------------------------
    def resolve_generator(self, pl_module) -> nn.Module:
        """The generator to dissect; checks that the configured layers exist in it."""
        from gan_monitor.core.tracing import layer_names, resolve_layer

        if callable(self.generator) and not isinstance(self.generator, str):
            gen = self.generator(pl_module)
            where = f"generator callable {_describe(self.generator)}"
        else:
            gen = pl_module
            for part in self.generator.split("."):
                if not hasattr(gen, part):
                    children = [name for name, _ in pl_module.named_children()]
                    raise AttributeError(
                        f"DissectionMonitor: {type(pl_module).__name__} has no attribute path "
                        f"{self.generator!r} (stopped at {part!r}); its submodules are "
                        f"{children}. Pass generator='<attribute path>' or a callable "
                        "module -> generator."
                    )
                gen = getattr(gen, part)
            where = f"{type(pl_module).__name__}.{self.generator}"
        if not isinstance(gen, nn.Module):
            raise TypeError(f"DissectionMonitor: {where} is a {type(gen).__name__}, not an nn.Module.")
        missing = []
        for layer in self.layers:
            try:
                resolve_layer(gen, layer)
            except Exception:
                missing.append(layer)
        if missing:
            raise ValueError(
                f"DissectionMonitor: {where} has no layer(s) {missing}. Available layers: "
                f"{', '.join(layer_names(gen))}."
            )
        return gen

    def _skip(self, trainer) -> bool:  # the same on every rank
        return bool(trainer.sanity_checking or getattr(trainer, "fast_dev_run", False))

    def _log_step(self, trainer, after_batch: bool) -> int:
        """Step on Lightning's logging axis: batches that stepped (what ``self.log``
        uses), counting the current batch in ``on_train_batch_end``."""
        step = logging_step(trainer, self.batches_seen, after_batch)
        if self.last_step is not None and step <= self.last_step:
            step = self.last_step + 1  # never log one step twice
        return step

    def _dissect(self, trainer, pl_module, step: int) -> None:
        from gan_monitor.callbacks.ranks import dissect_and_log

        started = time.perf_counter()
        ok, result = self._guard.run(lambda: dissect_and_log(self, trainer, pl_module, step), step=step,
                                     device=pl_module.device, strict=self.strict)
        if not ok:
            return
        self.last_result = result
        self.history.append({
            "step": step, "batches": self.batches_seen, "epoch": int(trainer.current_epoch),
            "layers": {name: _scalars(ld.summary) for name, ld in result.items()},
            "seconds": round(time.perf_counter() - started, 3),
            **({"unit_fid_step": self.unit_fid.last_step} if self.unit_fid.max_unit_fid is not None else {}),
        })


_MANAGED = {"generator", "layers", "segmenter", "inputs", "n", "seed", "input_fn", "threshold", "quantile",
            "iou", "cutoff", "batch_size", "device", "topk", "progress", "distributed"}


def _check_dissect_options(options) -> dict[str, Any]:
    import inspect

    from gan_monitor.dissection.pipeline import dissect

    if options is None:
        return {}
    if not isinstance(options, dict):
        raise TypeError(f"dissect_options must be a dict of dissect() arguments, got {type(options).__name__}.")
    allowed = set(inspect.signature(dissect).parameters) - _MANAGED
    bad = sorted(set(options) - allowed)
    if bad:
        raise ValueError(
            f"dissect_options {bad} are not extra arguments of gan_monitor.dissect; allowed: "
            f"{', '.join(sorted(allowed))} (the others are DissectionMonitor arguments)."
        )
    return dict(options)


def _scalars(summary: dict[str, Any]) -> dict[str, Any]:
    return {k: summary[k] for k in ("units", "interpretable_units", "concept_diversity", "mean_iou",
                                    "per_category")}


_DOC = """Dissect generator layers during training and log what emerges.

    Args:
        layers: module names inside the generator (``gan_monitor.core.tracing.layer_names``).
        segmenter: a :class:`gan_monitor.segmenters.base.Segmenter`.
        generator: attribute path on the LightningModule (``"generator"``, ``"nets.g_ema"``)
            or a callable ``module -> nn.Module``.
        every_n_steps: dissect every this many *training batches* (counted by the
            callback; with manual optimisation ``trainer.global_step`` counts optimizer
            steps instead). When given, it replaces ``every_n_epochs``.
        every_n_epochs: dissect at the end of every this many epochs.
        on_train_start: also dissect once before the first batch (step 0).
        n, seed, input_fn: the held-out sample, drawn by ``gan_monitor.core.inputs.make_inputs``
            from a private seeded ``torch.Generator`` on the module's device; the
            global RNG is never touched. ``(n, seed)`` is stored in the checkpoint.
        threshold, quantile, iou, cutoff, batch_size: passed to ``gan_monitor.dissect``.
        top_units, top_images: the unit grid shows the ``top_units`` best units of each
            layer with their ``top_images`` top-activating held-out images.
        log_images: send histograms, images and tables to TensorBoard loggers.
        strict: raise when a dissection fails (default: warn once, keep training).
        dissect_options: further keyword arguments of ``gan_monitor.dissect``
            (e.g. ``{"iqr_n": 50}``), checked against its signature.

    Logs at Lightning's logging step (the x-axis of ``self.log``):
    ``gan_monitor/<layer>/{interpretable_units, concept_diversity, mean_iou,
    interpretable_<category>}`` to every logger; ``unit_iou`` (histogram),
    ``units_per_concept`` and ``top_units`` (images) and ``interpretable_units_table``
    (text) to TensorBoard. ``history`` keeps every dissection's summary numbers and
    ``last_result`` the last :class:`~gan_monitor.dissection.results.DissectionResult`.

    Under DDP (e.g. ``Trainer(strategy="ddp", devices=N)``) every rank dissects its share
    ``rank::N`` of the held-out sample at the same batches; all ranks hold the same
    result, history and scalars (equal to one process dissecting rank 0's generator);
    pictures are built and logged on rank 0 only. A failure on any rank abandons that
    dissection on every rank (the warning names the rank). Per-unit FID and causal
    effects run on rank 0 only.
    """


def _make_class(callback_base: type, name: str) -> type:
    cls = type(name, (_MonitorLogic, callback_base), {"__doc__": _DOC + FID_DOC + ACE_DOC, "__module__": __name__})
    return cls


try:
    import lightning.pytorch as _lightning
except ImportError:  # pragma: no cover - only pytorch_lightning installed
    _lightning = None

if _lightning is not None:
    DissectionMonitor = _make_class(_lightning.Callback, "DissectionMonitor")


def __getattr__(name: str):
    # pytorch_lightning is imported only when its flavour is asked for.
    if name == "DissectionMonitorPL":
        import pytorch_lightning

        cls = _make_class(pytorch_lightning.Callback, "DissectionMonitorPL")
        globals()[name] = cls
        return cls
    if name == "DissectionMonitor" and _lightning is None:
        raise ImportError("DissectionMonitor needs lightning (pip install lightning); "
                          "with pytorch_lightning use DissectionMonitorPL.")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
