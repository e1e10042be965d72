"""Pictures, tables and the HTML section of the training signals (``gan_monitor.signals``).

* :func:`concept_bar_chart`: per concept, paired bars of the real and the generated pixel
  fraction (under-generated concepts marked);
* :func:`markdown_table`: ``(columns, rows)`` as a Markdown table (TensorBoard text);
* :func:`signal_media`: the pictures and tables of one dissection's signals, for loggers (the
  callback and ``gan-monitor dissect`` send the same);
* :func:`signals_section`: the report's "Training signals" section of a checkpoint timeline:
  per checkpoint the sample diversity (collapsed dissections marked) and, per layer, a units x
  checkpoints grid coloured by each unit's concept (grey: not interpretable), rendered from
  ``templates/signals.html.j2``; :func:`add_signals_section` puts it into a page.
"""
from __future__ import annotations

import hashlib
from typing import Any, Sequence

from jinja2 import Environment, PackageLoader, StrictUndefined
from PIL import Image, ImageDraw, ImageFont

from gan_monitor.signals.compare import ConceptComparison
from gan_monitor.signals.diversity import sample_diversity
from gan_monitor.signals.summary import DissectionSignals, signal_tag
from gan_monitor.signals.units_over_time import snapshot, unit_changes

__all__ = ["concept_bar_chart", "markdown_table", "signal_media", "concept_color", "signals_view", "signals_section",
           "add_signals_section"]

_TEMPLATES = Environment(loader=PackageLoader("gan_monitor.report", "templates"), autoescape=True,
                         undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
_REAL, _GENERATED, _UNDER = (66, 133, 244), (251, 140, 0), (214, 39, 40)
_PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf",
            "#bcbd22", "#7f7f7f", "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd")


def _font(size: int = 12):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def concept_bar_chart(comparison: ConceptComparison, title: str = "", bar_height: int = 7,
                      max_bar: int = 300) -> Image.Image:
    """PIL image: per concept a blue bar (real pixel fraction) over an orange one (generated);
    under-generated concepts' names in red."""
    font = _font(12)
    names = comparison.concepts
    label_w = 8 + max([len(n) for n in names] + [4]) * 7
    top = 24 if title else 6
    width = label_w + max_bar + 70
    height = top + 20 + len(names) * (2 * bar_height + 8) + 4
    image = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    if title:
        draw.text((6, 5), title, fill=(20, 20, 20), font=font)
    draw.rectangle([label_w, top + 2, label_w + 10, top + 10], fill=_REAL)
    draw.text((label_w + 14, top), "real", fill=(20, 20, 20), font=font)
    draw.rectangle([label_w + 60, top + 2, label_w + 70, top + 10], fill=_GENERATED)
    draw.text((label_w + 74, top), "generated (pixel fraction)", fill=(20, 20, 20), font=font)
    biggest = max([comparison.real_fraction[n] for n in names] + [comparison.generated_fraction[n] for n in names]
                  + [1e-12])
    y = top + 20
    for name in names:
        colour = _UNDER if name in comparison.under_generated else (20, 20, 20)
        draw.text((6, y + bar_height // 2), name, fill=colour, font=font)
        for value, fill, dy in ((comparison.real_fraction[name], _REAL, 0),
                                (comparison.generated_fraction[name], _GENERATED, bar_height)):
            length = int(round(value / biggest * max_bar))
            draw.rectangle([label_w, y + dy, label_w + max(length, 1), y + dy + bar_height - 1], fill=fill)
            draw.text((label_w + length + 4, y + dy - 3), f"{value:.3f}", fill=(90, 90, 90), font=_font(9))
        y += 2 * bar_height + 8
    return image


def markdown_table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table (what TensorBoard's text tab renders)."""
    def cell(v):
        return "" if v is None else (f"{v:.4g}" if isinstance(v, float) else str(v))

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def signal_media(signals: DissectionSignals, step: int, axis: str = "training batches",
                 first_steps: dict[str, dict[str, int]] | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(images, tables)`` of one dissection's signals at ``step`` (on ``axis``): the real vs
    generated bar chart and concept table (with real statistics) and, given ``first_steps``
    (``{layer: {concept: step}}``), the step at which each concept got its first interpretable unit."""
    images, tables = {}, {}
    if signals.comparison is not None:
        images[signal_tag("concept_bars")] = concept_bar_chart(
            signals.comparison, title=f"step {step} ({axis}): real vs generated, "
                                      f"JS divergence {signals.comparison.js_divergence:.4f}")
        tables[signal_tag("concept_table")] = signals.comparison.table()
    if first_steps is not None:
        first = [[layer, concept, s] for layer, steps in first_steps.items()
                 for concept, s in sorted(steps.items(), key=lambda kv: kv[1])]
        tables[signal_tag("first_interpretable")] = (["layer", "concept", f"first step ({axis})"], first)
    return images, tables


def concept_color(concept: str) -> str:
    """A fixed colour per concept name (the same in every report)."""
    return _PALETTE[int(hashlib.md5(concept.encode("utf-8")).hexdigest(), 16) % len(_PALETTE)]


def signals_view(entries: Sequence[Any], axis: str | None = None) -> dict[str, Any]:
    """What ``templates/signals.html.j2`` shows of a timeline (``entries``: ``CheckpointEntry``
    with ``result``, in order)."""
    rows, previous = [], None
    for e in entries:
        stats = getattr(e.result, "sample_stats", None)
        now = snapshot(e.result)
        changes = unit_changes(previous, now) if previous is not None else {}
        previous = now
        d = sample_diversity(e.result) if stats else None
        stored = e.result.settings.get("signals") or {}
        rows.append({"name": e.name, "step": e.step, "x": e.x,
                     "js": None if stored.get("js_divergence") is None else f"{stored['js_divergence']:.4f}",
                     "under": ", ".join(stored.get("under_generated") or []),
                     "pixel_diversity": None if d is None else f"{d.pixel_diversity:.4f}",
                     "presence_entropy": None if d is None else f"{d.presence_entropy:.3f}",
                     "collapsed": bool(d and d.collapsed),
                     "churn": sum(c["label_churn"] for c in changes.values()) if changes else None,
                     "gained": sum(c["units_gained"] for c in changes.values()) if changes else None,
                     "lost": sum(c["units_lost"] for c in changes.values()) if changes else None})
    layers, used = [], {}
    names = list(entries[-1].result.layers) if entries else []
    for layer in names:
        present = [e for e in entries if layer in e.result.layers]
        units = max(e.result[layer].num_units for e in present)
        grid = []
        for u in range(units):
            cells = []
            for e in present:
                ld = e.result[layer]
                if u < ld.num_units and bool(ld.interpretable[u]):
                    label = ld.labels[u]
                    used[label] = concept_color(label)
                    cells.append({"color": used[label], "title": f"unit {u} @ {e.name}: {label} "
                                                                 f"(IoU {float(ld.unit_iou[u]):.3f})"})
                else:
                    cells.append({"color": "#eeeeee", "title": f"unit {u} @ {e.name}: not interpretable"})
            grid.append({"unit": u, "cells": cells})
        layers.append({"name": layer, "checkpoints": [e.name for e in present], "grid": grid})
    return {"rows": rows, "layers": layers, "legend": sorted(used.items()),
            "axis": axis or "training step of each checkpoint (the monitor's batch counter when the checkpoint "
                             "has one, else its global_step)",
            "any_collapsed": any(r["collapsed"] for r in rows),
            "has_real": any(r["js"] is not None for r in rows)}


def signals_section(entries: Sequence[Any], axis: str | None = None) -> str:
    """The HTML of the report's "Training signals" section."""
    return _TEMPLATES.get_template("signals.html.j2").render(view=signals_view(entries, axis))


def add_signals_section(page: str, entries: Sequence[Any], axis: str | None = None) -> str:
    """``page`` with the signals section inserted before ``</body>`` (unchanged when there is
    nothing to show: one checkpoint without sample statistics)."""
    if len(entries) < 2 and not any(getattr(e.result, "sample_stats", None) for e in entries):
        return page
    at = page.rfind("</body>")
    if at < 0:
        return page
    return page[:at] + signals_section(entries, axis) + page[at:]
