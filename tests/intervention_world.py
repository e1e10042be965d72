"""A hand-built generator whose units cause concepts (helper for the intervention tests).

``CausalGenerator`` maps ``z`` to an 8x8 featuremap (layer ``features``) and renders
the image from it (layers ``render`` then ``upsample``, 32x32):

* units 0-3 cause trees: a pixel is tree where their mean exceeds 1,
* unit 4 alone causes buildings (unit 5 is its unread copy), units 6-7 doors; a door only appears on a building
  (the render multiplies door evidence by building evidence: context),
* units 8-11 are decoys: exact copies of the tree units (highest IoU with trees)
  that nothing downstream reads,
* units 12-19 are noise.

The image channels are soft tree / building / door probabilities in [-1, 1];
``CausalSegmenter`` reads them back (``segment``) and offers differentiable
``probabilities``.
"""
from __future__ import annotations

import torch
from torch import nn

CONCEPTS = ["-", "sky", "tree", "building", "door"]
CATEGORIES = ["-", "material", "object", "object", "part"]
TREE, BUILDING, BUILDING_DECOY, DOOR = [0, 1, 2, 3], [4], [5], [6, 7]
DECOY, NOISE = [8, 9, 10, 11], list(range(12, 20))
N_UNITS, FEAT, N_PARAMS = 20, 8, 8


def scene_masks(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """8x8 tree, building and door masks from the first N_PARAMS latent entries."""
    b = z.shape[0]
    grid = torch.arange(FEAT, dtype=z.dtype, device=z.device) + 0.5
    ys, xs = grid.view(1, FEAT, 1), grid.view(1, 1, FEAT)

    def box(cx, cy, hw, hh, on):
        return (((xs - cx.view(b, 1, 1)).abs() < hw.view(b, 1, 1))
                & ((ys - cy.view(b, 1, 1)).abs() < hh.view(b, 1, 1)) & on.view(b, 1, 1)).float()

    s = torch.sigmoid(z[:, :N_PARAMS])
    building = box(1.5 + 5 * s[:, 0], torch.full_like(s[:, 0], 6.0), 1.0 + s[:, 1], torch.full_like(s[:, 0], 2.1),
                   z[:, 2] > -0.8)
    tree = box(1.5 + 5 * s[:, 3], 2.0 + 2 * s[:, 4], 1.0 + 0.8 * s[:, 5], torch.full_like(s[:, 0], 1.6),
               z[:, 6] > -0.8) * (1 - building)
    door = building * box(1.5 + 5 * s[:, 0], torch.full_like(s[:, 0], 7.0), torch.full_like(s[:, 0], 0.6),
                          torch.full_like(s[:, 0], 1.0), z[:, 7] > -1.5)
    return tree, building, door


class Features(nn.Module):
    def forward(self, z: torch.Tensor) -> torch.Tensor:
        b = z.shape[0]
        tree, building, door = scene_masks(z)
        noise = z[:, N_PARAMS:].view(b, len(NOISE), FEAT, FEAT)
        units = [2.0 * tree] * 4 + [2.0 * building] * 2 + [2.0 * door] * 2 + [2.0 * tree] * 4
        return torch.cat([torch.stack(units, 1), noise.abs()], 1)


class Render(nn.Module):
    def forward(self, r: torch.Tensor) -> torch.Tensor:
        tree = torch.sigmoid(8 * (r[:, TREE].mean(1) - 1))
        building = torch.sigmoid(8 * (r[:, BUILDING].mean(1) - 1))
        door = torch.sigmoid(8 * (r[:, DOOR].mean(1) - 1)) * building
        return torch.stack([tree, building, door], 1) * 2 - 1


class CausalGenerator(nn.Module):
    latent_dim = N_PARAMS + len(NOISE) * FEAT * FEAT

    def __init__(self):
        super().__init__()
        self.features = Features()
        self.render = Render()
        self.upsample = nn.Upsample(scale_factor=4, mode="nearest")

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.upsample(self.render(self.features(z)))


class CausalSegmenter:
    concepts = CONCEPTS
    categories = CATEGORIES

    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        tree, building, door = ((images + 1) / 2).clamp(0, 1).unbind(1)
        door = torch.minimum(door, building)
        outside = 1 - building
        probs = [torch.zeros_like(tree), (1 - tree) * outside, tree * outside, building - door, door]
        return torch.stack(probs, 1)

    def segment(self, images: torch.Tensor) -> torch.Tensor:
        return self.probabilities(images).argmax(1)


class SegmentOnly:
    """A segmenter without ``probabilities`` (for error tests)."""

    concepts = CONCEPTS
    categories = CATEGORIES

    def segment(self, images: torch.Tensor) -> torch.Tensor:
        return CausalSegmenter().segment(images)
