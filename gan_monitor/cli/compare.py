"""Compare dissections side by side: interpretable units per concept category for
each layer, checkpoint or model (as in the GAN Dissection paper's Fig. 6 and 19).

Examples:
  gan-monitor compare dissect/                       # every checkpoint of a timeline
  gan-monitor compare runA/ runB/ --layers layer3    # two models, one layer
  gan-monitor compare dissect/ --checkpoints last --png fig6.png --csv fig6.csv

Each input is a `gan-monitor dissect` folder (all its checkpoints, or those named by
--checkpoints) or a single dissection.json. Prints one row per (input, checkpoint,
layer); --png draws stacked bars (one per row, coloured by category), --csv saves the table.

Exit codes: 0 done, 1 error (one line; --debug shows the traceback), 2 bad usage.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Sequence

from gan_monitor.core.errors import ReportError
from gan_monitor.report.pictures import units_per_category_bars
from gan_monitor.report.store import (
    OutputFolder,
    read_dissection_file,
    rows_to_csv,
    save_image,
    summary_rows,
    write_text,
)

__all__ = ["add_arguments", "run", "compare_rows", "stacked_bars"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="+", type=Path, metavar="DIR_OR_JSON", help="dissect folders or dissection.json files")
    p.add_argument("--layers", default=None, help="comma-separated layers to show (default: all)")
    p.add_argument("--checkpoints", default=None, help="comma-separated checkpoint names to show (default: all)")
    p.add_argument("--csv", type=Path, default=None, help="write the table as CSV here")
    p.add_argument("--png", type=Path, default=None, help="draw stacked bars of units per category here")
    p.add_argument("--debug", action="store_true", help="show tracebacks")


def compare_rows(inputs: Sequence[str | Path], layers: Sequence[str] | None = None,
                 checkpoints: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """One row per (input, checkpoint, layer): the input, then the summary.csv row
    (units, interpretable units, concepts, mean IoU, interpretable units per category)."""
    rows = []
    for source in map(Path, inputs):
        entries = [read_dissection_file(source)] if source.is_file() else OutputFolder(source).read_entries()
        for entry in entries:
            if checkpoints and entry.name not in checkpoints:
                continue
            unknown = [name for name in (layers or []) if name not in entry.result.layers]
            if unknown:
                raise ReportError(f"{source} ({entry.name}) has no dissection of layer(s) {', '.join(unknown)}; "
                                  f"dissected: {', '.join(entry.result.layers)}.")
            rows.extend({"input": str(source), **row}
                        for row in summary_rows(entry.result, entry.name, entry.step, layers=layers or None))
    if not rows:
        raise ReportError("nothing to compare: no checkpoint matched --checkpoints.")
    return rows


def stacked_bars(rows: Sequence[dict[str, Any]], bar_width: int = 360):
    """PIL image: per row a bar of interpretable units split by category (Fig. 6 style)."""
    bars = [(f"{row['checkpoint']} {row['layer']}",
             {k[len("units_"):]: n for k, n in row.items() if k.startswith("units_")}) for row in rows]
    return units_per_category_bars(bars, bar_width=bar_width)


def _names(text: str | None) -> list[str] | None:
    return [x.strip() for x in text.split(",") if x.strip()] if text else None


def run(args: argparse.Namespace) -> int:
    try:
        rows = compare_rows(args.inputs, _names(args.layers), _names(args.checkpoints))
        table = rows_to_csv(rows)
        print(table.rstrip())
        if args.csv:
            write_text(args.csv, table)
        if args.png:
            save_image(args.png, stacked_bars(rows))
            print(f"chart: {args.png}")
    except Exception as err:
        if args.debug:
            raise
        print(f"gan-monitor compare: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 1
    return 0
