"""The HTML unit browser of a ``gan-monitor dissect`` output folder (``index.html``).

The page shows one checkpoint (the last by training step unless another is named): per
layer the summary row (the numbers of summary.csv), the bar graph of interpretable units
per concept and one card per unit (label, category, IoU, threshold, FID when known, its
top images with the unit's mask outlined), with filters by concept and category and
sorting by IoU or FID; a timeline chart of interpretable units per layer when several
checkpoints were dissected (``docs/method.md`` §5 and §8).

The page is rendered from ``templates/report.html.j2`` with Jinja2, autoescape on (every
text from the folder is HTML-escaped); its CSS and JavaScript (``templates/report.css``,
``templates/report.js``) are inlined, and the pictures are PNG files in the folder, so the
page works offline from the file system. The folder is read and written through
:mod:`gan_monitor.report.store`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from jinja2 import Environment, PackageLoader, StrictUndefined

from gan_monitor.core.errors import ReportError
from gan_monitor.report import pictures
from gan_monitor.report.signals_view import add_signals_section
from gan_monitor.report.store import (
    CheckpointEntry,
    OutputFolder,
    safe_name,
    summary_rows,
)

__all__ = ["build_report", "render_page", "timeline_chart"]

_TEMPLATES = Environment(loader=PackageLoader("gan_monitor.report", "templates"), autoescape=True,
                         undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
_LINE_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")


def timeline_chart(entries: Sequence[CheckpointEntry], layers: Sequence[str], width: int = 640,
                   height: int = 240) -> dict[str, Any]:
    """Geometry of the line chart of interpretable units per layer over the checkpoints'
    steps (``x``), in pixels, for the template's inline SVG."""
    xs = [float(e.x) for e in entries]
    series = {layer: [e.result[layer].summary["interpretable_units"] if layer in e.result.layers else 0
                      for e in entries] for layer in layers}
    top = max([max(v) for v in series.values()] + [1])
    x0, x1 = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
    left, right, bottom, up = 48, 16, 32, 12

    def px(x: float, y: float) -> tuple[float, float]:
        return (left + (x - x0) / (x1 - x0) * (width - left - right),
                height - bottom - y / top * (height - bottom - up))

    return {
        "width": width, "height": height, "left": left, "right": width - right, "bottom": height - bottom,
        "grid": [{"y": px(x0, top * frac)[1], "label": f"{top * frac:g}"} for frac in (0, 0.5, 1)],
        "ticks": [{"x": px(x, 0)[0], "label": f"{x:g}"} for x in sorted(set(xs))],
        "lines": [{"layer": layer, "color": _LINE_COLORS[i % len(_LINE_COLORS)], "legend_y": up + 14 * (i + 1),
                   "points": " ".join(f"{a:.1f},{b:.1f}" for a, b in (px(x, y) for x, y in zip(xs, ys))),
                   "dots": [{"x": px(x, y)[0], "y": px(x, y)[1], "title": f"{layer} step {x:g}: {y} units"}
                            for x, y in zip(xs, ys)]}
                  for i, (layer, ys) in enumerate(series.items())],
    }


def _layer_view(store: OutputFolder, entry: CheckpointEntry, layer: str) -> dict[str, Any]:
    """What the template shows of one layer; draws its bar graph into the folder."""
    ld = entry.result[layer]
    bars = store.bar_chart_path(entry, layer)
    store.save_image(bars, pictures.units_per_concept_chart(
        ld.summary["units_per_concept"], dict(zip(ld.concepts, ld.categories)),
        title=f"{layer}: interpretable units per concept"))
    (row,) = summary_rows(entry.result, entry.name, entry.step, layers=[layer])
    categories = [k[len("units_"):] for k in row if k.startswith("units_")]
    fids = ld.extras.get("unit_fid")
    labels, label_categories = ld.labels, ld.label_categories
    cards = [{"unit": u, "label": labels[u], "category": label_categories[u], "iou": float(ld.unit_iou[u]),
              "threshold": float(ld.thresholds[u]), "fid": None if fids is None else float(fids[u]),
              "interpretable": bool(ld.interpretable[u]), "picture": store.unit_picture(entry, layer, u)}
             for u in ld.ranked_units(only_interpretable=False)]
    return {"name": layer, "anchor": safe_name(layer), "bars": bars, "cards": cards,
            "header": ["units", "interpretable", "concepts", "mean IoU"] + categories,
            "cells": [row["units"], row["interpretable_units"], row["concept_diversity"], f"{row['mean_iou']:.4f}"]
            + [row[f"units_{c}"] for c in categories]}


def render_page(store: OutputFolder, entries: Sequence[CheckpointEntry], shown: CheckpointEntry) -> str:
    """The report's HTML for ``shown`` (``entries``: the timeline, in order); draws the
    layers' bar graphs into the folder on the way."""
    result = shown.result
    layers = list(result.layers)
    page = _TEMPLATES.get_template("report.html.j2").render(
        shown=shown,
        settings=[(k, v) for k, v in result.settings.items() if not isinstance(v, (list, dict))],
        entries=entries,
        timeline=timeline_chart(entries, layers) if len(entries) > 1 else None,
        concepts=sorted({c for ld in result.layers.values() for c in ld.labels}),
        categories=list(dict.fromkeys(c for ld in result.layers.values() for c in ld.categories[1:])),
        layers=[_layer_view(store, shown, layer) for layer in layers],
    )
    return add_signals_section(page, entries, result.settings.get("step_axis"))  # units x checkpoints, diversity


def _check_pictures(store: OutputFolder, shown: CheckpointEntry) -> None:
    missing = [layer for layer, ld in shown.result.items()
               if ld.num_units and not any(store.unit_picture(shown, layer, u) for u in range(ld.num_units))]
    if missing:
        raise ReportError(
            f"{store.root / shown.json} has no unit pictures for layer(s) {', '.join(missing)} (a dissection.json "
            "holds the numbers, not the images). To get them: from Python, "
            "gan_monitor.write_report(result, generator, FOLDER) draws them again from the "
            f"generator; or gan-monitor dissect CKPT --layers {','.join(missing)} --out FOLDER; or add --no-pictures "
            "(require_pictures=False in Python) to write the report without them.")


def build_report(folder: str | Path, checkpoint: str | None = None, *, require_pictures: bool = True) -> Path:
    """Write ``folder/index.html`` (and the bar graph PNGs) and return its path.

    With ``require_pictures`` (default), a checkpoint without unit pictures is refused with how to
    make them (:func:`gan_monitor.report.full_report.write_report`); ``require_pictures=False``
    writes the page without them."""
    store = OutputFolder(folder)
    entries = store.read_entries()
    if not entries:
        raise ReportError(f"{store.root}/timeline.json lists no checkpoints.")
    entries.sort(key=lambda e: float(e.x))
    names = [e.name for e in entries]
    if checkpoint is None:
        shown = entries[-1]
    elif checkpoint in names:
        shown = entries[names.index(checkpoint)]
    else:
        raise ReportError(f"no checkpoint named {checkpoint!r} in {store.root}; there are: {', '.join(names)}.")
    if require_pictures:
        _check_pictures(store, shown)
    return store.write_page(render_page(store, entries, shown))
