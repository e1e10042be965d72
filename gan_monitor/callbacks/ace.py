"""Causal effects during training (docs/method.md §6, §8).

:class:`AceOptions` says which concepts and when; :class:`AceSchedule` runs it from the
monitor's hooks, seeing only a :class:`~gan_monitor.callbacks.context.MonitorContext`.
For each monitored layer and each concept it ablates the layer's top-n units by IoU with
the concept (from the latest dissection) on the first ``n`` images of the held-out sample,
and logs the fraction of the concept's pixels removed
(:func:`gan_monitor.interventions.ace.ace`); optionally (costlier) it also optimises the
causal unit set (:func:`gan_monitor.interventions.causal_units.causal_units`, one epoch
over ``n`` further images drawn from the held-out sample's seed + 1, so the evaluation
images stay unseen by the optimisation) and logs what its top-n remove. It runs at every
checkpoint save (``on_save``, default) and/or every ``every_n_epochs`` epochs, under the
monitor's failure policy (:mod:`gan_monitor.callbacks.failure_policy`).

Logged scalars (every logger): ``gan_monitor/<layer>/ace/<concept>/iou_top<n>_removed``
and ``.../causal_top<n>_removed``; a concept absent from every image is left out.
``state_dict`` / ``load_state_dict`` keep the step of the last evaluation, the failure
count and the history of logged values across checkpoints (the monitor stores them
under its ``"ace"`` key).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from gan_monitor.callbacks.context import MonitorContext
from gan_monitor.callbacks.failure_policy import CountsFailures, FailurePolicy
from gan_monitor.core.errors import AbsentConceptError
from gan_monitor.core.inputs import default_input_fn, index_inputs, make_inputs
from gan_monitor.core.validation import positive_int
from gan_monitor.interventions.ace import ace
from gan_monitor.interventions.causal_units import causal_units, check_differentiable

__all__ = ["AceOptions", "AceSchedule"]


@dataclass(frozen=True)
class AceOptions:
    """Causal effects during training (off unless given to the monitor as ``ace=``).

    Args:
        concepts: concept names of the segmenter; for each monitored layer, the fraction
            of each concept's pixels removed by ablating its ``top_n`` IoU units is logged.
        top_n: units ablated per layer and concept.
        n: held-out images the effect is measured on (the first ``n`` of the sample).
        on_save: evaluate at every checkpoint save.
        every_n_epochs: also (or instead) evaluate at the end of every this many epochs.
        causal: also optimise the ``top_n`` causal units (needs a segmenter with
            differentiable ``probabilities``) and log what they remove.

    >>> AceOptions("tree", top_n=10).concepts
    ('tree',)
    >>> AceOptions(["tree"], on_save=False)
    Traceback (most recent call last):
    ...
    ValueError: AceOptions: the causal effects are never evaluated: set on_save=True or every_n_epochs.
    """

    concepts: tuple[str, ...]
    top_n: int = 20
    n: int = 100
    on_save: bool = True
    every_n_epochs: int | None = None
    causal: bool = False

    def __post_init__(self):
        concepts = (self.concepts,) if isinstance(self.concepts, str) else tuple(self.concepts or ())
        if not concepts or not all(isinstance(c, str) and c for c in concepts):
            raise ValueError(f"AceOptions(concepts) must name at least one concept, got {self.concepts!r}.")
        object.__setattr__(self, "concepts", concepts)
        positive_int("AceOptions(top_n)", self.top_n)
        positive_int("AceOptions(n)", self.n)
        positive_int("AceOptions(every_n_epochs)", self.every_n_epochs, allow_none=True)
        for name in ("on_save", "causal"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"AceOptions({name}) must be True or False, got {getattr(self, name)!r}.")
        if not self.on_save and self.every_n_epochs is None:
            raise ValueError("AceOptions: the causal effects are never evaluated: set on_save=True or "
                             "every_n_epochs.")


class AceSchedule(CountsFailures):
    """Runs :class:`AceOptions` (see the module docstring); ``enabled`` is False when
    ``options`` is None.

    Args:
        options: which concepts and when, or None (off).
        context: what the monitor shares (:class:`~gan_monitor.callbacks.context.MonitorContext`).
    """

    def __init__(self, options: AceOptions | None, context: MonitorContext):
        self.options, self.context = options, context
        self.enabled = options is not None
        if self.enabled:
            known = list(context.segmenter.concepts)[1:]
            unknown = [c for c in options.concepts if c not in known]
            if unknown:
                raise ValueError(f"AceOptions(concepts) {unknown} are not concepts of the segmenter; "
                                 f"known: {', '.join(known)}.")
            if options.causal:
                check_differentiable(context.segmenter)
        self.last_step: int | None = None
        self.history: list[dict[str, Any]] = []  # {"step", "metrics"} per evaluation (kept in checkpoints)
        self._policy = FailurePolicy("causal-effect evaluation", strict=context.strict)

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

    # ---- hooks (called by the monitor) -----------------------------------------------
    def epoch_end(self, trainer, pl_module) -> None:
        every = None if self.options is None else self.options.every_n_epochs
        if every is not None and (trainer.current_epoch + 1) % every == 0:
            self._run(trainer, pl_module)

    def on_save(self, trainer, pl_module) -> None:
        if self.enabled and self.options.on_save:
            self._run(trainer, pl_module)

    # ---- the work ----------------------------------------------------------------------
    def _run(self, trainer, pl_module) -> None:
        dissection = self.context.latest_dissection()
        if dissection is None:
            return  # nothing dissected yet: no IoU ranking to ablate
        step = self.context.logging_step(trainer, after_batch=False)
        if self.last_step is not None and step <= self.last_step:
            return  # one evaluation per step (several files saved at once, or save + epoch end)
        device = pl_module.device
        ok, metrics = self._policy.run(
            lambda: self._measure(self.context.resolve_generator(pl_module), dissection, device), step=step,
            device=device)
        if not ok:
            return
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)
            logger.save()
        self.last_step = step
        self.history.append({"step": step, "metrics": metrics})

    def _measure(self, generator, result, device) -> dict[str, float]:
        o, sample, segmenter = self.options, self.context.sample, self.context.segmenter
        batch_size = self.context.batch_size
        inputs = index_inputs(sample.inputs(generator, device), torch.arange(min(o.n, sample.n)))
        optimise_on = None  # images the causal optimisation sees: not the evaluation images
        # the held-out sample is drawn by input_fn (default: Gaussian latents); its insertion values too
        draw = sample.input_fn if sample.input_fn is not None else default_input_fn(generator)
        if o.causal:
            optimise_on = make_inputs(generator, o.n, sample.seed + 1, sample.input_fn, device)
        metrics = {}
        for layer, dissection in result.items():
            m = min(o.top_n, dissection.num_units)
            for concept in o.concepts:
                c = list(dissection.concepts).index(concept)
                units = torch.argsort(dissection.iou[:, c], descending=True, stable=True)[:m].tolist()
                try:
                    r = ace(generator, layer, units, concept, segmenter=segmenter, inputs=inputs,
                            batch_size=batch_size, device=device,
                            allow_nondeterministic=self.context.allow_nondeterministic)
                except AbsentConceptError:
                    continue  # the generator draws none of it (yet): nothing to remove, left out
                metrics[f"gan_monitor/{layer}/ace/{concept}/iou_top{m}_removed"] = r.fraction_removed
                if o.causal:
                    cu = causal_units(generator, layer, concept, segmenter=segmenter, inputs=optimise_on,
                                      seed=sample.seed + 1, input_fn=draw, dissection=dissection,
                                      top_n=m, evaluate=False, epochs=1, batch_size=min(16, batch_size),
                                      device=device)
                    r = ace(generator, layer, cu.ranking[:m], concept, segmenter=segmenter, inputs=inputs,
                            batch_size=batch_size, device=device,
                            allow_nondeterministic=self.context.allow_nondeterministic)
                    metrics[f"gan_monitor/{layer}/ace/{concept}/causal_top{m}_removed"] = r.fraction_removed
        return {k: float(v) for k, v in metrics.items()}
