"""Quantile mode in memory independent of the number of held-out samples (docs/method.md §3).

The cached path (``quantile_pass``) keeps every raw featuremap and label map of the
held-out sample: ``n * (sum_layers U*h*w * itemsize + D*H*W)`` bytes. Above the memory
budget (``dissect(memory_budget=...)``, ``cached_bytes`` estimates the cached path's
need) ``streaming_quantile_pass`` regenerates the seeded held-out inputs instead:

1. pass 1 (generator and segmenter): each unit's top samples, and a histogram of the
   top ``DIGITS[0]`` bits of the order-preserving 32-bit key
   (``distributed.ordered_keys``) of every upsampled pixel;
2. passes 2 and 3 (the generator only, stopped after the last traced layer): the next
   bits, counted only over pixels whose key starts with the prefix chosen so far. The
   bin holding the ``(k+1)``-th largest key is read from a reverse cumulative sum;
   after the 32 bits the key *is* the exact threshold (``RadixSelect``);
4. pass 4 (generator and segmenter): the pixels above the thresholds are tallied
   (``sparse_tally.tally_above``).

Thresholds, counts, IoU, labels and top samples equal the cached path's bit for bit
(the same ``upsample`` values, the same ``(k+1)``-th largest, the same integer counts).
Histograms are integer counts: with several ranks they are summed (``comm.sum``) after
each pass, so every rank picks the same bins. Memory: ``U * 2^11`` int64 per layer plus
one chunk of upsampled values (``STREAM_CHUNK``), whatever ``n``. The generator must be
deterministic (same inputs, same activations): a per-batch checksum of the featuremaps
is compared in every later pass and a mismatch raises ``NondeterministicGeneratorError``.
"""
from __future__ import annotations

import os

import torch

from gan_monitor.core.distributed import check_identical, keys_to_values, ordered_keys, run_phase
from gan_monitor.core.errors import NondeterministicGeneratorError
from gan_monitor.core.inputs import num_samples
from gan_monitor.dissection.tally import LayerTally, image_chunks
from gan_monitor.dissection.thresholds.sparse_tally import tally_above
from gan_monitor.dissection.thresholds.top_values import quantile_rank
from gan_monitor.dissection.top_samples import TopSamples
from gan_monitor.dissection.upsample import upsample

__all__ = ["RadixSelect", "streaming_quantile_pass", "cached_bytes", "sample_bytes", "default_memory_budget",
           "agreed_budget", "activation_checksum", "check_same_activations", "DIGITS", "STREAM_CHUNK",
           "BUDGET_FRACTION", "BUDGET_CAP"]

_LOW_BITS = 0x7FFFFFFF
#: Bits of the 32-bit key resolved per pass, most significant first.
DIGITS = (11, 11, 10)
#: Upsampled values handled at once while streaming (1 MiB of float32, at least one image; larger
#: chunks measured slower and with a higher peak on the toy GAN).
STREAM_CHUNK = 1 << 18
#: Default budget: this fraction of the total memory (host, or the CUDA device's), at most
#: ``BUDGET_CAP`` bytes.
BUDGET_FRACTION = 0.25
BUDGET_CAP = 1 << 30
#: Bytes of peak memory per kept pixel in ``cached_bytes`` (12 stored, the rest copies and temporaries).
KEPT_BYTES = 64


def _total_host_bytes() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 8 << 30  # unknown: assume 8 GiB


def default_memory_budget(device) -> int:
    """``BUDGET_FRACTION`` of the memory where the cache would live (the CUDA device's
    total memory, else the host's), capped at ``BUDGET_CAP`` bytes. Total rather than free
    memory, so that the same machine always takes the same path (results record it)."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    if device.type == "cuda" and torch.cuda.is_available():
        total = int(torch.cuda.get_device_properties(device).total_memory)
    else:
        total = _total_host_bytes()
    return int(min(BUDGET_CAP, BUDGET_FRACTION * total))


def agreed_budget(budget: int | None, device, comm=None) -> int:
    """``budget``, or ``default_memory_budget(device)``; with several ranks, rank 0's value
    (every rank must take the same path)."""
    value = int(budget) if budget is not None else default_memory_budget(device)
    if comm is not None and comm.world_size > 1:
        value = int(comm.broadcast(torch.tensor([value], dtype=torch.float64))[0])
    return value


def sample_bytes(acts: dict[str, torch.Tensor], seg: torch.Tensor, label_copies: int) -> int:
    """Bytes one cached sample takes: its featuremaps (``acts``: a batch ``{layer: [B, U, h, w]}``)
    and ``label_copies`` uint8 copies of its label maps (``seg`` ``[B, D, H, W]``)."""
    return sum(a[0].numel() * a.element_size() for a in acts.values()) + label_copies * seg[0].numel()


def cached_bytes(n_local: int, acts: dict[str, torch.Tensor], seg: torch.Tensor, quantile: float, n: int,
                 world_size: int = 1) -> int:
    """Estimated peak bytes of the cached quantile path on one rank of ``n_local`` samples
    (of ``n`` in all), from a first batch ``acts`` (``{layer: [B, U, h, w]}``) and its
    segmentation ``seg`` ``[B, D, H, W]``: the featuremap cache, the uint8 label cache (held
    twice: batches and their concatenation), and the kept pixels of the largest layer
    (about ``1.4 * U * (k+1)`` pixels of 12 bytes, shared by ranks), counted at
    ``KEPT_BYTES`` each: calibrated on the growth of the cached path's peak RSS with n on
    the toy GAN (bench/dissect.py (m): about 0.6 MB per image for 128x8x8 + 64x16x16
    featuremaps and 64x64 labels), which includes copies and temporaries."""
    per_sample = sample_bytes(acts, seg, label_copies=2)
    pixels = seg.shape[-2] * seg.shape[-1]
    rank = quantile_rank(quantile, n * pixels) + 1
    kept = max(a.shape[1] for a in acts.values()) * 1.4 * rank * KEPT_BYTES / world_size
    return int(n_local * per_sample + kept)


class RadixSelect:
    """Exact ``rank``-th largest (1 = largest) of each of ``n_units`` rows of values seen
    in a stream, ``DIGITS`` bits per pass over the stream.

    A value's key is ``ordered_keys(v)`` shifted to ``[0, 2^32)`` (same order as the
    values; ``-0.0`` counts as ``0.0``). Per pass: ``update(values)`` for every value
    (only those whose key starts with the unit's prefix are counted), ``finish(comm)``
    sums the histograms over ranks and extends each unit's prefix by the digit holding
    the rank-th largest. ``done`` after ``len(DIGITS)`` passes; ``result()`` is then exact.
    """

    def __init__(self, n_units: int, rank: int, device=None):
        self.n_units, self.pass_index = int(n_units), 0
        self.remaining = torch.full((self.n_units,), int(rank), dtype=torch.long, device=device)
        self.prefix = torch.zeros(self.n_units, dtype=torch.long, device=device)
        self.resolved = 0  # bits of the key fixed so far
        self.hist = self._new_hist(device)

    def _new_hist(self, device) -> torch.Tensor:
        return torch.zeros(self.n_units, 1 << DIGITS[self.pass_index], dtype=torch.long, device=device)

    @property
    def done(self) -> bool:
        return self.resolved == 32

    def update(self, values: torch.Tensor) -> None:
        """``values`` ``[b, U, P]`` float32 (any ``b``, ``P``)."""
        bits = DIGITS[self.pass_index]
        shift = 32 - self.resolved - bits
        n_units, per_unit = values.shape[1], values.shape[2]
        units = torch.arange(n_units, device=values.device)
        if not self.resolved:  # every value: the top bits of its int32 key (4-byte ops only)
            raw = (values + 0.0).view(torch.int32)  # -0.0 -> 0.0
            key = raw ^ ((raw >> 31) & _LOW_BITS)  # signed int32, same order as the values
            offset = ((units << bits) + (1 << (bits - 1))).to(torch.int32)  # unsigned top digit, per unit row
            slot = (key >> shift) + offset.view(1, -1, 1)
        else:  # only the values in each unit's chosen bin: a float range first, then the key prefix
            low, high = self.bounds()
            inside = (values >= low.view(1, -1, 1)) & (values <= high.view(1, -1, 1))
            index = inside.view(-1).nonzero().view(-1)
            unit = torch.div(index, per_unit, rounding_mode="floor") % n_units
            key = ordered_keys(values.reshape(-1).index_select(0, index)) + (1 << 31)  # int64 in [0, 2^32)
            match = (key >> (32 - self.resolved)) == self.prefix.to(key.device).index_select(0, unit)
            slot = (((key >> shift) & ((1 << bits) - 1)) + (unit << bits))[match]
        self.hist += torch.bincount(slot.reshape(-1), minlength=self.hist.numel()).view_as(self.hist)

    def bounds(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``[U]`` float32 smallest and largest values whose keys start with each unit's prefix."""
        free = 32 - self.resolved
        low = keys_to_values((self.prefix << free) - (1 << 31))
        high = keys_to_values((((self.prefix + 1) << free) - 1) - (1 << 31))
        return low, high

    def finish(self, comm=None) -> None:
        """End a pass: choose each unit's next digit (histograms summed over ``comm``'s ranks)."""
        hist = self.hist if comm is None or comm.world_size == 1 else comm.sum(self.hist)
        at_or_above = hist.flip(1).cumsum(1).flip(1)  # [U, bins]: keys with digit >= d
        remaining = self.remaining.to(hist.device)
        digit = (at_or_above >= remaining[:, None]).sum(1) - 1
        if bool((digit < 0).any()):
            raise RuntimeError("streaming quantile: fewer values than the rank in a pass; the generator's "
                               "activations changed between passes.")
        above = at_or_above.gather(1, digit[:, None]).flatten() - hist.gather(1, digit[:, None]).flatten()
        self.remaining = remaining - above
        bits = DIGITS[self.pass_index]
        self.prefix = (self.prefix.to(hist.device) << bits) | digit
        self.resolved += bits
        self.pass_index += 1
        if not self.done:
            self.hist = self._new_hist(hist.device)

    def result(self) -> torch.Tensor:
        """``[U]`` float32 exact rank-th largest values (after the last pass)."""
        if not self.done:
            raise RuntimeError(f"RadixSelect needs {len(DIGITS)} passes, {self.pass_index} done.")
        return keys_to_values(self.prefix - (1 << 31))


def _feed(select: RadixSelect, acts: torch.Tensor, size: tuple[int, int]) -> None:
    """Upsample ``acts`` ``[B, U, h, w]`` a chunk of images at a time into ``select``."""
    per_image = acts.shape[1] * size[0] * size[1]
    for lo, hi in image_chunks(acts.shape[0], per_image, STREAM_CHUNK):
        select.update(upsample(acts[lo:hi].float(), size).flatten(2))


def activation_checksum(acts: dict[str, torch.Tensor]) -> torch.Tensor:
    """One float64 sum per traced layer of a batch: compared between passes over the same inputs."""
    return torch.stack([a.double().sum() for a in acts.values()])


def check_same_activations(expected: torch.Tensor, acts: dict[str, torch.Tensor], batch: int, what: str,
                           budget) -> None:
    """Raise ``NondeterministicGeneratorError`` unless batch ``batch``'s featuremaps ``acts`` have
    the checksum ``expected`` they had in the first pass (``what``: the path that needs it)."""
    if not torch.equal(activation_checksum(acts), expected):
        raise NondeterministicGeneratorError(
            "the generator's activations differ between two passes over the same held-out inputs "
            f"(batch {batch}); {what} (taken because caching the sample would exceed memory_budget={budget} "
            "bytes) needs a deterministic generator (fixed noise inputs, no dropout). Make it deterministic, or "
            "raise memory_budget to use the cached path.")


def streaming_quantile_pass(runner, inputs, layers, quantile, topk, settings):
    """``quantile_pass``'s results ``(thresholds, tallies, samples)`` by layer, without
    caching: four passes over the regenerated held-out inputs (module docstring).
    ``settings`` gains ``quantile_rank``."""
    n, comm = num_samples(inputs), runner.comm
    runner.release_memory = True  # thousands of batches: keep the heap from fragmenting upwards
    categories = list(runner.segmenter.categories)
    samples: dict[str, TopSamples] = {}
    selects: dict[str, RadixSelect] = {}
    sums: list[torch.Tensor] = []
    rank = None

    def first_pass():
        nonlocal rank
        for start, acts, seg in runner.batches(inputs, "dissect: stream 1/4"):
            if rank is None:
                rank = quantile_rank(quantile, n * runner.size[0] * runner.size[1]) + 1
            ids = runner.global_ids(start, seg.shape[0], seg.device)
            sums.append(activation_checksum(acts))
            for name, a in acts.items():
                samples.setdefault(name, TopSamples(a.shape[1], topk, device=a.device)).update(a, start, ids)
                select = selects.setdefault(name, RadixSelect(a.shape[1], rank, device=a.device))
                _feed(select, a, runner.size)

    def check(i, acts):
        check_same_activations(sums[i], acts, i, "the streaming quantile search", settings.get("memory_budget"))

    def refine_pass():
        for i, (start, acts) in enumerate(runner.featuremaps(inputs, "dissect: stream")):
            check(i, acts)
            for name, a in acts.items():
                _feed(selects[name], a, runner.size)

    run_phase(comm, "dissection (streaming pass 1: generator and segmenter)", first_pass)
    check_identical(comm, "segmentation sizes", torch.tensor(runner.size), "segment() must return one size.")
    for name in layers:
        selects[name].finish(comm)
    for p in range(1, len(DIGITS)):
        run_phase(comm, f"dissection (streaming pass {p + 1}: generator)", refine_pass)
        for name in layers:
            selects[name].finish(comm)
    thresholds = {name: selects[name].result() for name in layers}
    tallies = {name: LayerTally(thresholds[name], categories).to(thresholds[name].device) for name in layers}

    def tally_pass():
        for i, (start, acts, seg) in enumerate(runner.batches(inputs, "dissect: stream 4/4")):
            check(i, acts)
            encoded = tallies[layers[0]].encode(seg)
            for name, a in acts.items():
                tally_above(tallies[name], a, encoded)

    run_phase(comm, "dissection (streaming tally: generator and segmenter)", tally_pass)
    settings.update(quantile_rank=rank - 1)
    return thresholds, tallies, samples
