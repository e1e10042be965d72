"""The embedded segmenter: a small U-Net trained on the procedural scenes.

``load_segmenter()`` returns a :class:`ToySegmenter` with the weights shipped in
``gan_monitor/toyworld/weights/segmenter.pt`` (trained by
``scripts/train_segmenter.py``).  It follows the :class:`gan_monitor.segmenters.base.Segmenter`
protocol: ``segment(images) -> LongTensor [N,H,W]`` and a differentiable
``probabilities(images) -> [N,C,H,W]``.  Images are float ``[N,3,H,W]`` in [-1, 1]
of any size of at least 8 pixels; sizes that are not multiples of 8 are padded
(edge pixels repeated) and the output cropped back.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from . import CONCEPT_CATEGORIES, CONCEPT_NAMES

__all__ = ["SegmenterNet", "ToySegmenter", "load_segmenter", "save_segmenter", "DEFAULT_WEIGHTS"]

DEFAULT_WEIGHTS = Path(__file__).resolve().parent / "weights" / "segmenter.pt"
FORMAT_VERSION = 1
MULTIPLE = 8  # three 2x poolings


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
    )


class SegmenterNet(nn.Module):
    """Fully convolutional U-Net: 3 poolings (widths ``widths`` at 1, 1/2, 1/4, 1/8
    resolution), bilinear upsampling with skip concatenation, a 1x1 classifier.
    ``forward(images) -> logits [N, n_classes, H, W]`` for H, W multiples of 8."""

    def __init__(self, n_classes: int = len(CONCEPT_NAMES), widths: tuple[int, ...] = (16, 32, 48, 96)):
        super().__init__()
        if len(widths) != 4:
            raise ValueError(f"widths must list 4 channel counts (one per resolution), got {widths!r}.")
        self.n_classes, self.widths = n_classes, tuple(int(w) for w in widths)
        w0, w1, w2, w3 = self.widths
        self.enc0, self.enc1, self.enc2, self.enc3 = _block(3, w0), _block(w0, w1), _block(w1, w2), _block(w2, w3)
        self.dec2, self.dec1, self.dec0 = _block(w3 + w2, w2), _block(w2 + w1, w1), _block(w1 + w0, w0)
        self.head = nn.Conv2d(w0, n_classes, 1)

    @staticmethod
    def _up_cat(x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return torch.cat([x, skip], 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        e0 = self.enc0(images)
        e1 = self.enc1(F.max_pool2d(e0, 2))
        e2 = self.enc2(F.max_pool2d(e1, 2))
        e3 = self.enc3(F.max_pool2d(e2, 2))
        d2 = self.dec2(self._up_cat(e3, e2))
        d1 = self.dec1(self._up_cat(d2, e1))
        d0 = self.dec0(self._up_cat(d1, e0))
        return self.head(d0)


class ToySegmenter(nn.Module):
    """Inference wrapper around a trained :class:`SegmenterNet` (always in eval mode,
    parameters frozen).  Follows the Segmenter protocol."""

    def __init__(self, net: SegmenterNet):
        super().__init__()
        if net.n_classes != len(CONCEPT_NAMES):
            raise ValueError(
                f"the network predicts {net.n_classes} classes but the toy world has "
                f"{len(CONCEPT_NAMES)} concepts; train it with n_classes={len(CONCEPT_NAMES)}."
            )
        self.net = net
        self.concepts: list[str] = list(CONCEPT_NAMES)
        self.categories: list[str] = list(CONCEPT_CATEGORIES)
        self.net.requires_grad_(False)
        self.train(False)

    def train(self, mode: bool = True) -> "ToySegmenter":
        # Inference only: batch-norm must use its running statistics, so the wrapper
        # stays in eval mode whatever the caller (e.g. a Lightning module) asks.
        return super().train(False)

    def _prepare(self, images: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        if not isinstance(images, torch.Tensor):
            raise TypeError(f"images must be a torch.Tensor [N,3,H,W] in [-1,1], got {type(images).__name__}.")
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(
                f"images must have shape [N,3,H,W] (RGB in [-1,1]), got {tuple(images.shape)}; "
                "add a batch dimension with images[None] for a single image."
            )
        if not images.dtype.is_floating_point:
            raise TypeError(
                f"images must be floating point in [-1,1], got dtype {images.dtype}; "
                "convert uint8 images with x.float() / 127.5 - 1."
            )
        h, w = images.shape[-2:]
        if h < MULTIPLE or w < MULTIPLE:
            raise ValueError(f"images must be at least {MULTIPLE}x{MULTIPLE} pixels, got {h}x{w}.")
        param = next(self.net.parameters())
        x = images.to(device=param.device, dtype=param.dtype)
        ph, pw = -h % MULTIPLE, -w % MULTIPLE
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="replicate")
        return x, h, w

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits ``[N, C, H, W]`` (differentiable w.r.t. ``images``)."""
        x, h, w = self._prepare(images)
        return self.net(x)[..., :h, :w]

    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """Softmax over concepts ``[N, C, H, W]``, differentiable w.r.t. ``images``
        (on the images' device)."""
        return torch.softmax(self.forward(images), dim=1).to(images.device)

    @torch.no_grad()
    def segment(self, images: torch.Tensor) -> torch.Tensor:
        """Most likely concept per pixel: LongTensor ``[N, H, W]`` on the images' device."""
        return self.forward(images).argmax(1).to(images.device)


def save_segmenter(net: SegmenterNet, path: str | Path, metadata: dict | None = None) -> Path:
    """Write ``net``'s weights as fp16 (batch-norm counters kept as int) plus its config."""
    state = {k: (v.half() if v.is_floating_point() else v) for k, v in net.state_dict().items()}
    blob = {
        "format_version": FORMAT_VERSION,
        "concepts": list(CONCEPT_NAMES),
        "widths": list(net.widths),
        "state_dict": state,
        "metadata": dict(metadata or {}),
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(blob, path)
    return path


def load_segmenter(device: str | torch.device | None = None, path: str | Path | None = None) -> ToySegmenter:
    """Load the shipped segmenter (or the one at ``path``) onto ``device`` (default CPU)."""
    path = Path(path) if path is not None else DEFAULT_WEIGHTS
    if not path.is_file():
        raise FileNotFoundError(
            f"segmenter weights not found at {path}; the package ships them in "
            "gan_monitor/toyworld/weights/segmenter.pt (re-create with `python scripts/train_segmenter.py`)."
        )
    blob = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(blob, dict) or blob.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path} is not a gan_monitor segmenter file (format_version {FORMAT_VERSION}).")
    if list(blob["concepts"]) != list(CONCEPT_NAMES):
        raise ValueError(
            f"{path} was trained for concepts {blob['concepts']} but the toy world has {CONCEPT_NAMES}; "
            "retrain with scripts/train_segmenter.py."
        )
    net = SegmenterNet(len(CONCEPT_NAMES), tuple(blob["widths"]))
    state = {k: (v.float() if v.is_floating_point() else v) for k, v in blob["state_dict"].items()}
    net.load_state_dict(state)
    seg = ToySegmenter(net)
    seg.metadata = dict(blob.get("metadata", {}))
    return seg.to(device or "cpu")
