"""Benchmark of per-unit FID: the batched symmetric-eigen computation
(``gan_monitor.fid.unit_frechet_distances``) against a loop of torchmetrics
``FrechetInceptionDistance`` computations (identity feature module, real features
added once and kept with ``reset_real_features=False``), one per unit.

Both start from the same features: a pool of ``--pool`` feature vectors of
dimension ``--dim``, real features of ``--real`` images and each unit's ``--k``
top images (from random activations). Prints the two times, their ratio
(goal >= 20x) and the maximum relative difference of the FIDs.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python bench/per_unit_fid.py [--units 256] [--dims 96,512] [--k 100]

Times are wall-clock seconds on ``--threads`` CPU threads (default 1), best of
``--repeat`` runs for the batched method (the loop runs once). d = 96 is the
embedded toy-scene extractor; d = 2048 (Inception) takes torchmetrics ~8 s per unit
here, so time it with ``--dims 2048 --loop-units 8`` (the loop's cost is the same
for every unit; the scaled-up time is marked as such).
"""
from __future__ import annotations

import argparse
import math
import time

import torch
from torch import nn

from gan_monitor.features import RealStats
from gan_monitor.fid import unit_frechet_distances


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


def run(units, dim, k, pool, real, threads, repeat, loop_units):
    real_feats, pool_feats, topk = make_data(units, dim, k, pool, real)
    batched_time, batched = math.inf, None
    for _ in range(repeat):
        start = time.perf_counter()
        stats = RealStats.from_features(real_feats, "identity")  # real statistics: once per call, timed
        batched = unit_frechet_distances(pool_feats, topk, stats)
        batched_time = min(batched_time, time.perf_counter() - start)
    looped = min(units, loop_units or units)
    start = time.perf_counter()
    reference = loop_torchmetrics(real_feats, pool_feats, topk[:looped])
    loop_time = (time.perf_counter() - start) * units / looped
    rel = ((batched[:looped] - reference).abs() / reference.abs()).max().item()
    extrapolated = f" (timed on {looped} units, x{units / looped:g})" if looped < units else ""
    print(f"per-unit FID: {units} units, d={dim}, k={k}, pool {pool}, {real} real, {threads} thread(s)")
    print(f"  batched (eigvalsh)        {batched_time:8.3f} s")
    print(f"  torchmetrics loop         {loop_time:8.3f} s{extrapolated}")
    print(f"  speed-up                  {loop_time / batched_time:8.1f}x (goal >= 20x)")
    print(f"  max relative difference   {rel:.2e} (FID range {reference.min():.3g} .. {reference.max():.3g})")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--units", type=int, default=256)
    p.add_argument("--dims", default="96,512", help="comma-separated feature dimensions, one run each")
    p.add_argument("--k", type=int, default=100)
    p.add_argument("--pool", type=int, default=2000)
    p.add_argument("--real", type=int, default=2000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--loop-units", type=int, default=0,
                   help="time the torchmetrics loop on this many units and scale up (0: all; for d=2048)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    for dim in (int(x) for x in args.dims.split(",")):
        run(args.units, dim, args.k, args.pool, args.real, args.threads, args.repeat, args.loop_units)


if __name__ == "__main__":
    main()
