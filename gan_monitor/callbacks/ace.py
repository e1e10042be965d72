"""Causal effects inside :class:`~gan_monitor.callbacks.dissection_monitor.DissectionMonitor` (METHOD.md 2).

:class:`AceSchedule` is owned by the monitor and called from its hooks. For each
monitored layer and each concept of ``ace_concepts`` it ablates the layer's top-n
units by IoU with the concept (from the monitor's latest dissection) on the first
``n`` images of the monitor's held-out sample, and logs the fraction of the
concept's pixels removed; optionally (costlier) it also optimises the causal unit
set (``causal.causal_units``, one epoch over ``n`` further images drawn from the
held-out sample's seed + 1, so the evaluation images stay unseen by the
optimisation) and logs what its top-n remove. It runs at every
checkpoint save (``on_save``, default) and/or every ``every_n_epochs`` epochs,
under ``torch.random.fork_rng`` and the monitor's warn-or-strict failure policy.

Logged scalars (every logger): ``gan_monitor/<layer>/ace/<concept>/iou_top<n>_removed``
and ``.../causal_top<n>_removed``. ``state_dict`` / ``load_state_dict`` keep the
step of the last evaluation, the failure count and the history of logged values
across checkpoints (the monitor stores them under its ``"ace"`` key).
"""
from __future__ import annotations

from typing import Any, Sequence

import torch

from gan_monitor.callbacks.guard import GuardedWork, logging_step

__all__ = ["AceSchedule", "ACE_DOC"]

ACE_DOC = """
    Causal effects (off unless ``ace_concepts`` is given; see ``gan_monitor.callbacks.ace``):
        ace_concepts: concept names; for each monitored layer, the fraction of each concept's
            pixels removed by ablating its top-n IoU units is logged.
        ace_options: dict with ``top_n`` (20), ``n`` (held-out images used, 100),
            ``on_save`` (True: at checkpoint saves), ``every_n_epochs`` (None) and
            ``causal`` (False; True also optimises and evaluates the top-n causal units).
    """

_OPTIONS = {"top_n", "n", "on_save", "every_n_epochs", "causal"}


class AceSchedule:
    """The monitor's causal-effect logging (see the module docstring)."""

    failures = GuardedWork.counted()

    def __init__(self, monitor, concepts: Sequence[str] | None = None, *, top_n: int = 20, n: int = 100,
                 on_save: bool = True, every_n_epochs: int | None = None, causal: bool = False):
        self.enabled = bool(concepts)
        concepts = [concepts] if isinstance(concepts, str) else list(concepts or [])
        known = list(monitor.segmenter.concepts)[1:]
        unknown = [c for c in concepts if c not in known]
        if unknown:
            raise ValueError(f"ace_concepts {unknown} are not concepts of the segmenter; known: {', '.join(known)}.")
        for name, value in (("top_n", top_n), ("n", n)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"ace_options['{name}'] must be a positive integer, got {value!r}.")
        if every_n_epochs is not None and (not isinstance(every_n_epochs, int) or every_n_epochs < 1):
            raise ValueError("ace_options['every_n_epochs'] must be a positive integer or None, "
                             f"got {every_n_epochs!r}.")
        if self.enabled and not on_save and every_n_epochs is None:
            raise ValueError("ace_concepts is given but never evaluated: set ace_options on_save=True "
                             "or every_n_epochs.")
        if causal and self.enabled:
            from gan_monitor.interventions.causal_units import check_differentiable
            check_differentiable(monitor.segmenter)
        self.concepts, self.top_n, self.n = concepts, int(top_n), int(n)
        self.on_save_enabled, self.every_n_epochs, self.causal = bool(on_save), every_n_epochs, bool(causal)
        self.last_step: int | None = None
        self.history: list[dict[str, Any]] = []  # {"step", "metrics"} per evaluation (kept in checkpoints)
        self._guard = GuardedWork("causal-effect evaluation")

    # ---- state -----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Plain Python values (safe for ``torch.load(weights_only=True)``)."""
        return {"last_step": self.last_step, "failures": self.failures,
                "history": [{"step": int(h["step"]), "metrics": {k: float(v) for k, v in h["metrics"].items()}}
                            for h in self.history]}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        """Restore ``state_dict()``'s values; ``None`` (a checkpoint from before this
        state existed) resets to a fresh schedule."""
        state = state or {}
        last = state.get("last_step")
        self.last_step = None if last is None else int(last)
        self.failures = int(state.get("failures", 0))
        self.history = [{"step": int(h["step"]), "metrics": dict(h["metrics"])} for h in state.get("history", [])]

    @staticmethod
    def check_options(options: dict | None) -> dict:
        options = dict(options or {})
        extra = sorted(set(options) - _OPTIONS)
        if extra:
            raise ValueError(f"unknown ace_options {extra}; allowed: {sorted(_OPTIONS)}.")
        return options

    def epoch_end(self, monitor, trainer, pl_module) -> None:
        if self.enabled and self.every_n_epochs is not None and (trainer.current_epoch + 1) % self.every_n_epochs == 0:
            self._run(monitor, trainer, pl_module, after_batch=False)

    def on_save(self, monitor, trainer, pl_module) -> None:
        if self.enabled and self.on_save_enabled:
            self._run(monitor, trainer, pl_module, after_batch=False)

    def _run(self, monitor, trainer, pl_module, after_batch: bool) -> None:
        if monitor.last_result is None:
            return  # nothing dissected yet: no IoU ranking to ablate
        step = logging_step(trainer, monitor.batches_seen, after_batch)
        if self.last_step is not None and step <= self.last_step:
            return  # one evaluation per step (several files saved at once, or save + epoch end)
        device = pl_module.device
        ok, metrics = self._guard.run(lambda: self._measure(monitor, monitor.resolve_generator(pl_module), device),
                                      step=step, device=device, strict=monitor.strict)
        if not ok:
            return
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)
            logger.save()
        self.last_step = step
        self.history.append({"step": step, "metrics": metrics})

    def _measure(self, monitor, generator, device) -> dict[str, float]:
        from gan_monitor.interventions.causal_units import causal_units
        from gan_monitor.core.inputs import index_inputs, make_inputs
        from gan_monitor.interventions.ace import ace

        inputs = monitor.sample.inputs(generator, device)
        inputs = index_inputs(inputs, torch.arange(min(self.n, monitor.sample.n)))
        optimise_on = None  # images the causal optimisation sees: not the evaluation images
        if self.causal:
            optimise_on = make_inputs(generator, self.n, monitor.sample.seed + 1, monitor.sample.input_fn, device)
        metrics = {}
        for layer, dissection in monitor.last_result.items():
            m = min(self.top_n, dissection.num_units)
            for concept in self.concepts:
                c = list(dissection.concepts).index(concept)
                units = torch.argsort(dissection.iou[:, c], descending=True, stable=True)[:m].tolist()
                r = ace(generator, layer, units, concept, segmenter=monitor.segmenter, inputs=inputs,
                        batch_size=monitor.batch_size, device=device)
                metrics[f"gan_monitor/{layer}/ace/{concept}/iou_top{m}_removed"] = r.fraction_removed
                if self.causal:
                    cu = causal_units(generator, layer, concept, segmenter=monitor.segmenter, inputs=optimise_on,
                                      seed=monitor.sample.seed + 1, input_fn=monitor.sample.input_fn,
                                      dissection=dissection, top_n=m, evaluate=False, epochs=1,
                                      batch_size=min(16, monitor.batch_size), device=device)
                    r = ace(generator, layer, cu.ranking[:m], concept, segmenter=monitor.segmenter, inputs=inputs,
                            batch_size=monitor.batch_size, device=device)
                    metrics[f"gan_monitor/{layer}/ace/{concept}/causal_top{m}_removed"] = r.fraction_removed
        return {k: float(v) for k, v in metrics.items() if v == v}  # NaN (concept absent) left out
