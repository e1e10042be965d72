"""Measure unit ablation on a trained toy GAN (numbers and images quoted in the README).

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python scripts/measure_ace_toygan.py \
        --checkpoint runs/toygan_long/toygan.ckpt --layer layer2 --concept tree

Dissects the layer, ablates the top-20 IoU units of the concept, (with --causal) the top-20 causal
units and three draws of 20 random units, all on one held-out sample, prints the fractions of the concept's
pixels removed with 95 % intervals, and saves a before/after image grid.
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from gan_monitor import Edit, ace, causal_units, dissect
from gan_monitor.toyworld import load_segmenter, load_toygan


def save_grid(images: list[torch.Tensor], path: str) -> None:
    from PIL import Image
    rows = [torch.cat(list(img), 2) for img in images]  # each [3, H, N*W]
    grid = torch.cat(rows, 1)
    arr = ((grid.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
    Image.fromarray(arr).resize((arr.shape[1] * 2, arr.shape[0] * 2), Image.NEAREST).save(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--checkpoint", default="runs/toygan_long/toygan.ckpt")
    parser.add_argument("--layer", default="layer2")
    parser.add_argument("--concept", default="tree")
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--top", type=int, default=20)
    parser.add_argument("--causal", action="store_true")
    parser.add_argument("--epochs", type=int, default=3, help="causal optimisation passes over 200 images")
    parser.add_argument("--image", default="docs/ace_tree_ablation.png")
    args = parser.parse_args()
    torch.set_num_threads(1)
    generator = load_toygan(args.checkpoint).generator.eval()
    segmenter = load_segmenter()
    t0 = time.time()
    result = dissect(generator, args.layer, segmenter, n=args.n, seed=0)[args.layer]
    c = result.concepts.index(args.concept)
    iou_units = torch.argsort(result.iou[:, c], descending=True)[:args.top].tolist()
    n_units = result.num_units
    out = {"layer": args.layer, "concept": args.concept, "n": args.n, "units": n_units, "top": args.top}
    sets = {"iou": iou_units}
    if args.causal:
        cu = causal_units(generator, args.layer, args.concept, segmenter=segmenter, n=200, seed=2,
                          dissection=result, epochs=args.epochs, top_n=args.top, evaluate=False)
        sets["causal"] = cu.ranking[:args.top]
    for draw in range(3):
        sets[f"random{draw}"] = torch.randperm(n_units, generator=torch.Generator().manual_seed(7 + draw))[
            :args.top].tolist()
    for name, units in sets.items():  # all evaluated on the same held-out sample (seed 1)
        r = ace(generator, args.layer, units, args.concept, segmenter=segmenter, n=args.n, seed=1)
        out[name] = {"fraction_removed": round(r.fraction_removed, 4), "ci": [round(x, 4) for x in r.ci],
                     "concept_fraction": round(r.normaliser, 4)}
    out["seconds"] = round(time.time() - t0, 1)
    print(json.dumps(out, indent=1))
    pool = generator.sample_latents(64, seed=11)  # show the 8 images with the most concept pixels
    with torch.no_grad():
        share = (segmenter.segment(generator(pool)) == c).float().mean((1, 2))
    z = pool[torch.argsort(share, descending=True)[:8]]
    rows = []
    with torch.no_grad():
        rows.append(generator(z))
        for name in ("iou", "causal"):
            if name in sets:
                with Edit(generator, args.layer, units=sets[name]):
                    rows.append(generator(z))
    save_grid(rows, args.image)
    print("saved", args.image, "rows: original,", ", ".join(n for n in ("iou", "causal") if n in sets), "ablated")


if __name__ == "__main__":
    main()
