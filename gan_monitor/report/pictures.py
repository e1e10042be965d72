"""Pictures and tables of a dissection, drawn with PIL only (no matplotlib).

* :func:`units_per_concept_chart` - bar graph of interpretable units per concept
  (paper Fig. 5/6/19), bars coloured by the concept's category.
* :func:`unit_row` / :func:`top_units_grid` - a unit's top-activating images with
  the unit's thresholded mask outlined, captioned ``"unit 12 tree IoU 0.31"``.
* :func:`units_per_category_bars` - stacked bars of interpretable units per category,
  one bar per layer/checkpoint/model (paper Fig. 6 and 19).
* :func:`interpretable_units_table` - a markdown table of the interpretable units.

Images are returned as ``PIL.Image`` (RGB); :func:`to_chw` turns one into the
``uint8 [3, H, W]`` array that ``SummaryWriter.add_image`` takes.
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

__all__ = [
    "CATEGORY_COLORS",
    "unit_caption",
    "images_to_uint8",
    "mask_outline",
    "unit_row",
    "top_units_grid",
    "units_per_concept_chart",
    "units_per_category_bars",
    "interpretable_units_table",
    "to_chw",
]

# Category -> bar colour. Unknown categories get a grey.
CATEGORY_COLORS: dict[str, tuple[int, int, int]] = {
    "object": (66, 133, 244),
    "part": (52, 168, 83),
    "material": (251, 188, 5),
    "color": (234, 67, 53),
    "texture": (171, 71, 188),
    "scene": (0, 172, 193),
}
_OTHER_COLOR = (150, 150, 150)
_OUTLINE_COLOR = (255, 255, 0)
_BACKGROUND = (255, 255, 255)
_TEXT = (20, 20, 20)


def _font(size: int = 12) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has only the fixed bitmap font
        return ImageFont.load_default()


def _text_width(draw: ImageDraw.ImageDraw, text: str, font) -> int:
    left, _, right, _ = draw.textbbox((0, 0), text, font=font)
    return int(right - left)


def unit_caption(unit: int, concept: str, iou: float, cutoff: float | None = None) -> str:
    """``"unit 12 tree IoU 0.31"``; ``"unit 3 sky IoU 0.021 (below cutoff 0.05)"`` when
    ``iou < cutoff``."""
    if cutoff is not None and float(iou) < float(cutoff):
        shown = math.floor(float(iou) * 1000) / 1000  # never rounds up to the cutoff
        return f"unit {int(unit)} {concept} IoU {shown:.3f} (below cutoff {float(cutoff):g})"
    return f"unit {int(unit)} {concept} IoU {float(iou):.2f}"


def images_to_uint8(images: torch.Tensor) -> np.ndarray:
    """Images ``[N, 3, H, W]`` in [-1, 1] -> ``uint8 [N, H, W, 3]``."""
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"expected images of shape [N, 3, H, W], got {tuple(images.shape)}.")
    x = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round()
    return x.to(torch.uint8).permute(0, 2, 3, 1).numpy()


def mask_outline(masks: torch.Tensor, width: int = 1) -> torch.Tensor:
    """Boundary of boolean masks ``[N, H, W]``: pixels inside a mask with a 4/8-neighbour
    outside it (within ``width`` pixels). The image border is not treated as outside."""
    if masks.dim() != 3:
        raise ValueError(f"expected masks of shape [N, H, W], got {tuple(masks.shape)}.")
    m = masks.bool().float()[:, None]
    k = 2 * int(width) + 1
    padded = F.pad(m, (width, width, width, width), mode="replicate")
    eroded = -F.max_pool2d(-padded, kernel_size=k, stride=1)
    return (m.bool() & ~eroded.bool())[:, 0]


def _overlay(image: np.ndarray, mask: np.ndarray, outline: np.ndarray, dim: float) -> np.ndarray:
    out = image.astype(np.float32)
    out[~mask] *= dim  # darken what the unit does not cover
    out[outline] = _OUTLINE_COLOR
    return out.round().astype(np.uint8)


def unit_row(
    images: torch.Tensor,
    masks: torch.Tensor | None,
    caption: str,
    *,
    scale: int = 2,
    dim: float = 0.5,
    gap: int = 2,
) -> Image.Image:
    """One row: ``images [k, 3, H, W]`` (in [-1, 1]) side by side, each with its
    boolean ``masks [k, H, W]`` outlined and the outside darkened by ``dim``, and
    ``caption`` above (``masks=None``: plain images). ``scale`` enlarges the pictures
    (nearest neighbour)."""
    if masks is None:
        masks = torch.ones(images.shape[0], *images.shape[-2:], dtype=torch.bool)
    if images.shape[0] != masks.shape[0] or tuple(images.shape[-2:]) != tuple(masks.shape[-2:]):
        raise ValueError(
            f"images {tuple(images.shape)} and masks {tuple(masks.shape)} must have the same "
            "number of pictures and the same height and width."
        )
    if scale < 1:
        raise ValueError(f"scale must be a positive integer, got {scale}.")
    pics = images_to_uint8(images)
    masks = masks.detach().cpu().bool()
    # Outline at display resolution so it stays one pixel thin.
    big_masks = masks.repeat_interleave(scale, 1).repeat_interleave(scale, 2)
    outlines = mask_outline(big_masks).numpy()
    big_masks = big_masks.numpy()
    k, h, w = pics.shape[0], pics.shape[1] * scale, pics.shape[2] * scale
    font = _font(12)
    caption_h = 16
    row = Image.new("RGB", (max(1, k * w + (k - 1) * gap), caption_h + h), _BACKGROUND)
    for i in range(k):
        pic = pics[i].repeat(scale, 0).repeat(scale, 1)
        pic = _overlay(pic, big_masks[i], outlines[i], dim)
        row.paste(Image.fromarray(pic), (i * (w + gap), caption_h))
    ImageDraw.Draw(row).text((2, 1), caption, fill=_TEXT, font=font)
    return row


def top_units_grid(rows: Sequence[Image.Image], title: str | None = None, gap: int = 4) -> Image.Image:
    """Stack unit rows (from :func:`unit_row`) vertically under an optional title."""
    font = _font(13)
    title_h = 18 if title else 0
    if not rows:
        img = Image.new("RGB", (320, title_h + 24), _BACKGROUND)
        draw = ImageDraw.Draw(img)
        if title:
            draw.text((4, 2), title, fill=_TEXT, font=font)
        draw.text((4, title_h + 4), "no interpretable units", fill=_TEXT, font=_font(12))
        return img
    width = max(r.width for r in rows)
    height = title_h + sum(r.height for r in rows) + gap * (len(rows) - 1)
    grid = Image.new("RGB", (width, height), _BACKGROUND)
    if title:
        ImageDraw.Draw(grid).text((2, 2), title, fill=_TEXT, font=font)
    y = title_h
    for r in rows:
        grid.paste(r, (0, y))
        y += r.height + gap
    return grid


def units_per_concept_chart(
    units_per_concept: Mapping[str, int],
    concept_categories: Mapping[str, str],
    *,
    title: str = "",
    bar_height: int = 16,
    max_bar: int = 320,
) -> Image.Image:
    """Horizontal bar graph: one bar per concept (in the given order) with its count
    of interpretable units, coloured by the concept's category, plus a legend."""
    counts = [(str(c), int(n)) for c, n in units_per_concept.items() if int(n) > 0]
    font = _font(12)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_w = max([_text_width(probe, c, font) for c, _ in counts] + [40]) + 8
    count_w = 36
    title_h = 20 if title else 0
    cats = list(dict.fromkeys(concept_categories.get(c, "other") for c, _ in counts))
    legend_h = 18 if cats else 0
    body_h = max(1, len(counts)) * (bar_height + 4) + 4
    width = max(label_w + max_bar + count_w, _text_width(probe, title, font) + 8, 200)
    img = Image.new("RGB", (width, title_h + body_h + legend_h), _BACKGROUND)
    draw = ImageDraw.Draw(img)
    if title:
        draw.text((4, 3), title, fill=_TEXT, font=font)
    if not counts:
        draw.text((4, title_h + 4), "no interpretable units", fill=_TEXT, font=font)
        return img
    top = max(n for _, n in counts)
    y = title_h + 4
    for concept, n in counts:
        color = CATEGORY_COLORS.get(concept_categories.get(concept, "other"), _OTHER_COLOR)
        length = max(1, round(max_bar * n / top))
        draw.text((label_w - 4 - _text_width(draw, concept, font), y + 1), concept, fill=_TEXT, font=font)
        draw.rectangle([label_w, y, label_w + length - 1, y + bar_height - 1], fill=color)
        draw.text((label_w + length + 4, y + 1), str(n), fill=_TEXT, font=font)
        y += bar_height + 4
    x = 4
    for cat in cats:
        color = CATEGORY_COLORS.get(cat, _OTHER_COLOR)
        draw.rectangle([x, y + 3, x + 10, y + 13], fill=color)
        draw.text((x + 14, y + 1), cat, fill=_TEXT, font=font)
        x += 14 + _text_width(draw, cat, font) + 12
    return img


def units_per_category_bars(bars: Sequence[tuple[str, Mapping[str, int]]], *, bar_width: int = 360) -> Image.Image:
    """Stacked horizontal bars (paper Fig. 6 and 19): per ``(label, {category: interpretable
    units})`` one bar split by category, the total at its end, and a legend of the categories."""
    categories = list(dict.fromkeys(c for _, counts in bars for c in counts))
    font = _font(12)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_w = max([_text_width(probe, label, font) for label, _ in bars] + [0]) + 10
    totals = [sum(int(n) for n in counts.values()) for _, counts in bars]
    top = max(totals + [1])
    height = 22 * len(bars) + 30
    img = Image.new("RGB", (label_w + bar_width + 50, height), _BACKGROUND)
    draw = ImageDraw.Draw(img)
    for i, ((label, counts), total) in enumerate(zip(bars, totals)):
        y, x = 6 + 22 * i, label_w
        draw.text((label_w - 6 - _text_width(draw, label, font), y + 2), label, fill=_TEXT, font=font)
        for category in categories:
            w = round(bar_width * int(counts.get(category, 0)) / top)
            if w:
                draw.rectangle([x, y, x + w - 1, y + 16], fill=CATEGORY_COLORS.get(category, _OTHER_COLOR))
            x += w
        draw.text((x + 4, y + 2), str(total), fill=_TEXT, font=font)
    x = 6
    for category in categories:
        draw.rectangle([x, height - 18, x + 10, height - 8], fill=CATEGORY_COLORS.get(category, _OTHER_COLOR))
        draw.text((x + 14, height - 20), category, fill=_TEXT, font=font)
        x += 26 + _text_width(draw, category, font)
    return img


def interpretable_units_table(layer_dissection, max_rows: int | None = 50) -> str:
    """Markdown table of a :class:`~gan_monitor.dissection.results.LayerDissection`'s interpretable
    units, best IoU first: unit, concept, category, IoU, threshold."""
    ld = layer_dissection
    units = ld.ranked_units(only_interpretable=True)
    s = ld.summary
    cutoff = ld.settings.get("cutoff")
    head = (
        f"**{ld.layer}**: {s['interpretable_units']} of {s['units']} units interpretable"
        + (f" (IoU >= {cutoff})" if cutoff is not None else "")
        + f", {s['concept_diversity']} concepts, mean IoU {s['mean_iou']:.3f}"
    )
    mode = ld.settings.get("threshold")
    if mode is not None:
        head += f"; threshold mode `{mode}`"
    if not units:
        return head + "\n\nNo interpretable units."
    lines = [head, "", "| unit | concept | category | IoU | threshold |", "|---:|---|---|---:|---:|"]
    labels, cats = ld.labels, ld.label_categories
    shown = units if max_rows is None else units[: int(max_rows)]
    for u in shown:
        lines.append(
            f"| {u} | {labels[u]} | {cats[u]} | {float(ld.unit_iou[u]):.3f} | "
            f"{float(ld.thresholds[u]):.3g} |"
        )
    if len(shown) < len(units):
        lines.append(f"| ... | {len(units) - len(shown)} more | | | |")
    return "\n".join(lines)


def interpretable_units_rows(layer_dissection, max_rows: int | None = 50) -> tuple[list[str], list[list]]:
    """``(columns, rows)`` of a layer's interpretable units, best IoU first (the table
    :func:`interpretable_units_table` prints), for loggers that take tables."""
    ld = layer_dissection
    units = ld.ranked_units(only_interpretable=True)
    shown = units if max_rows is None else units[: int(max_rows)]
    rows = [[int(u), ld.labels[u], ld.label_categories[u], round(float(ld.unit_iou[u]), 4),
             float(ld.thresholds[u])] for u in shown]
    return ["unit", "concept", "category", "iou", "threshold"], rows


def to_chw(image: Image.Image) -> np.ndarray:
    """PIL image -> ``uint8 [3, H, W]`` (what ``SummaryWriter.add_image`` expects)."""
    return np.ascontiguousarray(np.asarray(image.convert("RGB")).transpose(2, 0, 1))
