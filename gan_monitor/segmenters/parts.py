"""Object-part expansion (GAN Dissection paper, section 4): ``tree`` -> ``tree-t``,
``tree-b``, ``tree-l``, ``tree-r``.

"We expand each object class c into additional object part classes c-t, c-b, c-l and
c-r, which denote the top, bottom, left or right half of the bounding box of a
connected component."  :class:`PartSegmenter` wraps any segmenter and adds these
concepts (category ``"part"``) for every concept of the chosen categories (default
``object``).

Rules, precisely:

* Connected components: pixels of the same concept that touch, 4-connected by default
  (``connectivity=8`` adds diagonals); each label map of the base segmenter separately.
* A component whose bounding box spans rows ``r0..r1`` (height ``h = r1 - r0 + 1``)
  has its pixels in rows ``r0 .. r0 + ceil(h/2) - 1`` in ``c-t`` and the rest in
  ``c-b`` (an odd middle row belongs to the top); columns likewise (middle column to
  ``c-l``).  Only the component's own pixels are labelled, not its whole box.
* Output of ``segment``: the base maps ``[N, D, H, W]`` followed, for each base map, by
  a top/bottom map and a left/right map: ``[N, 3D, H, W]``, the multi-label stack that
  :func:`gan_monitor.segmenters.base.validate_segmentation` and the tallies consume (each
  pixel of an object is in one vertical and one horizontal half).
* ``probabilities`` (when the base has them): the base's columns, then for part
  ``c-x`` the base probability of ``c`` times the 0/1 mask of ``c-x`` from ``segment``
  (differentiable through the base probability; the mask is a constant).

Components are found on the tensor's device by label propagation: each pass gives
every horizontal and vertical run of equal labels the smallest id in it (a scatter-min),
then jumps pointers (an id names a pixel; take that pixel's id); blob-like shapes settle
in a few passes, a winding snake in more.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import torch
import torch.nn.functional as F

from gan_monitor.segmenters.base import validate_segmentation, validate_segmenter

__all__ = ["PartSegmenter", "connected_components", "component_halves", "PART_SUFFIXES"]

PART_SUFFIXES = ("t", "b", "l", "r")


def _shift(x: torch.Tensor, dy: int, dx: int, fill: int) -> torch.Tensor:
    """``out[n, y, x] = x[n, y + dy, x + dx]`` (``fill`` outside)."""
    h, w = x.shape[-2:]
    padded = F.pad(x, (1, 1, 1, 1), value=fill)
    return padded[:, 1 + dy:1 + dy + h, 1 + dx:1 + dx + w]


def _run_starts(labels: torch.Tensor, index: torch.Tensor, dim: int) -> torch.Tensor:
    """Flat index of the first pixel of each pixel's run of equal labels along ``dim``."""
    start = torch.ones_like(labels, dtype=torch.bool)
    length = labels.shape[dim]
    start.narrow(dim, 1, length - 1).copy_(labels.narrow(dim, 1, length - 1) != labels.narrow(dim, 0, length - 1))
    # flat indices grow along both rows and columns, so a running maximum finds the run start
    return torch.where(start, index, torch.zeros_like(index)).cummax(dim).values


def connected_components(labels: torch.Tensor, connectivity: int = 4) -> torch.Tensor:
    """Component ids of ``labels`` (long ``[N, H, W]``, 0 = background).

    Returns long ``[N, H, W]``: for labelled pixels, the flat index ``n*H*W + y*W + x``
    of the first pixel (row-major) of their component; -1 for label 0.  Pixels are in
    one component when a chain of same-label neighbours joins them.
    """
    if labels.dim() != 3:
        raise ValueError(f"labels must be [N, H, W], got shape {tuple(labels.shape)}.")
    if connectivity not in (4, 8):
        raise ValueError(f"connectivity must be 4 or 8, got {connectivity}.")
    labels = labels.long()
    n, h, w = labels.shape
    total = n * h * w
    index = torch.arange(total, device=labels.device).view(n, h, w)
    # Each pass: every horizontal run, then every vertical run of equal labels takes its
    # smallest id (one scatter-min each), diagonal neighbours too for 8-connectivity,
    # then pointer jumping (an id names a pixel of the same component: take that pixel's
    # id).  Background runs are processed alike and masked at the end.
    runs = [_run_starts(labels, index, 2).flatten(), _run_starts(labels, index, 1).flatten()]
    diagonals = []
    if connectivity == 8:
        for dy, dx in [(1, 1), (1, -1), (-1, 1), (-1, -1)]:
            diagonals.append(((dy, dx), (_shift(labels, dy, dx, 0) == labels) & (labels > 0)))
    comp = index.flatten().clone()
    fill = torch.full((total,), total, dtype=torch.long, device=labels.device)
    while True:
        previous = comp
        for run in runs:
            comp = fill.scatter_reduce(0, run, comp, "amin", include_self=True)[run]
        if diagonals:
            grid = comp.view(n, h, w)
            for (dy, dx), ok in diagonals:
                grid = torch.minimum(grid, torch.where(ok, _shift(grid, dy, dx, total), total))
            comp = grid.flatten()
        comp = comp[comp]
        comp = comp[comp]
        if torch.equal(comp, previous):
            break
    comp = comp.view(n, h, w)
    return torch.where(labels > 0, comp, torch.full_like(comp, -1))


def component_halves(labels: torch.Tensor, connectivity: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """``(top, left)``: bool ``[N, H, W]``, whether each labelled pixel lies in the top
    (left) half of its component's bounding box (see the module docstring for odd sizes)."""
    comp = connected_components(labels, connectivity)
    n, h, w = labels.shape
    fg = comp >= 0
    ids = comp[fg]
    rows = torch.arange(h, device=labels.device).view(1, h, 1).expand(n, h, w)[fg]
    cols = torch.arange(w, device=labels.device).view(1, 1, w).expand(n, h, w)[fg]
    top = torch.zeros_like(fg)
    left = torch.zeros_like(fg)
    if ids.numel():
        size = n * h * w
        big = torch.full((size,), max(h, w), dtype=torch.long, device=labels.device)
        small = torch.full((size,), -1, dtype=torch.long, device=labels.device)
        r0 = big.scatter_reduce(0, ids, rows, "amin")[ids]
        r1 = small.scatter_reduce(0, ids, rows, "amax")[ids]
        c0 = big.scatter_reduce(0, ids, cols, "amin")[ids]
        c1 = small.scatter_reduce(0, ids, cols, "amax")[ids]
        top[fg] = (rows - r0) < (r1 - r0 + 2) // 2
        left[fg] = (cols - c0) < (c1 - c0 + 2) // 2
    return top, left


class PartSegmenter:
    """Adds ``c-t / c-b / c-l / c-r`` part concepts to a segmenter (see the module docstring).

    Args:
        base: any segmenter (``concepts``, ``categories``, ``segment``).
        split_categories: categories whose concepts are split (default: ``object``).
        classes: alternatively, the concept names to split (overrides split_categories).
        connectivity: 4 or 8.
    """

    def __init__(self, base, split_categories: Iterable[str] = ("object",), classes: Sequence[str] | None = None,
                 connectivity: int = 4):
        validate_segmenter(base)
        if connectivity not in (4, 8):
            raise ValueError(f"connectivity must be 4 or 8, got {connectivity}.")
        self.base, self.connectivity = base, connectivity
        names, cats = list(base.concepts), list(base.categories)
        if classes is not None:
            unknown = [c for c in classes if c not in names[1:]]
            if unknown:
                raise ValueError(f"cannot split {unknown}: not concepts of the segmenter (it has {names[1:8]}...).")
            split = [names.index(c) for c in classes]
        else:
            wanted = set(split_categories)
            split = [i for i in range(1, len(names)) if cats[i] in wanted]
        if not split:
            raise ValueError(f"no concept to split into parts: the segmenter's categories are "
                             f"{sorted(set(cats[1:]))}; pass split_categories= or classes=.")
        self.base_size = len(names)
        part_names = [f"{names[i]}-{s}" for i in split for s in PART_SUFFIXES]
        clash = sorted(set(part_names) & set(names))
        if clash:
            raise ValueError(f"part names {clash[:5]} already name concepts of the segmenter.")
        self.concepts: list[str] = names + part_names
        self.categories: list[str] = cats + ["part"] * len(part_names)
        self.split_classes = [names[i] for i in split]
        # part_index[c, k]: concept index of part k (t, b, l, r) of base concept c; 0 if not split
        self._part_index = torch.zeros(len(names), 4, dtype=torch.long)
        for j, i in enumerate(split):
            self._part_index[i] = torch.arange(4) + len(names) + 4 * j
        # base concept of each part column
        self._part_base = torch.tensor([i for i in split for _ in PART_SUFFIXES], dtype=torch.long)

    def to(self, *args, **kwargs) -> "PartSegmenter":
        """Moves the base segmenter (when it can move)."""
        if hasattr(self.base, "to"):
            moved = self.base.to(*args, **kwargs)
            self.base = moved if moved is not None else self.base
        return self

    def part_maps(self, labels: torch.Tensor) -> torch.Tensor:
        """``[N, 2, H, W]`` part labels (top/bottom map, left/right map) of one label map ``[N, H, W]``."""
        index = self._part_index.to(labels.device)
        parts = index[labels]  # [N, H, W, 4]
        splittable = parts[..., 0] > 0
        top, left = component_halves(torch.where(splittable, labels, torch.zeros_like(labels)), self.connectivity)
        vertical = torch.where(top, parts[..., 0], parts[..., 1])
        horizontal = torch.where(left, parts[..., 2], parts[..., 3])
        return torch.stack([vertical, horizontal], 1) * splittable[:, None]

    @torch.no_grad()
    def segment(self, images: torch.Tensor) -> torch.Tensor:
        """Long ``[N, 3D, H, W]``: the base's D maps, then two part maps per base map."""
        seg = validate_segmentation(self.base.segment(images), images.shape[0], self.base_size)
        return torch.cat([seg, *[self.part_maps(seg[:, d]) for d in range(seg.shape[1])]], 1)

    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """``[N, C, H, W]``: base probabilities, then base probability x part mask per part concept."""
        if not callable(getattr(self.base, "probabilities", None)):
            raise TypeError(f"the base segmenter {type(self.base).__name__} has no probabilities(); "
                            "PartSegmenter can only offer them when its base does.")
        p = self.base.probabilities(images)
        return self._with_parts(p, self.segment(images))

    def _with_parts(self, p: torch.Tensor, seg: torch.Tensor) -> torch.Tensor:
        d = seg.shape[1] // 3
        parts = seg[:, d:]  # [N, 2D, H, W]
        if parts.shape[-2:] != p.shape[-2:]:
            parts = F.interpolate(parts.float(), size=p.shape[-2:], mode="nearest").long()
        n_parts = len(self.concepts) - self.base_size
        column = (parts - self.base_size).clamp_min(0)  # part column (0 where no part: masked below)
        base_of = self._part_base.to(p.device)[column]
        src = p.gather(1, base_of) * (parts > 0)
        # each part concept appears at a pixel in at most one part map of a given base map;
        # several base maps may repeat it: take the maximum, not the sum
        out = p.new_zeros(p.shape[0], n_parts, *p.shape[-2:])
        out = out.scatter_reduce(1, column, src, "amax", include_self=True)
        return torch.cat([p, out], 1)
