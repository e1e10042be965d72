"""The ``gan-monitor`` command line.

    gan-monitor demo [--minutes 10] [--out runs/demo] ...
    gan-monitor dissect CKPT... --layers layer2,layer3 --out dissect/
    gan-monitor report dissect/
    gan-monitor compare dissect/ --png fig6.png

Each subcommand lives in its own module of ``gan_monitor.cli``, which provides
``add_arguments(parser)`` and ``run(args) -> int``; adding one means adding a line to
``SUBCOMMANDS``. A ``UsageError`` raised by ``run`` exits with status 2 and the usage line.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

from gan_monitor import __version__
from gan_monitor.core.errors import UsageError

__all__ = ["SUBCOMMANDS", "build_parser", "main"]

# name -> (module implementing it, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("gan_monitor.cli.demo",
             "train the toy GAN with the DissectionMonitor on and watch interpretable units emerge"),
    "dissect": ("gan_monitor.cli.dissect", "dissect saved checkpoints (JSON, TensorBoard timeline, summary table)"),
    "report": ("gan_monitor.cli.report", "write an offline HTML unit browser for a `dissect` output folder"),
    "compare": ("gan_monitor.cli.compare", "layers, checkpoints or models side by side: interpretable units per category"),
    "paint": ("gan_monitor.cli.paint", "paint concepts into and out of generated images in the browser (GANPaint)"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gan-monitor",
        description="GAN Dissection for everyday GAN training (see README.md).",
    )
    parser.add_argument("--version", action="version", version=f"gan_monitor {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in SUBCOMMANDS.items():
        mod = importlib.import_module(module)  # the registry above names each command's module
        p = sub.add_parser(name, help=help_text, description=(mod.__doc__ or help_text).strip(),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run, _parser=p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args._run(args) or 0)
    except UsageError as err:
        args._parser.print_usage(sys.stderr)
        print(f"gan-monitor {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
