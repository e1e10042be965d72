"""The segmenter protocol: how gan_monitor asks "which concept is at each pixel?".

Any object with these members can be passed wherever a segmenter is expected::

    class MySegmenter:
        concepts = ["-", "sky", "tree", ...]        # index 0 means "no concept"
        categories = ["-", "material", "object", ...]  # one category per concept

        def segment(self, images):                # images: float [N,3,H,W] in [-1,1]
            ...                                    # -> LongTensor [N,H,W] (one label map)
                                                   #    or [N,D,H,W] (D overlapping maps,
                                                   #    e.g. objects, parts, materials)
        def probabilities(self, images):           # -> float [N,C,H,W], differentiable
            ...                                    #    (only needed for causal_units)

`segment` may return maps at a resolution other than the images'; dissection
upsamples featuremaps to whatever resolution the segmentation has.
"""
from __future__ import annotations

from typing import Protocol, Sequence, runtime_checkable

import torch

__all__ = ["Segmenter", "validate_segmenter", "validate_segmentation"]


@runtime_checkable
class Segmenter(Protocol):
    """Structural type of a segmenter (see the module docstring)."""

    concepts: Sequence[str]
    categories: Sequence[str]

    def segment(self, images: torch.Tensor) -> torch.Tensor:  # pragma: no cover - protocol
        ...

    def probabilities(self, images: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        ...


def validate_segmenter(segmenter: object) -> None:
    """Raise a clear error when ``segmenter`` does not follow the protocol."""
    missing = [m for m in ("concepts", "categories", "segment") if not hasattr(segmenter, m)]
    if missing:
        raise TypeError(
            f"{type(segmenter).__name__} is not a segmenter: it lacks {', '.join(missing)}. "
            "A segmenter needs `concepts` (names, index 0 = no concept), `categories` "
            "(one per concept) and `segment(images) -> LongTensor [N,H,W] or [N,D,H,W]`; "
            "see gan_monitor.segmenters."
        )
    concepts, categories = list(segmenter.concepts), list(segmenter.categories)
    if len(concepts) != len(categories):
        raise ValueError(
            f"segmenter has {len(concepts)} concepts but {len(categories)} categories; "
            "give exactly one category per concept (index 0 is the unlabeled '-')."
        )
    if len(concepts) < 2:
        raise ValueError("segmenter must name at least one concept besides index 0 (unlabeled).")
    seen, twice = set(), []
    for name in concepts:
        if name in seen and name not in twice:
            twice.append(name)
        seen.add(name)
    if twice:
        raise ValueError(f"segmenter names concept(s) {twice} more than once; a unit's label would be ambiguous. "
                         "Give every concept index a distinct name (e.g. 'wall' and 'wall-2', or merge the classes).")


def validate_segmentation(seg: torch.Tensor, n_images: int, n_concepts: int) -> torch.Tensor:
    """Check a segmentation returned by ``segment`` and return it as ``[N, D, H, W]`` long."""
    if not isinstance(seg, torch.Tensor):
        raise TypeError(f"segment() must return a torch.Tensor, got {type(seg).__name__}.")
    if seg.dtype.is_floating_point or seg.dtype == torch.bool:
        raise TypeError(
            f"segment() returned dtype {seg.dtype}; it must return integer concept indices "
            "(use probabilities() for scores)."
        )
    if seg.dim() == 3:
        seg = seg[:, None]
    if seg.dim() != 4:
        raise ValueError(
            f"segment() returned shape {tuple(seg.shape)}; expected [N,H,W] or [N,D,H,W]."
        )
    if seg.shape[0] != n_images:
        raise ValueError(
            f"segment() returned {seg.shape[0]} maps for {n_images} images; "
            "it must return one per image."
        )
    if seg.numel():
        lo, hi = int(seg.min()), int(seg.max())
        if lo < 0 or hi >= n_concepts:
            raise ValueError(
                f"segment() returned concept index range [{lo}, {hi}] but the segmenter names "
                f"{n_concepts} concepts (valid indices 0..{n_concepts - 1}); "
                "the concept list and the model's outputs do not match."
            )
    return seg.long()
