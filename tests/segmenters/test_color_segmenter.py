"""Colour-term segmenter: named reference colours (CSS/X11 values, written here, not taken
from the implementation's prototypes) map to the right basic term, CIELAB against
published values, soft probabilities with gradients, and the [-1,1] / [0,1] contract."""
from __future__ import annotations

import doctest

import pytest
import torch

import gan_monitor.segmenters.color as color
from gan_monitor.segmenters.color import COLOR_TERMS, PROTOTYPES, ColorSegmenter, srgb_to_lab

# CSS colour keywords whose basic colour term is not in doubt
REFERENCE = {
    "black": [(0, 0, 0), (20, 20, 25)],
    "white": [(255, 255, 255), (245, 245, 245), (250, 250, 240)],
    "grey": [(128, 128, 128), (105, 105, 105), (169, 169, 169), (192, 192, 192), (112, 128, 144)],
    "red": [(255, 0, 0), (139, 0, 0), (220, 20, 60), (178, 34, 34), (205, 30, 30)],
    "orange": [(255, 165, 0), (255, 140, 0), (255, 127, 80), (250, 150, 50)],
    "yellow": [(255, 255, 0), (255, 215, 0), (240, 230, 140), (255, 255, 102)],
    "green": [(0, 255, 0), (0, 128, 0), (34, 139, 34), (0, 100, 0), (46, 139, 87), (107, 142, 35), (144, 238, 144)],
    "blue": [(0, 0, 255), (0, 0, 128), (65, 105, 225), (30, 144, 255), (135, 206, 235), (70, 130, 180)],
    "purple": [(128, 0, 128), (148, 0, 211), (75, 0, 130), (102, 51, 153), (147, 112, 219), (238, 130, 238)],
    "pink": [(255, 192, 203), (255, 105, 180), (255, 20, 147), (255, 182, 193), (250, 128, 114)],
    "brown": [(139, 69, 19), (160, 82, 45), (210, 180, 140), (101, 67, 33), (92, 64, 51)],
}

# a second set, written down after the prototypes were fixed and never used to tune them
HELD_OUT = {
    "purple": [(186, 85, 211), (139, 0, 139)],
    "pink": [(219, 112, 147)],
    "blue": [(25, 25, 112), (0, 0, 205), (0, 191, 255)],
    "green": [(85, 107, 47), (124, 252, 0), (0, 255, 127), (60, 179, 113), (127, 255, 0), (152, 251, 152)],
    "brown": [(222, 184, 135)],
    "grey": [(119, 136, 153)],
    "white": [(255, 255, 240), (248, 248, 255), (255, 250, 240)],
    "red": [(128, 0, 0)],
    "orange": [(238, 118, 0)],
}


def _patches(colors, size=4):
    """One ``size x size`` flat patch per colour, in [0, 1], as a batch ``[K, 3, size, size]``."""
    rgb = torch.tensor(colors, dtype=torch.float32) / 255
    return rgb[:, :, None, None].expand(-1, -1, size, size).contiguous()


@pytest.mark.parametrize("reference", [REFERENCE, HELD_OUT], ids=["reference", "held_out"])
def test_reference_colours_get_their_basic_term(reference):
    seg = ColorSegmenter()
    assert seg.concepts == ["-", *COLOR_TERMS] and seg.categories == ["-"] + ["color"] * 11
    names, colors = zip(*[(term, c) for term, cs in reference.items() for c in cs])
    labels = seg.segment(_patches(colors) * 2 - 1)
    assert labels.shape == (len(colors), 4, 4) and labels.dtype == torch.long
    assert (labels == labels[:, :1, :1]).all()  # flat patches: one term per patch
    got = [seg.concepts[int(v)] for v in labels[:, 0, 0]]
    wrong = [(n, c, g) for n, c, g in zip(names, colors, got) if n != g]
    assert not wrong, wrong


def test_cielab_matches_published_values():
    rgb = torch.tensor([[1.0, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 1], [0, 0, 0], [0.5, 0.5, 0.5]])
    lab = srgb_to_lab(rgb[..., None, None])[..., 0, 0]
    expected = torch.tensor([[53.24, 80.09, 67.20], [87.73, -86.18, 83.18], [32.30, 79.19, -107.86],
                             [100.0, 0, 0], [0, 0, 0], [53.39, 0, 0]])
    assert torch.allclose(lab, expected, atol=0.02)


def test_segment_is_the_nearest_prototype():
    """Brute force: each pixel gets the term of its nearest prototype in CIELAB."""

    seg = ColorSegmenter(value_range=(0, 1))
    x = torch.rand(2, 3, 6, 7, dtype=torch.float64).float()
    labels = seg.segment(x)
    lab = srgb_to_lab(x.double())
    protos = [(t, srgb_to_lab(torch.tensor(p, dtype=torch.float64).div(255).view(1, 3, 1, 1))[0, :, 0, 0])
              for t, ps in PROTOTYPES.items() for p in ps]
    for n in range(2):
        for i in range(6):
            for j in range(7):
                nearest = min(protos, key=lambda tp: float((lab[n, :, i, j] - tp[1]).norm()))[0]
                assert seg.concepts[labels[n, i, j]] == nearest


def test_probabilities_soft_and_differentiable():
    seg = ColorSegmenter()
    x = (torch.rand(2, 3, 8, 8) * 2 - 1).requires_grad_(True)
    p = seg.probabilities(x)
    assert p.shape == (2, 12, 8, 8) and torch.allclose(p.sum(1), torch.ones(()), atol=1e-5)
    assert (p[:, 0] == 0).all() and torch.equal(p.argmax(1), seg.segment(x))
    p[:, COLOR_TERMS.index("green") + 1].sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    # between red and orange prototypes the probabilities are shared, not one-hot
    mid = _patches([(255, 90, 0)], 1) * 2 - 1
    q = ColorSegmenter(sigma=20).probabilities(mid)[0, :, 0, 0]
    red, orange = q[COLOR_TERMS.index("red") + 1], q[COLOR_TERMS.index("orange") + 1]
    assert 0.05 < red < 0.95 and 0.05 < orange < 0.95


def test_value_ranges():
    colors = [(255, 0, 0), (0, 0, 255), (255, 255, 255), (0, 0, 0)]
    unit = _patches(colors)
    by_default = ColorSegmenter().segment(unit * 2 - 1)
    assert torch.equal(ColorSegmenter(value_range=(0, 1)).segment(unit), by_default)
    with pytest.raises(ValueError, match=r"\[0, 255\] pictures"):
        ColorSegmenter().segment(unit * 255)
    with pytest.raises(ValueError, match="value_range=\\(-1, 1\\)"):
        ColorSegmenter(value_range=(0, 1)).segment(unit * 2 - 1)
    with pytest.raises(ValueError, match="expects"):
        ColorSegmenter().segment(unit * 2 - 1.5)  # clearly below -1
    ColorSegmenter().segment((unit * 2 - 1) * 1.01)  # a hair outside: clamped, no error
    with pytest.raises(ValueError, match="value_range must be"):
        ColorSegmenter(value_range=(0, 255))
    with pytest.raises(TypeError, match="floating point"):
        ColorSegmenter().segment((unit * 255).to(torch.uint8))


def test_output_size_averages_areas():
    # a 4x4 image of 2x2 blocks: red, green / blue, white; at 2x2 each block becomes one pixel
    img = torch.zeros(1, 3, 4, 4)
    blocks = {(0, 0): (1, 0, 0), (0, 1): (0, 0.6, 0), (1, 0): (0, 0, 1), (1, 1): (1, 1, 1)}
    for (bi, bj), rgb in blocks.items():
        img[0, :, 2 * bi:2 * bi + 2, 2 * bj:2 * bj + 2] = torch.tensor(rgb).view(3, 1, 1)
    labels = ColorSegmenter(value_range=(0, 1), output_size=2).segment(img)
    names = [[ColorSegmenter().concepts[v] for v in row] for row in labels[0].tolist()]
    assert names == [["red", "green"], ["blue", "white"]]


def test_docstring_example_runs():
    result = doctest.testmod(color)
    assert result.attempted >= 4 and result.failed == 0
