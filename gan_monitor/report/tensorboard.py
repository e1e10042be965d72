"""Every TensorBoard (and Lightning logger) write of gan_monitor: dissections, per-unit
FID and artifact ablation. The callbacks and ``gan-monitor dissect`` write through here.

Where things go:

* Scalars go to **every** logger through its ``log_metrics`` (TensorBoard, CSV, W&B, ...).
* Histograms, images and text go to loggers whose ``experiment`` is a TensorBoard
  ``SummaryWriter`` (``add_histogram``/``add_image``/``add_text``). The dissection's images
  and tables also go to Weights & Biases and MLflow loggers (through
  :class:`gan_monitor.report.loggers.MediaLogger`: ``log_image``/``log_table``, MLflow
  artifacts); every other logger gets the scalars (and, from :class:`DissectionWriter`, one
  warning).
* A plain ``SummaryWriter`` may be given wherever loggers are: it is wrapped as one
  (:class:`SummaryWriterLogger`).
* A TensorBoard custom-scalar layout puts all layers' curves of one metric in one chart.
  ``add_scalars``/``add_hparams`` are never used: they create extra run folders.

Tags (``<layer>`` is the dotted layer name):

* dissection (``docs/method.md`` §5): ``gan_monitor/<layer>/interpretable_units``,
  ``concept_diversity``, ``mean_iou``, ``interpretable_<category>`` (scalars); ``unit_iou``
  (histogram); ``units_per_concept``, ``top_units`` (images);
  ``interpretable_units_table`` (text);
* per-unit FID (``docs/method.md`` §7): ``fid_max``, ``fid_median`` (scalars); ``unit_fid``
  (histogram); ``artifact_units`` (image: the highest-FID units' top images);
* artifact ablation: ``fid_before``, ``fid_artifacts_ablated``, ``fid_random_ablated``
  (mean over random draws) (scalars); ``artifact_ablation`` (text: the printed table).
"""
from __future__ import annotations

import warnings
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
from torch import nn

from gan_monitor.dissection.results import DissectionResult
from gan_monitor.fid.unit_fid import ArtifactAblation, UnitFID
from gan_monitor.report import pictures
from gan_monitor.report.logger_kinds import SummaryWriterLogger, as_loggers, logger_kind, supports_rich_media
from gan_monitor.report.loggers import MediaLogger
from gan_monitor.report.unit_examples import artifact_examples

__all__ = [
    "PREFIX",
    "SCALAR_METRICS",
    "tag",
    "scalar_metrics",
    "unit_fid_scalars",
    "ablation_scalars",
    "supports_rich_media",
    "custom_scalar_layout",
    "SummaryWriterLogger",
    "as_loggers",
    "DissectionWriter",
    "artifact_units_grid",
    "write_unit_fid",
    "write_artifact_ablation",
]

PREFIX = "gan_monitor"
# (metric key in the per-layer summary, chart title in the custom-scalar layout)
SCALAR_METRICS: tuple[tuple[str, str], ...] = (
    ("interpretable_units", "interpretable units"),
    ("concept_diversity", "concept diversity"),
    ("mean_iou", "mean IoU of interpretable units"),
)
_IOU_BINS = np.linspace(0.0, 1.0, 41)


def tag(layer: str, name: str) -> str:
    """``gan_monitor/<layer>/<name>``."""
    return f"{PREFIX}/{layer}/{name}"


# ---- scalars -------------------------------------------------------------------------------
def scalar_metrics(result: DissectionResult, categories: Iterable[str] | None = None) -> dict[str, float]:
    """Flat ``{tag: value}`` of a result's per-layer scalars: interpretable units,
    concept diversity, mean IoU and interpretable units per category
    (``gan_monitor/<layer>/interpretable_<category>``)."""
    out: dict[str, float] = {}
    for layer, ld in result.items():
        s = ld.summary
        for key, _ in SCALAR_METRICS:
            out[tag(layer, key)] = float(s[key])
        for category in list(categories) if categories is not None else list(s["per_category"]):
            out[tag(layer, f"interpretable_{category}")] = float(s["per_category"].get(category, 0))
    return out


def unit_fid_scalars(result: UnitFID) -> dict[str, float]:
    """Highest and median per-unit FID of the layer."""
    return {tag(result.layer, "fid_max"): float(result.fid.max()),
            tag(result.layer, "fid_median"): float(result.fid.median())}


def ablation_scalars(result: ArtifactAblation) -> dict[str, float]:
    """The three numbers of the paper's Table 1: before, artifact units ablated, random units ablated (mean)."""
    s = result.scalars()
    return {tag(result.layer, "fid_before"): s["before"],
            tag(result.layer, "fid_artifacts_ablated"): s["artifacts_ablated"],
            tag(result.layer, "fid_random_ablated"): s["random_ablated"]}


# ---- loggers -------------------------------------------------------------------------------
def _log_scalars(loggers: Sequence[Any], metrics: Mapping[str, float], step: int) -> None:
    for logger in loggers:
        logger.log_metrics(dict(metrics), step=int(step))
        logger.save()


def custom_scalar_layout(layers: Sequence[str], categories: Sequence[str]) -> dict[str, Any]:
    """Layout for ``SummaryWriter.add_custom_scalars``: one chart per metric with all
    layers' curves, and one chart per layer with its units per category."""
    charts: dict[str, Any] = {}
    for key, title in SCALAR_METRICS:
        charts[title] = ["Multiline", [tag(layer, key) for layer in layers]]
    for layer in layers:
        charts[f"{layer}: interpretable units per category"] = [
            "Multiline", [tag(layer, f"interpretable_{c}") for c in categories]
        ]
    return {PREFIX: charts}


# ---- dissections ---------------------------------------------------------------------------
class DissectionWriter:
    """Sends each dissection to loggers (the callback's trainer loggers, the CLI's timeline).

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
        self._media = MediaLogger()

    def rich_loggers(self, loggers: Any) -> list[Any]:
        """The loggers that take images (TensorBoard, W&B, MLflow); warns once per other logger type."""
        rich = []
        for logger in as_loggers(loggers):
            if logger_kind(logger) is not None:
                rich.append(logger)
            elif self.log_images:
                name = type(logger).__name__
                if name not in self._warned_scalar_only:
                    self._warned_scalar_only.add(name)
                    warnings.warn(
                        f"gan_monitor: {name} cannot show images, histograms or text; it gets the "
                        "dissection scalars only. Add a TensorBoardLogger, WandbLogger or MLFlowLogger to see "
                        "unit images, or "
                        "pass log_images=False to silence this warning.",
                        stacklevel=2,
                    )
        return rich

    def write(
        self,
        loggers: Any,
        result: DissectionResult,
        step: int,
        examples: Mapping[str, Sequence[tuple[int, Any, Any]]] | None = None,
    ) -> None:
        """Log ``result`` at ``step``.

        ``examples`` maps a layer to ``[(unit, images [k,3,H,W], masks [k,H,W]), ...]``:
        the unit grid's pictures (see :func:`gan_monitor.report.unit_examples.top_unit_examples`).
        """
        loggers = as_loggers(loggers)
        categories = _categories(result)
        _log_scalars(loggers, scalar_metrics(result, categories), step)
        if not self.log_images:
            return
        rich = self.rich_loggers(loggers)
        if not rich:
            return
        images, tables = self.media(result, int(step), examples)  # drawn once for every logger
        boards = [logger for logger in rich if supports_rich_media(logger)]
        self._media.log([logger for logger in rich if logger not in boards], int(step), images, tables)
        for logger in boards:
            writer = logger.experiment
            if id(writer) not in self._layout_written:
                writer.add_custom_scalars(custom_scalar_layout(list(result.layers), categories))
                self._layout_written.add(id(writer))
            for layer, ld in result.items():
                self._write_layer(writer, layer, ld, int(step), images)
            writer.flush()

    def media(self, result: DissectionResult, step: int, examples=None) -> tuple[dict[str, Any], dict[str, Any]]:
        """The pictures (``{tag: PIL image}``) and tables (``{tag: (columns, rows)}``) of
        ``result`` for every logger that takes them: per layer the units-per-concept chart,
        the top-units grid (when ``examples`` has the layer) and the interpretable-units table."""
        images, tables = {}, {}
        for layer, ld in result.items():
            images[tag(layer, "units_per_concept")] = self._concept_chart(layer, ld, step)
            grid = self._units_grid(layer, ld, step, (examples or {}).get(layer))
            if grid is not None:
                images[tag(layer, "top_units")] = grid
            tables[tag(layer, "interpretable_units_table")] = pictures.interpretable_units_rows(ld)
        return images, tables

    @staticmethod
    def _concept_chart(layer: str, ld, step: int):
        s = ld.summary
        return pictures.units_per_concept_chart(
            s["units_per_concept"], dict(zip(ld.concepts, ld.categories)),
            title=f"{layer} @ step {step}: {s['interpretable_units']} interpretable units, "
                  f"{s['concept_diversity']} concepts",
        )

    @staticmethod
    def _units_grid(layer: str, ld, step: int, unit_examples):
        if unit_examples is None:
            return None
        labels, cutoff = ld.labels, ld.settings.get("cutoff")
        rows = [pictures.unit_row(images, masks, pictures.unit_caption(u, labels[u], float(ld.unit_iou[u]), cutoff))
                for u, images, masks in unit_examples]
        return pictures.top_units_grid(rows, title=f"{layer} @ step {step}: top units")

    @staticmethod
    def _write_layer(writer, layer: str, ld, step: int, images: Mapping[str, Any]) -> None:
        """TensorBoard: the IoU histogram, the layer's pictures of :meth:`media` and its table as text."""
        if ld.num_units:
            writer.add_histogram(tag(layer, "unit_iou"), ld.unit_iou.detach().cpu().double().numpy(), step,
                                 bins=_IOU_BINS)
        for name in ("units_per_concept", "top_units"):
            if tag(layer, name) in images:
                writer.add_image(tag(layer, name), pictures.to_chw(images[tag(layer, name)]), step, dataformats="CHW")
        writer.add_text(tag(layer, "interpretable_units_table"), pictures.interpretable_units_table(ld), step)


def _categories(result: DissectionResult) -> list[str]:
    """Categories of the result's concepts (without the unlabeled index 0), in order."""
    for ld in result.layers.values():
        return list(dict.fromkeys(ld.categories[1:]))
    return []


# ---- per-unit FID and artifact ablation ----------------------------------------------------
def _by_layer(results) -> dict[str, Any]:
    """One result or ``{layer: result}`` -> ``{layer: result}``."""
    return {r.layer: r for r in (results.values() if isinstance(results, Mapping) else [results])}


def artifact_units_grid(examples, result: UnitFID, title: str | None = None):
    """PIL image: one captioned row of top images per unit of ``examples`` (no mask drawn)."""
    rows = [pictures.unit_row(images, None, f"unit {u} FID {float(result.fid[u]):.1f} (k={result.k})")
            for u, images, _ in examples]
    return pictures.top_units_grid(rows, title=title)


def write_unit_fid(loggers: Any, results: UnitFID | Mapping[str, UnitFID], step: int, *,
                   generator: nn.Module | None = None, n_units: int = 8, n_images: int = 5, inputs: Any = None,
                   device=None, log_images: bool = True) -> None:
    """Log per-unit FIDs (one :class:`UnitFID` or ``{layer: UnitFID}``) at ``step``:
    ``fid_max``/``fid_median`` to every logger; to TensorBoard loggers (``log_images``) the
    histogram of per-unit FIDs and, given the ``generator``, the grid of the ``n_units``
    highest-FID units' ``n_images`` top images (generated again from the pool's inputs)."""
    loggers, results, step = as_loggers(loggers), _by_layer(results), int(step)
    _log_scalars(loggers, {t: v for res in results.values() for t, v in unit_fid_scalars(res).items()}, step)
    rich = [logger for logger in loggers if supports_rich_media(logger)] if log_images else []
    if not rich:
        return
    grids = {}
    if generator is not None:
        for layer, res in results.items():
            examples = artifact_examples(generator, res, n_units, n_images, inputs=inputs, device=device)
            grids[layer] = pictures.to_chw(artifact_units_grid(
                examples, res, title=f"{layer} @ step {step}: highest per-unit FID "
                                     f"(M={res.pool}, k={res.k}, {res.extractor})"))
    for logger in rich:
        writer = logger.experiment
        for layer, res in results.items():
            writer.add_histogram(tag(layer, "unit_fid"), res.fid.detach().cpu().double().numpy(), step)
            if layer in grids:
                writer.add_image(tag(layer, "artifact_units"), grids[layer], step, dataformats="CHW")
        writer.flush()


def write_artifact_ablation(loggers: Any, results: ArtifactAblation | Mapping[str, ArtifactAblation], step: int,
                            *, log_images: bool = True) -> None:
    """Log the three artifact-ablation scalars to every logger and, to TensorBoard loggers
    (``log_images``), the printed table as text."""
    loggers, results, step = as_loggers(loggers), _by_layer(results), int(step)
    _log_scalars(loggers, {t: v for res in results.values() for t, v in ablation_scalars(res).items()}, step)
    for logger in (loggers if log_images else []):
        if supports_rich_media(logger):
            for layer, res in results.items():
                logger.experiment.add_text(tag(layer, "artifact_ablation"), res.table(), step)
            logger.experiment.flush()
