"""Benchmark of per-unit FID: the batched symmetric-eigen computation
(``gan_monitor.fid.frechet.unit_frechet_distances``) against a loop of torchmetrics
``FrechetInceptionDistance`` computations (identity feature module, real features
added once and kept with ``reset_real_features=False``), one per unit.

Both start from the same features: a pool of ``--pool`` feature vectors of
dimension d, real features of ``--real`` images and each unit's k top images
(from random activations). Both are timed on the same ``--threads`` CPU threads,
``--rounds`` times, alternating (batched, loop, batched, loop, ...) so that load
from other processes hits both alike; the batched time includes computing the
real statistics (the loop adds the real features inside its time too). Prints,
per (d, k): best and median times, their ratios (goal >= 20x), the time of the
batched ``eigvalsh`` alone on matrices of the same size (the floor of the batched
method) and the maximum relative difference of the FIDs.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python bench/per_unit_fid.py [--units 256] [--dims 96,512] [--ks 50,100]

d = 96 is the embedded toy-scene extractor, 2048 InceptionV3's pool3; k = 50 is the
default of both ``per_unit_fid`` and the monitor's ``fid_k``. Above d = 128 the
torchmetrics loop is timed on ``--loop-units`` units (default 16; it takes ~0.2 s per
unit at d = 512, ~4.5 s at d = 2048) and scaled up to all units, which is marked in the output (every
unit costs the loop the same); the batched method always runs on all units.
"""
from __future__ import annotations

import argparse
import math
import os
import statistics
import time

import torch
from torch import nn

from gan_monitor.fid.features import RealStats
from gan_monitor.fid.frechet import unit_frechet_distances


class Identity(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.num_features = dim

    def forward(self, x):
        return x


def make_data(units, dim, k, pool, real, seed=0):
    gen = torch.Generator().manual_seed(seed)
    mix = torch.randn(dim, dim, generator=gen, dtype=torch.float64) / math.sqrt(dim)
    real_feats = torch.randn(real, dim, generator=gen, dtype=torch.float64) @ mix
    pool_feats = (torch.randn(pool, dim, generator=gen, dtype=torch.float64) * 1.2 + 0.1) @ mix
    acts = torch.rand(pool, units, generator=gen)
    topk = acts.topk(k, dim=0).indices.T.contiguous()  # [units, k], each unit's top images
    return real_feats, pool_feats, topk


def loop_torchmetrics(real_feats, pool_feats, topk):
    from torchmetrics.image.fid import FrechetInceptionDistance

    metric = FrechetInceptionDistance(feature=Identity(real_feats.shape[1]), reset_real_features=False)
    metric.update(real_feats, real=True)
    out = []
    for row in topk:
        metric.reset()
        metric.update(pool_feats[row], real=False)
        out.append(float(metric.compute()))
    return torch.tensor(out, dtype=torch.float64)


def batched(real_feats, pool_feats, topk):
    stats = RealStats.from_features(real_feats, "identity")  # real statistics: once per call, timed
    return unit_frechet_distances(pool_feats, topk, stats)


def timed(fn, *args):
    start = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - start, out


def eigvalsh_floor(units, n, rounds):
    """Best time of one batched float64 eigvalsh on ``units`` PSD ``n x n`` matrices."""
    a = torch.randn(units, n, n + 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    gram = a @ a.mT
    return min(timed(torch.linalg.eigvalsh, gram.mT)[0] for _ in range(rounds))


def run(units, dim, k, pool, real, threads, rounds, loop_units):
    real_feats, pool_feats, topk = make_data(units, dim, k, pool, real)
    looped = units if dim <= 128 or loop_units == 0 else min(units, loop_units)
    scale = units / looped
    batched_times, loop_times = [], []
    batched(real_feats, pool_feats, topk[:8])  # warm-up (first LAPACK calls), not timed
    loop_torchmetrics(real_feats, pool_feats, topk[:2])
    for _ in range(rounds):
        t, ours = timed(batched, real_feats, pool_feats, topk)
        batched_times.append(t)
        t, reference = timed(loop_torchmetrics, real_feats, pool_feats, topk[:looped])
        loop_times.append(t * scale)
    rel = ((ours[:looped] - reference).abs() / reference.abs()).max().item()
    floor = eigvalsh_floor(units, min(k - 1, dim), rounds)
    b_best, b_med = min(batched_times), statistics.median(batched_times)
    l_best, l_med = min(loop_times), statistics.median(loop_times)
    extrapolated = f" (timed on {looped} units, x{scale:g})" if looped < units else ""
    print(f"per-unit FID: {units} units, d={dim}, k={k}, pool {pool}, {real} real, {threads} thread(s), "
          f"{rounds} rounds")
    print(f"  batched (eigvalsh)        best {b_best * 1e3:8.1f} ms   median {b_med * 1e3:8.1f} ms")
    print(f"  torchmetrics loop         best {l_best * 1e3:8.1f} ms   median {l_med * 1e3:8.1f} ms"
          f"   ({l_best / units * 1e3:.2f} ms per unit){extrapolated}")
    print(f"  speed-up                  best/best {l_best / b_best:6.1f}x   median/median {l_med / b_med:6.1f}x"
          "   (goal >= 20x)")
    n = min(k - 1, dim)
    print(f"  eigvalsh alone            {floor * 1e3:8.1f} ms for {units} x [{n}, {n}] "
          f"(floor of the batched method: speed-up at most {l_best / floor:.1f}x)")
    print(f"  max relative difference   {rel:.2e} (FID range {reference.min():.3g} .. {reference.max():.3g})")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--units", type=int, default=256)
    p.add_argument("--dims", default="96,512", help="comma-separated feature dimensions")
    p.add_argument("--ks", default="50,100", help="comma-separated top images per unit (one run per d and k)")
    p.add_argument("--pool", type=int, default=2000)
    p.add_argument("--real", type=int, default=2000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--loop-units", type=int, default=16,
                   help="above d=128, time the torchmetrics loop on this many units and scale up (0: all)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    print("load average (1, 5, 15 min) at start: %.2f %.2f %.2f" % os.getloadavg())
    for dim in (int(x) for x in args.dims.split(",")):
        for k in (int(x) for x in args.ks.split(",")):
            run(args.units, dim, k, args.pool, args.real, args.threads, args.rounds, args.loop_units)
    print("load average (1, 5, 15 min) at end: %.2f %.2f %.2f" % os.getloadavg())


if __name__ == "__main__":
    main()
