"""Dissection on CUDA vs CPU: agreement and timing (issue 16).

    .venv/bin/python bench/gpu_check.py            # exits 0 with a note when there is no CUDA device
    .venv/bin/python bench/gpu_check.py --device cpu --scale-n 8   # exercises the script on CPU only

(1) Agreement, same inputs on both devices. Two cases, each in quantile mode (cached and
    streaming) and iqr mode:
    * ``replay``: a layer that returns fixed featuremaps (random, with ReLU zeros) and a
      segmenter that returns fixed label maps: only the dissection arithmetic differs
      between devices. Thresholds are order statistics of ``upsample`` values, computed with
      each device's matmul (cuBLAS may fuse the multiply-adds that the CPU BLAS rounds
      twice), so a value can differ in its last bit: thresholds agree to ``THRESHOLD_RTOL``
      (a few float32 ulps), IoU to ``IOU_ATOL`` (a pixel on one side of a threshold on
      one device and the other side on the other changes a count by one), and labels
      agree except where a unit's two best concepts are within ``IOU_ATOL`` of each other.
    * ``toy``: the toy GAN and toy segmenter end to end (TF32 off). Convolutions round
      differently on the two devices, so featuremaps, hence thresholds, differ by float
      noise; the same tolerances are checked and the largest differences printed.
(2) Timing on the device: one 512-unit 32x32 layer, ``--scale-n`` samples (default 1000) of
    256x256 label maps with about 16 of 150 concepts per image, replayed (no generator
    cost): quantile mode at the default budget (its cache would be ~2 GB: streaming), with
    a large budget (cached) and iqr mode. Prints wall seconds and peak device memory.
"""
from __future__ import annotations

import argparse
import sys
import time

import torch
from torch import nn

from gan_monitor import dissect
from gan_monitor.dissection.thresholds.modes import IQR, IQR_SEED_OFFSET

THRESHOLD_RTOL = 1e-5
IOU_ATOL = 1e-3


class Replay(nn.Module):
    """A "generator" whose traced layer replays stored featuremaps (indexed by input); its
    images are small maps in [-1, 1] made from them, and it remembers the last indices
    (for ``ReplaySegmenter``)."""

    def __init__(self, maps: torch.Tensor):
        super().__init__()
        self.maps = maps
        self.layer = nn.Identity()
        self.last = None

    def forward(self, index):
        self.last = index.to(self.maps.device)
        acts = self.layer(self.maps[self.last])
        return torch.tanh(acts[:, :3]) * 2 - 1


class ReplaySegmenter:
    def __init__(self, generator: Replay, segs: torch.Tensor, n_concepts: int):
        self.generator, self.segs = generator, segs
        self.concepts = ["-"] + [f"c{i}" for i in range(1, n_concepts)]
        self.categories = ["-"] + [("object", "part", "material")[i % 3] for i in range(n_concepts - 1)]

    def segment(self, images):
        return self.segs[self.generator.last.to(self.segs.device)]


def synthetic_world(n, units, fm, size, n_concepts, per_image, seed=0):
    gen = torch.Generator().manual_seed(seed)
    maps = torch.relu(torch.randn(n, units, fm, fm, generator=gen) + 0.5)
    grid = 8
    choice = torch.stack([torch.randperm(n_concepts - 1, generator=gen)[:per_image] + 1 for _ in range(n)])
    cells = torch.randint(per_image, (n, grid, grid), generator=gen)
    labels = choice.gather(1, cells.flatten(1)).view(n, grid, grid)
    segs = labels.repeat_interleave(size // grid, 1).repeat_interleave(size // grid, 2)
    return maps, segs


def replay_dissect(maps, segs, n_concepts, device, **kwargs):
    generator = Replay(maps.to(device))
    segmenter = ReplaySegmenter(generator, segs.to(device), n_concepts)
    n = maps.shape[0]
    half = n // 2
    if isinstance(kwargs.get("threshold"), IQR):  # first half: iqr sample, second half: main sample
        kwargs["threshold"] = IQR(inputs=torch.arange(half, device=device))
        return dissect(generator, "layer", segmenter, inputs=torch.arange(half, n, device=device), **kwargs)
    return dissect(generator, "layer", segmenter, inputs=torch.arange(n, device=device), **kwargs)


def compare(name, a, b) -> bool:
    ok = True
    for layer in a.layers:
        x, y = a[layer], b[layer]
        t_diff = float(((x.thresholds - y.thresholds).abs() / x.thresholds.abs().clamp(min=1e-30)).max())
        iou_diff = float((x.iou - y.iou).abs().max())
        differ = (x.label_index != y.label_index).nonzero().flatten()
        top2 = x.iou[:, 1:].topk(2, dim=1).values
        close = (top2[:, 0] - top2[:, 1]) <= IOU_ATOL
        labels_ok = bool(close[differ].all()) if differ.numel() else True
        same = t_diff <= THRESHOLD_RTOL and iou_diff <= IOU_ATOL and labels_ok
        ok &= same
        exact = torch.equal(x.thresholds, y.thresholds) and torch.equal(x.iou, y.iou)
        print(f"  {name:28s} {layer:8s} thresholds rel. diff {t_diff:.2e}, IoU diff {iou_diff:.2e}, "
              f"labels differ {differ.numel()}/{x.label_index.numel()} (all near-ties: {labels_ok}); "
              f"{'bit-identical' if exact else 'within tolerance' if same else 'MISMATCH'}")
    return ok


def agreement(device) -> bool:
    print(f"(1) agreement, CPU vs {device} (tolerances: thresholds rel. {THRESHOLD_RTOL}, IoU {IOU_ATOL})")
    ok = True
    maps, segs = synthetic_world(96, 48, 8, 64, 31, 6, seed=1)
    modes = {"quantile (cached)": {}, "quantile (streaming)": {"memory_budget": 1}, "iqr": {"threshold": IQR()},
             "iqr (streaming)": {"threshold": IQR(), "memory_budget": 1}}
    for label, kw in modes.items():
        cpu = replay_dissect(maps, segs, 31, "cpu", batch_size=16, **dict(kw))
        dev = replay_dissect(maps, segs, 31, device, batch_size=16, **dict(kw))
        ok &= compare(f"replay, {label}", cpu, dev)
    from gan_monitor.toyworld.gan import ToyGenerator
    from gan_monitor.toyworld.segmenter import load_segmenter

    torch.manual_seed(0)
    generator, segmenter = ToyGenerator().eval(), load_segmenter()
    z = generator.sample_latents(64, seed=0)
    z_iqr = generator.sample_latents(64, seed=IQR_SEED_OFFSET)
    results = {}
    for where in ("cpu", device):
        g = generator.to(where)
        if hasattr(segmenter, "to"):
            segmenter.to(where)
        results[where] = {label: dissect(g, ["layer2", "layer3"], segmenter, inputs=z.to(where), batch_size=16,
                                         **(dict(kw, threshold=IQR(inputs=z_iqr.to(where))) if label.startswith("iqr")
                                            else kw))
                          for label, kw in modes.items()}
    for label in modes:
        ok &= compare(f"toy GAN, {label}", results["cpu"][label], results[device][label])
    return ok


def timing(device, n):
    print(f"(2) timing on {device}: 512 units 32x32 -> 256x256, {n} samples, ~16 of 150 concepts per image")
    maps, segs = synthetic_world(n, 512, 32, 256, 151, 16, seed=2)
    segs = segs.to(torch.uint8)
    for label, kw in (("quantile, default budget", {}), ("quantile, budget 64 GiB", {"memory_budget": 64 << 30}),
                      ("iqr (half iqr sample, half main)", {"threshold": IQR()})):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        result = replay_dissect(maps, segs, 151, device, batch_size=50, **kw)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        wall = time.perf_counter() - start
        peak = f", peak device memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB" if device.startswith(
            "cuda") else ""
        print(f"  {label:34s}: {wall:7.1f} s ({1000 * wall / n:.1f} ms/sample), "
              f"path {result.settings.get('quantile_path', '-')}{peak}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="the device compared with the CPU (default cuda)")
    parser.add_argument("--scale-n", type=int, default=1000, help="samples of the timing run")
    parser.add_argument("--skip-timing", action="store_true")
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here (torch.cuda.is_available() is False); nothing to check.")
        return 0
    if args.device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = False  # full float32 matmuls and convolutions
        torch.backends.cudnn.allow_tf32 = False
        print(f"device: {torch.cuda.get_device_name(args.device)}, torch {torch.__version__}")
    ok = agreement(args.device)
    if not args.skip_timing:
        timing(args.device, args.scale_n)
    print("agreement:", "OK" if ok else "MISMATCH beyond the stated tolerances")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
