"""Write your own segmenter and dissect the toy GAN with it.

    python examples/custom_segmenter.py                                   # untrained toy generator
    python examples/custom_segmenter.py --checkpoint runs/demo/version_0/checkpoints/last.ckpt --n 500

A segmenter is any object with three members (gan_monitor.segmenters.base.Segmenter):

* ``concepts``: names, index 0 = "no concept" ("-");
* ``categories``: one per concept ("-" for index 0), e.g. object / part / material / color;
* ``segment(images)``: images float ``[N, 3, H, W]`` in [-1, 1] -> long ``[N, H, W]``
  (one label per pixel), or ``[N, D, H, W]`` for D overlapping label maps;
* optionally ``probabilities(images) -> float [N, C, H, W]``, differentiable, for
  ``causal_units`` (the intervention optimiser).

Here, ``SkySegmenter`` is a hand-written rule (bright, bluish pixels in the upper half
are "sky"; dark pixels are "shadow"), and ``Stacked`` combines it with the built-in
colour-term segmenter into a multi-label segmenter, so each pixel gets a rule label
and a colour.  Use the same file with the CLI:

    gan-monitor dissect g.ckpt --layers layer3 --out d/ --segmenter custom_segmenter:make_segmenter
(with this folder on PYTHONPATH).
"""
import argparse

import torch

from gan_monitor import dissect
from gan_monitor.segmenters.base import validate_segmenter
from gan_monitor.segmenters.color import ColorSegmenter
from gan_monitor.toyworld.gan import ToyGenerator, load_toygan


class SkySegmenter:
    """Rules on brightness and colour: 1 = sky, 2 = shadow, 0 = neither."""

    concepts = ["-", "sky", "shadow"]
    categories = ["-", "material", "color"]

    def __init__(self, sharpness: float = 20.0):
        self.sharpness = sharpness  # steepness of the soft thresholds in probabilities()

    def _soft_masks(self, images):
        rgb = (images.clamp(-1, 1) + 1) / 2                      # [0, 1]
        r, g, b = rgb[:, 0], rgb[:, 1], rgb[:, 2]
        brightness = rgb.mean(1)
        upper = (torch.arange(images.shape[-2], device=images.device) < images.shape[-2] / 2).float()[:, None]
        s = self.sharpness
        sky = torch.sigmoid(s * (brightness - 0.45)) * torch.sigmoid(s * (b - torch.maximum(r, g))) * upper
        shadow = torch.sigmoid(s * (0.2 - brightness))
        return sky, shadow

    def probabilities(self, images):
        """[N, 3, H, W]: P(neither), P(sky), P(shadow); smooth, so gradients flow."""
        sky, shadow = self._soft_masks(images)
        shadow = shadow * (1 - sky)
        return torch.stack([1 - sky - shadow, sky, shadow], 1)

    @torch.no_grad()
    def segment(self, images):
        return self.probabilities(images).argmax(1)             # long [N, H, W]


class Stacked:
    """Several segmenters as one multi-label segmenter: their concept lists are
    concatenated (one shared "-") and ``segment`` returns their maps stacked, [N, D, H, W]."""

    def __init__(self, *segmenters):
        self.parts = segmenters
        self.concepts, self.categories, self.offsets = ["-"], ["-"], []
        for seg in segmenters:
            self.offsets.append(len(self.concepts) - 1)
            self.concepts += list(seg.concepts[1:])
            self.categories += list(seg.categories[1:])

    @torch.no_grad()
    def segment(self, images):
        maps = []
        for seg, offset in zip(self.parts, self.offsets):
            labels = seg.segment(images)
            labels = labels[:, None] if labels.dim() == 3 else labels
            maps.append(torch.where(labels > 0, labels + offset, 0))  # shift into the joint list
        return torch.cat(maps, 1)


def make_segmenter():
    """Factory for ``--segmenter custom_segmenter:make_segmenter``."""
    return Stacked(SkySegmenter(), ColorSegmenter())


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", help="a ToyGAN .ckpt (e.g. from `gan-monitor demo`); default: untrained")
    p.add_argument("--n", type=int, default=200, help="held-out samples")
    args = p.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    if args.checkpoint:
        generator = load_toygan(args.checkpoint).generator
    else:
        generator = ToyGenerator()
        print("no --checkpoint: dissecting an untrained toy generator (expect few interpretable units)")
    segmenter = make_segmenter()
    validate_segmenter(segmenter)  # the same check dissect() runs
    result = dissect(generator, ["layer2", "layer3"], segmenter, n=args.n, seed=0, threshold="iqr")
    for layer, ld in result.items():
        s = ld.summary
        print(f"{layer}: {s['interpretable_units']}/{s['units']} interpretable units (iqr thresholds), "
              f"per category {s['per_category']}, top concepts {dict(list(s['units_per_concept'].items())[:5])}")


if __name__ == "__main__":
    main()
