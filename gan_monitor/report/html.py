"""Write an offline HTML unit browser for a `gan-monitor dissect` output folder.

Examples:
  gan-monitor dissect ckpts/*.ckpt --layers layer2,layer3 --out dissect/
  gan-monitor report dissect/                 # writes dissect/index.html
  gan-monitor report dissect/ --checkpoint epoch=3-step=800

The page shows the last checkpoint (by training step) unless --checkpoint names
another: per layer a summary, the bar graph of interpretable units per concept and
one card per unit (label, category, IoU, threshold, FID when known, its top images
with the unit's mask outlined), with filters by concept and category and sorting by
IoU or FID; a timeline chart of interpretable units when several checkpoints were
dissected. Everything is in the folder (PNG files next to index.html, inline CSS and
JavaScript): it works offline from the file system. All text is HTML-escaped.
"""
from __future__ import annotations

from gan_monitor.core.errors import ReportError

import argparse
import json
import re
import sys
from html import escape
from pathlib import Path
from typing import Any

__all__ = ["add_arguments", "run", "build_report", "load_timeline", "ReportError"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("folder", type=Path, metavar="DIR", help="output folder of `gan-monitor dissect`")
    p.add_argument("--checkpoint", default=None, help="name of the checkpoint whose units are shown (default: last)")
    p.add_argument("--debug", action="store_true", help="show tracebacks")


def run(args: argparse.Namespace) -> int:
    try:
        path = build_report(args.folder, checkpoint=args.checkpoint)
    except Exception as err:
        if args.debug:
            raise
        extra = "" if isinstance(err, ReportError) else f"{type(err).__name__}: "
        print(f"gan-monitor report: error: {extra}{' '.join(str(err).split())}", file=sys.stderr)
        return 1
    print(f"report: {path}")
    return 0


def load_timeline(folder: Path) -> list[dict[str, Any]]:
    """The folder's checkpoints in timeline order: ``[{name, step, x, json, unit_pictures, result}]``."""
    from gan_monitor.dissection.results import DissectionResult

    folder = Path(folder)
    if not folder.is_dir():
        raise ReportError(f"{folder}: no such folder.")
    index_file = folder / "timeline.json"
    if index_file.is_file():
        entries = json.loads(index_file.read_text(encoding="utf-8"))["checkpoints"]
    elif (folder / "dissection.json").is_file():
        entries = [{"name": folder.name, "step": None, "x": 0, "json": "dissection.json", "unit_pictures": {}}]
    else:
        raise ReportError(f"{folder} has neither timeline.json nor dissection.json; "
                          f"create it with `gan-monitor dissect CKPT --layers ... --out {folder}`.")
    for entry in entries:
        try:
            entry["result"] = DissectionResult.from_json(folder / entry["json"])
        except (OSError, ValueError, KeyError) as err:
            raise ReportError(f"cannot read {folder / entry['json']}: {err}") from err
    return entries


_CSS = """
body{font-family:system-ui,sans-serif;margin:1.2em;background:#fafafa;color:#222}
h1{font-size:1.4em} h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #ccc}
table.summary{border-collapse:collapse;margin:.5em 0} table.summary td,table.summary th{border:1px solid #ccc;padding:2px 8px;text-align:right}
.controls{position:sticky;top:0;background:#fafafa;padding:.5em 0;border-bottom:1px solid #ddd;z-index:1}
.cards{display:flex;flex-wrap:wrap;gap:8px} .card{background:#fff;border:1px solid #ccc;border-radius:4px;padding:4px;font-size:12px}
.card.interpretable{border-color:#2a7} .card img{display:block;image-rendering:pixelated;max-width:420px}
.card .label{font-weight:bold} .muted{color:#777} .settings{font-size:12px;color:#555}
"""

_JS = """
function applyFilters(){
  var concept=document.getElementById('concept').value, category=document.getElementById('category').value;
  var onlyInterp=document.getElementById('interp').checked, key=document.getElementById('sort').value;
  document.querySelectorAll('.cards').forEach(function(box){
    var cards=Array.prototype.slice.call(box.querySelectorAll('.card'));
    cards.sort(function(a,b){
      var x=parseFloat(a.dataset[key]), y=parseFloat(b.dataset[key]);
      if(isNaN(x)) x=(key==='fid')?Infinity:-Infinity; if(isNaN(y)) y=(key==='fid')?Infinity:-Infinity;
      return key==='fid' ? x-y : y-x;});
    cards.forEach(function(c){
      var show=(!concept||c.dataset.concept===concept)&&(!category||c.dataset.category===category)&&
               (!onlyInterp||c.classList.contains('interpretable'));
      c.style.display=show?'':'none'; box.appendChild(c);});
  });
}
document.addEventListener('DOMContentLoaded',function(){
  ['concept','category','interp','sort'].forEach(function(id){
    document.getElementById(id).addEventListener('change',applyFilters);});
  applyFilters();
});
"""


def _fmt(x: float | None, digits: int = 3) -> str:
    return "" if x is None else f"{x:.{digits}f}"


def _timeline_svg(entries: list[dict[str, Any]], layers: list[str], width: int = 640, height: int = 240) -> str:
    """Line chart (inline SVG) of interpretable units per layer over the checkpoints' steps."""
    colors = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"]
    xs = [float(e["x"]) for e in entries]
    series = {layer: [e["result"][layer].summary["interpretable_units"] if layer in e["result"].layers else 0
                      for e in entries] for layer in layers}
    top = max([max(v) for v in series.values()] + [1])
    x0, x1 = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
    left, right, bottom, up = 48, 16, 32, 12

    def px(x, y):
        return (left + (x - x0) / (x1 - x0) * (width - left - right),
                height - bottom - y / top * (height - bottom - up))

    parts = [f'<svg id="timeline" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'role="img" aria-label="interpretable units per checkpoint">',
             f'<rect width="{width}" height="{height}" fill="#fff" stroke="#ccc"/>']
    for frac in (0, 0.5, 1):
        _, y = px(x0, top * frac)
        parts.append(f'<line x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}" stroke="#eee"/>'
                     f'<text x="{left - 6}" y="{y + 4:.1f}" font-size="11" text-anchor="end">{top * frac:g}</text>')
    for x in sorted(set(xs)):
        px_x, _ = px(x, 0)
        parts.append(f'<text x="{px_x:.1f}" y="{height - bottom + 14}" font-size="11" text-anchor="middle">{x:g}</text>')
    parts.append(f'<text x="{width / 2}" y="{height - 4}" font-size="11" text-anchor="middle">training step</text>')
    for i, (layer, ys) in enumerate(series.items()):
        color = colors[i % len(colors)]
        pts = " ".join(f"{a:.1f},{b:.1f}" for a, b in (px(x, y) for x, y in zip(xs, ys)))
        parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="2" points="{pts}"/>')
        for x, y in zip(xs, ys):
            a, b = px(x, y)
            parts.append(f'<circle cx="{a:.1f}" cy="{b:.1f}" r="3" fill="{color}"><title>{escape(layer)} step {x:g}: '
                         f'{y} units</title></circle>')
        parts.append(f'<text x="{left + 8}" y="{up + 14 * (i + 1)}" font-size="12" fill="{color}">{escape(layer)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _layer_section(folder: Path, entry: dict[str, Any], layer: str) -> str:
    from gan_monitor.report import pictures as visualize

    ld = entry["result"][layer]
    s = ld.summary
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", layer)
    bars_rel = f"{entry['name']}/bars_{safe}.png" if (folder / entry["name"]).is_dir() else f"bars_{safe}.png"
    chart = visualize.units_per_concept_chart(s["units_per_concept"], dict(zip(ld.concepts, ld.categories)),
                                              title=f"{layer}: interpretable units per concept")
    chart.save(folder / bars_rel)
    cats = list(s["per_category"])
    head = "".join(f"<th>{escape(c)}</th>" for c in ["units", "interpretable", "concepts", "mean IoU"] + cats)
    cells = [s["units"], s["interpretable_units"], s["concept_diversity"], _fmt(s["mean_iou"])]
    cells += [s["per_category"][c] for c in cats]
    row = "".join(f"<td>{escape(str(c))}</td>" for c in cells)
    fids = ld.extras.get("unit_fid")
    pictures = entry.get("unit_pictures", {}).get(layer)
    cards = []
    labels, categories = ld.labels, ld.label_categories
    for u in ld.ranked_units(only_interpretable=False):
        fid = float(fids[u]) if fids is not None else None
        interp = bool(ld.interpretable[u])
        img = ""
        if pictures and (folder / pictures / f"unit_{u}.png").is_file():
            img = f'<img loading="lazy" src="{escape(pictures)}/unit_{u}.png" alt="top images of unit {u}">'
        cards.append(
            f'<div class="card{" interpretable" if interp else ""}" data-layer="{escape(layer)}" data-unit="{u}" '
            f'data-concept="{escape(labels[u])}" data-category="{escape(categories[u])}" '
            f'data-iou="{float(ld.unit_iou[u]):.6f}" data-fid="{"" if fid is None else f"{fid:.4f}"}">'
            f'<div>unit {u}: <span class="label">{escape(labels[u])}</span> '
            f'<span class="muted">({escape(categories[u])})</span></div>'
            f'<div>IoU {float(ld.unit_iou[u]):.3f} &middot; threshold {float(ld.thresholds[u]):.3g}'
            f'{"" if fid is None else f" &middot; FID {fid:.1f}"}{"" if interp else " &middot; <i>below cutoff</i>"}'
            f'</div>{img}</div>')
    return (f'<section class="layer" id="layer-{escape(safe)}"><h2>{escape(layer)}</h2>'
            f'<table class="summary"><tr>{head}</tr><tr>{row}</tr></table>'
            f'<img src="{escape(bars_rel)}" alt="interpretable units per concept in {escape(layer)}">'
            f'<div class="cards">{"".join(cards)}</div></section>')


def build_report(folder: str | Path, checkpoint: str | None = None) -> Path:
    """Write ``folder/index.html`` (and bar graph PNGs) and return its path."""
    folder = Path(folder)
    entries = load_timeline(folder)
    if not entries:
        raise ReportError(f"{folder}/timeline.json lists no checkpoints.")
    entries.sort(key=lambda e: float(e["x"]))
    names = [e["name"] for e in entries]
    if checkpoint is None:
        shown = entries[-1]
    elif checkpoint in names:
        shown = entries[names.index(checkpoint)]
    else:
        raise ReportError(f"no checkpoint named {checkpoint!r} in {folder}; there are: {', '.join(names)}.")
    result = shown["result"]
    layers = list(result.layers)
    concepts = sorted({c for ld in result.layers.values() for c in ld.labels})
    categories = list(dict.fromkeys(c for ld in result.layers.values() for c in ld.categories[1:]))
    options = lambda values: "".join(f'<option value="{escape(v)}">{escape(v)}</option>' for v in values)  # noqa: E731
    settings = ", ".join(f"{escape(str(k))}={escape(str(v))}" for k, v in result.settings.items()
                         if not isinstance(v, (list, dict)))
    step = "" if shown.get("step") is None else f" (training step {shown['step']})"
    timeline = ""
    if len(entries) > 1:
        timeline = ("<h2>Timeline: interpretable units per layer</h2>" + _timeline_svg(entries, layers)
                    + "<p class='settings'>checkpoints: " + ", ".join(
                        f"{escape(e['name'])} (step {escape(str(e.get('step')))})" for e in entries) + "</p>")
    body = "".join(_layer_section(folder, shown, layer) for layer in layers)
    html = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>GAN dissection: {escape(shown['name'])}</title>
<style>{_CSS}</style><script>{_JS}</script></head><body>
<h1>GAN dissection of {escape(shown['name'])}{escape(step)}</h1>
<p class="settings">{settings}</p>
{timeline}
<div class="controls">concept <select id="concept"><option value="">all</option>{options(concepts)}</select>
category <select id="category"><option value="">all</option>{options(categories)}</select>
sort by <select id="sort"><option value="iou">IoU (high first)</option><option value="fid">FID (low first)</option></select>
<label><input type="checkbox" id="interp"> interpretable only</label></div>
{body}
</body></html>
"""
    out = folder / "index.html"
    out.write_text(html, encoding="utf-8")
    return out
