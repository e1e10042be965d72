"""Measure unit ablation on a trained toy GAN (numbers and images quoted in the README).

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python scripts/measure_ace_toygan.py \
        --checkpoint runs/toygan_ace/toygan.ckpt --live --layer layer2 --concept tree \
        --n 1000 --draws 10 --causal --epochs 10 --causal-n 300 --lr 0.05 --locations 8

The checkpoint comes from ``scripts/train_toygan.py`` (its docstring gives the command of
``runs/toygan_ace``). Uses the checkpoint's averaged generator (``generator_ema``) when it
has one (``--live`` for the trained weights). Dissects the layer on n images (seed 0),
ablates the top-n IoU units of the concept, (with --causal) the top-n causal units
(optimised on ``--causal-n`` other images, seed 2) and ``--draws`` draws of n random units, all on one
held-out sample (seed 1); prints the fractions of the concept's pixels removed with 95 %
intervals (and, for the causal and IoU sets, what inserting them adds and the ACE) as
JSON, and saves a before/after image: rows = original, IoU-ablated, causal-ablated,
random-ablated, on the 8 images (of 64, seed 11) with the most concept pixels.
"""
from __future__ import annotations

import argparse
import json
import time

import torch
from PIL import Image, ImageDraw

from gan_monitor import Edit, ace, causal_units, dissect
from gan_monitor.interventions.ace import insertion_values
from gan_monitor.toyworld import load_segmenter, load_toygan


def save_grid(rows: list[tuple[str, torch.Tensor]], path: str) -> None:
    label_w, gap = 120, 2
    n, _, h, w = rows[0][1].shape
    canvas = Image.new("RGB", (label_w + n * (w + gap), len(rows) * (h + gap)), "white")
    draw = ImageDraw.Draw(canvas)
    for r, (label, images) in enumerate(rows):
        arr = ((images.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
        for i in range(n):
            canvas.paste(Image.fromarray(arr[i]), (label_w + i * (w + gap), r * (h + gap)))
        draw.text((4, r * (h + gap) + h // 2 - 6), label, fill="black")
    canvas.resize((canvas.width * 2, canvas.height * 2), Image.NEAREST).save(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default="runs/toygan_ace/toygan.ckpt")
    parser.add_argument("--live", action="store_true", help="use the trained generator, not its average")
    parser.add_argument("--layer", default="layer2")
    parser.add_argument("--concept", default="tree")
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--top", type=int, default=20)
    parser.add_argument("--draws", type=int, default=5, help="draws of random unit sets")
    parser.add_argument("--causal", action="store_true")
    parser.add_argument("--epochs", type=int, default=3, help="causal optimisation passes over its images")
    parser.add_argument("--lr", type=float, default=0.01, help="causal optimisation learning rate")
    parser.add_argument("--locations", type=int, default=1, help="causal: locations sampled per image")
    parser.add_argument("--insert-weight", type=float, default=1.0, help="causal: insertion term weight")
    parser.add_argument("--causal-n", type=int, default=200, help="causal optimisation images (seed 2)")
    parser.add_argument("--image", default="docs/ace_tree_ablation.png")
    parser.add_argument("--json", default=None, help="also write the numbers here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    gan = load_toygan(args.checkpoint)
    generator = (gan.generator if args.live else gan.eval_generator()).eval()
    segmenter = load_segmenter()
    t0 = time.time()
    result = dissect(generator, args.layer, segmenter, n=args.n, seed=0)[args.layer]
    c = result.concepts.index(args.concept)
    n_units = result.num_units
    out = {"checkpoint": args.checkpoint, "generator": "live" if args.live or gan.generator_ema is None else "ema",
           "layer": args.layer, "concept": args.concept, "n": args.n, "units": n_units, "top": args.top}
    sets = {"iou": torch.argsort(result.iou[:, c], descending=True)[:args.top].tolist()}
    values = insertion_values(generator, args.layer, segmenter, n=200, seed=3)
    if args.causal:
        cu = causal_units(generator, args.layer, args.concept, segmenter=segmenter, n=args.causal_n, seed=2,
                          values=values, dissection=result, epochs=args.epochs, lr=args.lr,
                          locations=args.locations, insert_weight=args.insert_weight, top_n=args.top,
                          evaluate=False)
        sets["causal"] = cu.ranking[:args.top]
    for draw in range(args.draws):
        sets[f"random{draw}"] = torch.randperm(n_units, generator=torch.Generator().manual_seed(7 + draw))[
            :args.top].tolist()
    for name, units in sets.items():  # all evaluated on the same held-out sample (seed 1)
        r = ace(generator, args.layer, units, args.concept, segmenter=segmenter, n=args.n, seed=1)
        out[name] = {"fraction_removed": round(r.fraction_removed, 4), "ci": [round(x, 4) for x in r.ci],
                     "concept_fraction": round(r.normaliser, 4)}
        if not name.startswith("random"):
            ins = ace(generator, args.layer, units, args.concept, segmenter=segmenter, n=args.n, seed=1,
                      mode="insert", values=values)
            out[name]["inserted"] = round(ins.mean, 4)
            out[name]["ace"] = round(float(ins.after.mean() - r.after.mean()) / r.normaliser, 4)
            out[name]["units"] = units
    randoms = [out[f"random{d}"]["fraction_removed"] for d in range(args.draws)]
    out["random_mean"] = round(sum(randoms) / max(len(randoms), 1), 4)
    out["seconds"] = round(time.time() - t0, 1)
    print(json.dumps(out, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    pool = generator.sample_latents(64, seed=11)  # show the 8 images with the most concept pixels
    with torch.no_grad():
        share = (segmenter.segment(generator(pool)) == c).float().mean((1, 2))
        z = pool[torch.argsort(share, descending=True)[:8]]
        rows = [("original", generator(z))]
        for name, label in (("iou", f"top-{args.top} IoU"), ("causal", f"top-{args.top} causal"),
                            ("random0", f"{args.top} random")):
            if name in sets:
                with Edit(generator, args.layer, units=sets[name]):
                    rows.append((f"{label}\nablated", generator(z)))
    save_grid(rows, args.image)
    print("saved", args.image, "rows:", ", ".join(label.replace("\n", " ") for label, _ in rows))


if __name__ == "__main__":
    main()
