"""Quantile mode's threshold, streamed exactly (docs/method.md §3).

The threshold of unit u is its ``(k+1)``-th largest upsampled activation over all pixels
of all images, ``k = ceil(q * pixels)`` (``quantile_rank``), so that exactly the top ``k``
pixels (fewer with ties) lie strictly above it. ``dissect`` finds it with
``thresholds.quantile``; ``TopValues`` is the general streaming exact version (used there
for units with heavy ties, and mergeable across processes): it keeps only the values
above a per-unit floor known to be at or below the answer, pruning with ``kthvalue``
when its buffer fills. Memory: ``U * max(2(k+1), k+1 + batch values)`` float32. The
result is the same for any batching.
"""
from __future__ import annotations

import math

import torch

__all__ = ["TopValues", "quantile_rank"]


def quantile_rank(q: float, pixels: int) -> int:
    """Number of pixels a unit may have above its threshold: ``ceil(q * pixels)``."""
    return max(1, min(int(pixels) - 1, math.ceil(q * pixels - 1e-9)))


def _next_prime(k: int) -> int:
    k = max(2, k)
    while any(k % d == 0 for d in range(2, int(k ** 0.5) + 1)):
        k += 1
    return k


class TopValues:
    """Exact ``rank``-th largest value per unit over a stream of values.

    Invariant: at least ``rank`` of the values seen are >= ``floor[u]``, and the
    buffer holds every value seen that is > ``floor[u]``. Most values fail the
    one comparison with the floor, so a batch costs about one compare and one scan.
    """

    def __init__(self, n_units: int, rank: int, device=None):
        self.rank = int(rank)
        self.n_units = int(n_units)
        self.buffer = torch.full((n_units, 2 * self.rank), -math.inf, device=device)
        self.count = torch.zeros(n_units, dtype=torch.long, device=device)
        self.floor = torch.full((n_units,), -math.inf, device=device)

    def _append(self, rows: torch.Tensor, values: torch.Tensor) -> None:
        """Append values (rows sorted ascending) to their units' rows of the buffer."""
        new = torch.bincount(rows, minlength=self.n_units)
        if int((self.count + new).max()) > self.buffer.shape[1]:
            self._prune()
            keep = values > self.floor[rows]
            rows, values = rows[keep], values[keep]
            new = torch.bincount(rows, minlength=self.n_units)
            need = int((self.count + new).max())
            if need > self.buffer.shape[1]:
                grown = torch.full((self.n_units, max(need, 2 * self.rank)), -math.inf, device=self.buffer.device)
                grown[:, : self.buffer.shape[1]] = self.buffer
                self.buffer = grown
        if rows.numel():
            first = torch.cumsum(new, 0) - new
            offset = torch.arange(rows.numel(), device=rows.device) - first[rows]
            self.buffer[rows, self.count[rows] + offset] = values
            self.count += new

    def _prune(self) -> None:
        full = (self.count >= self.rank).nonzero().flatten()
        if full.numel():
            rows = self.buffer[full]
            kth = rows.kthvalue(rows.shape[1] - self.rank + 1, dim=1).values
            self.floor[full] = torch.maximum(self.floor[full], kth)
        rows, cols = (self.buffer > self.floor[:, None]).nonzero(as_tuple=True)
        values = self.buffer[rows, cols]
        self.buffer = torch.full_like(self.buffer, -math.inf)
        self.count.zero_()
        self._append(rows, values)

    def _raise_floor(self, values: torch.Tensor) -> None:
        """Lift -inf floors to about this batch's own rank-th largest value.

        The guess comes from a strided subsample (a prime stride, so every pixel
        phase is sampled) and is accepted only where counting confirms that at
        least ``rank`` values of the batch reach it; otherwise the floor stays put.
        """
        b, _, m = values.shape
        if b * m < self.rank:
            return
        step = _next_prime(max(1, min(self.rank // 64, (b * m) // 4096)))
        index = torch.arange(0, b * m, step, device=values.device)
        sample = values[index // m, :, index % m].T  # [U, samples]
        for margin in (1.05, 1.5):
            want = min(sample.shape[1], math.ceil(self.rank / step * margin) + 8)
            guess = sample.kthvalue(sample.shape[1] - want + 1, dim=1).values
            rows = (values >= guess.view(1, -1, 1)).nonzero(as_tuple=True)[1]
            enough = (torch.bincount(rows, minlength=self.n_units) >= self.rank) & torch.isinf(self.floor)
            self.floor = torch.where(enough, guess, self.floor)
            if not torch.isinf(self.floor).any():
                return

    def update(self, values: torch.Tensor) -> None:
        """Add ``values`` ``[B, U, M]`` (or ``[U, M]``)."""
        if values.dim() == 2:
            values = values.unsqueeze(0)
        values = values.to(self.buffer.device, torch.float32)
        if torch.isinf(self.floor).any():
            self._raise_floor(values)
        # compare in a unit-major view: nonzero then lists candidates grouped by unit
        u, b, p = (values.transpose(0, 1) > self.floor.view(-1, 1, 1)).nonzero(as_tuple=True)
        self._append(u, values[b, u, p])

    def merge(self, other: "TopValues") -> None:
        """Fold in another stream's state (e.g. another process's)."""
        self.floor = torch.maximum(self.floor, other.floor.to(self.floor.device))
        self.update(other.buffer.to(self.buffer.device))

    def result(self) -> torch.Tensor:
        """``[U]`` the exact ``rank``-th largest value of each unit."""
        self._prune()
        if torch.isinf(self.floor).any():
            raise ValueError(f"fewer than {self.rank} values were seen for some units; cannot take the quantile.")
        return self.floor.clone()
