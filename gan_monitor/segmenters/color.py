"""Colour concepts for any image domain: each pixel named by a basic colour term.

The eleven basic colour terms of English (Berlin & Kay, 1969) - black, blue, brown,
grey, green, orange, pink, purple, red, white, yellow - are the colour concepts of the
network-dissection datasets; they need no training data and apply to faces, scenes,
anything.  Concepts ``["-", "black", "blue", ...]``, all of category ``"color"``.

Mapping (documented, not learned): each term has a few prototype colours (sRGB values
in ``PROTOTYPES``, chosen by hand to cover light, mid and dark shades of the term).
Pixels and prototypes are converted to CIELAB (sRGB with its gamma curve, D65 white),
where Euclidean distance approximates perceived colour difference.  A pixel's distance
to a term is its distance to the term's nearest prototype, ``d_t(x)``:

* ``segment`` names each pixel by the term of its nearest prototype (argmin of ``d_t``);
* ``probabilities`` is ``softmax_t(-d_t(x)^2 / (2 * sigma^2))``, whose argmax is the same
  term; it is continuous in the pixel values, so gradients flow (``sigma`` = 10 Lab
  units by default).

Concept 0 ("-") is never assigned: every pixel has a colour.

Input range: images in [-1, 1] (the protocol's range, default) or, with
``value_range=(0, 1)``, in [0, 1].  Values more than ``tolerance`` outside the declared
range raise a ``ValueError`` (a [0, 255] picture, or [0, 1] images given as [-1, 1] cannot
be told apart in general, but values outside the range can); values within the
tolerance are clamped.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ColorSegmenter", "COLOR_TERMS", "PROTOTYPES", "srgb_to_lab"]

COLOR_TERMS = ("black", "blue", "brown", "grey", "green", "orange", "pink", "purple", "red", "white", "yellow")

#: Prototype colours of each term, sRGB 0-255.
PROTOTYPES: dict[str, tuple[tuple[int, int, int], ...]] = {
    "black": ((0, 0, 0), (28, 28, 28)),
    "blue": ((0, 0, 255), (0, 0, 140), (30, 144, 255), (70, 130, 180), (100, 149, 237), (135, 206, 235),
             (25, 25, 90), (20, 120, 140)),
    "brown": ((139, 69, 19), (160, 82, 45), (101, 67, 33), (150, 110, 70), (190, 150, 100), (70, 45, 25)),
    "grey": ((80, 80, 80), (128, 128, 128), (175, 175, 175), (110, 115, 120)),
    "green": ((0, 255, 0), (0, 160, 0), (0, 100, 0), (120, 200, 80), (70, 130, 70), (40, 70, 40),
              (150, 220, 150), (110, 140, 50)),
    "orange": ((255, 140, 0), (255, 165, 0), (230, 120, 40), (255, 180, 100)),
    "pink": ((255, 192, 203), (255, 105, 180), (255, 20, 147), (230, 140, 160)),
    "purple": ((128, 0, 128), (148, 0, 211), (75, 0, 130), (150, 110, 200), (200, 160, 230), (90, 40, 90),
               (221, 160, 221), (218, 112, 214)),
    "red": ((255, 0, 0), (200, 0, 0), (150, 0, 0), (220, 20, 60), (180, 40, 40)),
    "white": ((255, 255, 255), (228, 228, 228)),
    "yellow": ((255, 255, 0), (255, 215, 0), (240, 230, 80), (255, 245, 150)),
}

_RGB_TO_XYZ = torch.tensor([[0.4124564, 0.3575761, 0.1804375],
                            [0.2126729, 0.7151522, 0.0721750],
                            [0.0193339, 0.1191920, 0.9503041]])
_WHITE_D65 = torch.tensor([0.95047, 1.0, 1.08883])


def srgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """CIELAB (D65) of sRGB values in [0, 1], channels on dim 1 (``[N, 3, ...]``); differentiable."""
    rgb = rgb.clamp(0, 1)
    linear = torch.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055).clamp_min(1e-8) ** 2.4)
    m = _RGB_TO_XYZ.to(rgb)
    xyz = torch.einsum("ij,nj...->ni...", m, linear)
    white = _WHITE_D65.to(rgb).view(1, 3, *([1] * (rgb.dim() - 2)))
    t = xyz / white
    eps, kappa = (6 / 29) ** 3, (6 / 29) ** 2 * 3
    f = torch.where(t > eps, t.clamp_min(eps) ** (1 / 3), t / kappa + 4 / 29)
    fx, fy, fz = f[:, 0], f[:, 1], f[:, 2]
    return torch.stack([116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz)], 1)


class ColorSegmenter(nn.Module):
    """Basic-colour-term segmenter (see the module docstring).

    Args:
        value_range: (-1, 1) (default) or (0, 1): the range of the images given.
        sigma: softness of ``probabilities`` in CIELAB units (smaller: closer to one-hot;
            ``segment`` does not depend on it).
        output_size: None (the images' size) or int / (h, w): images are area-averaged
            to that size first, which also smooths pixel noise.
        tolerance: how far outside ``value_range`` values may go before an error.
        batch_size: images per chunk (memory bound only).

    A red and a blue pixel, in the protocol's range [-1, 1]:

    >>> import torch
    >>> seg = ColorSegmenter()
    >>> image = torch.tensor([[[[1.0, -1.0]], [[-1.0, -1.0]], [[-1.0, 1.0]]]])  # [1, 3, 1, 2]
    >>> labels = seg.segment(image)
    >>> [seg.concepts[i] for i in labels.flatten().tolist()]
    ['red', 'blue']
    >>> seg.probabilities(image).argmax(1).equal(labels.view(1, 1, 2))
    True
    """

    def __init__(self, value_range: tuple[float, float] = (-1.0, 1.0), sigma: float = 10.0,
                 output_size=None, tolerance: float = 0.02, batch_size: int = 8):
        super().__init__()
        lo, hi = (float(v) for v in value_range)
        if (lo, hi) not in ((-1.0, 1.0), (0.0, 1.0)):
            raise ValueError(f"value_range must be (-1, 1) or (0, 1), got {value_range!r}; "
                             "convert [0, 255] images with x / 127.5 - 1.")
        if sigma <= 0:
            raise ValueError(f"sigma must be positive, got {sigma}.")
        self.value_range, self.sigma, self.tolerance = (lo, hi), float(sigma), float(tolerance)
        self.output_size = None if output_size is None else (
            (int(output_size),) * 2 if isinstance(output_size, int) else tuple(int(s) for s in output_size))
        self.batch_size = int(batch_size)
        self.concepts: list[str] = ["-", *COLOR_TERMS]
        self.categories: list[str] = ["-"] + ["color"] * len(COLOR_TERMS)
        rgb, term = [], []
        for t, name in enumerate(COLOR_TERMS):
            for proto in PROTOTYPES[name]:
                rgb.append(proto)
                term.append(t)
        lab = srgb_to_lab(torch.tensor(rgb, dtype=torch.float64).div(255)[..., None, None])[..., 0, 0]
        self.register_buffer("prototypes_lab", lab.float(), persistent=False)
        self.register_buffer("prototype_term", torch.tensor(term), persistent=False)

    def _rgb01(self, images: torch.Tensor) -> torch.Tensor:
        if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 3:
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise ValueError(f"images must be a float tensor [N,3,H,W], got {shape}.")
        if not images.dtype.is_floating_point:
            raise TypeError(f"images must be floating point, got {images.dtype}; "
                            "convert uint8 pictures with x.float() / 127.5 - 1.")
        lo, hi = self.value_range
        if images.numel():
            mn, mx = float(images.detach().min()), float(images.detach().max())
            if mn < lo - self.tolerance or mx > hi + self.tolerance:
                hint = (" They look like [0, 255] pictures: use x / 127.5 - 1." if mx > 2 else
                        " If they are in [-1, 1], use ColorSegmenter(value_range=(-1, 1))." if lo == 0 else "")
                raise ValueError(f"images have values in [{mn:.3g}, {mx:.3g}] but this ColorSegmenter expects "
                                 f"[{lo:g}, {hi:g}] (value_range={self.value_range}).{hint}")
        x = images.float().clamp(lo, hi)
        x = (x + 1) * 0.5 if lo == -1.0 else x
        if self.output_size is not None and tuple(x.shape[-2:]) != self.output_size:
            x = F.interpolate(x, size=self.output_size, mode="area")
        return x

    def _term_distances(self, images: torch.Tensor) -> torch.Tensor:
        """Squared CIELAB distance of each pixel to each term's nearest prototype, ``[N, 11, H', W']``."""
        rgb = self._rgb01(images)
        protos, terms = self.prototypes_lab.to(rgb), self.prototype_term.to(rgb.device)
        out = []
        for start in range(0, rgb.shape[0], max(1, self.batch_size)):
            lab = srgb_to_lab(rgb[start:start + self.batch_size])
            # one prototype at a time keeps the temporaries at [n, H, W]
            d2 = torch.stack([(lab - p.view(1, 3, 1, 1)).square().sum(1) for p in protos], 1)
            out.append(torch.stack([d2[:, terms == t].amin(1) for t in range(len(COLOR_TERMS))], 1))
        return torch.cat(out)

    def scores(self, images: torch.Tensor) -> torch.Tensor:
        """Per-term scores ``[N, 11, H', W']``: ``-d_t^2 / (2 sigma^2)`` (see the module docstring)."""
        return self._term_distances(images) / (-2 * self.sigma ** 2)

    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """``[N, 12, H', W']``: column 0 zero, then a softmax over the 11 terms; differentiable."""
        p = self.scores(images).softmax(1)
        return torch.cat([torch.zeros_like(p[:, :1]), p], 1)

    @torch.no_grad()
    def segment(self, images: torch.Tensor) -> torch.Tensor:
        """Colour term per pixel: long ``[N, H', W']`` with values 1..11."""
        rgb = self._rgb01(images)
        protos, terms = self.prototypes_lab.to(rgb), self.prototype_term.to(rgb.device)
        out = []
        for start in range(0, rgb.shape[0], max(1, self.batch_size)):
            lab = srgb_to_lab(rgb[start:start + self.batch_size])
            best = torch.full_like(lab[:, 0], float("inf"))
            term = torch.zeros(best.shape, dtype=torch.long, device=best.device)
            for p, t in zip(protos, terms.tolist()):  # running minimum: no [n, P, H, W] temporary
                d2 = (lab - p.view(1, 3, 1, 1)).square().sum(1)
                closer = d2 < best
                best = torch.where(closer, d2, best)
                term = term.masked_fill(closer, t)
            out.append(term + 1)
        return torch.cat(out)
