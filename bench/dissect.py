"""Benchmark of the dissection core.

(a) Toy GAN generator + toy segmenter forward time alone, vs the full dissection of
    the same inputs in quantile mode (goal <= 1.25x the forward time) and in iqr mode
    (a separate iqr sample of the same size, drawn as ``dissect`` does by default, so
    the generator and segmenter run twice: the floor is 2x; goal <= 2.5x), as ratios; iqr
    mode also with the compiled counting kernel switched off ("torch only"), when there is one.
(b) Tally time per image for a 512-unit 8x8 layer upsampled to 128x128 with about
    16 labels per image out of 150 concepts (the 2019 reference code: ~2.2 s per
    image on this kind of CPU). Goal <= 0.11 s.

    OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE .venv/bin/python bench/dissect.py [--threads 1] [--n 256]
(m) Peak memory (RSS, ``resource.getrusage`` in a fresh subprocess per run) of a
    quantile-mode dissection of the toy GAN at two sample sizes (``--memory-n``, default
    200,2000; the issue's figures: ``--memory-n 1000,10000``, about 15 min on one thread),
    at the default ``memory_budget`` and with the budget forced low (the streaming path),
    with each run's wall time and path. Goal: the larger n <= 1.2x the smaller at the
    default budget (memory independent of n) and likewise streaming. ``--memory-mode iqr``:
    the same for an iqr-mode dissection (its iqr sample cached or streamed).

(a) runs ``--repeat`` rounds after one warm-up call of each; a round times the forward
pass before and after each dissection (forward, quantile, forward, iqr, forward, ...). It
prints the best wall clock and CPU time (of this process) of each, the ratios of those
best times, and the median and range over rounds of each dissection's CPU time over the
mean of the two forward passes around it (the machine's speed drifts within minutes). On a shared machine all
are disturbed; compare figures from the same run. Timings run on ``--threads`` CPU
threads (default 1).
"""
from __future__ import annotations

import argparse
import json
import math
import resource
import statistics
import subprocess
import sys
import time

import torch

from gan_monitor import dissect
from gan_monitor.core import native
from gan_monitor.dissection.tally import LayerTally
from gan_monitor.dissection.thresholds import kernels
from gan_monitor.dissection.thresholds.modes import IQR, IQR_SEED_OFFSET


def best_of(repeat, fn):
    """(best wall seconds, best CPU seconds of this process) over ``repeat`` runs."""
    wall, cpu = math.inf, math.inf
    for _ in range(repeat):
        w, c = time.perf_counter(), time.process_time()
        fn()
        wall, cpu = min(wall, time.perf_counter() - w), min(cpu, time.process_time() - c)
    return wall, cpu


def _fmt(pair, n=None):
    wall, cpu = pair
    per = f" ({1000 * wall / n:.1f} ms/image)" if n else ""
    return f"wall {wall:6.2f} s, cpu {cpu:6.2f} s{per}"


def bench_ratio(n, batch_size, layers, repeat):
    from gan_monitor.toyworld.gan import ToyGenerator
    from gan_monitor.toyworld.segmenter import load_segmenter

    torch.manual_seed(0)
    generator = ToyGenerator().eval()
    segmenter = load_segmenter()
    z = generator.sample_latents(n, seed=0)
    z_iqr = generator.sample_latents(n, seed=IQR_SEED_OFFSET)  # the separate iqr sample, as dissect draws it

    def forward_only():
        with torch.no_grad():
            for i in range(0, n, batch_size):
                segmenter.segment(generator(z[i:i + batch_size]))

    def iqr(compiled=True):
        kernels.ENABLED = compiled
        try:
            return dissect(generator, layers, segmenter, inputs=z, batch_size=batch_size, threshold=IQR(inputs=z_iqr))
        finally:
            kernels.ENABLED = True

    runs = {
        "forward": forward_only,
        "quantile": lambda: dissect(generator, layers, segmenter, inputs=z, batch_size=batch_size),
        "iqr": iqr,
        "iqr, torch only": lambda: iqr(compiled=False),
    }
    if kernels.count_levels() is None:
        del runs["iqr, torch only"]
    for run in runs.values():  # warm up (one-time probes, allocator)
        run()
    best = {name: (math.inf, math.inf) for name in runs}
    rounds = []  # per round: CPU seconds of each dissection over the mean of the forward runs around it
    for _ in range(repeat):
        forward = [best_of(1, forward_only)]
        ratios = {}
        for name, run in runs.items():  # forward, dissection, forward, dissection, ..., forward
            if name == "forward":
                continue
            took = best_of(1, run)
            forward.append(best_of(1, forward_only))
            best[name] = tuple(map(min, best[name], took))
            ratios[name] = took[1] / ((forward[-2][1] + forward[-1][1]) / 2)
        for took in forward:
            best["forward"] = tuple(map(min, best["forward"], took))
        rounds.append(ratios)
    units = {name: tuple(s) for name, s in generator.featuremap_shapes().items() if name in layers}
    print(f"(a) toy GAN 64x64, layers {units}, n={n}, batch {batch_size}, {repeat} rounds")
    print(f"    compiled counting kernel: {native.status(kernels.SOURCE)}")
    print(f"    generator + segmenter forward : {_fmt(best['forward'], n)}")
    for mode, goal in (("quantile", 1.25), ("iqr", 2.5), ("iqr, torch only", 2.5)):
        if mode not in runs:
            continue
        per_round = sorted(r[mode] for r in rounds)
        print(f"    dissect, {mode + ' mode':21s}: {_fmt(best[mode], n)}")
        print(f"      ratio to forward (goal <= {goal}): best times wall {best[mode][0] / best['forward'][0]:.2f}, "
              f"cpu {best[mode][1] / best['forward'][1]:.2f}; cpu per round median "
              f"{statistics.median(per_round):.2f}, range {per_round[0]:.2f}-{per_round[-1]:.2f}")


def synthetic_segmentation(b, size, n_concepts, labels_per_image, gen):
    """Blocky label maps, each image using ~labels_per_image random concepts."""
    grid = 8
    choice = torch.stack([torch.randperm(n_concepts - 1, generator=gen)[:labels_per_image] + 1 for _ in range(b)])
    cells = torch.randint(labels_per_image, (b, grid, grid), generator=gen)
    labels = choice.gather(1, cells.flatten(1)).view(b, grid, grid)
    return labels.repeat_interleave(size // grid, 1).repeat_interleave(size // grid, 2)


def bench_tally(images, batch_size, repeat):
    gen = torch.Generator().manual_seed(0)
    units, n_concepts, size = 512, 151, 128
    categories = ["-"] + [("object", "part", "material")[i % 3] for i in range(n_concepts - 1)]
    acts = torch.randn(images, units, 8, 8, generator=gen)
    segs = synthetic_segmentation(images, size, n_concepts, 16, gen)
    thresholds = torch.full((units,), 2.0)

    def tally_only():
        tally = LayerTally(thresholds, categories)
        for i in range(0, images, batch_size):
            tally.update(acts[i:i + batch_size], segs[i:i + batch_size])
        return tally

    class Replay(torch.nn.Module):  # a "generator" whose layer replays the featuremaps: no forward cost
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Identity()
            self.last = None

        def forward(self, index):
            self.last = index
            return torch.tanh(self.layer(acts[index])[:, :3])  # small images in [-1, 1]

    class ReplaySegmenter:
        concepts = ["-"] + [f"c{i}" for i in range(1, n_concepts)]

        def segment(self, images):
            return segs[replay.last]

    ReplaySegmenter.categories = categories

    replay = Replay()

    def quantile_dissection():
        return dissect(replay, "layer", ReplaySegmenter(), inputs=torch.arange(images), batch_size=batch_size)

    tally_only()
    t_tally = [t / images for t in best_of(repeat, tally_only)]
    t_dissect = [t / images for t in best_of(repeat, quantile_dissection)]
    labels = torch.tensor([len(torch.unique(s)) for s in segs]).float().mean()
    print(f"(b) 512 units 8x8 -> 128x128, {labels:.1f} labels/image of {n_concepts - 1} concepts, {images} images")
    print(f"    tally (upsample, threshold, intersect, unions) : wall {t_tally[0]:.3f}, cpu {t_tally[1]:.3f} "
          "s/image (goal <= 0.11)")
    print(f"    whole quantile-mode dissection of this layer   : wall {t_dissect[0]:.3f}, cpu {t_dissect[1]:.3f} "
          "s/image (exact thresholds + tally, no generator)")


def memory_child(n, budget, layers, batch_size, mode="quantile"):
    """Runs in a fresh process: one dissection (``mode`` quantile or iqr); prints JSON with peak RSS."""
    from gan_monitor.toyworld.gan import ToyGenerator
    from gan_monitor.toyworld.segmenter import load_segmenter

    torch.manual_seed(0)
    generator, segmenter = ToyGenerator().eval(), load_segmenter()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    result = dissect(generator, layers, segmenter, n=n, seed=0, batch_size=batch_size, threshold=mode,
                     memory_budget=budget if budget > 0 else None)
    path = result.settings["quantile_path" if mode == "quantile" else "iqr_path"]
    print(json.dumps({"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "rss_before_mb": before / 1024, "wall_s": time.perf_counter() - start,
                      "path": path, "budget": result.settings["memory_budget"]}))


def bench_memory(sizes, layers, batch_size, threads, low_budget, mode="quantile"):
    print(f"(m) peak RSS of a {mode}-mode dissection, toy GAN, layers {layers}, batch {batch_size} "
          "(fresh process per run)")
    for label, budget in (("default budget", 0), (f"budget {low_budget} B (streaming)", low_budget)):
        peaks = []
        for n in sizes:
            cmd = [sys.executable, __file__, "--child", f"{n},{budget}", "--layers", ",".join(layers),
                   "--batch-size", str(batch_size), "--threads", str(threads), "--memory-mode", mode]
            out = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip()
                             .splitlines()[-1])
            peaks.append(out["peak_rss_mb"])
            print(f"    {label:34s} n={n:6d}: peak RSS {out['peak_rss_mb']:7.0f} MB "
                  f"(at start {out['rss_before_mb']:.0f}),"
                  f" {out['path']} path (budget {out['budget'] / 2**20:.0f} MiB), {out['wall_s']:.1f} s")
        print(f"      n={sizes[-1]} / n={sizes[0]} peak RSS: {peaks[-1] / peaks[0]:.2f} (goal <= 1.2)")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--n", type=int, default=256, help="held-out samples for (a)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--layers", default="layer2,layer3")
    parser.add_argument("--tally-images", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--parts", default="a,b,m", help="which figures, comma-separated: a, b, m")
    parser.add_argument("--memory-n", default="200,2000", help="sample sizes of (m)")
    parser.add_argument("--low-budget", type=int, default=1, help="bytes: forces the streaming path in (m)")
    parser.add_argument("--memory-mode", default="quantile", choices=["quantile", "iqr"], help="threshold mode of (m)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.child:
        n, budget = (int(x) for x in args.child.split(","))
        return memory_child(n, budget, args.layers.split(","), args.batch_size, args.memory_mode)
    print(f"torch {torch.__version__}, {args.threads} thread(s)")
    parts = args.parts.split(",")
    if "a" in parts:
        bench_ratio(args.n, args.batch_size, args.layers.split(","), args.repeat)
    if "b" in parts:
        bench_tally(args.tally_images, 8, args.repeat)
    if "m" in parts:
        bench_memory([int(x) for x in args.memory_n.split(",")], args.layers.split(","), args.batch_size,
                     args.threads, args.low_budget, args.memory_mode)


if __name__ == "__main__":
    main()
