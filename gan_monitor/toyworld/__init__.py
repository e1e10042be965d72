"""The embedded world: procedural outdoor scenes with exact labels, a segmenter
trained on them (weights ship in the package) and three toy generator families:
a ProGAN/DCGAN-like GAN (``gan``), a StyleGAN2-like GAN (``stylegan``) and a pix2pix
U-Net painting scenes from their label maps (``pix2pix``).

Everything here runs offline on a CPU.
"""
from __future__ import annotations

# Fixed order: the segmenter's weights and every test depend on these indices.
CONCEPTS: list[tuple[str, str]] = [
    ("-", "-"),
    ("sky", "material"),
    ("cloud", "object"),
    ("mountain", "object"),
    ("grass", "material"),
    ("road", "material"),
    ("tree", "object"),
    ("building", "object"),
    ("door", "part"),
    ("window", "part"),
    ("dome", "part"),
]
CONCEPT_NAMES: list[str] = [name for name, _ in CONCEPTS]
CONCEPT_CATEGORIES: list[str] = [cat for _, cat in CONCEPTS]


def __getattr__(name):  # lazy: importing the concept list must not import torch models
    if name in ("render_scenes", "SceneDataset"):
        from . import scenes

        return getattr(scenes, name)
    if name in ("load_segmenter", "ToySegmenter", "SegmenterNet"):
        from . import segmenter

        return getattr(segmenter, name)
    if name in ("ToyGAN", "ToyGenerator", "ToyDiscriminator", "load_toygan"):
        from . import gan

        return getattr(gan, name)
    if name in ("ToyStyleGAN", "ToyStyleGenerator", "load_toystylegan"):
        from . import stylegan

        return getattr(stylegan, name)
    if name in ("ToyPix2Pix", "ToyPix2PixGenerator", "load_toypix2pix", "pix2pix_inputs"):
        from . import pix2pix

        return getattr(pix2pix, name)
    raise AttributeError(f"module 'gan_monitor.toyworld' has no attribute {name!r}")


__all__ = [
    "CONCEPTS",
    "CONCEPT_NAMES",
    "CONCEPT_CATEGORIES",
    "render_scenes",
    "SceneDataset",
    "load_segmenter",
    "ToySegmenter",
    "ToyGAN",
    "ToyGenerator",
    "load_toygan",
    "ToyStyleGAN",
    "ToyStyleGenerator",
    "load_toystylegan",
    "ToyPix2Pix",
    "ToyPix2PixGenerator",
    "load_toypix2pix",
    "pix2pix_inputs",
]
