"""Image features for FID (docs/method.md §7): the extractor protocol, the embedded
default, an optional InceptionV3 wrapper, and cached statistics of real images.

A *feature extractor* maps images ``[N, 3, H, W]`` in [-1, 1] to features ``[N, d]``
and has a ``name`` (stored with real statistics, so features and statistics from
different extractors are never compared). Three kinds are accepted wherever an
``extractor`` argument appears (:func:`as_extractor`):

* ``None``: :class:`ToySceneFeatures`, the embedded default. It is the encoder of
  the toy world's segmenter (shipped weights, ``gan_monitor/toyworld``): the
  96 channels of its deepest encoder block (1/8 resolution, receptive field
  covering most of a 64x64 scene), averaged over positions, d = 96. The encoder
  was trained to tell apart exactly the toy world's concepts (sky, cloud, mountain,
  grass, road, tree, building, door, window, dome) in exactly these scenes, so its
  pooled features summarise which concepts appear and how they look; images with
  noise, smears or malformed objects move them away from the real scenes'
  statistics. That is the role InceptionV3 plays for photographs, where Inception,
  trained on ImageNet photos, would be off-domain on 64x64 flat-shaded scenes.
  Its FIDs are on their own scale: compare them with each other (units, steps),
  never with Inception FIDs.
* :class:`InceptionFeatures` (``weights_path=...``): InceptionV3 pool3 (2048-d)
  through torchmetrics/torch-fidelity, for real data. Nothing downloads: the
  caller supplies the weights file; torch-fidelity is imported only then.
* any ``nn.Module`` (wrapped by :class:`ModuleFeatures`) returning ``[N, d]``.

:class:`RealStats` holds mean, covariance, count and extractor name of real
images' features, computed once (:meth:`RealStats.from_images`) and cached on disk
with that metadata (:meth:`RealStats.cached`); :func:`toy_real_stats` does this for
the procedural scenes.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import nn

from gan_monitor.core.tracing import module_device
from gan_monitor.toyworld.scenes import render_scenes
from gan_monitor.toyworld.segmenter import load_segmenter

__all__ = ["FeatureExtractor", "ModuleFeatures", "ToySceneFeatures", "InceptionFeatures", "as_extractor",
           "extract_features", "RealStats", "toy_real_stats"]

STATS_FORMAT = "gan_monitor.real_stats"
STATS_VERSION = 1
#: how ``toy_real_stats`` names its source (per-unit FID warns when the toy extractor is used
#: against real statistics of anything else)
TOY_SOURCE = "toy scenes"


@runtime_checkable
class FeatureExtractor(Protocol):
    """``extractor(images [N,3,H,W] in [-1,1]) -> features [N, d]``, with a ``name``."""

    name: str

    def __call__(self, images: torch.Tensor) -> torch.Tensor: ...


class ModuleFeatures(nn.Module):
    """Any ``nn.Module`` mapping images in [-1, 1] to ``[N, d]`` as an extractor;
    ``name`` defaults to the module's class name (give a distinctive one: it is
    what cached real statistics are checked against)."""

    def __init__(self, module: nn.Module, name: str | None = None):
        super().__init__()
        self.module = module
        self.name = str(name or type(module).__name__)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        device = module_device(self.module, None)
        return self.module(images if device is None else images.to(device))


class ToySceneFeatures(nn.Module):
    """The embedded default extractor (see the module docstring): the toy segmenter's
    deepest encoder block, averaged over positions (d = 96). Images of another size
    are resized (bilinear, antialiased) to ``size`` x ``size``: 64, what the segmenter
    was trained on, by default; a smaller multiple of 8 (e.g. 32 for 32x32 generators)
    is 4x cheaper. ``size`` is part of ``name``, so statistics at one size are never
    compared with features at another."""

    def __init__(self, segmenter=None, size: int = 64):
        super().__init__()
        if int(size) < 8 or int(size) % 8:
            raise ValueError(f"size must be a multiple of 8 (the segmenter pools 3 times), got {size}.")
        self.size = int(size)
        if segmenter is None:
            segmenter = load_segmenter()
        self.net = segmenter.net
        self.net.requires_grad_(False)
        self.dim = int(self.net.widths[3])
        self.name = f"toy-segmenter-enc3-avg{self.dim}@{self.size}px"
        self.train(False)

    def train(self, mode: bool = True) -> "ToySceneFeatures":
        return super().train(False)  # batch norm must keep its running statistics

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        param = next(self.net.parameters())
        x = images.to(device=param.device, dtype=param.dtype)
        if tuple(x.shape[-2:]) != (self.size, self.size):
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False,
                              antialias=True)
        net = self.net
        e0 = net.enc0(x)
        e1 = net.enc1(F.max_pool2d(e0, 2))
        e2 = net.enc2(F.max_pool2d(e1, 2))
        e3 = net.enc3(F.max_pool2d(e2, 2))
        return e3.mean((2, 3))


def _load_inception(weights_path: str | Path, antialias: bool) -> nn.Module:
    try:
        from torchmetrics.image.fid import NoTrainInceptionV3
        from torchmetrics.utilities.imports import _TORCH_FIDELITY_AVAILABLE
    except Exception as err:  # a broken torchvision makes torchmetrics.image fail to import
        raise ImportError(
            f"InceptionFeatures needs torchmetrics' image metrics, which failed to import: {err}. torch-fidelity "
            "imports torchvision, which must be built for the installed torch (PyPI's torchvision wheels need "
            "PyPI's CUDA torch; with a CPU-only torch install torchvision from the same index as torch)."
        ) from err
    if not _TORCH_FIDELITY_AVAILABLE:
        raise ImportError(
            "InceptionFeatures needs torch-fidelity (`pip install gan-monitor[inception]`, i.e. torch-fidelity, "
            "matching your torch). Without it, use the embedded default extractor (extractor=None) or pass "
            "your own nn.Module as extractor."
        )
    return NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048"],
                              feature_extractor_weights_path=str(weights_path), antialias=antialias)


class InceptionFeatures(nn.Module):
    """InceptionV3 pool3 features (2048-d) as used by FID, loaded from ``weights_path``
    (torch-fidelity's ``weights-inception-2015-12-05-6726825d.pth``; nothing is
    downloaded). Images in [-1, 1] are quantised to uint8 as FID expects.

    ``antialias=False`` (default) resizes to 299 x 299 as torch-fidelity and the original
    TensorFlow FID do (their features, so FIDs comparable with published ones);
    ``antialias=True`` is torchmetrics' default antialiased resize, whose features
    differ slightly and so carry another ``name`` (``inception-v3-pool3-antialias``).

    Raises ``FileNotFoundError`` if the file is missing and ``ImportError`` when
    torch-fidelity is not installed. :meth:`from_network` wraps an already built
    network taking uint8 images (e.g. a stand-in in tests).
    """

    def __init__(self, weights_path: str | Path | None = None, *, antialias: bool = False,
                 _network: nn.Module | None = None):
        super().__init__()
        if _network is None:
            if weights_path is None or not Path(weights_path).is_file():
                raise FileNotFoundError(
                    f"InceptionV3 weights not found at {weights_path!r}; gan_monitor never downloads them. "
                    "Download torch-fidelity's weights-inception-2015-12-05-6726825d.pth yourself and pass its path."
                )
            _network = _load_inception(weights_path, bool(antialias))
        self.network = _network
        self.name = "inception-v3-pool3" + ("-antialias" if antialias else "")
        self.train(False)

    @classmethod
    def from_network(cls, network: nn.Module) -> "InceptionFeatures":
        return cls(_network=network)

    def train(self, mode: bool = True) -> "InceptionFeatures":
        return super().train(False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        device = module_device(self.network, None)
        x = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        return self.network(x if device is None else x.to(device))


def as_extractor(extractor: Any = None) -> Any:
    """``None`` -> :class:`ToySceneFeatures`; an object with ``name`` that is callable
    -> itself; any other ``nn.Module`` -> :class:`ModuleFeatures`."""
    if extractor is None:
        return ToySceneFeatures()
    if isinstance(extractor, nn.Module) and not isinstance(getattr(extractor, "name", None), str):
        return ModuleFeatures(extractor)
    if callable(extractor) and isinstance(getattr(extractor, "name", None), str):
        return extractor
    raise TypeError(
        f"extractor must be None (embedded default), an nn.Module or a callable with a `name` "
        f"returning [N, d] features, got {type(extractor).__name__}."
    )


@torch.no_grad()
def extract_features(extractor, images: torch.Tensor) -> torch.Tensor:
    """``extractor(images)`` checked to be finite ``[N, d]``; returned as float64 on the CPU."""
    feats = extractor(images)
    name = getattr(extractor, "name", type(extractor).__name__)
    if not isinstance(feats, torch.Tensor) or feats.dim() != 2 or feats.shape[0] != images.shape[0]:
        got = tuple(feats.shape) if isinstance(feats, torch.Tensor) else type(feats).__name__
        raise ValueError(
            f"feature extractor {name!r} returned {got} for {images.shape[0]} images; it must return "
            "[N, d] (one feature vector per image). Pool or flatten spatial features, e.g. "
            "x.mean((2, 3)) or x.flatten(1)."
        )
    if not torch.isfinite(feats).all():
        raise ValueError(f"feature extractor {name!r} returned NaN/inf features.")
    return feats.detach().to("cpu", torch.float64)


def _batches(images: Iterable) -> Iterable[torch.Tensor]:
    for batch in images:
        if isinstance(batch, (tuple, list)):  # (images, labels) from a dataset
            batch = batch[0]
        if isinstance(batch, dict):
            batch = batch.get("images", batch.get("image"))
        if not isinstance(batch, torch.Tensor) or batch.dim() != 4:
            raise ValueError("real images must come as tensors [B, 3, H, W] in [-1, 1] (or (images, ...) tuples).")
        yield batch


@dataclass
class RealStats:
    """Mean ``[d]`` and covariance ``[d, d]`` (float64, unbiased) of ``count`` real
    images' features under the extractor called ``extractor``; ``source`` says
    which images (e.g. ``"toy scenes n=2000 seed=... size=64"``)."""

    mean: torch.Tensor
    cov: torch.Tensor
    count: int
    extractor: str
    source: str = ""
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def dim(self) -> int:
        return int(self.mean.numel())

    @classmethod
    def from_features(cls, feats: torch.Tensor, extractor: str, source: str = "") -> "RealStats":
        feats = feats.double()
        if feats.shape[0] < 2:
            raise ValueError("real statistics need at least 2 images.")
        return cls(feats.mean(0), torch.cov(feats.T).reshape(feats.shape[1], feats.shape[1]),
                   int(feats.shape[0]), str(extractor), source)

    @classmethod
    def from_images(cls, images: Iterable, extractor=None, source: str = "",
                    device: torch.device | str | None = None) -> "RealStats":
        """Statistics of the features of every batch of ``images`` (a DataLoader or any
        iterable of ``[B,3,H,W]`` tensors, or of ``(images, ...)`` tuples)."""
        extractor = as_extractor(extractor)
        total, outer, count, shift, size = None, None, 0, None, None
        for batch in _batches(images):
            size = size or [int(batch.shape[-2]), int(batch.shape[-1])]
            f = extract_features(extractor, batch if device is None else batch.to(device))
            if shift is None:
                shift = f.mean(0)  # accumulate around a shift: avoids cancellation in the covariance
                total, outer = torch.zeros_like(shift), torch.zeros(f.shape[1], f.shape[1], dtype=torch.float64)
            g = f - shift
            total += g.sum(0)
            outer += g.T @ g
            count += f.shape[0]
        if count < 2:
            raise ValueError(f"got {count} real images; real statistics need at least 2 (and more than d).")
        mean_shifted = total / count
        cov = (outer - count * torch.outer(mean_shifted, mean_shifted)) / (count - 1)
        return cls(mean_shifted + shift, cov, count, extractor.name, source, extras={"image_size": size})

    @property
    def image_size(self) -> list[int] | None:
        """``[H, W]`` of the real images (None for statistics made from features or by older versions)."""
        return self.extras.get("image_size")

    def check_image_size(self, images: torch.Tensor) -> None:
        """Raise when generated ``images`` differ in size from the real images behind these statistics."""
        size = [int(images.shape[-2]), int(images.shape[-1])]
        if self.image_size is not None and list(self.image_size) != size:
            h, w = self.image_size
            raise ValueError(
                f"the real statistics were made from {h}x{w} images but the generator makes {size[0]}x{size[1]}; "
                "FID between images seen at different resolutions measures the resize, not the generator. "
                f"Recompute them at {size[0]}x{size[1]} (RealStats.from_images on real images of that size, or "
                f"toy_real_stats(size={size[0]})).")

    def check_usable(self, extractor_name: str, dim: int) -> None:
        """Raise unless these statistics fit features of ``extractor_name`` with ``dim`` dimensions."""
        if extractor_name != self.extractor:
            raise ValueError(
                f"the real statistics were computed with extractor {self.extractor!r} but the generated images' "
                f"features come from {extractor_name!r}; compute real statistics with the same extractor."
            )
        if dim != self.dim:
            raise ValueError(f"features have d={dim} but the real statistics have d={self.dim}.")
        if self.count <= self.dim:
            raise ValueError(
                f"the real statistics come from {self.count} images for {self.dim}-dimensional features: a "
                f"covariance of dimension d from n <= d images has rank at most n - 1 < d, so the real "
                "Gaussian is degenerate and FID meaningless (the square-root term is dominated by estimation "
                f"noise). Use more than {self.dim} real images (ideally >= 10 x d) or an extractor with fewer "
                "dimensions."
            )

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"format": STATS_FORMAT, "version": STATS_VERSION, "mean": self.mean, "cov": self.cov,
                    "count": self.count, "extractor": self.extractor, "source": self.source,
                    "image_size": self.image_size}, path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "RealStats":
        blob = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(blob, dict) or blob.get("format") != STATS_FORMAT or blob.get("version") != STATS_VERSION:
            raise ValueError(f"{path} is not a gan_monitor real-statistics file (version {STATS_VERSION}).")
        size = blob.get("image_size")
        return cls(blob["mean"].double(), blob["cov"].double(), int(blob["count"]), str(blob["extractor"]),
                   str(blob.get("source", "")), extras={"image_size": list(size)} if size else {})

    @classmethod
    def cached(cls, path: str | Path, images, extractor=None, source: str = "", device=None) -> "RealStats":
        """Load ``path`` if it holds statistics for the same extractor name and ``source``;
        otherwise compute them from ``images`` (an iterable, or a zero-argument callable
        returning one, so nothing is rendered or read on a cache hit) and save them."""
        extractor = as_extractor(extractor)
        path = Path(path)
        if path.is_file():
            stats = cls.load(path)
            if stats.extractor == extractor.name and stats.source == source:
                return stats
        stats = cls.from_images(images() if callable(images) else images, extractor, source, device)
        stats.save(path)
        return stats


def toy_real_stats(n: int = 2000, *, seed: int = 12345, size: int = 64, extractor=None, batch_size: int = 250,
                   cache: str | Path | None = None, device=None) -> RealStats:
    """Real statistics of ``n`` procedural toy scenes (``render_scenes(n, seed=seed, size=size)``),
    cached at ``cache`` when given."""
    source = f"{TOY_SOURCE} n={n} seed={seed} size={size}"

    def images():
        scenes, _ = render_scenes(n, seed=seed, size=size)
        return scenes.split(batch_size)

    if cache is not None:
        return RealStats.cached(cache, images, extractor, source, device)
    return RealStats.from_images(images(), extractor, source, device)
