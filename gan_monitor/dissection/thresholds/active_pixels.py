"""``ActivePixels``: the upsampled pixels of each unit above a floor, kept as flat
arrays grouped by unit, from which exact per-unit thresholds are read."""
from __future__ import annotations

import math

import torch

from gan_monitor.core.distributed import keys_to_values, ordered_keys, run_phase

__all__ = ["ActivePixels"]


class ActivePixels:
    """Values and positions of every upsampled pixel above a per-unit floor, as flat
    arrays grouped by unit (``unit`` non-decreasing).

    ``values`` may be approximations within ``slack[u]`` of the exact upsampled value
    (``exact_at(units, positions)`` gives those; ``None``: the values are exact);
    ``kth_largest`` and ``above`` compute exact values for the few pixels whose
    approximation is too close to a level to decide.
    """

    def __init__(self, floors: torch.Tensor, slack: torch.Tensor, parts: list, exact_at=None,
                 dropped: list | None = None):
        self.floors, self.slack, self.exact_at = floors.float(), slack, exact_at
        n_units = floors.numel()
        if parts:
            units, positions, values = (torch.cat(x) for x in zip(*parts))
        else:
            units = positions = torch.zeros(0, dtype=torch.long, device=floors.device)
            values = torch.zeros(0, device=floors.device)
        self.unit, self.positions, self.values = units, positions, values
        self.stored = torch.bincount(units, minlength=n_units)  # length of each unit's slice
        self.count = self.stored.clone()  # pixels above the floor (entries of value -inf were dropped)
        if dropped:
            self.count -= torch.bincount(torch.cat(dropped), minlength=n_units)

    def positions_of(self, unit: int) -> torch.Tensor:
        """Flat global positions (``image * H * W + pixel``) kept for ``unit``."""
        first = int(self.stored[:unit].sum())
        part = slice(first, first + int(self.stored[unit]))
        return self.positions[part][self.values[part] > -math.inf]

    def _exact(self, index: torch.Tensor) -> torch.Tensor:
        return self.exact_at(self.unit[index].long(), self.positions[index].long())

    def _segments(self):
        """(unit, first, stop) of every unit with kept pixels: its slice of the flat arrays."""
        stops = self.stored.cumsum(0).tolist()
        return [(u, stop - n, stop) for u, (n, stop) in enumerate(zip(self.stored.tolist(), stops)) if n]

    def kth_largest(self, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(``[U]`` exact rank-th largest kept value, ``[U]`` bool: exact, i.e. enough
        values were kept to decide).

        With approximate values (each off by at most d), the exact answer lies within d
        of the approximate one t: values above ``t + 2d`` rank above it, values below
        ``t - 2d`` below it, and the band between is ranked by exact values. That is
        decided where the band lies above the floor (all its pixels were kept)."""
        exact = self.count >= rank
        result = self.floors.clone()
        floors, slack = self.floors.tolist(), self.slack.tolist()
        bands = []  # (unit, indices of its band, number of values above the band)
        enough = exact.tolist()
        for u, first, stop in self._segments():
            if not enough[u]:
                continue
            part = self.values[first:stop]
            t = part.kthvalue(part.numel() - rank + 1).values
            if self.exact_at is None:
                result[u] = t
                continue
            t, d = float(t), 2 * slack[u]
            if t - d <= floors[u]:
                exact[u] = False
                continue
            band = ((part >= t - d) & (part <= t + d)).nonzero().flatten() + first
            bands.append((u, band, int((part > t + d).sum())))
        if bands:
            values = self._exact(torch.cat([band for _, band, _ in bands])).split([b.numel() for _, b, _ in bands])
            for (u, _, above), exact_values in zip(bands, values):
                result[u] = exact_values.sort(descending=True).values[rank - 1 - above]
        return result, exact

    def kth_largest_across(self, rank: int, comm) -> tuple[torch.Tensor, torch.Tensor]:
        """``kth_largest`` over the pixels every rank of ``comm`` kept (same floors on all
        ranks, each over its own images); the same result on every rank.

        The rank-th largest approximate value ``t`` is selected exactly by bisection on
        order-preserving integer keys (32 rounds of a ``[U]`` count summed over ranks);
        each rank then computes exact values of its pixels within ``2 d`` of ``t`` (``d``:
        the largest slack of any rank), and those few values are gathered and ranked."""
        n_units, device = self.floors.numel(), self.floors.device
        count = comm.sum(self.count)
        exact = count >= rank
        slack = torch.stack(comm.gather(self.slack.float())).amax(0)
        keys = ordered_keys(self.values)
        span = 1 << 32
        combined, _ = (self.unit.long() * span + (keys + (1 << 31))).sort()  # grouped by unit, ascending
        units = torch.arange(n_units, device=device)
        ends = torch.searchsorted(combined, (units + 1) * span)
        lo = torch.full((n_units,), -(1 << 31), dtype=torch.long, device=device)  # count(key >= lo) >= rank
        hi = torch.full((n_units,), 1 << 31, dtype=torch.long, device=device)  # count(key >= hi) < rank
        for _ in range(32):
            mid = torch.div(lo + hi, 2, rounding_mode="floor")
            reached = comm.sum(ends - torch.searchsorted(combined, units * span + mid + (1 << 31))) >= rank
            lo, hi = torch.where(reached, mid, lo), torch.where(reached, hi, mid)
        t = keys_to_values(lo)
        d = 2 * slack
        exact &= t - d > self.floors  # else the band may reach below the floor: redo exactly
        low, high = torch.repeat_interleave(t - d, self.stored), torch.repeat_interleave(t + d, self.stored)
        above = comm.sum(torch.bincount(self.unit[self.values > high].long(), minlength=n_units))
        band = ((self.values >= low) & (self.values <= high)).nonzero().flatten()
        band = band[exact[self.unit[band].long()]]

        def band_values():
            return self.values[band] if self.exact_at is None else self._exact(band)

        values = torch.cat(comm.gather(run_phase(comm, "exact quantiles", band_values).float()))
        owners = torch.cat(comm.gather(self.unit[band].long()))
        order = values.argsort(descending=True, stable=True)
        values, owners = values[order], owners[order]
        order = owners.argsort(stable=True)
        values, owners = values[order], owners[order]
        per_unit = torch.bincount(owners, minlength=n_units)
        first = per_unit.cumsum(0) - per_unit
        pick = first + rank - 1 - above
        exact &= (pick >= first) & (pick < first + per_unit)
        result = self.floors.clone()
        result[exact] = values[pick[exact]]
        return result, exact

    def above(self, thresholds: torch.Tensor):
        """Yield ``(units, positions)`` (long) of the kept pixels whose exact value is
        strictly above ``thresholds`` (at or above their floors; ``inf`` skips a unit)."""
        low = torch.repeat_interleave(thresholds.float() - self.slack, self.stored)  # per kept pixel
        if self.exact_at is None:
            chosen = (self.values > low).nonzero().flatten()
        else:  # within slack of the level: the exact value decides
            high = torch.repeat_interleave(thresholds.float() + self.slack, self.stored)
            chosen = (self.values > high).nonzero().flatten()
            close = ((self.values > low) & (self.values <= high)).nonzero().flatten()
            if close.numel():
                level = torch.repeat_interleave(thresholds.float(), self.stored).index_select(0, close)
                chosen = torch.cat([chosen, close[self._exact(close) > level]])
        if chosen.numel():
            yield self.unit.index_select(0, chosen).long(), self.positions.index_select(0, chosen).long()
