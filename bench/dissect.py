"""Benchmark of the dissection core.

(a) Toy GAN generator + toy segmenter forward time alone, vs the full dissection of
    the same inputs in quantile mode (goal <= 1.25x the forward time) and in iqr mode
    (a separate iqr sample of the same size, drawn as ``dissect`` does by default, so
    the generator and segmenter run twice: the floor is 2x; goal <= 2.5x), as ratios.
(b) Tally time per image for a 512-unit 8x8 layer upsampled to 128x128 with about
    16 labels per image out of 150 concepts (the 2019 reference code: ~2.2 s per
    image on this kind of CPU). Goal <= 0.11 s.

    OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE .venv/bin/python bench/dissect.py [--threads 1] [--n 256]

(a) runs ``--repeat`` rounds after one warm-up call of each; a round times the forward
pass, the quantile-mode and the iqr-mode dissection back to back. It prints the best
wall clock and CPU time (of this process) of each, the ratios of those best times, and
the median and range over rounds of each round's CPU-time ratio. On a shared machine all
are disturbed; compare figures from the same run. Timings run on ``--threads`` CPU
threads (default 1).
"""
from __future__ import annotations

import argparse
import math
import statistics
import time

import torch

from gan_monitor import dissect
from gan_monitor.dissection.tally import LayerTally
from gan_monitor.dissection.thresholds.modes import IQR


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

    def forward_only():
        with torch.no_grad():
            for i in range(0, n, batch_size):
                segmenter.segment(generator(z[i:i + batch_size]))

    runs = {
        "forward": forward_only,
        "quantile": lambda: dissect(generator, layers, segmenter, inputs=z, batch_size=batch_size),
        "iqr": lambda: dissect(generator, layers, segmenter, inputs=z, batch_size=batch_size, threshold=IQR()),
    }
    for run in runs.values():  # warm up (one-time probes, allocator)
        run()
    best = {name: (math.inf, math.inf) for name in runs}
    rounds = []  # CPU seconds of each run, back to back
    for _ in range(repeat):
        times = {name: best_of(1, run) for name, run in runs.items()}
        best = {name: tuple(map(min, best[name], times[name])) for name in runs}
        rounds.append({name: t[1] for name, t in times.items()})
    units = {name: tuple(s) for name, s in generator.featuremap_shapes().items() if name in layers}
    print(f"(a) toy GAN 64x64, layers {units}, n={n}, batch {batch_size}, {repeat} rounds")
    print(f"    generator + segmenter forward : {_fmt(best['forward'], n)}")
    for mode, goal in (("quantile", 1.25), ("iqr", 2.5)):
        per_round = sorted(r[mode] / r["forward"] for r in rounds)
        print(f"    dissect, {mode + ' mode':13s}      : {_fmt(best[mode], n)}")
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

        def forward(self, index):
            self.layer(acts[index])
            return index

    class ReplaySegmenter:
        concepts = ["-"] + [f"c{i}" for i in range(1, n_concepts)]

        def segment(self, index):
            return segs[index]

    ReplaySegmenter.categories = categories

    def quantile_dissection():
        return dissect(Replay(), "layer", ReplaySegmenter(), inputs=torch.arange(images), batch_size=batch_size)

    tally_only()
    t_tally = [t / images for t in best_of(repeat, tally_only)]
    t_dissect = [t / images for t in best_of(repeat, quantile_dissection)]
    labels = torch.tensor([len(torch.unique(s)) for s in segs]).float().mean()
    print(f"(b) 512 units 8x8 -> 128x128, {labels:.1f} labels/image of {n_concepts - 1} concepts, {images} images")
    print(f"    tally (upsample, threshold, intersect, unions) : wall {t_tally[0]:.3f}, cpu {t_tally[1]:.3f} "
          "s/image (goal <= 0.11)")
    print(f"    whole quantile-mode dissection of this layer   : wall {t_dissect[0]:.3f}, cpu {t_dissect[1]:.3f} "
          "s/image (exact thresholds + tally, no generator)")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--n", type=int, default=256, help="held-out samples for (a)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--layers", default="layer2,layer3")
    parser.add_argument("--tally-images", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--parts", default="a,b", help="which figures: a, b or a,b")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s)")
    parts = args.parts.split(",")
    if "a" in parts:
        bench_ratio(args.n, args.batch_size, args.layers.split(","), args.repeat)
    if "b" in parts:
        bench_tally(args.tally_images, 8, args.repeat)


if __name__ == "__main__":
    main()
