"""What travels between the page and the server: request bodies checked field by field
(every problem is a ValueError whose message names the field and what it accepts) and
images as PNG data URLs.

Edit request (``POST /api/edit``)::

    {"sample": 3,
     "strokes": [{"concept": "tree", "mode": "draw", "units": 20,
                  "mask": [[0, 0, 1, ...], ...]}, ...]}   # H rows of W values in [0, 1]

New samples (``POST /api/samples``): ``{"count": 2}``.
"""
from __future__ import annotations

import base64
import colorsys
import io
from typing import Any, Mapping

import numpy as np
import torch
from PIL import Image

from gan_monitor.paint.session import MODES, PaintSession, Stroke
from gan_monitor.toyworld import CONCEPT_NAMES
from gan_monitor.toyworld.palette import CONCEPT_COLOURS

__all__ = ["MAX_NEW_SAMPLES", "parse_edit", "parse_new_samples", "image_url", "overlay_url",
           "concept_colours", "sample_json", "max_body_bytes"]

MAX_NEW_SAMPLES = 8
_EDIT_FIELDS = {"sample", "strokes"}
_STROKE_FIELDS = {"concept", "mode", "mask", "units"}


def max_body_bytes(session: PaintSession) -> int:
    """Largest edit body accepted: every stroke's mask written with up to 5 characters per value."""
    h, w = session.image_size
    return session.max_strokes * (h * w * 5 + 4 * h + 256) + 4096


def _object(body: Any, what: str, fields: set[str]) -> Mapping[str, Any]:
    if not isinstance(body, dict):
        raise ValueError(f"{what} must be a JSON object, got {type(body).__name__}.")
    unknown = sorted(set(body) - fields)
    if unknown:
        raise ValueError(f"{what} has unknown field(s) {', '.join(map(repr, unknown))}; "
                         f"allowed: {', '.join(sorted(fields))}.")
    return body


def _int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, got {value!r}.")
    return value


def _mask(value: Any, name: str, size: tuple[int, int]) -> torch.Tensor:
    h, w = size
    shape_msg = f"{name} must be a list of {h} rows of {w} numbers in [0, 1] (the image's size)"
    if not isinstance(value, list) or len(value) != h or not all(isinstance(r, list) and len(r) == w for r in value):
        rows = len(value) if isinstance(value, list) else type(value).__name__
        raise ValueError(f"{shape_msg}; got {rows} row(s)" + (
            f" of length(s) {sorted({len(r) if isinstance(r, list) else -1 for r in value})}"
            if isinstance(value, list) else "") + ".")
    try:
        array = np.asarray(value, dtype=np.float32)
    except (TypeError, ValueError):
        raise ValueError(f"{shape_msg}; found a value that is not a number.") from None
    if array.shape != (h, w):
        raise ValueError(f"{shape_msg}; got an array of shape {array.shape}.")
    if not np.isfinite(array).all() or array.min() < 0 or array.max() > 1:
        bad = array[~np.isfinite(array) | (array < 0) | (array > 1)]
        raise ValueError(f"{name}: brush values must lie in [0, 1], found {float(bad[0])!r}.")
    return torch.from_numpy(array)


def parse_edit(body: Any, session: PaintSession) -> tuple[int, list[Stroke]]:
    """An edit request body -> (sample id, strokes), every stroke checked against the session."""
    body = _object(body, "the edit request", _EDIT_FIELDS)
    if "sample" not in body or "strokes" not in body:
        raise ValueError("the edit request needs 'sample' (a sample id) and 'strokes' (a list).")
    sample_id = _int(body["sample"], "sample")
    session.sample(sample_id)  # LookupError (404) when not held
    raw = body["strokes"]
    if not isinstance(raw, list):
        raise ValueError(f"strokes must be a list, got {type(raw).__name__}.")
    if len(raw) > session.max_strokes:
        raise ValueError(f"at most {session.max_strokes} strokes per edit, got {len(raw)}; press reset.")
    strokes = []
    for i, item in enumerate(raw):
        item = _object(item, f"stroke {i}", _STROKE_FIELDS)
        missing = [k for k in ("concept", "mode", "mask") if k not in item]
        if missing:
            raise ValueError(f"stroke {i} lacks {', '.join(missing)}.")
        concept, mode = item["concept"], item["mode"]
        if not isinstance(concept, str):
            raise ValueError(f"stroke {i}: concept must be a concept name, got {concept!r}.")
        if mode not in MODES:
            raise ValueError(f"stroke {i}: mode must be 'draw' or 'remove', got {mode!r}.")
        units = item.get("units")
        if units is not None:
            units = _int(units, f"stroke {i}: units")
        if concept not in session.concepts:  # before the (larger) mask
            session.check_stroke(Stroke(concept, mode, torch.zeros(0)), i)
        stroke = Stroke(concept, mode, _mask(item["mask"], f"stroke {i}: mask", session.image_size), units)
        session.check_stroke(stroke, i)
        strokes.append(stroke)
    return sample_id, strokes


def parse_new_samples(body: Any) -> int:
    body = _object(body, "the request for new samples", {"count"})
    count = _int(body.get("count", 1), "count")
    if not 1 <= count <= MAX_NEW_SAMPLES:
        raise ValueError(f"count must be from 1 to {MAX_NEW_SAMPLES}, got {count}.")
    return count


# ---- pictures -------------------------------------------------------------
def _png_url(array: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", compress_level=1)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def image_url(image: torch.Tensor) -> str:
    """Image ``[3, H, W]`` in [-1, 1] -> PNG data URL."""
    x = ((image.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return _png_url(x.permute(1, 2, 0).numpy())


def concept_colours(names: list[str]) -> list[tuple[int, int, int]]:
    """One RGB colour per concept: the toy world's own colours for its concepts, evenly
    spread hues otherwise (index 0, no concept, is black)."""
    own = dict(zip(CONCEPT_NAMES, CONCEPT_COLOURS)) if names[:1] == ["-"] else {}
    colours = [(0, 0, 0)]
    for i, name in enumerate(names[1:]):
        if name in own:
            colours.append(own[name])
            continue
        r, g, b = colorsys.hsv_to_rgb((i * 0.618034) % 1.0, 0.75, 0.95)
        colours.append((int(r * 255), int(g * 255), int(b * 255)))
    return colours


def overlay_url(labels: torch.Tensor, colours: list[tuple[int, int, int]]) -> str:
    """Segmentation ``[D, H, W]`` (first map shown) -> RGBA PNG data URL, transparent where
    no concept was found."""
    table = np.array([(*c, 255) for c in colours], dtype=np.uint8)
    table[0, 3] = 0
    return _png_url(table[labels[0].cpu().numpy()])


def sample_json(session: PaintSession, sample_id: int, colours) -> dict[str, Any]:
    s = session.sample(sample_id)
    return {"id": s.id, "seed": s.seed, "image": image_url(s.image), "segmentation": overlay_url(s.labels, colours)}
