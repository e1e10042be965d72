"""Writing a :class:`~gan_monitor.dissection.results.DissectionResult` to Lightning loggers.

* Scalars go to **every** logger through its ``log_metrics`` (TensorBoard, CSV,
  W&B, ...), tags ``gan_monitor/<layer>/<metric>``.
* Histograms, images and text go only to loggers whose ``experiment`` is a
  TensorBoard ``SummaryWriter`` (``add_histogram``/``add_image``/``add_text``);
  every other logger gets the scalars and one warning.
* A TensorBoard custom-scalar layout puts all layers' curves of one metric in one
  chart. ``add_scalars``/``add_hparams`` are never used: they create extra run folders.
"""
from __future__ import annotations

import warnings
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from gan_monitor.report import pictures as visualize

__all__ = [
    "PREFIX",
    "SCALAR_METRICS",
    "scalar_metrics",
    "supports_rich_media",
    "custom_scalar_layout",
    "DissectionWriter",
]

PREFIX = "gan_monitor"
# (metric key in the per-layer summary, chart title in the custom-scalar layout)
SCALAR_METRICS: tuple[tuple[str, str], ...] = (
    ("interpretable_units", "interpretable units"),
    ("concept_diversity", "concept diversity"),
    ("mean_iou", "mean IoU of interpretable units"),
)
_IOU_BINS = np.linspace(0.0, 1.0, 41)


def _tag(layer: str, name: str) -> str:
    return f"{PREFIX}/{layer}/{name}"


def scalar_metrics(result, categories: Iterable[str] | None = None) -> dict[str, float]:
    """Flat ``{tag: value}`` of a result's per-layer scalars: interpretable units,
    concept diversity, mean IoU and interpretable units per category
    (``gan_monitor/<layer>/interpretable_<category>``)."""
    out: dict[str, float] = {}
    for layer, ld in result.items():
        s = ld.summary
        for key, _ in SCALAR_METRICS:
            out[_tag(layer, key)] = float(s[key])
        cats = list(categories) if categories is not None else list(s["per_category"])
        for cat in cats:
            out[_tag(layer, f"interpretable_{cat}")] = float(s["per_category"].get(cat, 0))
    return out


def supports_rich_media(logger) -> bool:
    """True when ``logger.experiment`` is a TensorBoard-style ``SummaryWriter``."""
    try:
        exp = logger.experiment
    except Exception:  # a logger that cannot start its experiment here (e.g. rank != 0)
        return False
    return all(hasattr(exp, m) for m in ("add_image", "add_histogram", "add_text", "add_custom_scalars"))


def custom_scalar_layout(layers: Sequence[str], categories: Sequence[str]) -> dict[str, Any]:
    """Layout for ``SummaryWriter.add_custom_scalars``: one chart per metric with all
    layers' curves, and one chart per layer with its units per category."""
    charts: dict[str, Any] = {}
    for key, title in SCALAR_METRICS:
        charts[title] = ["Multiline", [_tag(layer, key) for layer in layers]]
    for layer in layers:
        charts[f"{layer}: interpretable units per category"] = [
            "Multiline", [_tag(layer, f"interpretable_{c}") for c in categories]
        ]
    return {PREFIX: charts}


class DissectionWriter:
    """Sends each dissection to a trainer's loggers.

    Args:
        log_images: draw and send histograms, bar graphs, unit grids and tables to
            TensorBoard loggers (scalars always go to every logger).
        top_units: how many units (best IoU first) the unit grid shows per layer.
    """

    def __init__(self, *, log_images: bool = True, top_units: int = 8):
        self.log_images = bool(log_images)
        self.top_units = int(top_units)
        self._warned_scalar_only: set[str] = set()
        self._layout_written: set[int] = set()

    def rich_loggers(self, loggers: Sequence[Any]) -> list[Any]:
        """The loggers that take images; warns once per other logger type."""
        rich = []
        for logger in loggers:
            if supports_rich_media(logger):
                rich.append(logger)
            elif self.log_images:
                name = type(logger).__name__
                if name not in self._warned_scalar_only:
                    self._warned_scalar_only.add(name)
                    warnings.warn(
                        f"gan_monitor: {name} cannot show images, histograms or text; it gets the "
                        "dissection scalars only. Add a TensorBoardLogger to see unit images, or "
                        "pass log_images=False to silence this warning.",
                        stacklevel=2,
                    )
        return rich

    def write(
        self,
        loggers: Sequence[Any],
        result,
        step: int,
        examples: Mapping[str, Sequence[tuple[int, Any, Any]]] | None = None,
    ) -> None:
        """Log ``result`` at ``step``.

        ``examples`` maps a layer to ``[(unit, images [k,3,H,W], masks [k,H,W]), ...]``:
        the unit grid's pictures (see :func:`gan_monitor.report.unit_examples.top_unit_examples`).
        """
        categories = _categories(result)
        metrics = scalar_metrics(result, categories)
        for logger in loggers:
            logger.log_metrics(metrics, step=int(step))
            logger.save()
        if not self.log_images:
            return
        for logger in self.rich_loggers(loggers):
            writer = logger.experiment
            if id(writer) not in self._layout_written:
                writer.add_custom_scalars(custom_scalar_layout(list(result.layers), categories))
                self._layout_written.add(id(writer))
            for layer, ld in result.items():
                self._write_layer(writer, layer, ld, int(step), (examples or {}).get(layer))
            writer.flush()

    def _write_layer(self, writer, layer: str, ld, step: int, unit_examples) -> None:
        s = ld.summary
        if ld.num_units:
            writer.add_histogram(
                _tag(layer, "unit_iou"), ld.unit_iou.detach().cpu().double().numpy(), step,
                bins=_IOU_BINS,
            )
        concept_cats = dict(zip(ld.concepts, ld.categories))
        chart = visualize.units_per_concept_chart(
            s["units_per_concept"], concept_cats,
            title=f"{layer} @ step {step}: {s['interpretable_units']} interpretable units, "
                  f"{s['concept_diversity']} concepts",
        )
        writer.add_image(_tag(layer, "units_per_concept"), visualize.to_chw(chart), step,
                         dataformats="CHW")
        if unit_examples is not None:
            labels, cutoff = ld.labels, ld.settings.get("cutoff")
            rows = [
                visualize.unit_row(images, masks,
                                   visualize.unit_caption(u, labels[u], float(ld.unit_iou[u]), cutoff))
                for u, images, masks in unit_examples
            ]
            grid = visualize.top_units_grid(rows, title=f"{layer} @ step {step}: top units")
            writer.add_image(_tag(layer, "top_units"), visualize.to_chw(grid), step,
                             dataformats="CHW")
        writer.add_text(_tag(layer, "interpretable_units_table"),
                        visualize.interpretable_units_table(ld), step)


def _categories(result) -> list[str]:
    """Categories of the result's concepts (without the unlabeled index 0), in order."""
    for ld in result.layers.values():
        return list(dict.fromkeys(ld.categories[1:]))
    return []
