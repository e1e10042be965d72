"""The seed report's analyses (../shared/papers/004) on the three toy generator families:
interpretable units per category per layer, ablation of the top-20 IoU units of one concept
against 20 random units, and the search for single units that alone remove a concept.

    python scripts/family_analyses.py --progan runs/toygan/toygan.ckpt \
        --stylegan runs/toystylegan/toystylegan.ckpt --pix2pix runs/toypix2pix/toypix2pix.ckpt \
        --out runs/families --docs docs/families

Writes ``<out>/families.json`` (every number below) and prints Markdown tables; with
``--docs`` also a picture per family: the concept's top units (IoU) and the same held-out
images before and after ablating the top-20 IoU units.

Choices: iqr thresholds (the ICLR 2019 default for GANs) on ``--n`` held-out inputs of each
family's own kind (latents; latents plus fixed per-layer noise for StyleGAN; held-out label
maps for pix2pix); the ablated concept is the one with the most interpretable units in the
analysed layer among object concepts; random sets are ``--draws`` seeded draws of 20 units,
averaged; a single unit "alone removes" a concept when ablating it removes >= 50 % of the
concept's pixels over ``--single-n`` images (the report's "unit 59 removes every cushion");
for pix2pix each unit is also dissected against the conditioning label map and counted as
copying the input or generating (``gan_monitor.dissection.input_reference.input_vs_output``).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gan_monitor.core.input_factories import stylegan_inputs  # noqa: E402
from gan_monitor.core.inputs import call_generator, make_inputs  # noqa: E402
from gan_monitor.core.tracing import Edit, eval_mode  # noqa: E402
from gan_monitor.dissection.input_reference import input_vs_output  # noqa: E402
from gan_monitor.dissection.pipeline import dissect  # noqa: E402
from gan_monitor.interventions.ace import ace, single_unit_effects  # noqa: E402
from gan_monitor.report import pictures  # noqa: E402
from gan_monitor.report.unit_examples import top_unit_examples  # noqa: E402
from gan_monitor.toyworld.gan import load_toygan  # noqa: E402
from gan_monitor.toyworld.pix2pix import load_toypix2pix, pix2pix_inputs  # noqa: E402
from gan_monitor.toyworld.segmenter import load_segmenter  # noqa: E402
from gan_monitor.toyworld.stylegan import load_toystylegan  # noqa: E402

TOP = 20  # the report's set size
ALONE = 0.5  # a single unit "alone removes" a concept above this fraction


def family(name: str, path: str):
    """(generator, input_fn, layers to dissect, the layer of the intervention analyses)."""
    if name == "progan":
        g = load_toygan(path).eval_generator()
        return g, None, ["layer2", "layer3", "layer4"], "layer3"
    if name == "stylegan":
        g = load_toystylegan(path).eval_generator()
        fn = stylegan_inputs(g.latent_dim, g.noise_shapes())
        layers = [n for n in g.layer_names if n.endswith("conv1") and not n.startswith("synthesis.b4.")][:3]
        return g, fn, layers, layers[1]
    model = load_toypix2pix(path)
    g = model.eval_generator()
    return g, pix2pix_inputs(int(model.hparams.image_size)), ["down3", "down4", "up3", "up2"], "up2"


def pick_concept(ld) -> int:
    """The object concept with the most interpretable units (the report ablates objects)."""
    counts = {c: k for c, k in ld.summary["units_per_concept"].items()
              if ld.categories[ld.concepts.index(c)] == "object"}
    if not counts:
        counts = dict(ld.summary["units_per_concept"])
    best = max(counts, key=lambda c: counts[c]) if counts else ld.labels[int(ld.unit_iou.argmax())]
    return ld.concepts.index(best)


def analyse(name: str, path: str, seg, args) -> dict:
    torch.manual_seed(0)
    g, fn, layers, layer = family(name, path)
    result = dissect(g, layers, seg, n=args.n, seed=1, input_fn=fn, threshold="iqr", batch_size=50)
    out = {"checkpoint": path, "layers": {}, "analysis_layer": layer}
    for lname, ld in result.items():
        s = ld.summary
        out["layers"][lname] = {"units": s["units"], "interpretable": s["interpretable_units"],
                                "per_category": s["per_category"], "concepts": s["concept_diversity"],
                                "mean_iou": round(s["mean_iou"], 4)}
    ld = result[layer]
    c = pick_concept(ld)
    concept = ld.concepts[c]
    top = torch.argsort(ld.iou[:, c], descending=True, stable=True)[:TOP].tolist()
    eval_inputs = make_inputs(g, args.ace_n, 7, fn)
    top_effect = ace(g, layer, top, concept, segmenter=seg, inputs=eval_inputs, batch_size=50)
    randoms = []
    for d in range(args.draws):
        units = torch.randperm(ld.num_units, generator=torch.Generator().manual_seed(100 + d))[:TOP].tolist()
        randoms.append(ace(g, layer, units, concept, segmenter=seg, inputs=eval_inputs, batch_size=50).mean)
    single = single_unit_effects(g, layer, segmenter=seg, inputs=make_inputs(g, args.single_n, 9, fn),
                                 batch_size=50)
    removed = single.removed[:, c]
    ranking = single.ranking(concept)
    alone = {ld.concepts[k]: [u for u in range(ld.num_units) if float(single.removed[u, k]) >= ALONE]
             for k in range(1, len(ld.concepts)) if not torch.isnan(single.removed[:, k]).all()}
    out["ablation"] = {
        "concept": concept, "layer": layer, "top_iou_units": top,
        "top_iou_of_those": [round(float(ld.iou[u, c]), 4) for u in top[:5]],
        "top20_removed": round(top_effect.mean, 4), "top20_ci": [round(v, 4) for v in top_effect.ci],
        "random20_removed_mean": round(sum(randoms) / len(randoms), 4),
        "random20_removed": [round(r, 4) for r in randoms],
        "best_single_units": [(u, round(float(removed[u]), 4), round(float(ld.iou[u, c]), 4)) for u in ranking[:5]],
        "units_alone_removing_half": {k: v for k, v in alone.items() if v},
    }
    if name == "pix2pix":  # the report's circularity: units that copy the input map vs units that generate
        both = input_vs_output(g, layers, seg, n=args.n, seed=1, input_fn=fn, threshold="iqr", batch_size=50)
        out["input_vs_output"] = {lname: {k: r.kind.count(k) for k in ("copies input", "generates", "neither")}
                                  for lname, r in both.items()}
    if args.docs:
        _pictures(name, g, layer, top, concept, eval_inputs, seg, Path(args.docs))
        examples = top_unit_examples(g, make_inputs(g, args.n, 1, fn), ld, 6, 5)
        rows = [pictures.unit_row(images, masks, pictures.unit_caption(u, ld.labels[u], float(ld.unit_iou[u]),
                                                                       ld.settings.get("cutoff")))
                for u, images, masks in examples]
        pictures.top_units_grid(rows, title=f"{name} {layer}: best units").save(Path(args.docs) / f"{name}_units.png")
    return out


def _pictures(name, g, layer, units, concept, inputs, seg, docs: Path) -> None:
    docs.mkdir(parents=True, exist_ok=True)
    from gan_monitor.core.inputs import slice_inputs

    batch = slice_inputs(inputs, 0, 6)
    with eval_mode(g), torch.no_grad():
        before = call_generator(g, batch)
        with Edit(g, layer, units=units):
            after = call_generator(g, batch)
    c = list(seg.concepts).index(concept)
    masks_before = (seg.segment(before) == c).reshape(before.shape[0], -1, *before.shape[-2:]).any(1)
    masks_after = (seg.segment(after) == c).reshape(after.shape[0], -1, *after.shape[-2:]).any(1)
    rows = [pictures.unit_row(before, masks_before, f"{name}: before (outlined: {concept})"),
            pictures.unit_row(after, masks_after, f"{name}: after ablating the top-{len(units)} IoU {concept} "
                                                  f"units of {layer}")]
    pictures.top_units_grid(rows).save(docs / f"{name}_ablation.png")


def table(results: dict) -> str:
    lines = ["| family | layer | units | interpretable | object | part | material | concepts | mean IoU |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for fam, r in results.items():
        for layer, s in r["layers"].items():
            pc = s["per_category"]
            lines.append(f"| {fam} | {layer} | {s['units']} | {s['interpretable']} | {pc.get('object', 0)} | "
                         f"{pc.get('part', 0)} | {pc.get('material', 0)} | {s['concepts']} | {s['mean_iou']:.3f} |")
    lines += ["", "| family | layer | concept | top-20 IoU units removed | 20 random units removed | best single unit "
                  "(removed, IoU) | units alone removing >= 50 % |", "|---|---|---|---:|---:|---|---|"]
    for fam, r in results.items():
        a = r["ablation"]
        u, rem, iou = a["best_single_units"][0]
        alone = "; ".join(f"{k}: {v}" for k, v in a["units_alone_removing_half"].items()) or "none"
        lines.append(f"| {fam} | {a['layer']} | {a['concept']} | {100 * a['top20_removed']:.1f} % "
                     f"[{100 * a['top20_ci'][0]:.1f}, {100 * a['top20_ci'][1]:.1f}] | "
                     f"{100 * a['random20_removed_mean']:.1f} % | unit {u} ({100 * rem:.1f} %, {iou:.3f}) | {alone} |")
    copies = [(fam, layer, k) for fam, r in results.items() for layer, k in r.get("input_vs_output", {}).items()]
    if copies:
        lines += ["", "| family | layer | units copying the input label map | units generating | neither |",
                  "|---|---|---:|---:|---:|"]
        lines += [f"| {fam} | {layer} | {k['copies input']} | {k['generates']} | {k['neither']} |"
                  for fam, layer, k in copies]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for fam in ("progan", "stylegan", "pix2pix"):
        p.add_argument(f"--{fam}", default=None, help=f"{fam} checkpoint")
    p.add_argument("--n", type=int, default=300, help="held-out inputs of the dissection (default 300)")
    p.add_argument("--ace-n", type=int, default=100, help="inputs of each ablation (default 100)")
    p.add_argument("--single-n", type=int, default=40, help="inputs of the single-unit search (default 40)")
    p.add_argument("--draws", type=int, default=3, help="random 20-unit sets (default 3)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="runs/families")
    p.add_argument("--docs", default=None, help="folder for the before/after pictures")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    seg = load_segmenter()
    results = {fam: analyse(fam, getattr(args, fam), seg, args)
               for fam in ("progan", "stylegan", "pix2pix") if getattr(args, fam)}
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "families.json").write_text(json.dumps(results, indent=1))
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
