"""Per-unit FID and artifact units (paper S-6.1, Table 1; docs/method.md §7).

``per_unit_fid`` generates a pool of ``M`` images once, extracts their features
once, keeps each unit's ``k`` top-activating images (ranked by the unit's max
activation over positions, as dissection ranks them) and computes every unit's
FID against real statistics in a batched, symmetric-eigenvalue form:

    FID_u = |mu_u - mu_r|^2 + tr S_u + tr S_r - 2 tr sqrt(S_r^1/2 S_u S_r^1/2)

With ``X_u`` the unit's centred features ``[k, d]`` and ``Y_u = X_u S_r^1/2 / sqrt(k-1)``,
``S_r^1/2 S_u S_r^1/2 = Y_u^T Y_u``, whose eigenvalues (besides zeros) are those of
the smaller of ``Y_u^T Y_u`` (d x d) and ``Y_u Y_u^T`` (k x k; in fact (k-1) x (k-1),
the rank); one batched ``eigvalsh`` over units gives all traces. Float64 throughout;
the numerical core is :mod:`gan_monitor.fid.frechet`.

FID depends on the sample size (its bias shrinks with it), so ``k`` must stay
fixed across units, layers and training steps to compare FIDs; every result
records ``pool`` (M), ``k`` and the extractor. With k <= d the units' covariances
are rank-deficient (fine for the formula, larger bias): the paper used k = 10,000
for d = 2048.

Artifact units are the units with the highest FID; ``artifact_ablation`` checks
them as the paper's Table 1 does: FID of generated images before, after ablating
them, and after ablating as many random units (several draws).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from gan_monitor.core.inputs import call_generator, call_generator_first, iterate_batches, make_inputs, num_samples
from gan_monitor.core.tracing import Edit, Trace, as_layer_list, eval_mode, resolve_layer
from gan_monitor.core.validation import check_inputs, positive_int, run_device
from gan_monitor.dissection.top_samples import TopSamples
from gan_monitor.fid.features import TOY_SOURCE, RealStats, as_extractor, extract_features
from gan_monitor.fid.frechet import covariance_factor, frechet_distance, sqrtm_psd, unit_frechet_distances

__all__ = ["sqrtm_psd", "covariance_factor", "frechet_distance", "unit_frechet_distances", "UnitFID",
           "per_unit_fid", "per_unit_fid_layers", "ArtifactAblation", "artifact_ablation", "unrealistic_units"]


@dataclass
class UnitFID:
    """Per-unit FIDs of one layer.

    Attributes: ``fid`` float64 ``[U]``; ``topk`` ``[U, k]`` pool indices of each unit's
    top images (best first) and ``topk_values`` their max activations; ``pool`` (M),
    ``k``, ``extractor``, ``real_count`` (real images behind the statistics), ``seed``;
    ``pool_fid``: FID of the whole pool (M images: not comparable with per-unit FIDs,
    which use k); ``settings``. ``inputs`` (not serialised) are the pool's generator
    inputs, for drawing the top images again.
    """

    layer: str
    fid: torch.Tensor
    topk: torch.Tensor
    topk_values: torch.Tensor
    pool: int
    k: int
    extractor: str
    real_count: int
    seed: int | None
    pool_fid: float
    settings: dict[str, Any] = field(default_factory=dict)
    inputs: Any = field(default=None, repr=False, compare=False)

    @property
    def num_units(self) -> int:
        return int(self.fid.numel())

    def ranked_units(self) -> list[int]:
        """Units by FID, highest (least realistic) first."""
        return torch.argsort(self.fid, descending=True, stable=True).tolist()

    def artifact_units(self, n: int) -> list[int]:
        """The ``n`` units with the highest FID."""
        return self.ranked_units()[: max(0, int(n))]

    def to_dict(self) -> dict[str, Any]:
        return {"layer": self.layer, "fid": self.fid.tolist(), "topk": self.topk.tolist(),
                "topk_values": self.topk_values.tolist(), "pool": self.pool, "k": self.k,
                "extractor": self.extractor, "real_count": self.real_count, "seed": self.seed,
                "pool_fid": self.pool_fid, "settings": dict(self.settings)}

    def table(self, n: int = 10) -> str:
        """Markdown table of the ``n`` highest-FID units."""
        lines = [f"Per-unit FID, layer {self.layer}: pool M={self.pool}, k={self.k} top images per unit, "
                 f"extractor {self.extractor}, {self.real_count} real images; whole-pool FID "
                 f"{self.pool_fid:.2f} (M images)", "", "| rank | unit | FID |", "|---:|---:|---:|"]
        for rank, u in enumerate(self.artifact_units(n), 1):
            lines.append(f"| {rank} | {u} | {float(self.fid[u]):.2f} |")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


def _check_real(real_stats) -> RealStats:
    if not isinstance(real_stats, RealStats):
        raise TypeError(
            "real_stats must be a gan_monitor.fid.features.RealStats (e.g. RealStats.from_images(loader, extractor) "
            f"or toy_real_stats()), got {type(real_stats).__name__}."
        )
    return real_stats


def _check_first_images(images: torch.Tensor, extractor, real: RealStats | None) -> None:
    """The first generated batch against the real statistics' image size, and a warning when
    the embedded toy extractor is asked to describe images unlike the toy world's."""
    if real is not None:
        real.check_image_size(images)
    h, w = int(images.shape[-2]), int(images.shape[-1])
    if not str(getattr(extractor, "name", "")).startswith("toy-"):
        return
    why = None
    if h != w or h > 128 or h < 16:
        why = f"on {h}x{w} images"
    elif real is not None and not real.source.startswith(TOY_SOURCE):
        why = f"against real images that are not toy scenes (source {real.source or 'not given'!r})"
    if why is not None:
        warnings.warn(
            f"gan_monitor: per-unit FID uses the embedded toy-scene extractor ({extractor.name}), trained on the toy "
            f"world's small square outdoor scenes, {why}; its features cannot describe such images well. Use "
            "InceptionFeatures(weights_path=...) (pip install 'gan-monitor[fid]') or your own "
            "ModuleFeatures(network) for real data.", stacklevel=4)


def _generated_features(generator, inputs, extractor, batch_size, device, progress, desc,
                        layers=(), on_batch: Callable | None = None, real: RealStats | None = None):
    """Features of the generator's images for ``inputs``; ``on_batch(start, acts)`` sees
    the traced ``layers``' featuremaps of every batch."""
    feats = []
    bar = tqdm(total=num_samples(inputs), desc=desc, disable=not progress, leave=False)
    for start, batch in iterate_batches(inputs, batch_size, device):
        call = call_generator_first if start == 0 else call_generator  # first: a TypeError says to pass input_fn=
        if layers:
            with Trace(generator, list(layers), detach=True, require_featuremap=True) as trace:
                images = call(generator, batch)
            on_batch(start, {name: trace[name] for name in layers})
        else:
            images = call(generator, batch)
        if not isinstance(images, torch.Tensor) or images.dim() != 4:
            raise ValueError("the generator must return images [N, 3, H, W] in [-1, 1].")
        if start == 0:
            _check_first_images(images, extractor, real)
        feats.append(extract_features(extractor, images))
        bar.update(images.shape[0])
    bar.close()
    return torch.cat(feats)


def per_unit_fid_layers(generator: nn.Module, layers: str | Sequence[str], *, pool: int = 1000, k: int = 50,
                        real_stats: RealStats, extractor=None, seed: int = 0, input_fn: Callable | None = None,
                        inputs: Any = None, batch_size: int = 50, device=None,
                        progress: bool = False) -> dict[str, UnitFID]:
    """:func:`per_unit_fid` for several layers from one pool (one generation, one
    feature extraction): ``{layer: UnitFID}``."""
    layers = as_layer_list(layers)
    for name in layers:
        resolve_layer(generator, name)
    real = _check_real(real_stats)
    extractor = as_extractor(extractor)
    real.check_usable(extractor.name, real.dim)  # before generating anything
    drawn = check_inputs(inputs) is None
    if drawn:
        inputs = make_inputs(generator, positive_int("pool", pool), seed, input_fn)
    m = num_samples(inputs)
    if isinstance(k, bool) or not isinstance(k, int) or k < 2:
        raise ValueError(f"k (top images per unit) must be an integer >= 2, got {k!r}.")
    if k > m:
        raise ValueError(
            f"k={k} top images per unit cannot come from a pool of {m} generated images; use k <= pool "
            "(the paper: k = 5% of the pool, 10,000 of 200,000)."
        )
    device = run_device(generator, device)
    tops: dict[str, TopSamples] = {}

    def on_batch(start, acts):
        for name, a in acts.items():
            tops.setdefault(name, TopSamples(a.shape[1], k, device=a.device)).update(a, start)

    with eval_mode(generator), torch.no_grad():
        feats = _generated_features(generator, inputs, extractor, batch_size, device, progress,
                                    "per-unit FID: pool", layers, on_batch, real=real)
    real.check_usable(extractor.name, feats.shape[1])
    factor = covariance_factor(real.cov)
    pool_fid = frechet_distance(feats, real, factor)
    settings = {"pool": m, "k": k, "extractor": extractor.name, "real_count": real.count,
                "real_source": real.source, "seed": seed if drawn else None,
                "inputs": "drawn" if drawn else "given", "feature_dim": int(feats.shape[1])}
    out = {}
    for name in layers:
        top = tops[name]
        fid = unit_frechet_distances(feats, top.indices.cpu(), real, factor)
        out[name] = UnitFID(layer=name, fid=fid, topk=top.indices.cpu(), topk_values=top.values.cpu(),
                            pool=m, k=k, extractor=extractor.name, real_count=real.count,
                            seed=settings["seed"], pool_fid=pool_fid, settings=dict(settings), inputs=inputs)
    return out


def per_unit_fid(generator: nn.Module, layer: str, *, pool: int = 1000, k: int = 50, real_stats: RealStats,
                 extractor=None, seed: int = 0, input_fn: Callable | None = None, inputs: Any = None,
                 batch_size: int = 50, device=None, progress: bool = False) -> UnitFID:
    """FID of each unit's ``k`` top-activating images among ``pool`` generated ones.

    Args:
        generator, layer: the model and the dotted name of a layer with featuremaps ``[N, U, h, w]``.
        pool: M, images generated (from ``input_fn`` seeded with ``seed``, or ``inputs``).
        k: top images per unit, ranked by the unit's max activation; keep it fixed
            (FID depends on the sample size). Default 50: 5 % of the default pool, the
            paper's ratio (10,000 of 200,000), and the monitor's ``fid_k``, so numbers
            from both compare.
        real_stats: :class:`~gan_monitor.fid.features.RealStats` under the same extractor.
        extractor: ``None`` (embedded toy-scene features), an ``nn.Module`` or a named callable.
        batch_size, device, progress: batching (no effect on results), where to run, tqdm.

    Returns a :class:`UnitFID`. The generator runs in eval mode under ``no_grad``
    (training flags restored); the global RNG is not used.
    """
    if not isinstance(layer, str):
        raise TypeError("per_unit_fid takes one layer name; use per_unit_fid_layers for several.")
    return per_unit_fid_layers(generator, [layer], pool=pool, k=k, real_stats=real_stats, extractor=extractor,
                               seed=seed, input_fn=input_fn, inputs=inputs, batch_size=batch_size,
                               device=device, progress=progress)[layer]


@dataclass
class ArtifactAblation:
    """The paper's Table 1 for one layer: FID of ``n`` generated images before any
    edit, with ``units`` ablated, and with as many random other units ablated
    (``random`` lists one FID per draw, ``random_units`` the units drawn)."""

    layer: str
    units: list[int]
    before: float
    ablated: float
    random: list[float]
    random_units: list[list[int]]
    n: int
    extractor: str
    real_count: int
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def random_mean(self) -> float:
        return float(torch.tensor(self.random, dtype=torch.float64).mean())

    @property
    def random_std(self) -> float:
        return float(torch.tensor(self.random, dtype=torch.float64).std()) if len(self.random) > 1 else 0.0

    def scalars(self) -> dict[str, float]:
        """The three numbers to log: ``before``, ``artifacts_ablated``, ``random_ablated`` (mean)."""
        return {"before": self.before, "artifacts_ablated": self.ablated, "random_ablated": self.random_mean}

    def to_dict(self) -> dict[str, Any]:
        return {"layer": self.layer, "units": list(self.units), "before": self.before, "ablated": self.ablated,
                "random": list(self.random), "random_units": [list(u) for u in self.random_units],
                "random_mean": self.random_mean, "random_std": self.random_std, "n": self.n,
                "extractor": self.extractor, "real_count": self.real_count, "settings": dict(self.settings)}

    def table(self) -> str:
        n_u, draws = len(self.units), len(self.random)
        return "\n".join([
            f"Artifact ablation, layer {self.layer}: FID of {self.n} generated images vs {self.real_count} real "
            f"({self.extractor})",
            "",
            "| generator | FID |",
            "|---|---:|",
            f"| unchanged | {self.before:.2f} |",
            f"| {n_u} artifact units ablated | {self.ablated:.2f} |",
            f"| {n_u} random units ablated (mean +- sd of {draws} draws) | {self.random_mean:.2f} +- "
            f"{self.random_std:.2f} |",
        ])

    def __str__(self) -> str:
        return self.table()


def artifact_ablation(generator: nn.Module, layer: str, units: Sequence[int], *, real_stats: RealStats,
                      extractor=None, n: int = 1000, n_random_draws: int = 5, seed: int = 0,
                      random_seed: int = 0, input_fn: Callable | None = None, inputs: Any = None,
                      batch_size: int = 50, device=None, progress: bool = False) -> ArtifactAblation:
    """FID of ``n`` generated images (the same inputs throughout) unchanged, with
    ``units`` of ``layer`` ablated (set to 0), and with ``len(units)`` random units
    other than ``units`` ablated, ``n_random_draws`` times (seeded by ``random_seed``).
    Typically ``units = per_unit_fid(...).artifact_units(20)``."""
    resolve_layer(generator, layer)
    real = _check_real(real_stats)
    extractor = as_extractor(extractor)
    real.check_usable(extractor.name, real.dim)
    units = [int(u) for u in units]
    if not units or len(set(units)) != len(units):
        raise ValueError(f"units must be a non-empty list of distinct unit indices, got {units}.")
    positive_int("n_random_draws", n_random_draws)
    drawn = check_inputs(inputs) is None
    if drawn:
        inputs = make_inputs(generator, n, seed, input_fn)
    device = run_device(generator, device)
    shape: dict[str, int] = {}

    def count_units(start, acts):
        shape["units"] = int(acts[layer].shape[1])

    def fid_of(desc, edit_units=None, trace=False):
        with eval_mode(generator), torch.no_grad():
            if edit_units is None:
                feats = _generated_features(generator, inputs, extractor, batch_size, device, progress, desc,
                                            [layer] if trace else (), count_units)
            else:
                with Edit.ablate(generator, layer, edit_units):
                    feats = _generated_features(generator, inputs, extractor, batch_size, device, progress, desc)
        real.check_usable(extractor.name, feats.shape[1])
        return frechet_distance(feats, real, factor)

    factor = covariance_factor(real.cov)
    before = fid_of("ablation: unchanged", trace=True)
    total = shape["units"]
    bad = [u for u in units if not 0 <= u < total]
    if bad:
        raise IndexError(f"units {bad} do not exist in layer {layer!r}, which has {total} units.")
    others = torch.tensor([u for u in range(total) if u not in set(units)])
    if others.numel() < len(units):
        raise ValueError(
            f"cannot draw {len(units)} random units among the {others.numel()} other units of layer {layer!r}; "
            "ablate fewer artifact units."
        )
    ablated = fid_of("ablation: artifact units", units)
    gen = torch.Generator().manual_seed(int(random_seed))
    random_units, random = [], []
    for draw in range(n_random_draws):
        pick = others[torch.randperm(others.numel(), generator=gen)[: len(units)]].tolist()
        random_units.append(sorted(pick))
        random.append(fid_of(f"ablation: random units {draw + 1}", pick))
    return ArtifactAblation(layer=layer, units=units, before=before, ablated=ablated, random=random,
                            random_units=random_units, n=num_samples(inputs), extractor=extractor.name,
                            real_count=real.count,
                            settings={"seed": seed if drawn else None, "inputs": "drawn" if drawn else "given",
                                      "random_seed": random_seed, "n_random_draws": n_random_draws})


def unrealistic_units(unit_fid: Any, threshold: float, n_units: int, layer: str = "") -> torch.Tensor:
    """Bool ``[U]``: units whose FID exceeds ``threshold`` (paper S-6.3). ``unit_fid`` is a
    :class:`UnitFID` or a ``[U]`` sequence of FIDs."""
    values = unit_fid.fid if isinstance(unit_fid, UnitFID) else torch.as_tensor(unit_fid, dtype=torch.float64)
    values = values.flatten().double()
    if values.numel() != n_units:
        raise ValueError(f"layer {layer!r} has {n_units} units but {values.numel()} per-unit FIDs were given.")
    return values > float(threshold)
