"""A hand-built world for testing dissection (helper for the tests, not a test file).

``PlantedGenerator`` maps a latent ``z`` to a 32x32 scene with exact labels and to
an 8x8 featuremap (layer ``features``) whose units are known:

* planted units copy one concept's mask (average-pooled to 8x8) plus noise,
* noise units are pure noise, a dead unit is always 0, sparse units are
  ``relu(noise - 2.5)`` (mostly exactly 0: ties),
* decoys: masks of a "phantom" scene made from other latent entries (same
  statistics as planted units, no agreement with the image), and the
  complement of the sky (anti-correlated with the largest concept).

Everything is elementwise in z, so outputs do not depend on batching. The image
carries its label maps in its channels (material, object, part); ``PlantedSegmenter``
reads them back, as one label map (part over object over material) or as three.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

CONCEPTS = ["-", "sky", "sun", "tree", "house", "rock", "window"]
CATEGORIES = ["-", "material", "object", "object", "object", "object", "part"]
OBJECTS = [2, 3, 4, 5]  # drawn in this order
SIZE, FEAT = 32, 8
N_PARAMS = 40


def _layout(counts: dict[str, int]) -> list[tuple[str, int]]:
    units = []
    for kind, k in counts.items():
        units += [(kind, i) for i in range(k)]
    return units


class Scene(nn.Module):
    """Label maps ``[B, 3, 32, 32]`` (material, object, part) from scene parameters."""

    def forward(self, p: torch.Tensor) -> torch.Tensor:
        b = p.shape[0]
        grid = torch.arange(SIZE, dtype=p.dtype, device=p.device) + 0.5
        ys, xs = grid.view(1, SIZE, 1), grid.view(1, 1, SIZE)
        horizon = (10 + 6 * torch.sigmoid(p[:, 0])).view(b, 1, 1)
        material = torch.where(ys < horizon, 1, 0).expand(b, SIZE, SIZE)
        obj = torch.zeros(b, SIZE, SIZE, dtype=torch.long, device=p.device)
        part = torch.zeros_like(obj)
        for j, concept in enumerate(OBJECTS):
            q = p[:, 1 + 4 * j: 5 + 4 * j]
            cx = (4 + 24 * torch.sigmoid(q[:, 1])).view(b, 1, 1)
            cy = (4 + 24 * torch.sigmoid(q[:, 2])).view(b, 1, 1)
            half = (2 + 2 * torch.sigmoid(q[:, 3])).view(b, 1, 1)
            inside = ((xs - cx).abs() < half) & ((ys - cy).abs() < half) & (q[:, 0] > -0.5).view(b, 1, 1)
            obj = torch.where(inside, concept, obj)
            if concept == 4:  # a window in the upper left quarter of each house
                wx, wy = cx - half / 2, cy - half / 2
                win = ((xs - wx).abs() < 1.5) & ((ys - wy).abs() < 1.5) & inside
                part = torch.where(win, 6, part)
        return torch.stack([material, obj, part], 1)


def concept_masks(maps: torch.Tensor) -> torch.Tensor:
    """``[B, C, 32, 32]`` float masks (union over the three maps)."""
    return torch.stack([(maps == c).any(1) for c in range(len(CONCEPTS))], 1).float()


class Features(nn.Module):
    def __init__(self, units: list[tuple[str, int]], gain: float, noise: float):
        super().__init__()
        self.units, self.gain, self.noise = units, gain, noise
        self.scene = Scene()

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        b = z.shape[0]
        noise = z[:, N_PARAMS:].view(b, len(self.units), FEAT, FEAT)
        pooled = F.avg_pool2d(concept_masks(self.scene(z[:, :N_PARAMS])), SIZE // FEAT)
        phantom = F.avg_pool2d(concept_masks(self.scene(z[:, :N_PARAMS].flip(1))), SIZE // FEAT)
        out = []
        for u, (kind, i) in enumerate(self.units):
            eps = noise[:, u]
            if kind == "planted":
                c = 2 + i % 5  # sun, tree, house, rock, window in turn
                gain = self.gain * (3.0 if c == 6 else 1.0)  # small windows need a stronger unit
                out.append(gain * pooled[:, c] + self.noise * eps)
            elif kind == "sky":
                out.append(self.gain * pooled[:, 1] + self.noise * eps)
            elif kind == "phantom":
                out.append(self.gain * phantom[:, 2 + i % 4] + self.noise * eps)
            elif kind == "antisky":
                out.append(self.gain * (1 - pooled[:, 1]) + self.noise * eps)
            elif kind == "sparse":
                out.append(torch.relu(eps - 2.5))
            elif kind == "dead":
                out.append(torch.zeros_like(eps))
            else:
                out.append(eps)
        return torch.stack(out, 1)


class PlantedGenerator(nn.Module):
    DEFAULT = {"planted": 40, "sky": 4, "noise": 100, "phantom": 12, "antisky": 4, "sparse": 4, "dead": 1}

    def __init__(self, counts: dict[str, int] | None = None, gain: float = 1.0, noise: float = 0.35,
                 nan_units: tuple[int, ...] = ()):
        super().__init__()
        self.units = _layout(counts or self.DEFAULT)
        self.latent_dim = N_PARAMS + len(self.units) * FEAT * FEAT
        self.features = Features(self.units, gain, noise)
        self.flat = nn.Flatten()  # a non-spatial layer, for error tests
        self.scene = Scene()
        self.nan_units = list(nan_units)

    def kinds(self) -> list[str]:
        return [kind for kind, _ in self.units]

    def planted_concept(self, u: int) -> int:
        kind, i = self.units[u]
        return {"planted": 2 + i % 5, "sky": 1}.get(kind, 0)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        feats = self.features(z)
        if self.nan_units:
            feats[:, self.nan_units] = float("nan")
        self.flat(feats)
        maps = self.scene(z[:, :N_PARAMS])
        return maps.float() / 5.0 - 1.0  # labels 0..6 in [-1, 0.2]


class PlantedSegmenter:
    concepts = CONCEPTS
    categories = CATEGORIES

    def __init__(self, multilabel: bool = False):
        self.multilabel = multilabel

    def segment(self, images: torch.Tensor) -> torch.Tensor:
        maps = torch.round((images + 1.0) * 5.0).long()
        if self.multilabel:
            return maps
        single = torch.where(maps[:, 1] > 0, maps[:, 1], maps[:, 0])
        return torch.where(maps[:, 2] > 0, maps[:, 2], single)
