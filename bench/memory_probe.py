"""Peak memory of one quantile-mode dissection of the toy GAN's layer2 (128 units, 8x8,
segmented at 64x64), against the generator + segmenter forward passes alone: each
measurement in a fresh process (``resource`` peak RSS), 1 thread.

    python bench/memory_probe.py            # n = 1000: forward, cached, streaming
    python bench/memory_probe.py --n 2000
"""
from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def one(mode: str, n: int) -> None:
    import torch

    sys.path.insert(0, str(ROOT))
    from gan_monitor.core.inputs import iterate_batches, make_inputs
    from gan_monitor.dissection.pipeline import dissect
    from gan_monitor.toyworld.gan import ToyGenerator
    from gan_monitor.toyworld.segmenter import load_segmenter

    torch.set_num_threads(1)
    torch.manual_seed(0)
    g, seg = ToyGenerator().eval(), load_segmenter()
    path = "-"
    if mode == "forward":
        with torch.no_grad():
            for _, batch in iterate_batches(make_inputs(g, n, 0), 32):
                seg.segment(g(batch))
    else:
        budget = {} if mode == "cached" else {"memory_budget": 10**6}
        path = dissect(g, ["layer2"], seg, n=n, batch_size=32, **budget).settings.get("quantile_path")
    print(f"{mode:10s} n={n:6d} path={path:10s} peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024} MB")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        one(args.one, args.n)
        return 0
    env = dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE")
    for mode in ("forward", "cached", "streaming"):
        subprocess.run([sys.executable, __file__, "--one", mode, "--n", str(args.n)], check=True, env=env)
    return 0


if __name__ == "__main__":
    sys.exit(main())
