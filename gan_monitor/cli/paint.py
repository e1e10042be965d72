"""Paint concepts into and out of a checkpoint's generated images in the browser.

Examples:
  gan-monitor paint runs/demo/version_0/checkpoints/last.ckpt --layer layer3
  gan-monitor paint g.pt --generator-factory mypkg.models:make_generator --layer block4 \\
      --segmenter ade20k:nvidia/segformer-b0-finetuned-ade-512-512 --port 8080
  gan-monitor paint last.ckpt --layer layer3 --dissection dissect/last/dissection.json
  gan-monitor paint last.ckpt --layer layer3 --dry-run     # prepare, list the concepts, exit

Dissects the layer once (or reads a `gan-monitor dissect` dissection.json), then serves
a page on http://127.0.0.1:PORT/: pick a concept, paint on a generated image, and the
layer's units labelled with that concept (best IoU first, at most --units-per-concept)
are set to their insertion values where you paint (draw) or to zero (remove).

Needs the optional extra: pip install 'gan-monitor[paint]' (FastAPI, uvicorn).
Checkpoints are loaded weights-only unless --trust-checkpoint.

Exit codes: 0 done, 1 error (one line; --debug shows the traceback), 2 bad usage.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gan_monitor.cli.dissect import load_segmenter_spec
from gan_monitor.cli.options import add_generator_arguments, add_threshold_argument, checked, load_input_fn
from gan_monitor.core.checkpoints import load_generator
from gan_monitor.core.errors import CheckpointError, CommandError, UsageError
from gan_monitor.core.tracing import layer_names, unknown_layers
from gan_monitor.core.validation import fraction, non_negative_int, positive_int
from gan_monitor.paint.server import is_loopback, require_server_packages, serve_session
from gan_monitor.paint.session import PaintSession
from gan_monitor.report.store import read_dissection_file
from gan_monitor.segmenters.specs import SPEC_HELP

__all__ = ["add_arguments", "run", "build_session"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", type=Path, metavar="CKPT", help="a Lightning .ckpt file or a generator state dict")
    p.add_argument("--layer", default="layer3", help="the generator layer to paint at (default layer3)")
    p.add_argument("--dissection", type=Path, default=None, metavar="JSON",
                   help="a dissection.json of `gan-monitor dissect` with this layer (default: dissect now)")
    add_generator_arguments(p)  # --module, --generator-factory, --generator-attr, --input-fn
    p.add_argument("--segmenter", default="toyworld", help=SPEC_HELP + " (default toyworld)")
    p.add_argument("--n", "--samples-for-dissection", dest="n", type=int, default=500,
                   help="held-out samples to dissect the layer on (default 500)")
    p.add_argument("--seed", type=int, default=0, help="seed of those held-out latents (default 0)")
    add_threshold_argument(p)
    p.add_argument("--cutoff", type=float, default=0.05, help="IoU from which a unit is interpretable (default 0.05)")
    p.add_argument("--units-per-concept", type=int, default=20,
                   help="at most this many units per concept, best IoU first (default 20)")
    p.add_argument("--samples", type=int, default=6, help="generated images shown at start (default 6)")
    p.add_argument("--sample-seed", type=int, default=10_000,
                   help="sample i is drawn with seed SAMPLE_SEED + i (default 10000)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1; another address exposes the model to the network)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--batch-size", type=int, default=32, help="batch size of the dissection (default 32)")
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="load with weights_only=False (only for files you trust: unpickling can run code)")
    p.add_argument("--dry-run", action="store_true", help="prepare everything, list the concepts, do not serve")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--debug", action="store_true", help="show tracebacks")


def _check_usage(args: argparse.Namespace) -> None:
    for flag, value in (("--n", args.n), ("--units-per-concept", args.units_per_concept),
                        ("--samples", args.samples), ("--batch-size", args.batch_size)):
        checked(flag, positive_int, value)
    checked("--sample-seed", non_negative_int, args.sample_seed)
    checked("--cutoff", fraction, args.cutoff, closed=True, meaning="an IoU")
    if not 1 <= args.port <= 65535:
        raise UsageError(f"--port must be from 1 to 65535, got {args.port}.")
    if not args.layer.strip():
        raise UsageError("--layer needs a layer name, e.g. --layer layer3.")


def build_session(args: argparse.Namespace) -> PaintSession:
    """Load the generator and segmenter, dissect (or read the dissection), compute the
    insertion values: the session the server will paint with."""
    try:
        loaded = load_generator(args.checkpoint, module=args.module, generator_factory=args.generator_factory,
                                generator_attr=args.generator_attr, trust=args.trust_checkpoint, device=args.device)
    except CheckpointError as err:
        raise CommandError(str(err)) from err
    if unknown_layers(loaded.generator, [args.layer]):
        raise CommandError(f"{loaded.path}: the generator has no layer {args.layer!r}; "
                           f"available: {', '.join(layer_names(loaded.generator))}.")
    segmenter = load_segmenter_spec(args.segmenter, args.device)
    input_fn = load_input_fn(args.input_fn)
    dissection = None
    if args.dissection is not None:
        result = read_dissection_file(args.dissection).result
        if args.layer not in result.layers:
            raise CommandError(f"{args.dissection} has no dissection of layer {args.layer!r}; "
                               f"dissected: {', '.join(result.layers)}.")
        dissection = result[args.layer]
    try:
        return PaintSession.create(loaded.generator, args.layer, segmenter, dissection=dissection, n=args.n,
                                   seed=args.seed, threshold=args.threshold, cutoff=args.cutoff,
                                   batch_size=args.batch_size, device=args.device, progress=not args.no_progress,
                                   units_per_concept=args.units_per_concept, samples=args.samples,
                                   sample_seed=args.sample_seed, input_fn=input_fn)
    except (ValueError, KeyError, TypeError) as err:
        raise CommandError(f"{loaded.path}: {err.args[0] if err.args else err}") from err


def concept_table(session: PaintSession) -> str:
    """One line per concept with units: name, count, IoU range and the units."""
    lines = [f"layer {session.layer}: {session.layer_shape[0]} units at {session.layer_shape[1]}x"
             f"{session.layer_shape[2]}, images {session.image_size[0]}x{session.image_size[1]}; "
             f"units ranked by {session.ranking}"]
    if not session.concepts:
        lines.append("  no unit of this layer is labelled with a concept (lower --cutoff or pick another --layer)")
    for entry in session.concepts.values():
        lines.append(f"  {entry.name:<14} {len(entry.units):>3} units  IoU {min(entry.scores):.3f}-"
                     f"{max(entry.scores):.3f}  [{', '.join(map(str, entry.units))}]")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    _check_usage(args)
    try:
        if not args.dry_run:
            require_server_packages()  # before the (long) dissection
        session = build_session(args)
        print(concept_table(session))
        if args.dry_run:
            print(f"dry run: would serve on http://{args.host}:{args.port}/")
            return 0
        if not is_loopback(args.host):
            print(f"gan-monitor paint: warning: serving on {args.host}: anyone who can reach it can use the page "
                  f"and the model (no authentication).", file=sys.stderr)
        serve_session(session, host=args.host, port=args.port, warn=False)
    except Exception as err:
        if args.debug:
            raise
        message = " ".join(str(err).split()) if isinstance(err, CommandError) else \
            f"{type(err).__name__}: {' '.join(str(err).split())} (re-run with --debug for the traceback)"
        print(f"gan-monitor paint: error: {message}", file=sys.stderr)
        return 1
    return 0
