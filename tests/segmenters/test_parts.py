"""Object-part expansion: halves of each connected component's bounding box, computed by
hand for a synthetic mask; connected components against a breadth-first search; the
multi-label stack the dissection consumes; probabilities; and errors."""
from __future__ import annotations

import pytest
import torch

from gan_monitor.segmenters.base import validate_segmentation
from gan_monitor.segmenters.parts import PartSegmenter, connected_components

SKY, TREE, BUILDING = 1, 2, 3


class _FixedSegmenter:
    """Returns the same label maps for every image; probabilities are a smooth function of the images."""

    concepts = ["-", "sky", "tree", "building"]
    categories = ["-", "stuff", "object", "object"]

    def __init__(self, maps: torch.Tensor):
        self.maps = maps  # [H, W] or [D, H, W]

    def segment(self, images):
        return self.maps.expand(images.shape[0], *self.maps.shape).clone()

    def probabilities(self, images):
        weights = torch.arange(4, dtype=images.dtype).view(1, 4, 1, 1)
        return torch.softmax(images.mean(1, keepdim=True) * weights, 1)


def _mask() -> torch.Tensor:
    m = torch.full((8, 10), SKY)
    m[1:4, 1:5] = TREE  # component A: rows 1-3, cols 1-4
    m[1:4, 5:7] = BUILDING  # touches A, but another class: its own component
    m[5:8, 7] = TREE  # component B, an L: rows 5-7, cols 7-9
    m[7, 7:10] = TREE
    return m


def _cells(rows, cols):
    return {(r, c) for r in rows for c in cols}


def test_two_components_get_the_right_halves():
    seg = PartSegmenter(_FixedSegmenter(_mask()))
    assert seg.split_classes == ["tree", "building"]
    assert seg.concepts[4:] == ["tree-t", "tree-b", "tree-l", "tree-r",
                                "building-t", "building-b", "building-l", "building-r"]
    assert seg.categories[4:] == ["part"] * 8
    out = seg.segment(torch.zeros(2, 3, 8, 10))
    assert out.shape == (2, 3, 8, 10) and torch.equal(out[:, 0], _mask().expand(2, 8, 10))
    vertical, horizontal = out[0, 1], out[0, 2]

    def where(map_, name):
        return {tuple(p) for p in (map_ == seg.concepts.index(name)).nonzero().tolist()}

    # by hand. A: box rows 1-3 (height 3 -> top rows 1,2), cols 1-4 (width 4 -> left cols 1,2).
    # B: box rows 5-7, cols 7-9 (odd sizes: the middle row/column goes to top/left).
    b_pixels = {(5, 7), (6, 7), (7, 7), (7, 8), (7, 9)}
    assert where(vertical, "tree-t") == _cells([1, 2], range(1, 5)) | {(5, 7), (6, 7)}
    assert where(vertical, "tree-b") == _cells([3], range(1, 5)) | {(7, 7), (7, 8), (7, 9)}
    assert where(horizontal, "tree-l") == _cells(range(1, 4), [1, 2]) | (b_pixels - {(7, 9)})
    assert where(horizontal, "tree-r") == _cells(range(1, 4), [3, 4]) | {(7, 9)}
    assert where(vertical, "building-t") == _cells([1, 2], [5, 6])
    assert where(vertical, "building-b") == _cells([3], [5, 6])
    assert where(horizontal, "building-l") == _cells(range(1, 4), [5])
    assert where(horizontal, "building-r") == _cells(range(1, 4), [6])
    assert ((vertical > 0) == (_mask() != SKY)).all() and ((horizontal > 0) == (_mask() != SKY)).all()
    validate_segmentation(out, 2, len(seg.concepts))  # the stack the dissection accepts


def _bfs_components(labels: torch.Tensor, connectivity: int) -> torch.Tensor:
    n, h, w = labels.shape
    steps = [(0, 1), (1, 0), (0, -1), (-1, 0)] + ([(1, 1), (1, -1), (-1, 1), (-1, -1)] if connectivity == 8 else [])
    out = torch.full_like(labels, -1)
    for b in range(n):
        for y in range(h):
            for x in range(w):
                if labels[b, y, x] == 0 or out[b, y, x] >= 0:
                    continue
                ident, queue = b * h * w + y * w + x, [(y, x)]
                out[b, y, x] = ident
                while queue:
                    cy, cx = queue.pop()
                    for dy, dx in steps:
                        yy, xx = cy + dy, cx + dx
                        if 0 <= yy < h and 0 <= xx < w and out[b, yy, xx] < 0 and labels[b, yy, xx] == labels[b, cy, cx]:
                            out[b, yy, xx] = ident
                            queue.append((yy, xx))
    return out


@pytest.mark.parametrize("connectivity", [4, 8])
def test_connected_components_match_breadth_first_search(connectivity):
    labels = torch.randint(0, 4, (3, 17, 23)) * (torch.rand(3, 17, 23) > 0.35)
    assert torch.equal(connected_components(labels, connectivity), _bfs_components(labels, connectivity))
    snake = torch.zeros(1, 31, 31, dtype=torch.long)  # one long winding component
    snake[0, ::2] = 1
    snake[0, 1::4, -1] = 1
    snake[0, 3::4, 0] = 1
    comp = connected_components(snake, connectivity)
    assert comp[snake > 0].unique().tolist() == [0]


def test_multi_label_base_and_probabilities():
    objects = _mask()
    other = torch.zeros(8, 10, dtype=torch.long)
    other[0:2, 0:10] = TREE  # a second map: a tree band overlapping other labels
    seg = PartSegmenter(_FixedSegmenter(torch.stack([objects, other])), classes=["tree"])
    assert seg.concepts[4:] == ["tree-t", "tree-b", "tree-l", "tree-r"]
    out = seg.segment(torch.zeros(1, 3, 8, 10))
    assert out.shape == (1, 6, 8, 10)  # 2 base maps + 2 part maps for each
    band_v, band_h = out[0, 4], out[0, 5]
    assert (band_v[0] == seg.concepts.index("tree-t")).all() and (band_v[1] == seg.concepts.index("tree-b")).all()
    assert (band_h[:2, :5] == seg.concepts.index("tree-l")).all() and (band_h[:2, 5:] == seg.concepts.index("tree-r")).all()
    assert (out[0, 2:4][:, objects == BUILDING] == 0).all()  # building not split here

    images = torch.randn(1, 3, 8, 10, requires_grad=True)
    p = seg.probabilities(images)
    base = _FixedSegmenter(objects).probabilities(images)
    assert p.shape == (1, 8, 8, 10) and torch.allclose(p[:, :4], base)
    for k, name in enumerate(["tree-t", "tree-b", "tree-l", "tree-r"]):
        inside = (out[0, 2:] == seg.concepts.index(name)).any(0)
        assert torch.allclose(p[0, 4 + k], base[0, TREE] * inside)
    p[:, 4].sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0


def test_errors():
    base = _FixedSegmenter(_mask())
    with pytest.raises(ValueError, match="no concept to split"):
        PartSegmenter(base, split_categories=("material",))
    with pytest.raises(ValueError, match="cannot split"):
        PartSegmenter(base, classes=["zebra"])
    with pytest.raises(ValueError, match="connectivity"):
        PartSegmenter(base, connectivity=6)

    class NoProbabilities:
        concepts, categories = base.concepts, base.categories
        segment = base.segment

    with pytest.raises(TypeError, match="no probabilities"):
        PartSegmenter(NoProbabilities()).probabilities(torch.zeros(1, 3, 8, 10))
