"""Compare dissections side by side: interpretable units per concept category for
each layer, checkpoint or model (as in the GAN Dissection paper's Fig. 6 and 19).

Examples:
  gan-monitor compare dissect/                       # every checkpoint of a timeline
  gan-monitor compare runA/ runB/ --layers layer3    # two models, one layer
  gan-monitor compare dissect/ --checkpoints last --png fig6.png --csv fig6.csv

Each input is a `gan-monitor dissect` folder (all its checkpoints, or those named by
--checkpoints) or a single dissection.json. Prints one row per (input, checkpoint,
layer); --png draws stacked bars (one per row, coloured by category), --csv saves the table.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

__all__ = ["add_arguments", "run", "compare_rows", "stacked_bars"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="+", type=Path, metavar="DIR_OR_JSON", help="dissect folders or dissection.json files")
    p.add_argument("--layers", default=None, help="comma-separated layers to show (default: all)")
    p.add_argument("--checkpoints", default=None, help="comma-separated checkpoint names to show (default: all)")
    p.add_argument("--csv", type=Path, default=None, help="write the table as CSV here")
    p.add_argument("--png", type=Path, default=None, help="draw stacked bars of units per category here")
    p.add_argument("--debug", action="store_true", help="show tracebacks")


def compare_rows(inputs, layers=None, checkpoints=None) -> list[dict[str, Any]]:
    """One row per (input, checkpoint, layer): units, interpretable units, concepts,
    mean IoU and interpretable units per category."""
    from gan_monitor.report.html import ReportError, load_timeline
    from gan_monitor.dissection.results import DissectionResult

    rows = []
    for src in inputs:
        src = Path(src)
        if src.is_file():
            try:
                entries = [{"name": src.parent.name, "step": None, "result": DissectionResult.from_json(src)}]
            except (OSError, ValueError, KeyError) as err:
                raise ReportError(f"cannot read {src}: {err}") from err
        else:
            entries = load_timeline(src)
        for e in entries:
            if checkpoints and e["name"] not in checkpoints:
                continue
            result = e["result"]
            unknown = [name for name in (layers or []) if name not in result.layers]
            if unknown:
                raise ReportError(f"{src} ({e['name']}) has no dissection of layer(s) {', '.join(unknown)}; "
                                  f"dissected: {', '.join(result.layers)}.")
            for layer in layers or list(result.layers):
                s = result[layer].summary
                row = {"input": str(src), "checkpoint": e["name"], "step": "" if e.get("step") is None else e["step"],
                       "layer": layer, "units": s["units"], "interpretable_units": s["interpretable_units"],
                       "concept_diversity": s["concept_diversity"], "mean_iou": round(s["mean_iou"], 4)}
                row.update({f"units_{c}": n for c, n in s["per_category"].items()})
                rows.append(row)
    if not rows:
        raise ReportError("nothing to compare: no checkpoint matched --checkpoints.")
    return rows


def stacked_bars(rows: list[dict[str, Any]], bar_width: int = 360):
    """PIL image: per row a bar of interpretable units split by category (Fig. 6 style)."""
    from PIL import Image, ImageDraw

    from gan_monitor.report.pictures import _OTHER_COLOR, CATEGORY_COLORS, _font, _text_width

    cats = list(dict.fromkeys(k[len("units_"):] for r in rows for k in r if k.startswith("units_")))
    font = _font(12)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    names = [f"{r['checkpoint']} {r['layer']}" for r in rows]
    label_w = max(_text_width(probe, n, font) for n in names) + 10
    top = max([r["interpretable_units"] for r in rows] + [1])
    h = 22 * len(rows) + 30
    img = Image.new("RGB", (label_w + bar_width + 50, h), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    for i, (row, name) in enumerate(zip(rows, names)):
        y, x = 6 + 22 * i, label_w
        draw.text((label_w - 6 - _text_width(draw, name, font), y + 2), name, fill=(20, 20, 20), font=font)
        for cat in cats:
            w = round(bar_width * row.get(f"units_{cat}", 0) / top)
            if w:
                draw.rectangle([x, y, x + w - 1, y + 16], fill=CATEGORY_COLORS.get(cat, _OTHER_COLOR))
            x += w
        draw.text((x + 4, y + 2), str(row["interpretable_units"]), fill=(20, 20, 20), font=font)
    x = 6
    for cat in cats:
        draw.rectangle([x, h - 18, x + 10, h - 8], fill=CATEGORY_COLORS.get(cat, _OTHER_COLOR))
        draw.text((x + 14, h - 20), cat, fill=(20, 20, 20), font=font)
        x += 26 + _text_width(draw, cat, font)
    return img


def run(args: argparse.Namespace) -> int:
    from gan_monitor.cli.dissect import _csv

    split = lambda s: [x.strip() for x in s.split(",") if x.strip()] if s else None  # noqa: E731
    try:
        rows = compare_rows(args.inputs, split(args.layers), split(args.checkpoints))
        table = _csv(rows)
        print(table.rstrip())
        if args.csv:
            args.csv.write_text(table, encoding="utf-8")
        if args.png:
            stacked_bars(rows).save(args.png)
            print(f"chart: {args.png}")
    except Exception as err:
        if args.debug:
            raise
        print(f"gan-monitor compare: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 1
    return 0
