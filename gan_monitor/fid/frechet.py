"""Fréchet distances between Gaussians fitted to features, batched over units
(the numerical core of per-unit FID, docs/method.md §7).

    FID = |mu - mu_r|^2 + tr S + tr S_r - 2 tr sqrt(S_r^1/2 S S_r^1/2)

The square-root term only needs the eigenvalues of ``S S_r``, which are those of
``R^T S R`` for any factor ``S_r = R R^T`` (:func:`covariance_factor`: Cholesky,
or the symmetric square root when ``S_r`` is singular). For many units at once
(:func:`unit_frechet_distances`), each unit ``u`` being ``k`` rows of one pool of
features: with ``Z = (F - mu_r) R / sqrt(k-1)`` computed once for the pool and
``Y_u`` the unit's ``k`` rows of ``Z`` centred, ``R^T S_u R = Y_u^T Y_u``. Its
square-root trace is the sum of the square roots of the eigenvalues of the smaller
of ``Y_u^T Y_u`` (d x d) and ``Y_u Y_u^T`` (k x k), which share their nonzero eigenvalues.

The centred rows sum to zero, so ``Y_u`` has rank at most ``k - 1``; ``Y_u`` is
replaced by ``W_u`` (``k - 1`` rows) with ``W_u^T W_u = Y_u^T Y_u`` exactly::

    W_u = Z_u[:k-1] - a_u,   a_u = (1 - c) mean(Z_u) + c Z_u[k-1],   c = 1 / (sqrt(k) + 1)

(expand ``W^T W`` with ``s`` the sum of the first ``k - 1`` centred rows, which is
minus the last one: ``2c + (k-1) c^2 = 1``). That is as cheap as centring and leaves
a ``(k-1) x (k-1)`` matrix without the structural zero eigenvalue. One batched
float64 ``eigvalsh`` per chunk of units then gives every unit's trace;
``bench/per_unit_fid.py`` compares the whole computation with a loop of torchmetrics FIDs.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["sqrtm_psd", "covariance_factor", "frechet_distance", "unit_frechet_distances"]

#: Bytes of float64 work memory per chunk of units in the batched computation. Small
#: chunks reuse the same already-mapped memory chunk after chunk: one fresh 10 MB
#: buffer for 256 units (d = 96, k = 50) cost ~8 ms of page faults, a quarter of the time.
CHUNK_BYTES = 2 * 2**20


def sqrtm_psd(cov: torch.Tensor) -> torch.Tensor:
    """Symmetric square root of a positive semi-definite matrix (negative rounding
    errors in its eigenvalues clamped to 0)."""
    w, v = torch.linalg.eigh(cov.double())
    return (v * w.clamp_min(0).sqrt()) @ v.T


def covariance_factor(cov: torch.Tensor) -> torch.Tensor:
    """A float64 ``R`` with ``R R^T = cov``: the Cholesky factor (a tenth of the cost
    of an eigendecomposition), or :func:`sqrtm_psd` when ``cov`` is singular (e.g. a
    feature that never varies)."""
    factor, info = torch.linalg.cholesky_ex(cov.double())
    return factor if int(info) == 0 else sqrtm_psd(cov)


def _sqrt_trace(gram: torch.Tensor) -> torch.Tensor:
    """``tr sqrt(G)`` for a batch of symmetric PSD matrices ``[c, n, n]`` (one batched eigvalsh)."""
    return torch.linalg.eigvalsh(gram.mT).clamp_min(0).sqrt().sum(-1)  # mT: same matrix, LAPACK layout


def frechet_distance(features: torch.Tensor, real, real_factor: torch.Tensor | None = None) -> float:
    """FID between the Gaussian fitted to ``features [n, d]`` and ``real``
    (:class:`~gan_monitor.fid.features.RealStats`)."""
    f = features.double()
    if f.shape[0] < 2:
        raise ValueError("FID needs at least 2 generated images.")
    return float(unit_frechet_distances(f, torch.arange(f.shape[0]).view(1, -1), real, real_factor)[0])


def unit_frechet_distances(features: torch.Tensor, index: torch.Tensor, real,
                           real_factor: torch.Tensor | None = None) -> torch.Tensor:
    """FID of each row of ``index [U, k]`` (rows of ``features [M, d]``) against ``real``
    (:class:`~gan_monitor.fid.features.RealStats`): ``[U]`` float64 on the CPU.
    ``real_factor``: any ``R`` with ``R R^T = real.cov`` (:func:`covariance_factor`,
    :func:`sqrtm_psd`), if already computed.

    Features are shifted by the real mean (covariances unchanged, less cancellation)
    and multiplied by ``R`` once for the whole pool; per unit, the ``(k-1)``-row
    matrix ``W_u`` of the module docstring gives a ``(k-1) x (k-1)`` or ``d x d``
    Gram matrix, whichever is smaller, for a batched ``eigvalsh``.
    """
    u, k = index.shape
    if k < 2:
        raise ValueError(f"k must be at least 2 to estimate a covariance, got {k}.")
    f = features.double() - real.mean.to(features.device, torch.float64)
    m, d = f.shape
    factor = covariance_factor(real.cov) if real_factor is None else real_factor
    factor = factor.to(f.device, torch.float64) / math.sqrt(k - 1)
    z = f @ factor  # so that R^T S_u R = W_u^T W_u
    index = index.to(f.device)
    mean = F.embedding_bag(index, f, mode="mean")  # [U, d]: each unit's mean feature minus the real mean
    tr_u = (f.square().sum(1)[index].sum(1) - k * mean.square().sum(1)) / (k - 1)
    tr_r = torch.diagonal(real.cov).sum().to(f.device)
    c = 1.0 / (math.sqrt(k) + 1.0)
    shift = (1.0 - c) * (mean @ factor) + c * z.index_select(0, index[:, -1])  # a_u (mean @ factor: Z_u's mean)
    n = min(k - 1, d)
    chunk = max(1, int(CHUNK_BYTES // (8 * ((k - 1) * d + 2 * n * n))))
    root_terms = []
    for start in range(0, u, chunk):
        rows = index[start:start + chunk, :-1]
        w = z.index_select(0, rows.reshape(-1)).view(rows.shape[0], k - 1, d)
        w -= shift[start:start + chunk, None, :]
        gram = torch.bmm(w, w.mT) if k - 1 <= d else torch.bmm(w.mT, w)
        root_terms.append(_sqrt_trace(gram))
    return (mean.square().sum(1) + tr_u + tr_r - 2 * torch.cat(root_terms)).cpu()
