"""Display colours for the toy-world concepts and a PNG grid of images with their
true and predicted label maps (for eyeballing scenes and the segmenter)."""
from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image, ImageDraw

from . import CONCEPT_NAMES

__all__ = ["CONCEPT_COLOURS", "colorize", "save_label_grid"]

# One RGB colour per concept, index-aligned with CONCEPT_NAMES.
CONCEPT_COLOURS: list[tuple[int, int, int]] = [
    (0, 0, 0),  # -
    (120, 170, 240),  # sky
    (250, 250, 250),  # cloud
    (130, 105, 150),  # mountain
    (70, 170, 60),  # grass
    (130, 130, 130),  # road
    (20, 90, 30),  # tree
    (205, 125, 60),  # building
    (230, 20, 20),  # door
    (255, 230, 0),  # window
    (240, 0, 240),  # dome
]
assert len(CONCEPT_COLOURS) == len(CONCEPT_NAMES)


def colorize(labels: torch.Tensor) -> torch.Tensor:
    """Label maps ``[..., H, W]`` (int) -> uint8 RGB ``[..., H, W, 3]``."""
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise TypeError(f"labels must be integer concept indices, got dtype {labels.dtype}.")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= len(CONCEPT_COLOURS)):
        raise ValueError(
            f"labels must lie in 0..{len(CONCEPT_COLOURS) - 1} (toy-world concepts), "
            f"got range [{int(labels.min())}, {int(labels.max())}]."
        )
    table = torch.tensor(CONCEPT_COLOURS, dtype=torch.uint8)
    return table[labels.long().cpu()]


def _to_uint8(images: torch.Tensor) -> torch.Tensor:
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"images must have shape [N,3,H,W] in [-1,1], got {tuple(images.shape)}.")
    x = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1)


def save_label_grid(
    path: str | Path,
    images: torch.Tensor,
    labels: torch.Tensor | None = None,
    predicted: torch.Tensor | None = None,
    scale: int = 2,
    legend: bool = True,
) -> Path:
    """Write a PNG: one column per image; rows = images, true labels, predicted labels
    (rows for missing maps are left out), then an optional colour legend."""
    rows = [_to_uint8(images)]
    n, h, w = rows[0].shape[:3]
    for maps in (labels, predicted):
        if maps is not None:
            if tuple(maps.shape) != (n, h, w):
                raise ValueError(f"label maps must have shape {(n, h, w)} to match the images, got {tuple(maps.shape)}.")
            rows.append(colorize(maps))
    grid = torch.cat([torch.cat(list(r), dim=1) for r in rows], dim=0).numpy()  # [rows*H, N*W, 3]
    img = Image.fromarray(grid).resize((grid.shape[1] * scale, grid.shape[0] * scale), Image.NEAREST)
    if legend:
        sw, lh = 12, 14
        per_row = max(1, img.width // 90)
        n_rows = -(-(len(CONCEPT_NAMES) - 1) // per_row)
        canvas = Image.new("RGB", (img.width, img.height + n_rows * lh + 4), (255, 255, 255))
        canvas.paste(img, (0, 0))
        draw = ImageDraw.Draw(canvas)
        for i, name in enumerate(CONCEPT_NAMES[1:]):
            x, y = (i % per_row) * 90 + 2, img.height + 2 + (i // per_row) * lh
            draw.rectangle([x, y, x + sw - 2, y + sw - 2], fill=CONCEPT_COLOURS[i + 1], outline=(0, 0, 0))
            draw.text((x + sw + 2, y), name, fill=(0, 0, 0))
        img = canvas
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path
