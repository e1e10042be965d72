"""Hugging Face ``transformers`` semantic-segmentation models as gan_monitor segmenters.

:class:`HFSegmenter` wraps a model such as SegFormer, UperNet (any model loaded by
``AutoModelForSemanticSegmentation``, whose output has ``logits [N, K, h, w]``) or
Mask2Former / MaskFormer (``AutoModelForUniversalSegmentation``: per-query class and
mask logits) and follows the :class:`gan_monitor.segmenters.base.Segmenter` protocol::

    seg = HFSegmenter.from_pretrained("nvidia/segformer-b0-finetuned-ade-512-512", device="cuda")
    seg.concepts[:4]      # ['-', 'wall', 'building', 'sky']   (from the model's id2label)
    seg.categories[:4]    # ['-', 'stuff', 'object', 'stuff']  (gan_monitor.segmenters.ade20k)
    labels = seg.segment(images)          # images [N,3,H,W] in [-1,1] -> long [N,H,W]
    probs = seg.probabilities(images)     # float [N,C,H,W], differentiable w.r.t. images

What it does, step by step (all in torch on the input tensor, so it is batched and
differentiable):

1. ``[-1, 1]`` -> ``[0, 1]`` -> the processor's pixel scale (``255 * rescale_factor``
   when ``do_rescale``, else 255, as if the image had been a uint8 picture).
2. Resize as the model's image processor would (``preprocessor_config.json``):
   ``size={"height", "width"}`` to that size, ``size={"shortest_edge"[, "longest_edge"]}``
   keeping the aspect ratio; bilinear (bicubic when ``resample == 3``), antialiased when
   shrinking.  ``input_size=`` overrides it.  Centre crops are never applied (the whole
   image is segmented).
3. Normalise with the processor's ``image_mean`` / ``image_std``; pad with zeros to a
   multiple of ``size_divisor`` when the processor asks for one (Mask2Former).
4. Run the model (micro-batches of ``batch_size``), in eval mode with frozen weights.
5. Class scores: ``logits`` for semantic models.  For Mask2Former/MaskFormer the semantic
   score of class c is ``sum_q softmax(class_logits_q)[c] * sigmoid(mask_logits_q)``
   (the null class dropped), the rule of ``post_process_semantic_segmentation``, computed
   at mask resolution (transformers upsamples the mask logits first; the argmax can differ
   at a few boundary pixels).
6. Scores bilinearly resized (``align_corners=False``) to ``output_size`` (default: the
   images' own size), after removing any padding.
7. ``segment`` = argmax; ``probabilities`` = softmax of logits (Mask2Former: scores
   divided by their sum over classes).

Concept 0 is ``"-"`` (no concept).  A model class named background / unlabeled / other
(at index 0) becomes concept 0; otherwise concept ``i + 1`` is model class ``i``.
Concept names are the model's ``id2label`` (first synonym).  Categories: for an
ADE20K-150 label set, the table in :mod:`gan_monitor.segmenters.ade20k`; for other label sets
``"object"``, or a user mapping passed as ``categories=``.

Loading (:meth:`HFSegmenter.from_pretrained`) accepts a local directory (saved with
``save_pretrained`` of the model and its image processor) or a hub id.  A hub id is
downloaded by ``transformers`` on first use into its cache (``cache_dir=``, or the
``HF_HOME`` environment variable); ``local_files_only=True`` forbids any download.
Needs ``pip install "gan-monitor[ade20k]"`` (``transformers``).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from gan_monitor.core.validation import positive_int
from gan_monitor.segmenters.ade20k import ADE20K_CATEGORIES, clean_label, is_ade20k_labels

__all__ = ["HFSegmenter", "Preprocessing", "load_hf_segmenter", "BACKGROUND_NAMES"]

#: Names of a model class that means "nothing here" (mapped to concept 0).
BACKGROUND_NAMES = frozenset({"background", "unlabeled", "unlabelled", "void", "other", "others", "__background__"})
_UNIVERSAL = ("mask2former", "maskformer")
CategorySpec = Mapping[str, str] | Sequence[str] | Callable[[str], str] | str | None


def _pair(size) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    h, w = size
    return int(h), int(w)


@dataclass(frozen=True)
class Preprocessing:
    """What the model's image processor does to a picture, as numbers.

    fixed_size: resize to (height, width); or shortest_edge / longest_edge: keep the aspect
    ratio; all None: no resize.  scale: multiplier from [0, 1] pixels to the model's pixel
    scale.  mean / std: per channel (None: no normalisation).  size_divisor: pad to a
    multiple of it (0: no padding).  mode: "bilinear" or "bicubic".
    """

    fixed_size: tuple[int, int] | None = None
    shortest_edge: int | None = None
    longest_edge: int | None = None
    scale: float = 1.0
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    size_divisor: int = 0
    mode: str = "bilinear"

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], input_size=None) -> "Preprocessing":
        """From a ``preprocessor_config.json`` dict; ``input_size`` (int or (h, w)) overrides the size."""
        fixed = shortest = longest = None
        size = cfg.get("size")
        if input_size is not None:
            fixed = _pair(input_size)
        elif cfg.get("do_resize", True) and size is not None:
            if isinstance(size, Mapping):
                if "height" in size and "width" in size:
                    fixed = (int(size["height"]), int(size["width"]))
                elif "shortest_edge" in size:
                    shortest = int(size["shortest_edge"])
                    longest = int(size["longest_edge"]) if size.get("longest_edge") else None
                else:
                    raise ValueError(f"unsupported image-processor size {dict(size)}; pass input_size=(height, width).")
            elif "max_size" in cfg or "mask" in str(cfg.get("image_processor_type", "")).lower():
                shortest, longest = int(size), (int(cfg["max_size"]) if cfg.get("max_size") else None)
            else:
                fixed = _pair(size)
        scale = 255.0 * (float(cfg.get("rescale_factor", 1 / 255)) if cfg.get("do_rescale", True) else 1.0)
        mean = std = None
        if cfg.get("do_normalize", True) and cfg.get("image_mean") is not None:
            mean, std = tuple(cfg["image_mean"]), tuple(cfg["image_std"])
            if len(mean) == 1:
                mean, std = mean * 3, std * 3
        divisor = int(cfg.get("size_divisor") or cfg.get("size_divisibility") or 0)
        mode = "bicubic" if cfg.get("resample") == 3 else "bilinear"
        return cls(fixed, shortest, longest, scale, mean, std, divisor, mode)

    def target_size(self, h: int, w: int) -> tuple[int, int]:
        if self.fixed_size is not None:
            return self.fixed_size
        if self.shortest_edge is None:
            return h, w
        ratio = self.shortest_edge / min(h, w)
        if self.longest_edge is not None and max(h, w) * ratio > self.longest_edge:
            ratio = self.longest_edge / max(h, w)
        return max(1, int(round(h * ratio))), max(1, int(round(w * ratio)))


def _resolve_categories(names: list[str], categories: CategorySpec) -> list[str]:
    if categories is None or categories == "auto":
        return list(ADE20K_CATEGORIES) if is_ade20k_labels(names) else ["object"] * len(names)
    if categories == "ade20k":
        if not is_ade20k_labels(names):
            raise ValueError("categories='ade20k' needs a model with the 150 ADE20K classes "
                             f"(wall, building, sky, ...); this one has {len(names)} classes starting {names[:3]}.")
        return list(ADE20K_CATEGORIES)
    if isinstance(categories, str):
        return [categories] * len(names)
    if callable(categories):
        return [str(categories(n)) for n in names]
    if isinstance(categories, Mapping):
        unknown = sorted(set(categories) - set(names))
        if unknown:
            raise ValueError(f"categories names {unknown[:5]} that are not classes of the model "
                             f"(its classes: {names[:8]}...).")
        return [str(categories.get(n, "object")) for n in names]
    cats = [str(c) for c in categories]
    if len(cats) != len(names):
        raise ValueError(f"categories lists {len(cats)} entries but the model has {len(names)} classes "
                         "(background excluded); give one per class, or a {name: category} dict.")
    return cats


class HFSegmenter(nn.Module):
    """A transformers segmentation model behind the Segmenter protocol (see module docstring).

    Args:
        model: a transformers model whose forward takes ``pixel_values`` and returns
            ``logits`` or ``class_queries_logits`` + ``masks_queries_logits``.
        preprocessing: a :class:`Preprocessing` or a ``preprocessor_config.json`` dict.
        categories: None (ADE20K table or "object"), a {class name: category} dict,
            a list (one per class), one string for all, or a function of the name.
        output_size: resolution of ``segment``/``probabilities`` (int or (h, w));
            None: the images' size.
        batch_size: images per model call (memory bound; results do not depend on it).
        background: "auto" (a class 0 named background/unlabeled/... becomes concept 0),
            None (no background class) or the model index of the background class.
    """

    def __init__(self, model: nn.Module, preprocessing: Preprocessing | Mapping[str, Any], *,
                 categories: CategorySpec = None, output_size=None, input_size=None,
                 batch_size: int = 8, background: int | str | None = "auto"):
        super().__init__()
        if not isinstance(preprocessing, Preprocessing):
            preprocessing = Preprocessing.from_config(preprocessing, input_size)
        elif input_size is not None:
            preprocessing = replace(preprocessing, fixed_size=_pair(input_size), shortest_edge=None, longest_edge=None)
        self.model, self.pre, self.batch_size = model, preprocessing, positive_int("batch_size", batch_size)
        self.output_size = None if output_size is None else _pair(output_size)
        id2label = getattr(getattr(model, "config", None), "id2label", None)
        if not id2label:
            raise ValueError("the model has no config.id2label; HFSegmenter needs the class names.")
        labels = [clean_label(id2label[i] if i in id2label else id2label[str(i)]) for i in range(len(id2label))]
        if background == "auto":
            background = 0 if labels[0].lower() in BACKGROUND_NAMES else None
        if background is not None and not 0 <= int(background) < len(labels):
            raise ValueError(f"background={background} is not a class index of the model (0..{len(labels) - 1}).")
        self.background = None if background is None else int(background)
        kept = [k for k in range(len(labels)) if k != self.background]
        names = [labels[k] for k in kept]
        seen: dict[str, int] = {}
        unique = []
        for name in names:  # concept names must be unique
            seen[name] = seen.get(name, 0) + 1
            unique.append(name if seen[name] == 1 else f"{name}_{seen[name]}")
        self.concepts: list[str] = ["-", *unique]
        self.categories: list[str] = ["-", *_resolve_categories(names, categories)]
        self.is_ade20k = is_ade20k_labels(names)
        to_concept = torch.zeros(len(labels), dtype=torch.long)
        to_concept[torch.tensor(kept, dtype=torch.long)] = torch.arange(1, len(kept) + 1)
        self.register_buffer("_to_concept", to_concept, persistent=False)
        self.register_buffer("_kept", torch.tensor(kept, dtype=torch.long), persistent=False)
        mean = torch.tensor(self.pre.mean if self.pre.mean else (0.0, 0.0, 0.0)).view(1, 3, 1, 1)
        std = torch.tensor(self.pre.std if self.pre.std else (1.0, 1.0, 1.0)).view(1, 3, 1, 1)
        self.register_buffer("_mean", mean, persistent=False)
        self.register_buffer("_std", std, persistent=False)
        self.model.requires_grad_(False)
        self.train(False)

    def train(self, mode: bool = True) -> "HFSegmenter":
        # inference only: dropout off and batch-norm on running statistics, whatever a caller asks
        return super().train(False)

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, *, device: str | torch.device = "cpu",
                        dtype: torch.dtype | None = None, cache_dir: str | Path | None = None,
                        revision: str | None = None, local_files_only: bool = False,
                        preprocessing: Mapping[str, Any] | None = None, **kwargs) -> "HFSegmenter":
        """Load a model and its image-processor config from a local folder or a hub id.

        ``kwargs`` go to :class:`HFSegmenter` (categories, output_size, input_size,
        batch_size, background).  ``preprocessing`` replaces the processor config (for
        folders without ``preprocessor_config.json``).
        """
        try:
            from transformers import AutoConfig
            from transformers.image_processing_base import ImageProcessingMixin
        except ImportError as err:
            raise ImportError("HFSegmenter needs the transformers package: pip install 'gan-monitor[ade20k]' "
                              "(or pip install transformers).") from err
        name = str(name_or_path)
        looks_local = Path(name).expanduser().exists() or name.startswith((".", "/", "~")) or name.count("/") > 1
        if looks_local and not Path(name).expanduser().is_dir():
            raise FileNotFoundError(f"{name} is not a folder; give a folder written by save_pretrained "
                                    "(config.json, model weights, preprocessor_config.json) or a hub id "
                                    "such as nvidia/segformer-b0-finetuned-ade-512-512.")
        name = str(Path(name).expanduser()) if looks_local else name
        where = dict(cache_dir=None if cache_dir is None else str(cache_dir), revision=revision,
                     local_files_only=local_files_only)
        try:
            config = AutoConfig.from_pretrained(name, **where)
        except (OSError, ValueError) as err:
            raise OSError(f"cannot load a transformers model config from {name!r} ({' '.join(str(err).split())[:300]}). "
                          "Give a local folder written by save_pretrained or a hub id; without network use a "
                          "local folder or local_files_only=True with a filled cache.") from err
        if config.model_type == "oneformer":
            raise ValueError("OneFormer models need a text task input; use a SegFormer, UperNet, BEiT, DPT, "
                             "Mask2Former or MaskFormer semantic-segmentation model.")
        if config.model_type in _UNIVERSAL:
            from transformers import AutoModelForUniversalSegmentation as Loader
        else:
            from transformers import AutoModelForSemanticSegmentation as Loader
        from transformers.utils import logging as hf_logging

        bar = hf_logging.is_progress_bar_enabled() and looks_local
        if bar:  # no "Loading weights" bar for local folders (hub downloads keep their progress)
            hf_logging.disable_progress_bar()
        try:
            model = Loader.from_pretrained(name, **where)
        finally:
            if bar:
                hf_logging.enable_progress_bar()
        if preprocessing is None:
            try:
                preprocessing, _ = ImageProcessingMixin.get_image_processor_dict(name, **where)
            except OSError as err:
                raise OSError(f"{name!r} has no preprocessor_config.json (the image processor's resize and "
                              "normalisation). Save the processor next to the model, or pass preprocessing="
                              "{'size': {'height': 512, 'width': 512}, 'image_mean': [...], 'image_std': [...]}.") from err
        seg = cls(model, preprocessing, input_size=kwargs.pop("input_size", None), **kwargs)
        seg.source = name
        return seg.to(device=device, dtype=dtype) if dtype is not None else seg.to(device)

    # -- computation ---------------------------------------------------------------------------
    def _check(self, images: torch.Tensor) -> None:
        if not isinstance(images, torch.Tensor):
            raise TypeError(f"images must be a torch.Tensor [N,3,H,W] in [-1,1], got {type(images).__name__}.")
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must have shape [N,3,H,W] (RGB in [-1,1]), got {tuple(images.shape)}; "
                             "add a batch dimension with images[None] for a single image.")
        if not images.dtype.is_floating_point:
            raise TypeError(f"images must be floating point in [-1,1], got dtype {images.dtype}; "
                            "convert uint8 images with x.float() / 127.5 - 1.")

    def _model_input(self, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        x = (images + 1) * 0.5
        h, w = x.shape[-2:]
        th, tw = self.pre.target_size(h, w)
        if (th, tw) != (h, w):
            x = F.interpolate(x, size=(th, tw), mode=self.pre.mode, align_corners=False,
                              antialias=th < h or tw < w)
        x = (x * self.pre.scale - self._mean.to(x.dtype)) / self._std.to(x.dtype)
        d = self.pre.size_divisor
        if d > 1 and (th % d or tw % d):
            x = F.pad(x, (0, -tw % d, 0, -th % d))
        return x, (th, tw)

    def _class_scores(self, pixels: torch.Tensor) -> tuple[torch.Tensor, bool]:
        """Model output as (scores [N, K, h, w] float32, are_logits)."""
        out = self.model(pixel_values=pixels)
        logits = getattr(out, "logits", None)
        if logits is not None:
            return logits.float(), True
        cls_logits = getattr(out, "class_queries_logits", None)
        mask_logits = getattr(out, "masks_queries_logits", None)
        if cls_logits is None or mask_logits is None:
            raise TypeError(f"{type(self.model).__name__} returned neither `logits` nor Mask2Former-style "
                            "`class_queries_logits` + `masks_queries_logits`; it is not a segmentation model.")
        cls_prob = cls_logits.float().softmax(-1)[..., :-1]  # last column: the null class
        return torch.einsum("nqc,nqhw->nchw", cls_prob, mask_logits.float().sigmoid()), False

    def _scores(self, images: torch.Tensor) -> tuple[torch.Tensor, bool]:
        self._check(images)
        param = next(self.model.parameters())
        h, w = images.shape[-2:]
        out_size = self.output_size or (h, w)
        pieces, are_logits = [], True
        for start in range(0, images.shape[0], self.batch_size):
            x = images[start:start + self.batch_size].to(device=param.device, dtype=param.dtype)
            pixels, (th, tw) = self._model_input(x)
            s, are_logits = self._class_scores(pixels)
            if pixels.shape[-2:] != (th, tw):  # padded: drop the padding's share of the output
                s = F.interpolate(s, size=pixels.shape[-2:], mode="bilinear", align_corners=False)[..., :th, :tw]
            if tuple(s.shape[-2:]) != tuple(out_size):
                s = F.interpolate(s, size=out_size, mode="bilinear", align_corners=False)
            pieces.append(s)
        return torch.cat(pieces), are_logits

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Class scores ``[N, K, H', W']`` in the model's class order (logits for semantic models)."""
        return self._scores(images)[0]

    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """``[N, C, H', W']`` per-concept probabilities (column 0: the background class, if the
        model has one, else 0), float32 on the images' device, differentiable w.r.t. ``images``."""
        scores, are_logits = self._scores(images)
        p = scores.softmax(1) if are_logits else scores / scores.sum(1, keepdim=True).clamp_min(1e-6)
        first = p[:, self.background:self.background + 1] if self.background is not None else p[:, :1] * 0
        return torch.cat([first, p.index_select(1, self._kept)], 1).to(images.device)

    @torch.no_grad()
    def segment(self, images: torch.Tensor) -> torch.Tensor:
        """Most likely concept per pixel: long ``[N, H', W']`` on the images' device."""
        labels = []
        for start in range(0, images.shape[0], self.batch_size):  # argmax per chunk bounds memory
            scores, _ = self._scores(images[start:start + self.batch_size])
            labels.append(self._to_concept[scores.argmax(1)])
        return torch.cat(labels).to(images.device)


def load_hf_segmenter(name_or_path: str | Path, device: str | torch.device = "cpu", **kwargs) -> HFSegmenter:
    """``HFSegmenter.from_pretrained(name_or_path, device=device, **kwargs)``."""
    return HFSegmenter.from_pretrained(name_or_path, device=device, **kwargs)
