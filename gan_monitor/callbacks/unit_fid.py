"""Per-unit FID and the artifact-ablation check inside :class:`~gan_monitor.callbacks.dissection_monitor.DissectionMonitor`.

:class:`UnitFIDSchedule` is owned by the monitor and called from its hooks. It
computes per-unit FID (:func:`gan_monitor.fid.unit_fid.per_unit_fid_layers`) on the
monitor's held-out sample (pool M = ``n``, the same inputs every time) on its own,
usually rarer, schedule counted in training batches like the dissections; and,
optionally, at every checkpoint save, the paper's Table 1 check
(:func:`gan_monitor.fid.unit_fid.artifact_ablation`) for the current highest-FID units.
Both run under ``torch.random.fork_rng`` with the monitor's warn-or-strict
failure policy, and log at the monitor's logging step:

* every logger (``log_metrics``): ``gan_monitor/<layer>/fid_max``, ``.../fid_median``
  and, at saves, ``.../fid_before``, ``.../fid_artifacts_ablated``, ``.../fid_random_ablated``;
* TensorBoard loggers only: ``gan_monitor/<layer>/unit_fid`` (histogram),
  ``.../artifact_units`` (image grid of the highest-FID units' top images) and
  ``.../artifact_ablation`` (the table as text).

Checkpoint state: the step and batch count of the last per-unit FIDs and the FIDs
themselves (one float per unit, small), so that ``max_unit_fid`` filtering and the
artifact ablation keep working after a resume; top-image indices are not kept.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from gan_monitor.callbacks.guard import GuardedWork, logging_step

__all__ = ["UnitFIDSchedule", "FID_DOC"]

FID_DOC = """
    Per-unit FID (off unless ``fid_real_stats`` is given; see ``gan_monitor.callbacks.unit_fid``):
        fid_real_stats: :class:`gan_monitor.fid.features.RealStats` of real images under ``fid_extractor``.
        fid_extractor: ``None`` (embedded toy-scene features), an ``nn.Module`` or a named callable.
        fid_k: top images per unit among the ``n`` held-out images; fixed for the whole run
            (FID depends on the sample size, so FIDs are comparable only at one ``k``).
        fid_layers: layers to score (default: ``layers``).
        fid_every_n_steps / fid_every_n_epochs: the FID schedule (training batches / epochs);
            a step schedule replaces the epoch schedule.
        artifact_ablation_on_save: at each checkpoint save, FID of the held-out images
            unchanged, with the ``artifact_units`` highest-FID units of each FID layer
            ablated and with as many random units ablated (``artifact_random_draws``
            draws; at most half of a layer's units are ablated).
        max_unit_fid: once FIDs exist, dissections leave units with a higher FID out of
            labelling (``history`` records ``unit_fid_step``, the step of the FIDs used).
    """


def _positive_int(name: str, value, allow_none: bool = False):
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer{' or None' if allow_none else ''}, got {value!r}.")
    return int(value)


class UnitFIDSchedule:
    """The monitor's per-unit FID and artifact ablation (see the module docstring).
    ``enabled`` is False when no ``real_stats`` were given."""

    failures = GuardedWork.counted()

    def __init__(self, monitor, real_stats=None, extractor=None, *, k: int = 50,
                 layers: str | Sequence[str] | None = None, every_n_steps: int | None = None,
                 every_n_epochs: int | None = None, ablation_on_save: bool = False, artifact_units: int = 20,
                 random_draws: int = 3, max_unit_fid: float | None = None):
        from gan_monitor.fid.features import RealStats, as_extractor

        self.enabled = real_stats is not None
        if not self.enabled:
            given = [name for name, v, default in (
                ("fid_extractor", extractor, None), ("fid_layers", layers, None),
                ("fid_every_n_steps", every_n_steps, None), ("fid_every_n_epochs", every_n_epochs, None),
                ("artifact_ablation_on_save", bool(ablation_on_save), False), ("max_unit_fid", max_unit_fid, None),
            ) if v != default]
            if given:
                raise ValueError(f"{', '.join(given)} need(s) fid_real_stats: pass fid_real_stats=RealStats(...) "
                                 "(e.g. gan_monitor.fid.features.toy_real_stats()) to turn per-unit FID on.")
        elif not isinstance(real_stats, RealStats):
            raise TypeError("fid_real_stats must be a gan_monitor.fid.features.RealStats, "
                            f"got {type(real_stats).__name__}.")
        if isinstance(k, bool) or not isinstance(k, int) or k < 2:
            raise ValueError(f"fid_k (top images per unit) must be an integer >= 2, got {k!r}.")
        if self.enabled and k > monitor.n:
            raise ValueError(f"fid_k={k} top images per unit cannot come from the monitor's {monitor.n} held-out "
                             "images (the FID pool); use fid_k <= n.")
        layers = list(monitor.layers) if layers is None else [layers] if isinstance(layers, str) else list(layers)
        if not layers or not all(isinstance(x, str) and x for x in layers) or len(set(layers)) != len(layers):
            raise ValueError(f"fid_layers must be a non-empty list of distinct layer names, got {layers!r}.")
        self.every_n_steps = _positive_int("fid_every_n_steps", every_n_steps, allow_none=True)
        self.every_n_epochs = _positive_int("fid_every_n_epochs", every_n_epochs, allow_none=True)
        if self.every_n_steps is not None:
            self.every_n_epochs = None  # a step schedule replaces the epoch schedule
        if self.enabled and self.every_n_steps is None and self.every_n_epochs is None:
            raise ValueError("fid_real_stats is given but per-unit FID is not scheduled: set fid_every_n_steps "
                             "(training batches) or fid_every_n_epochs.")
        self.artifact_units = _positive_int("artifact_units", artifact_units)
        self.random_draws = _positive_int("artifact_random_draws", random_draws)
        if max_unit_fid is not None:
            if isinstance(max_unit_fid, bool) or not isinstance(max_unit_fid, (int, float)) or max_unit_fid <= 0:
                raise ValueError(f"max_unit_fid must be a positive number or None, got {max_unit_fid!r}.")
            missing = [x for x in monitor.layers if x not in layers]
            if missing:
                raise ValueError(f"max_unit_fid filters dissected layers by their FID, but fid_layers lacks "
                                 f"{missing}; include every monitored layer in fid_layers.")
            clash = sorted({"unit_fid", "max_unit_fid"} & set(monitor.dissect_options))
            if clash:
                raise ValueError(f"dissect_options sets {clash} and max_unit_fid is given; use one or the other.")
        self.k, self.layers, self.ablation_on_save = int(k), layers, bool(ablation_on_save)
        self.max_unit_fid = None if max_unit_fid is None else float(max_unit_fid)
        self.real_stats = real_stats
        self.extractor = as_extractor(extractor) if self.enabled else None  # built once
        # kept in checkpoints
        self.last_step: int | None = None  # logging step of the last per-unit FIDs
        self.last_batches: int | None = None
        self.fids: dict[str, torch.Tensor] = {}  # layer -> [U] float64
        self.ablation_step: int | None = None
        self._guard = GuardedWork("per-unit FID", later="later per-unit FID failures")
        # runtime only
        self.last_result: dict[str, Any] = {}  # layer -> UnitFID
        self.last_ablation: dict[str, Any] = {}  # layer -> ArtifactAblation
        self.steps: list[int] = []  # logging steps of the per-unit FIDs computed in this process
        self.ablation_steps: list[int] = []

    # ---- state -----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"last_step": self.last_step, "last_batches": self.last_batches, "ablation_step": self.ablation_step,
                "failures": self.failures, "fids": {name: f.clone() for name, f in self.fids.items()}}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        state = state or {}
        self.last_step, self.last_batches = state.get("last_step"), state.get("last_batches")
        self.ablation_step, self.failures = state.get("ablation_step"), int(state.get("failures", 0))
        self.fids = {name: torch.as_tensor(f, dtype=torch.float64) for name, f in state.get("fids", {}).items()}

    # ---- hooks (called by the monitor) -----------------------------------------------
    def setup(self, monitor, pl_module) -> None:
        if not self.enabled:
            return
        generator = monitor.resolve_generator(pl_module)
        from gan_monitor.core.tracing import resolve_layer

        for name in self.layers:
            try:
                resolve_layer(generator, name)
            except Exception as err:
                raise ValueError(f"DissectionMonitor: fid_layers {name!r} is not a layer of the generator "
                                 f"({err}).") from err
        self.real_stats.check_usable(self.extractor.name, int(getattr(self.extractor, "dim", self.real_stats.dim)))

    def after_batch(self, monitor, trainer, pl_module) -> None:
        if self.enabled and self.every_n_steps is not None and monitor.batches_seen % self.every_n_steps == 0:
            self._run(monitor, trainer, pl_module, "per-unit FID", self._unit_fid, after_batch=True)

    def epoch_end(self, monitor, trainer, pl_module) -> None:
        if self.enabled and self.every_n_epochs is not None and (trainer.current_epoch + 1) % self.every_n_epochs == 0:
            self._run(monitor, trainer, pl_module, "per-unit FID", self._unit_fid, after_batch=False)

    def on_save(self, monitor, trainer, pl_module) -> None:
        if self.enabled and self.ablation_on_save and self.fids:
            self._run(monitor, trainer, pl_module, "artifact ablation", self._ablation, after_batch=False)

    def dissect_filter(self) -> dict[str, Any]:
        """``dissect`` arguments of the unrealistic-unit filter, once FIDs exist."""
        if self.max_unit_fid is None or not self.fids:
            return {}
        return {"unit_fid": dict(self.fids), "max_unit_fid": self.max_unit_fid}

    # ---- the work ----------------------------------------------------------------------
    def _run(self, monitor, trainer, pl_module, what: str, work, after_batch: bool) -> None:
        step = logging_step(trainer, monitor.batches_seen, after_batch)
        device = pl_module.device

        def run():
            generator = monitor.resolve_generator(pl_module)
            if isinstance(self.extractor, nn.Module):
                self.extractor.to(device)
            work(monitor, trainer, generator, monitor.sample.inputs(generator, device), device, step)

        self._guard.run(run, step=step, device=device, strict=monitor.strict, what=what)

    def _rich(self, monitor, trainer) -> list:
        return monitor._writer.rich_loggers(trainer.loggers) if monitor.log_images else []

    def _unit_fid(self, monitor, trainer, generator, inputs, device, step: int) -> None:
        from gan_monitor.fid.unit_fid import per_unit_fid_layers
        from gan_monitor.report.fid_tensorboard import artifact_examples, artifact_units_grid, unit_fid_scalars
        from gan_monitor.report.pictures import to_chw

        if self.last_step is not None and step <= self.last_step:
            step = self.last_step + 1  # never log one step twice
        results = per_unit_fid_layers(generator, self.layers, k=self.k, real_stats=self.real_stats,
                                      extractor=self.extractor, inputs=inputs, batch_size=monitor.batch_size,
                                      device=device)
        metrics = {tag: v for res in results.values() for tag, v in unit_fid_scalars(res).items()}
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)
            logger.save()
        for logger in self._rich(monitor, trainer):
            writer = logger.experiment
            for name, res in results.items():
                writer.add_histogram(f"gan_monitor/{name}/unit_fid", res.fid.double().numpy(), step)
                examples = artifact_examples(generator, res, monitor.top_units, monitor.top_images, device=device)
                grid = artifact_units_grid(examples, res, title=f"{name} @ step {step}: highest per-unit FID "
                                                                f"(M={res.pool}, k={res.k}, {res.extractor})")
                writer.add_image(f"gan_monitor/{name}/artifact_units", to_chw(grid), step, dataformats="CHW")
            writer.flush()
        self.last_result = results
        self.fids = {name: res.fid.clone() for name, res in results.items()}
        self.last_step, self.last_batches = step, monitor.batches_seen
        self.steps.append(step)

    def _ablation(self, monitor, trainer, generator, inputs, device, step: int) -> None:
        from gan_monitor.fid.unit_fid import artifact_ablation
        from gan_monitor.report.fid_tensorboard import ablation_scalars

        if self.ablation_step is not None and step <= self.ablation_step:
            return  # several files saved at one step (e.g. best and last): evaluated once
        results, metrics = {}, {}
        for name, fid in self.fids.items():
            n_units = min(self.artifact_units, fid.numel() // 2)
            units = torch.argsort(fid, descending=True, stable=True)[:n_units].tolist()
            results[name] = artifact_ablation(generator, name, units, real_stats=self.real_stats,
                                              extractor=self.extractor, inputs=inputs,
                                              n_random_draws=self.random_draws, random_seed=monitor.seed,
                                              batch_size=monitor.batch_size, device=device)
            metrics.update(ablation_scalars(results[name]))
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)
            logger.save()
        for logger in self._rich(monitor, trainer):
            for name, res in results.items():
                logger.experiment.add_text(f"gan_monitor/{name}/artifact_ablation", res.table(), step)
            logger.experiment.flush()
        self.last_ablation, self.ablation_step = results, step
        self.ablation_steps.append(step)
