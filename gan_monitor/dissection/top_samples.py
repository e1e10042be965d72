"""Each unit's top-activating held-out samples (the images a report shows for it)."""
from __future__ import annotations

import torch

__all__ = ["TopSamples"]


class TopSamples:
    """Each unit's ``k`` top-activating samples, ranked by the unit's max activation.

    Ties are broken by sample index, so the result does not depend on batching;
    two instances merge exactly (``merge``).
    """

    def __init__(self, n_units: int, k: int, device=None):
        self.k = int(k)
        self.values = torch.empty(n_units, 0, device=device)
        self.indices = torch.empty(n_units, 0, dtype=torch.long, device=device)

    def _keep_best(self, values: torch.Tensor, indices: torch.Tensor) -> None:
        order = torch.argsort(indices, dim=1, stable=True)
        values, indices = values.gather(1, order), indices.gather(1, order)
        order = torch.argsort(values, dim=1, descending=True, stable=True)[:, : self.k]
        self.values, self.indices = values.gather(1, order), indices.gather(1, order)

    def update(self, acts: torch.Tensor, start: int, ids: torch.Tensor | None = None) -> None:
        """``acts`` ``[B, U, h, w]`` of samples ``start .. start + B - 1`` (or of the
        sample indices ``ids`` ``[B]``, e.g. a process's shard of a held-out set)."""
        peak = acts.detach().flatten(2).amax(2).T.float()  # [U, B]
        if ids is None:
            ids = torch.arange(start, start + acts.shape[0], device=acts.device)
        ids = ids.to(acts.device, torch.long).expand_as(peak)
        self._keep_best(torch.cat([self.values.to(acts.device), peak], 1),
                        torch.cat([self.indices.to(acts.device), ids], 1))

    def merge(self, other: "TopSamples") -> None:
        self.merge_from(other.values, other.indices)

    def merge_from(self, values: torch.Tensor, indices: torch.Tensor) -> None:
        """Merge another instance's ``values`` and ``indices`` (e.g. another process's)."""
        self._keep_best(torch.cat([self.values, values.to(self.values.device)], 1),
                        torch.cat([self.indices, indices.to(self.indices.device)], 1))
