"""Latency of a painting edit, server and client in one run (real HTTP on loopback).

The toy GAN (64x64 images, randomly initialised: the cost does not depend on training)
with the toy segmenter, painted at ``--layer`` (default layer3: 64 units at 16x16). The
layer is dissected with cutoff 0, so every unit is labelled and the busiest concept has
the full ``--units`` units. The client sends what the page sends: ``POST /api/edit`` with
all strokes so far, each a full-image brush mask (a disc of radius 6 at a random place),
and reads the answer (edited image and segmentation as PNGs, the change). Goal: median
<= 150 ms for one stroke on 2 cores.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python bench/paint_latency.py [--threads 2] [--requests 60]

Prints, per number of strokes, the median and 90th percentile of the round trip (wall
clock) and of the server's edit alone (generator + segmenter, ``PaintSession.edit``).
"""
from __future__ import annotations

import argparse
import http.client
import json
import statistics
import time

import torch

from gan_monitor import dissect
from gan_monitor.paint.server import ServerThread, make_app
from gan_monitor.paint.session import PaintSession, Stroke
from gan_monitor.toyworld.gan import ToyGenerator
from gan_monitor.toyworld.segmenter import load_segmenter


def disc(size: int, rng: torch.Generator, radius: int = 6) -> list[list[float]]:
    cy, cx = (int(v) for v in torch.randint(radius, size - radius, (2,), generator=rng))
    ys, xs = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    return ((ys - cy) ** 2 + (xs - cx) ** 2 <= radius ** 2).float().tolist()


def percentiles(seconds: list[float]) -> tuple[float, float]:
    ms = sorted(s * 1000 for s in seconds)
    return statistics.median(ms), ms[min(len(ms) - 1, int(round(0.9 * (len(ms) - 1))))]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    p.add_argument("--layer", default="layer3", help="toy GAN layer to paint at (default layer3)")
    p.add_argument("--units", type=int, default=20, help="units per concept (default 20)")
    p.add_argument("--requests", type=int, default=60, help="measured requests per case (default 60)")
    p.add_argument("--strokes", default="1,5", help="cases: strokes per request (default 1,5)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    generator, segmenter = ToyGenerator().eval(), load_segmenter()
    result = dissect(generator, args.layer, segmenter, n=64, seed=0, cutoff=0.0)
    session = PaintSession.create(generator, args.layer, segmenter, dissection=result, n=64,
                                  insertion_n=64, units_per_concept=args.units, samples=4)
    concept = next(iter(session.concepts.values()))
    size = session.image_size[0]
    rng = torch.Generator().manual_seed(1)
    print(f"paint latency: toy GAN {size}x{size}, {args.layer} ({session.layer_shape[0]} units at "
          f"{session.layer_shape[1]}x{session.layer_shape[2]}), concept {concept.name!r} with "
          f"{len(concept.units)} units, {args.threads} thread(s), {args.requests} requests per case")
    with ServerThread(make_app(session)) as server:
        conn = http.client.HTTPConnection("127.0.0.1", server.port)
        for count in (int(s) for s in args.strokes.split(",")):
            masks = [disc(size, rng) for _ in range(count)]
            body = json.dumps({"sample": 0, "strokes": [{"concept": concept.name, "mode": "draw" if i % 2 == 0
                                                         else "remove", "mask": m} for i, m in enumerate(masks)]})
            strokes = [Stroke(concept.name, "draw" if i % 2 == 0 else "remove", torch.tensor(m))
                       for i, m in enumerate(masks)]
            trips, edits = [], []
            for i in range(args.requests + 5):  # 5 warm-up requests
                start = time.perf_counter()
                conn.request("POST", "/api/edit", body=body, headers={"Content-Type": "application/json"})
                reply = conn.getresponse()
                data = reply.read()
                took = time.perf_counter() - start
                if reply.status != 200:
                    raise SystemExit(f"edit failed ({reply.status}): {data[:300]!r}")
                start = time.perf_counter()
                session.edit(0, strokes)
                if i >= 5:
                    trips.append(took)
                    edits.append(time.perf_counter() - start)
            med, p90 = percentiles(trips)
            emed, ep90 = percentiles(edits)
            goal = "  (goal <= 150 ms: " + ("met)" if med <= 150 else "NOT met)") if count == 1 else ""
            print(f"  {count} stroke(s), body {len(body) / 1024:6.1f} KiB: round trip median {med:6.1f} ms, "
                  f"p90 {p90:6.1f} ms; edit alone median {emed:6.1f} ms, p90 {ep90:6.1f} ms{goal}")
        conn.close()


if __name__ == "__main__":
    main()
