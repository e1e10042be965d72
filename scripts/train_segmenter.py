"""Train the embedded toy-world segmenter and write gan_monitor/toyworld/weights/segmenter.pt.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python scripts/train_segmenter.py            # shipped run
    OMP_WAIT_POLICY=PASSIVE .venv/bin/python scripts/train_segmenter.py --steps 300 --out /tmp/s.pt

Every batch is a fresh set of procedural scenes (scene seeds TRAIN_SEED_BASE + step,
never below 10**7), augmented so the segmenter also works on blurry, noisy,
off-colour images like a GAN's.  At the end it prints per-concept IoU (whole-set
intersection / union) on scenes from EVAL_SEED, which training never uses, both
clean and after fixed degradations.  Deterministic for --seed and a fixed --threads
(checked for one thread).  The shipped weights come from the defaults (1500 steps of
32 scenes, 2 threads).
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from gan_monitor.toyworld import CONCEPT_NAMES  # noqa: E402
from gan_monitor.toyworld.scenes import render_scenes  # noqa: E402
from gan_monitor.toyworld.segmenter import DEFAULT_WEIGHTS, SegmenterNet, save_segmenter  # noqa: E402

TRAIN_SEED_BASE = 10_000_000  # training scenes use seeds TRAIN_SEED_BASE + step
EVAL_SEED = 777  # held-out scenes for the report (tests use yet another seed)
C = len(CONCEPT_NAMES)


# ----------------------------------------------------------------------------- degradations
def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Blur each image with its own sigma (``sigma``: [N], pixels; 0 = unchanged)."""
    n, c, h, w = x.shape
    r = 3
    t = torch.arange(-r, r + 1, dtype=x.dtype)
    k = torch.exp(-(t[None] ** 2) / (2 * sigma.clamp(min=1e-3)[:, None] ** 2))
    k = k / k.sum(1, keepdim=True)  # [N, 2r+1]
    k = k.repeat_interleave(c, 0)  # [N*C, 2r+1]
    y = F.pad(x.reshape(1, n * c, h, w), (r, r, r, r), mode="replicate")
    y = F.conv2d(y, k[:, None, None, :], groups=n * c)
    y = F.conv2d(y, k[:, None, :, None], groups=n * c)
    return y.reshape(n, c, h, w)


def down_up(x: torch.Tensor, factor: float) -> torch.Tensor:
    """Downsample by ``factor`` (area averaging) and upsample back bilinearly: loses detail like a GAN."""
    h, w = x.shape[-2:]
    small = F.interpolate(x, size=(max(4, round(h / factor)), max(4, round(w / factor))), mode="area")
    return F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)


def colour_shift(x: torch.Tensor, gain: torch.Tensor, offset: torch.Tensor, saturation: torch.Tensor) -> torch.Tensor:
    """Per-image per-channel gain/offset ([N,3]) and saturation ([N]) in [-1,1] pixel space."""
    gray = x.mean(1, keepdim=True)
    x = gray + (x - gray) * saturation.view(-1, 1, 1, 1)
    return x * gain.view(-1, 3, 1, 1) + offset.view(-1, 3, 1, 1)


def augment(x: torch.Tensor, y: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Random flips, colour shifts, blur, down-up sampling, noise and colour blotches."""
    n, _, h, w = x.shape

    def pick(p):
        return torch.rand(n, generator=g) < p

    def u(lo, hi, *shape):
        return lo + (hi - lo) * torch.rand(n, *shape, generator=g)

    flip = pick(0.5)
    x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
    y = torch.where(flip.view(-1, 1, 1), y.flip(-1), y)
    on = pick(0.7).float()
    gain = 1 + on[:, None] * u(-0.2, 0.2, 3)
    offset = on[:, None] * u(-0.15, 0.15, 3)
    x = colour_shift(x, gain, offset, 1 + on * u(-0.4, 0.3))
    m = pick(0.35)
    if m.any():
        x = torch.where(m.view(-1, 1, 1, 1), down_up(x, float(u(1.5, 4.0)[0])), x)
    sigma = torch.where(pick(0.45), u(0.3, 1.8), torch.zeros(n))
    x = torch.where((sigma > 0).view(-1, 1, 1, 1), gaussian_blur(x, sigma), x)
    for cells, amp in ((4, 0.15), (12, 0.2)):  # colour blotches, coarse and fine (GAN-like artefacts)
        blot = F.interpolate(torch.randn(n, 3, cells, cells, generator=g), size=(h, w), mode="bilinear",
                             align_corners=False)
        x = x + (pick(0.3).float() * u(0.0, amp)).view(-1, 1, 1, 1) * blot
    noise = torch.where(pick(0.5), u(0.0, 0.15), torch.zeros(n))
    x = x + noise.view(-1, 1, 1, 1) * torch.randn(x.shape, generator=g)
    return x.clamp(-1.2, 1.2), y


DEGRADATIONS = {
    "clean": lambda x, g: x,
    "blur s=1": lambda x, g: gaussian_blur(x, torch.full((len(x),), 1.0)),
    "noise 0.08": lambda x, g: x + 0.08 * torch.randn(x.shape, generator=g),
    "colour": lambda x, g: colour_shift(x, torch.tensor([1.1, 0.95, 0.85]).expand(len(x), 3),
                                         torch.tensor([0.05, -0.05, 0.08]).expand(len(x), 3), torch.full((len(x),), 0.8)),
    "down-up x2": lambda x, g: down_up(x, 2.0),
    "gan-like": lambda x, g: (colour_shift(gaussian_blur(down_up(x, 2.0), torch.full((len(x),), 0.7)),
                                           torch.tensor([1.05, 0.95, 0.9]).expand(len(x), 3),
                                           torch.tensor([0.03, 0.0, -0.05]).expand(len(x), 3),
                                           torch.full((len(x),), 0.85))
                              + 0.05 * torch.randn(x.shape, generator=g)).clamp(-1, 1),
}


# ----------------------------------------------------------------------------- evaluation
def confusion(pred: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
    return torch.bincount((true.flatten() * C + pred.flatten()), minlength=C * C).view(C, C)


def iou_from_confusion(conf: torch.Tensor) -> torch.Tensor:
    """IoU per concept (index 0 included; NaN where a concept never occurs)."""
    conf = conf.double()
    inter = conf.diag()
    union = conf.sum(0) + conf.sum(1) - inter
    return torch.where(union > 0, inter / union.clamp(min=1), torch.full_like(inter, float("nan")))


@torch.no_grad()
def evaluate(net: SegmenterNet, n: int, seed: int, size: int = 64) -> dict[str, torch.Tensor]:
    net.eval()
    images, labels = render_scenes(n, seed=seed, size=size)
    out = {}
    for name, fn in DEGRADATIONS.items():
        g = torch.Generator().manual_seed(seed)
        conf = torch.zeros(C, C, dtype=torch.long)
        for i in range(0, n, 64):
            x = fn(images[i:i + 64], g)
            conf += confusion(net(x).argmax(1), labels[i:i + 64])
        out[name] = iou_from_confusion(conf)
    return out


def print_iou_table(results: dict[str, torch.Tensor]) -> None:
    names = list(results)
    print("concept    " + "".join(f"{k:>12s}" for k in names))
    for c in range(1, C):
        print(f"{CONCEPT_NAMES[c]:10s} " + "".join(f"{float(results[k][c]):12.3f}" for k in names))
    print("mean       " + "".join(f"{float(results[k][1:].nanmean()):12.3f}" for k in names))


# ----------------------------------------------------------------------------- training
def class_weights(seed: int) -> torch.Tensor:
    """Inverse fourth-root frequency, so small parts (windows, doors) count more."""
    _, labels = render_scenes(256, seed=seed)
    freq = torch.bincount(labels.flatten(), minlength=C).double() / labels.numel()
    w = torch.where(freq > 0, freq.clamp(min=1e-4) ** -0.25, torch.zeros_like(freq))
    return (w / w[freq > 0].mean()).float()


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=4e-3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0, help="seeds initialisation and augmentation")
    ap.add_argument("--widths", default="16,32,48,96")
    ap.add_argument("--eval-n", type=int, default=512)
    ap.add_argument("--out", default=str(DEFAULT_WEIGHTS))
    ap.add_argument("--log-every", type=int, default=100)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    g = torch.Generator().manual_seed(args.seed)
    net = SegmenterNet(C, tuple(int(w) for w in args.widths.split(",")))
    net = net.to(memory_format=torch.channels_last)
    weights = class_weights(TRAIN_SEED_BASE - 1)
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=1e-4)
    warm = max(1, args.steps // 30)

    def lr_at(step):  # linear warm-up, cosine decay
        if step < warm:
            return args.lr * (step + 1) / warm
        return args.lr * 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, args.steps - warm)))

    t0, running = time.time(), 0.0
    net.train()
    for step in range(args.steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        x, y = render_scenes(args.batch, seed=TRAIN_SEED_BASE + step)
        x, y = augment(x, y, g)
        logits = net(x.contiguous(memory_format=torch.channels_last))
        loss = F.cross_entropy(logits, y, weight=weights)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        running += float(loss.detach())
        if (step + 1) % args.log_every == 0:
            print(f"step {step + 1}/{args.steps} loss {running / args.log_every:.4f} "
                  f"lr {lr_at(step):.2e} {time.time() - t0:.0f}s", flush=True)
            running = 0.0
    train_s = time.time() - t0
    net = net.to(memory_format=torch.contiguous_format).eval()
    print(f"trained {args.steps} steps x {args.batch} images in {train_s:.0f}s on {args.threads} thread(s)")
    results = evaluate(net, args.eval_n, EVAL_SEED)
    print(f"per-concept IoU on {args.eval_n} held-out scenes (seed {EVAL_SEED}), 64x64:")
    print_iou_table(results)
    meta = {
        "train_seconds": round(train_s, 1), "steps": args.steps, "batch": args.batch, "threads": args.threads,
        "seed": args.seed, "train_seed_base": TRAIN_SEED_BASE, "eval_seed": EVAL_SEED,
        "mean_iou_clean": round(float(results["clean"][1:].nanmean()), 4),
        "mean_iou_gan_like": round(float(results["gan-like"][1:].nanmean()), 4),
    }
    path = save_segmenter(net, args.out, meta)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
