"""Per-unit FID and the artifact-ablation check during training (docs/method.md §7, §8).

:class:`UnitFIDOptions` says what to compute and when; :class:`UnitFIDSchedule` runs it
from the monitor's hooks, seeing only a :class:`~gan_monitor.callbacks.context.MonitorContext`.
It computes per-unit FID (:func:`gan_monitor.fid.unit_fid.per_unit_fid_layers`) on the
held-out sample (pool M = ``n``, the same inputs every time) on its own, usually rarer,
schedule counted in training batches like the dissections; and, optionally, at every
checkpoint save, the paper's Table 1 check (:func:`gan_monitor.fid.unit_fid.artifact_ablation`)
for the current highest-FID units. Both run under the monitor's failure policy
(:mod:`gan_monitor.callbacks.failure_policy`) and log at the logging step:

* every logger: ``gan_monitor/<layer>/fid_max``, ``.../fid_median`` and, at saves,
  ``.../fid_before``, ``.../fid_artifacts_ablated``, ``.../fid_random_ablated``;
* TensorBoard loggers also: ``gan_monitor/<layer>/unit_fid`` (histogram),
  ``.../artifact_units`` (image grid of the highest-FID units' top images) and
  ``.../artifact_ablation`` (the table as text), written by :mod:`gan_monitor.report`.

With ``max_unit_fid``, :meth:`UnitFIDSchedule.exclude_units` gives the dissections the
units whose latest FID is above it (``gan_monitor.fid.unit_fid.unrealistic_units``).

Checkpoint state: the step and batch count of the last per-unit FIDs and the FIDs
themselves (one float per unit, small), so that the filter and the artifact ablation keep
working after a resume; top-image indices are not kept.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from gan_monitor.callbacks.context import MonitorContext
from gan_monitor.callbacks.failure_policy import CountsFailures, FailurePolicy
from gan_monitor.core.tracing import resolve_layer
from gan_monitor.core.validation import positive_float, positive_int
from gan_monitor.fid.features import RealStats, as_extractor
from gan_monitor.fid.unit_fid import artifact_ablation, per_unit_fid_layers, unrealistic_units
from gan_monitor.report.tensorboard import write_artifact_ablation, write_unit_fid

__all__ = ["UnitFIDOptions", "UnitFIDSchedule"]


@dataclass(frozen=True)
class UnitFIDOptions:
    """Per-unit FID during training (off unless given to the monitor as ``unit_fid=``).

    Args:
        real_stats: :class:`gan_monitor.fid.features.RealStats` of real images under ``extractor``.
        extractor: ``None`` (embedded toy-scene features), an ``nn.Module`` or a callable
            with a ``name`` returning ``[N, d]`` features.
        k: top images per unit among the ``n`` held-out images; fixed for the whole run
            (FID depends on the sample size, so FIDs are comparable only at one ``k``).
        layers: layers to score (default: the monitored layers).
        every_n_steps, every_n_epochs: the FID schedule (training batches / epochs); a
            step schedule replaces the epoch schedule. One of them is required.
        max_unit_fid: once FIDs exist, dissections leave units with a higher FID out of
            labelling (the history records ``unit_fid_step``, the step of the FIDs used).
        artifact_ablation_on_save: at each checkpoint save, FID of the held-out images
            unchanged, with the ``artifact_units`` highest-FID units of each FID layer
            ablated, and with as many random units ablated (``random_draws`` draws; at
            most half of a layer's units are ablated).
    """

    real_stats: RealStats
    extractor: Any = None
    k: int = 50
    layers: tuple[str, ...] | None = None
    every_n_steps: int | None = None
    every_n_epochs: int | None = None
    max_unit_fid: float | None = None
    artifact_ablation_on_save: bool = False
    artifact_units: int = 20
    random_draws: int = 3

    def __post_init__(self):
        if not isinstance(self.real_stats, RealStats):
            raise TypeError("UnitFIDOptions(real_stats) must be a gan_monitor.fid.features.RealStats (e.g. "
                            f"gan_monitor.fid.features.toy_real_stats()), got {type(self.real_stats).__name__}.")
        if self.extractor is not None:
            as_extractor(self.extractor)  # raises TypeError naming what an extractor may be
        if isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 2:
            raise ValueError(f"UnitFIDOptions(k) (top images per unit) must be an integer >= 2, got {self.k!r}.")
        if self.layers is not None:
            layers = (self.layers,) if isinstance(self.layers, str) else tuple(self.layers)
            if not layers or not all(isinstance(x, str) and x for x in layers) or len(set(layers)) != len(layers):
                raise ValueError("UnitFIDOptions(layers) must be a non-empty list of distinct layer names, "
                                 f"got {self.layers!r}.")
            object.__setattr__(self, "layers", layers)
        positive_int("UnitFIDOptions(every_n_steps)", self.every_n_steps, allow_none=True)
        positive_int("UnitFIDOptions(every_n_epochs)", self.every_n_epochs, allow_none=True)
        if self.every_n_steps is None and self.every_n_epochs is None:
            raise ValueError("UnitFIDOptions: per-unit FID is not scheduled: set every_n_steps (training batches) "
                             "or every_n_epochs.")
        if self.max_unit_fid is not None:
            object.__setattr__(self, "max_unit_fid", positive_float("UnitFIDOptions(max_unit_fid)",
                                                                    self.max_unit_fid))
        if not isinstance(self.artifact_ablation_on_save, bool):
            raise TypeError("UnitFIDOptions(artifact_ablation_on_save) must be True or False, "
                            f"got {self.artifact_ablation_on_save!r}.")
        positive_int("UnitFIDOptions(artifact_units)", self.artifact_units)
        positive_int("UnitFIDOptions(random_draws)", self.random_draws)


class UnitFIDSchedule(CountsFailures):
    """Runs :class:`UnitFIDOptions` (see the module docstring); ``enabled`` is False
    when ``options`` is None.

    Args:
        options: what to compute and when, or None (off).
        context: what the monitor shares (:class:`~gan_monitor.callbacks.context.MonitorContext`).
    """

    def __init__(self, options: UnitFIDOptions | None, context: MonitorContext):
        self.options, self.context = options, context
        self.enabled = options is not None
        self.layers = list(context.layers) if options is None or options.layers is None else list(options.layers)
        if self.enabled:
            if options.k > context.sample.n:
                raise ValueError(f"UnitFIDOptions(k)={options.k} top images per unit cannot come from the "
                                 f"monitor's {context.sample.n} held-out images (the FID pool); use k <= n.")
            missing = [x for x in context.layers if x not in self.layers]
            if options.max_unit_fid is not None and missing:
                raise ValueError(f"UnitFIDOptions(max_unit_fid) filters the dissected layers by their FID, but "
                                 f"UnitFIDOptions(layers) lacks {missing}; include every monitored layer.")
        steps = None if options is None else options.every_n_steps
        self.every_n_steps = steps
        self.every_n_epochs = None if options is None or steps is not None else options.every_n_epochs
        self.extractor = as_extractor(options.extractor) if self.enabled else None  # built once
        self._policy = FailurePolicy("per-unit FID", strict=context.strict, later="later per-unit FID failures")
        # kept in checkpoints
        self.last_step: int | None = None  # logging step of the last per-unit FIDs
        self.last_batches: int | None = None
        self.fids: dict[str, torch.Tensor] = {}  # layer -> [U] float64
        self.ablation_step: int | None = None
        # runtime only
        self.last_result: dict[str, Any] = {}  # layer -> UnitFID
        self.last_ablation: dict[str, Any] = {}  # layer -> ArtifactAblation
        self.steps: list[int] = []  # logging steps of the per-unit FIDs computed in this process
        self.ablation_steps: list[int] = []

    @property
    def filters_units(self) -> bool:
        """Whether dissections leave units above ``max_unit_fid`` out of labelling."""
        return self.enabled and self.options.max_unit_fid is not None

    # ---- state -----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"last_step": self.last_step, "last_batches": self.last_batches, "ablation_step": self.ablation_step,
                "failures": self.failures, "fids": {name: f.clone() for name, f in self.fids.items()}}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        state = state or {}
        self.last_step, self.last_batches = state.get("last_step"), state.get("last_batches")
        self.ablation_step, self.failures = state.get("ablation_step"), int(state.get("failures", 0))
        self.fids = {name: torch.as_tensor(f, dtype=torch.float64) for name, f in state.get("fids", {}).items()}

    # ---- the unrealistic-unit filter -------------------------------------------------
    def exclude_units(self) -> dict[str, torch.Tensor] | None:
        """``dissect(exclude_units=...)``: per monitored layer, bool ``[U]``, the units whose
        latest FID exceeds ``max_unit_fid``; None before the first FIDs or without a filter."""
        if not self.filters_units or not self.fids:
            return None
        return {name: unrealistic_units(self.fids[name], self.options.max_unit_fid, self.fids[name].numel(), name)
                for name in self.context.layers}

    def annotate(self, result) -> None:
        """Add what the filter used to a dissection made with :meth:`exclude_units`:
        ``extras["unit_fid"]``, ``extras["unrealistic"]`` and ``settings["max_unit_fid"]``."""
        excluded = self.exclude_units()
        if excluded is None:
            return
        for name, ld in result.items():
            ld.extras.update(unit_fid=self.fids[name].double().flatten().tolist(),
                             unrealistic=excluded[name].tolist())
            ld.settings["max_unit_fid"] = float(self.options.max_unit_fid)

    # ---- hooks (called by the monitor) -----------------------------------------------
    def setup(self, pl_module) -> None:
        """Check the FID layers and the real statistics before training starts."""
        if not self.enabled:
            return
        generator = self.context.resolve_generator(pl_module)
        for name in self.layers:
            try:
                resolve_layer(generator, name)
            except Exception as err:
                raise ValueError(f"DissectionMonitor: UnitFIDOptions(layers) {name!r} is not a layer of the "
                                 f"generator ({err}).") from err
        stats = self.options.real_stats
        stats.check_usable(self.extractor.name, int(getattr(self.extractor, "dim", stats.dim)))

    def after_batch(self, trainer, pl_module) -> None:
        if self.every_n_steps is not None and self.context.batches_seen() % self.every_n_steps == 0:
            self._run(trainer, pl_module, "per-unit FID", self._unit_fid, after_batch=True)

    def epoch_end(self, trainer, pl_module) -> None:
        if self.every_n_epochs is not None and (trainer.current_epoch + 1) % self.every_n_epochs == 0:
            self._run(trainer, pl_module, "per-unit FID", self._unit_fid, after_batch=False)

    def on_save(self, trainer, pl_module) -> None:
        if self.enabled and self.options.artifact_ablation_on_save and self.fids:
            self._run(trainer, pl_module, "artifact ablation", self._ablation, after_batch=False)

    # ---- the work ----------------------------------------------------------------------
    def _run(self, trainer, pl_module, what: str, work, after_batch: bool) -> None:
        step = self.context.logging_step(trainer, after_batch)
        device = pl_module.device

        def run():
            generator = self.context.resolve_generator(pl_module)
            if isinstance(self.extractor, nn.Module):
                self.extractor.to(device)
            work(trainer, generator, self.context.sample.inputs(generator, device), device, step)

        self._policy.run(run, step=step, device=device, what=what)

    def _unit_fid(self, trainer, generator, inputs, device, step: int) -> None:
        if self.last_step is not None and step <= self.last_step:
            step = self.last_step + 1  # never log one step twice
        o = self.options
        results = per_unit_fid_layers(generator, self.layers, k=o.k, real_stats=o.real_stats,
                                      extractor=self.extractor, inputs=inputs, batch_size=self.context.batch_size,
                                      device=device)
        pictures = self.context.pictures
        write_unit_fid(trainer.loggers, results, step, generator=generator, n_units=pictures.top_units,
                       n_images=pictures.top_images, device=device, log_images=pictures.log_images)
        self.last_result = results
        self.fids = {name: res.fid.clone() for name, res in results.items()}
        self.last_step, self.last_batches = step, self.context.batches_seen()
        self.steps.append(step)

    def _ablation(self, trainer, generator, inputs, device, step: int) -> None:
        if self.ablation_step is not None and step <= self.ablation_step:
            return  # several files saved at one step (e.g. best and last): evaluated once
        o = self.options
        results = {}
        for name, fid in self.fids.items():
            n_units = min(o.artifact_units, fid.numel() // 2)
            units = torch.argsort(fid, descending=True, stable=True)[:n_units].tolist()
            results[name] = artifact_ablation(generator, name, units, real_stats=o.real_stats,
                                              extractor=self.extractor, inputs=inputs, n_random_draws=o.random_draws,
                                              random_seed=self.context.sample.seed,
                                              batch_size=self.context.batch_size, device=device)
        write_artifact_ablation(trainer.loggers, results, step, log_images=self.context.pictures.log_images)
        self.last_ablation, self.ablation_step = results, step
        self.ablation_steps.append(step)

