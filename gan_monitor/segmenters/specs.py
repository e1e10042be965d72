"""Segmenters named by a short string (the ``--segmenter`` option of ``gan-monitor dissect``).

Accepted forms (see ``SPEC_HELP``):

* ``toyworld``: the toy segmenter shipped with the package;
* ``color`` (or ``colour``): basic colour terms (:class:`gan_monitor.segmenters.color.ColorSegmenter`);
* ``ade20k:PATH_OR_HUB_ID``: a transformers ADE20K-150 model (SegFormer, UperNet,
  Mask2Former...) from a local ``save_pretrained`` folder or a hub id (downloaded into
  the Hugging Face cache on first use; ``HF_HOME`` moves the cache);
* ``hf:PATH_OR_HUB_ID``: any transformers semantic-segmentation model (any label set;
  categories "object");
* ``pkg.module:function``: ``function()`` returns your segmenter;
* any of these followed by ``+parts``: object-part expansion (``tree-t``, ``tree-b``, ...).
"""
from __future__ import annotations

import torch

from gan_monitor.core.checkpoints import CheckpointError, import_object
from gan_monitor.segmenters.base import validate_segmenter
from gan_monitor.segmenters.color import ColorSegmenter
from gan_monitor.segmenters.huggingface import HFSegmenter
from gan_monitor.segmenters.parts import PartSegmenter
from gan_monitor.toyworld.segmenter import load_segmenter

__all__ = ["load_segmenter_spec", "SPEC_HELP"]

SPEC_HELP = ("'toyworld' (the shipped toy segmenter), 'color' (basic colour terms), "
             "'ade20k:PATH_OR_HUB_ID' (transformers ADE20K model, e.g. ade20k:nvidia/segformer-b0-finetuned-ade-512-512), "
             "'hf:PATH_OR_HUB_ID' (any transformers segmentation model), or 'pkg.module:function' returning a "
             "segmenter; append '+parts' to add object parts (tree-t, tree-b, tree-l, tree-r)")

PARTS_SUFFIX = "+parts"


def _load_transformers(source: str, device, require_ade20k: bool):
    if not source:
        raise ValueError("give a model after the prefix, e.g. ade20k:nvidia/segformer-b0-finetuned-ade-512-512 "
                         "or ade20k:/path/to/saved_model.")
    seg = HFSegmenter.from_pretrained(source, device=device)
    if require_ade20k and not seg.is_ade20k:
        raise ValueError(f"{source} does not predict the 150 ADE20K classes (its classes start {seg.concepts[1:4]}); "
                         f"use hf:{source} for other label sets.")
    return seg


def _load_base(spec: str, device):
    if spec == "toyworld":
        return load_segmenter(device)
    if spec in ("color", "colour"):
        return ColorSegmenter().to(device)
    prefix, sep, rest = spec.partition(":")
    if sep and prefix in ("ade20k", "hf"):
        return _load_transformers(rest, device, require_ade20k=prefix == "ade20k")
    if not sep or not prefix or not rest or "/" in prefix or "\\" in prefix:
        raise ValueError(f"unknown segmenter {spec!r}; use one of: {SPEC_HELP}.")
    try:
        factory = import_object(spec, "--segmenter")
    except CheckpointError as err:
        raise ValueError(str(err)) from err
    if not callable(factory):
        raise ValueError(f"{spec} is a {type(factory).__name__}, not a function returning a segmenter.")
    seg = factory()
    try:
        validate_segmenter(seg)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{spec}: {err}") from err
    moved = seg.to(device) if callable(getattr(seg, "to", None)) else None
    return moved if moved is not None else seg


def load_segmenter_spec(spec: str, device: str | torch.device = "cpu"):
    """The segmenter named by ``spec`` (see the module docstring), on ``device``.

    Raises ValueError (unknown or malformed spec, a model that does not fit), ImportError
    (transformers missing for ``ade20k:``/``hf:``) or OSError (model files not found).
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"segmenter spec must be a non-empty string; use one of: {SPEC_HELP}.")
    spec = spec.strip()
    parts = spec.endswith(PARTS_SUFFIX)
    base_spec = spec[: -len(PARTS_SUFFIX)] if parts else spec
    seg = _load_base(base_spec, device)
    if parts:
        seg = PartSegmenter(seg)
    return seg
