"""Concept statistics of a set of images: per concept, the fraction of pixels it covers and
the fraction of images in which it appears (Bau et al., ICCV 2019, "Seeing What a GAN Cannot
Generate"; docs/method.md, "Training signals").

:class:`ConceptStats` holds integer counts (they add across batches, ranks and files) and
the metadata that says how they were made (segmenter, image size, count). The generated
side comes from a dissection (``DissectionResult.sample_stats``, :meth:`ConceptStats.from_result`);
the real side is computed once from real images with the same segmenter
(:func:`real_concept_stats`, :func:`toyworld_real_stats`) and cached in a JSON file
(:meth:`ConceptStats.save`, :func:`load_or_compute`).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch

from gan_monitor.core.errors import SignalError
from gan_monitor.dissection.concept_counts import count_labels
from gan_monitor.toyworld import CONCEPT_NAMES
from gan_monitor.toyworld.scenes import render_scenes
from gan_monitor.toyworld.segmenter import load_segmenter

__all__ = ["ConceptStats", "real_concept_stats", "toyworld_real_stats", "load_or_compute"]

_FORMAT = "gan_monitor.concept_stats/1"


@dataclass
class ConceptStats:
    """Integer concept counts of ``images`` images of ``pixels_per_image`` pixels each.

    Attributes:
        concepts: concept names (index 0 is the unlabelled "-").
        pixel_counts: per concept, (image, pixel) positions with that label.
        image_counts: per concept, images in which it appears.
        images, pixels_per_image: how many images, of how many pixels (label-map size).
        metadata: how they were made (``segmenter``, ``image_size``, ``source``, ...).
    """

    concepts: list[str]
    pixel_counts: list[int]
    image_counts: list[int]
    images: int
    pixels_per_image: int
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        c = len(self.concepts)
        if len(self.pixel_counts) != c or len(self.image_counts) != c:
            raise SignalError(f"ConceptStats: {c} concepts but {len(self.pixel_counts)} pixel counts and "
                              f"{len(self.image_counts)} image counts; give one count per concept.")
        self.pixel_counts = [int(x) for x in self.pixel_counts]
        self.image_counts = [int(x) for x in self.image_counts]
        self.images, self.pixels_per_image = int(self.images), int(self.pixels_per_image)

    # ---- derived numbers ---------------------------------------------------------------
    def pixel_fraction(self) -> dict[str, float]:
        """Per concept (index 0 excluded): its pixels / all pixels of all images."""
        total = self.images * self.pixels_per_image
        return {name: (n / total if total else 0.0) for name, n in zip(self.concepts[1:], self.pixel_counts[1:])}

    def presence(self) -> dict[str, float]:
        """Per concept (index 0 excluded): fraction of images in which it appears."""
        return {name: (n / self.images if self.images else 0.0)
                for name, n in zip(self.concepts[1:], self.image_counts[1:])}

    def __add__(self, other: "ConceptStats") -> "ConceptStats":
        if list(other.concepts) != list(self.concepts):
            raise SignalError("cannot add ConceptStats of different concept lists.")
        if other.images and self.images and other.pixels_per_image != self.pixels_per_image:
            raise SignalError(f"cannot add ConceptStats of {self.pixels_per_image} and {other.pixels_per_image} "
                              "pixels per image; segment both at the same size.")
        return ConceptStats(list(self.concepts), [a + b for a, b in zip(self.pixel_counts, other.pixel_counts)],
                            [a + b for a, b in zip(self.image_counts, other.image_counts)],
                            self.images + other.images, self.pixels_per_image or other.pixels_per_image,
                            dict(self.metadata))

    # ---- construction ------------------------------------------------------------------
    @classmethod
    def from_label_maps(cls, label_maps: Iterable[torch.Tensor], concepts: list[str],
                        metadata: Mapping[str, Any] | None = None) -> "ConceptStats":
        """Counts of batches of label maps ``[B, H, W]`` or ``[B, D, H, W]``."""
        pixels = torch.zeros(len(concepts), dtype=torch.long)
        present = torch.zeros(len(concepts), dtype=torch.long)
        images, size = 0, 0
        for seg in label_maps:
            p, i = count_labels(seg, len(concepts))
            pixels += p.cpu()
            present += i.cpu()
            images += int(seg.shape[0])
            size = int(seg.shape[-2]) * int(seg.shape[-1])
        return cls(list(concepts), pixels.tolist(), present.tolist(), images, size, dict(metadata or {}))

    @classmethod
    def from_result(cls, result) -> "ConceptStats":
        """The generated images' statistics of a ``DissectionResult`` (its ``sample_stats``)."""
        stats = getattr(result, "sample_stats", None)
        if not stats:
            raise SignalError("this dissection result has no sample_stats (it was made by gan_monitor < 0.3); "
                              "dissect again to get the concept statistics of the generated images.")
        return cls(list(stats["concepts"]), stats["pixel_counts"], stats["image_counts"], stats["images"],
                   stats["pixels_per_image"], {"source": "generated"})

    # ---- files -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"format": _FORMAT, "concepts": list(self.concepts), "pixel_counts": list(self.pixel_counts),
                "image_counts": list(self.image_counts), "images": self.images,
                "pixels_per_image": self.pixels_per_image, "metadata": dict(self.metadata)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ConceptStats":
        if d.get("format") != _FORMAT:
            raise SignalError(f"not a concept statistics file (format {d.get('format')!r}, expected {_FORMAT!r}).")
        return cls(list(d["concepts"]), d["pixel_counts"], d["image_counts"], d["images"], d["pixels_per_image"],
                   dict(d.get("metadata") or {}))

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=1), encoding="utf-8")
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "ConceptStats":
        path = Path(path)
        try:
            return cls.from_dict(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise SignalError(f"cannot read concept statistics from {path}: {err}") from err


def _segmenter_name(segmenter) -> str:
    return str(getattr(segmenter, "name", None) or type(segmenter).__name__)


def real_concept_stats(images: Iterable[Any], segmenter, *, max_images: int | None = None,
                       device: str | torch.device | None = None, name: str | None = None) -> ConceptStats:
    """Concept statistics of real images, segmented with ``segmenter`` (the one the dissection
    uses). ``images``: a dataloader (or any iterable) of image batches ``[B, 3, H, W]`` in
    [-1, 1], or of tuples/lists whose first item is such a batch. At most ``max_images``."""
    concepts = list(segmenter.concepts)
    count, image_size = 0, None

    def batches():
        nonlocal count, image_size
        for batch in images:
            x = batch[0] if isinstance(batch, (tuple, list)) else batch
            if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != 3:
                raise SignalError("real_concept_stats: images must yield [B, 3, H, W] tensors in [-1, 1] "
                                  f"(or tuples starting with one), got {type(x).__name__} "
                                  f"{tuple(getattr(x, 'shape', ()))}.")
            if max_images is not None:
                x = x[:max(0, max_images - count)]
            if not len(x):
                break
            image_size = [int(x.shape[-2]), int(x.shape[-1])]
            with torch.no_grad():
                seg = segmenter.segment(x.to(device) if device is not None else x)
            count += int(x.shape[0])
            yield seg

    stats = ConceptStats.from_label_maps(batches(), concepts)
    if not stats.images:
        raise SignalError("real_concept_stats: the image source yielded no images.")
    stats.metadata = {"source": name or "real images", "segmenter": _segmenter_name(segmenter),
                      "image_size": image_size, "images": stats.images}
    return stats


def toyworld_real_stats(n: int = 1000, *, seed: int = 12345, size: int = 64, segmenter=None,
                        batch_size: int = 100) -> ConceptStats:
    """Real statistics of the toy world: ``n`` procedural scenes (``gan_monitor.toyworld``),
    segmented with ``segmenter`` (default: the shipped toy segmenter, as the demo's monitor uses;
    ``segmenter="exact"`` counts the scenes' exact labels instead)."""
    images, labels = render_scenes(n, seed=seed, size=size)
    meta = {"source": f"toyworld scenes (seed {seed})", "image_size": [size, size], "images": n}
    if isinstance(segmenter, str) and segmenter == "exact":
        stats = ConceptStats.from_label_maps([labels], list(CONCEPT_NAMES))
        stats.metadata = dict(meta, segmenter="exact scene labels")
        return stats
    if segmenter is None:
        segmenter = load_segmenter()
    stats = real_concept_stats(images.split(batch_size), segmenter)
    stats.metadata.update(meta)
    return stats


def load_or_compute(path: str | Path, compute, *, expect: Mapping[str, Any] | None = None) -> ConceptStats:
    """The statistics cached at ``path``, or ``compute()`` saved there. With ``expect`` (e.g.
    ``{"segmenter": "ToySegmenter", "image_size": [64, 64]}``), a cached file whose metadata
    differs is recomputed (and overwritten)."""
    path = Path(path)
    if path.is_file():
        cached = ConceptStats.load(path)
        if all(cached.metadata.get(k) == v for k, v in (expect or {}).items()):
            return cached
    stats = compute()
    stats.save(path)
    return stats
