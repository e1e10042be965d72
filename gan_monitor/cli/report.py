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
A checkpoint without unit pictures (e.g. a folder holding only a dissection.json
saved from Python) is refused with how to make them; --no-pictures writes the
report without them. From Python, gan_monitor.write_report(result, generator,
FOLDER) writes the whole report, pictures included.

Exit codes: 0 done, 1 error (one line; --debug shows the traceback), 2 bad usage.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gan_monitor.core.errors import ReportError
from gan_monitor.report.html import build_report

__all__ = ["add_arguments", "run"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("folder", type=Path, metavar="DIR", help="output folder of `gan-monitor dissect`")
    p.add_argument("--checkpoint", default=None, help="name of the checkpoint whose units are shown (default: last)")
    p.add_argument("--no-pictures", action="store_true",
                   help="write the report even when the unit pictures are missing (e.g. a folder holding only a "
                        "dissection.json; gan_monitor.write_report draws them from Python)")
    p.add_argument("--debug", action="store_true", help="show tracebacks")


def run(args: argparse.Namespace) -> int:
    try:
        path = build_report(args.folder, checkpoint=args.checkpoint, require_pictures=not args.no_pictures)
    except Exception as err:
        if args.debug:
            raise
        kind = "" if isinstance(err, ReportError) else f"{type(err).__name__}: "
        print(f"gan-monitor report: error: {kind}{' '.join(str(err).split())}", file=sys.stderr)
        return 1
    print(f"report: {path}")
    return 0
