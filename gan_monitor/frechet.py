"""Fréchet distances between Gaussians fitted to features, batched over units
(the numerical core of per-unit FID, METHOD.md 3).

    FID = |mu - mu_r|^2 + tr S + tr S_r - 2 tr sqrt(S_r^1/2 S S_r^1/2)

For many units at once (:func:`unit_frechet_distances`), each unit ``u`` being
``k`` rows of one pool of features: with ``Z = (F - mu_r) S_r^1/2 / sqrt(k-1)``
computed once for the pool and ``Y_u`` the unit's ``k`` rows of ``Z`` centred,
``S_r^1/2 S_u S_r^1/2 = Y_u^T Y_u``. Its square-root trace is the sum of the square
roots of the eigenvalues of the smaller of ``Y_u^T Y_u`` (d x d) and ``Y_u Y_u^T``
(k x k), which share their nonzero eigenvalues.

The centred rows sum to zero, so ``Y_u`` has rank at most ``k - 1``; ``Y_u`` is
replaced by ``W_u`` (``k - 1`` rows) with ``W_u^T W_u = Y_u^T Y_u`` exactly::

    W_u = Z_u[:k-1] - a_u,   a_u = (1 - c) mean(Z_u) + c Z_u[k-1],   c = 1 / (sqrt(k) + 1)

(expand ``W^T W`` with ``s`` the sum of the first ``k - 1`` centred rows, which is
minus the last one: ``2c + (k-1) c^2 = 1``). That is as cheap as centring and leaves
a ``(k-1) x (k-1)`` matrix without the structural zero eigenvalue. One batched
float64 ``eigvalsh`` then gives every unit's trace; ``bench/per_unit_fid.py``
compares the whole computation with a loop of torchmetrics FIDs.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["sqrtm_psd", "frechet_distance", "unit_frechet_distances"]

#: Bytes of float64 work memory per chunk of units in the batched computation.
CHUNK_BYTES = 64 * 2**20


def sqrtm_psd(cov: torch.Tensor) -> torch.Tensor:
    """Symmetric square root of a positive semi-definite matrix (negative rounding
    errors in its eigenvalues clamped to 0)."""
    w, v = torch.linalg.eigh(cov.double())
    return (v * w.clamp_min(0).sqrt()) @ v.T


def _sqrt_trace(gram: torch.Tensor) -> torch.Tensor:
    """``tr sqrt(G)`` for a batch of symmetric PSD matrices ``[c, n, n]`` (one batched eigvalsh)."""
    return torch.linalg.eigvalsh(gram.mT).clamp_min(0).sqrt().sum(-1)  # mT: same matrix, LAPACK layout


def frechet_distance(features: torch.Tensor, real, real_sqrt: torch.Tensor | None = None) -> float:
    """FID between the Gaussian fitted to ``features [n, d]`` and ``real``
    (:class:`~gan_monitor.features.RealStats`)."""
    f = features.double()
    if f.shape[0] < 2:
        raise ValueError("FID needs at least 2 generated images.")
    return float(unit_frechet_distances(f, torch.arange(f.shape[0]).view(1, -1), real, real_sqrt)[0])


def unit_frechet_distances(features: torch.Tensor, index: torch.Tensor, real,
                           real_sqrt: torch.Tensor | None = None) -> torch.Tensor:
    """FID of each row of ``index [U, k]`` (rows of ``features [M, d]``) against ``real``
    (:class:`~gan_monitor.features.RealStats`; ``real_sqrt``: its covariance's square
    root, if already computed): ``[U]`` float64 on the CPU.

    Features are shifted by the real mean (covariances unchanged, less cancellation)
    and projected by ``S_r^1/2`` once for the whole pool; per unit, the ``(k-1)``-row
    matrix ``W_u`` of the module docstring gives a ``(k-1) x (k-1)`` or ``d x d``
    Gram matrix, whichever is smaller, for one batched ``eigvalsh``.
    """
    u, k = index.shape
    if k < 2:
        raise ValueError(f"k must be at least 2 to estimate a covariance, got {k}.")
    f = features.double() - real.mean.to(features.device, torch.float64)
    m, d = f.shape
    root = (sqrtm_psd(real.cov) if real_sqrt is None else real_sqrt).to(f.device, torch.float64)
    root = root / math.sqrt(k - 1)
    z = f @ root  # so that S_r^1/2 S_u S_r^1/2 = W_u^T W_u
    index = index.to(f.device)
    # one pass over each unit's rows for its feature sum and sum of squared norms
    sums = F.embedding_bag(index, torch.cat([f, f.square().sum(1, keepdim=True)], 1), mode="sum")
    mean = sums[:, :d] / k  # [U, d]: each unit's mean feature minus the real mean
    tr_u = (sums[:, d] - k * mean.square().sum(1)) / (k - 1)
    tr_r = torch.diagonal(real.cov).sum().to(f.device)
    c = 1.0 / (math.sqrt(k) + 1.0)
    shift = (1.0 - c) * (mean @ root) + c * z.index_select(0, index[:, -1])  # a_u [U, d] (mean @ root: Z_u's mean)
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
