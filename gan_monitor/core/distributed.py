"""The communication a distributed dissection needs, behind a tiny interface.

A *communicator* has ``rank`` and ``world_size`` and four collective calls, which
every rank must make in the same order (never inside code that only some ranks run):

* ``sum(tensor)``: element-wise sum over ranks (integer counts: exact);
* ``gather(tensor)``: every rank's tensor, in rank order; shapes may differ between
  ranks (dtype and number of dimensions must agree);
* ``broadcast(tensor, src)``: rank ``src``'s tensor (same shape on every rank);
* ``vote(error)``: ``{rank: message}`` of the ranks that failed, the same on every rank.

:class:`SingleProcess` is the trivial one-process version (no communication at all);
:class:`TorchDistributed` runs over an initialised ``torch.distributed`` process
group: gloo on CPU, nccl on GPU (tensors are moved to the backend's device and back).
Its ``gather`` pads uneven shapes itself instead of calling torchmetrics'
``gather_all_tensors``: one small header collective (dtype, dimensions, shape) both sizes
the padding and checks that the ranks agree (a clear error instead of a hang or garbage
when they do not), then one collective moves the data; ``gather_all_tensors`` would add
a barrier and a size gather and cannot tell a dtype or dimension mismatch.

:func:`run_phase` runs one rank's local work and then votes, so an exception on one
rank never makes it skip the next collective: if any rank failed, every rank raises
:class:`RankFailure` naming the failing rank(s) and all abandon the work together.
Ranks that hang instead of raising are caught only by the process group's timeout
(``torch.distributed.init_process_group(timeout=...)``; Lightning:
``DDPStrategy(timeout=...)``).
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Protocol, runtime_checkable

import torch
import torch.distributed as dist

from gan_monitor.core.errors import RankFailure

__all__ = ["Communicator", "SingleProcess", "TorchDistributed", "RankFailure", "current", "resolve",
           "run_phase", "rank_zero_buffers", "check_identical", "fingerprint", "sum_states", "merge_top_samples",
           "ordered_keys", "keys_to_values", "select_across"]

_MAX_DIMS = 8


@runtime_checkable
class Communicator(Protocol):
    rank: int
    world_size: int

    def sum(self, tensor: torch.Tensor) -> torch.Tensor: ...

    def gather(self, tensor: torch.Tensor) -> list[torch.Tensor]: ...

    def broadcast(self, tensor: torch.Tensor, src: int = 0) -> torch.Tensor: ...

    def vote(self, error: str | None) -> dict[int, str]: ...


class SingleProcess:
    """One process: every collective is the identity."""

    rank = 0
    world_size = 1

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor

    def gather(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        return [tensor]

    def broadcast(self, tensor: torch.Tensor, src: int = 0) -> torch.Tensor:
        return tensor

    def vote(self, error: str | None) -> dict[int, str]:
        return {} if error is None else {0: error}

    def __repr__(self) -> str:
        return "SingleProcess()"


def _backend_device(backend: str) -> torch.device:
    backend = str(backend).lower()
    if "nccl" in backend and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    if "xccl" in backend and hasattr(torch, "xpu") and torch.xpu.is_available():
        return torch.device("xpu", torch.xpu.current_device())
    return torch.device("cpu")


class TorchDistributed:
    """Collectives over ``torch.distributed`` (default: the default process group).

    Tensors travel on the backend's device (``cuda:<current device>`` for nccl, the
    CPU for gloo) and come back on the device they were given on.
    """

    def __init__(self, group=None):
        if not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError("torch.distributed is not initialised: call torch.distributed.init_process_group "
                               "first (Lightning does it for strategy='ddp'), or use SingleProcess().")
        self._dist, self.group = dist, group
        self.rank = int(dist.get_rank(group))
        self.world_size = int(dist.get_world_size(group))
        self.device = _backend_device(dist.get_backend(group))

    def __repr__(self) -> str:
        return f"TorchDistributed(rank={self.rank}, world_size={self.world_size}, device={self.device})"

    def _to_wire(self, tensor: torch.Tensor) -> torch.Tensor:
        t = tensor.detach()
        if t.dtype == torch.bool:
            t = t.to(torch.uint8)
        return t.to(self.device, copy=True).contiguous()

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        t = self._to_wire(tensor)
        self._dist.all_reduce(t, op=self._dist.ReduceOp.SUM, group=self.group)
        return t.to(tensor.device, tensor.dtype)

    def broadcast(self, tensor: torch.Tensor, src: int = 0) -> torch.Tensor:
        t = self._to_wire(tensor)
        self._dist.broadcast(t, src=src, group=self.group)
        return t.to(tensor.device, tensor.dtype)

    def gather(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        if tensor.dim() > _MAX_DIMS:
            raise ValueError(f"gather takes tensors of at most {_MAX_DIMS} dimensions, got {tensor.dim()}.")
        t = self._to_wire(tensor).flatten()
        # header: dtype code, number of dimensions, shape (padded): one small all_gather
        code = list(_DTYPES).index(t.dtype) if t.dtype in _DTYPES else -1
        header = torch.full((2 + _MAX_DIMS,), -1, dtype=torch.int64)
        header[0], header[1] = code, tensor.dim()
        header[2:2 + tensor.dim()] = torch.tensor(tensor.shape, dtype=torch.int64)
        header = header.to(self.device)
        headers = [torch.empty_like(header) for _ in range(self.world_size)]
        self._dist.all_gather(headers, header, group=self.group)
        headers = [h.cpu() for h in headers]
        if code < 0 or any(int(h[0]) != code or int(h[1]) != tensor.dim() for h in headers):
            raise ValueError("gather: the ranks passed tensors of different dtypes or numbers of dimensions "
                             f"(dtype codes {[int(h[0]) for h in headers]}, dims {[int(h[1]) for h in headers]}).")
        shapes = [tuple(int(s) for s in h[2:2 + tensor.dim()]) for h in headers]
        sizes = [int(torch.tensor(s, dtype=torch.int64).prod()) for s in shapes]
        longest = max(sizes)
        if longest:
            padded = torch.zeros(longest, dtype=t.dtype, device=self.device)
            padded[:t.numel()] = t
            parts = [torch.empty_like(padded) for _ in range(self.world_size)]
            self._dist.all_gather(parts, padded, group=self.group)
        else:
            parts = [t] * self.world_size
        return [p[:n].view(s).to(tensor.device, tensor.dtype) for p, n, s in zip(parts, sizes, shapes)]

    def vote(self, error: str | None) -> dict[int, str]:
        flags = torch.zeros(self.world_size, dtype=torch.int64)
        flags[self.rank] = int(error is not None)
        flags = self.sum(flags)
        if not int(flags.sum()):  # the common case: one tiny all_reduce
            return {}
        text = torch.tensor(list((error or "").encode("utf-8")[:2000]), dtype=torch.uint8)
        messages = self.gather(text)
        return {r: bytes(m.tolist()).decode("utf-8", "replace") for r, m in enumerate(messages) if int(flags[r])}


_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.int32,
           torch.int16, torch.int8, torch.uint8)


def current(group=None) -> SingleProcess | TorchDistributed:
    """:class:`TorchDistributed` when ``torch.distributed`` is initialised with more
    than one rank, else :class:`SingleProcess`."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1:
        return TorchDistributed(group)
    return SingleProcess()


def resolve(distributed: Any) -> Communicator:
    """``None``/``False``: one process; ``True``/``"auto"``: :func:`current`; or a communicator."""
    if distributed is None or distributed is False:
        return SingleProcess()
    if distributed is True or distributed == "auto":
        return current()
    if isinstance(distributed, Communicator):
        return distributed
    raise TypeError("distributed must be None (one process), True/'auto' (torch.distributed's default group) or a "
                    f"gan_monitor.core.distributed communicator, got {type(distributed).__name__}.")


def run_phase(comm: Communicator, what: str, work: Callable[[], Any]) -> Any:
    """``work()`` on this rank, then a vote. One process: just ``work()`` (errors propagate
    unchanged). Several: if any rank raised, every rank raises :class:`RankFailure`."""
    if comm.world_size == 1:
        return work()
    result, error, cause = None, None, None
    try:
        result = work()
    except Exception as err:  # noqa: BLE001 - reported to every rank by the vote
        error, cause = f"{type(err).__name__}: {' '.join(str(err).split())}", err
    failed = comm.vote(error)
    if failed:
        raise RankFailure(what, failed, comm.world_size) from cause
    return result


def fingerprint(tensors) -> torch.Tensor:
    """float64 ``[2 * len]``: sum and sum of squares of each tensor (identical tensors give
    identical fingerprints; different ones almost surely not)."""
    parts = []
    for t in tensors:
        d = t.detach().double()
        parts += [d.sum(), (d * d).sum()]
    return torch.stack(parts).cpu() if parts else torch.zeros(0, dtype=torch.float64)


def check_identical(comm: Communicator, what: str, local: torch.Tensor, hint: str) -> None:
    """Raise on every rank (same message) unless ``local`` is bit-identical on all ranks."""
    if comm.world_size == 1:
        return
    values = comm.gather(local.cpu())
    differ = [r for r, v in enumerate(values) if v.shape != values[0].shape or not torch.equal(v, values[0])]
    if differ:
        raise ValueError(f"{what} differ(s) between ranks (ranks {differ} differ from rank 0); {hint}")


@contextlib.contextmanager
def rank_zero_buffers(module: torch.nn.Module, comm: Communicator):
    """Inside the block every rank's ``module`` uses rank 0's buffers (e.g. BatchNorm
    running statistics, which DDP ranks update from their own batches); restored after."""
    buffers = [b for b in module.buffers()]
    if comm.world_size == 1 or not buffers:
        yield
        return
    saved = [b.detach().clone() for b in buffers]
    try:
        for b in buffers:
            b.copy_(comm.broadcast(b, 0))
        yield
    finally:
        for b, s in zip(buffers, saved):
            b.copy_(s)


def sum_states(metrics, comm: Communicator) -> None:
    """Sum the (integer, sum-reduced) states of torchmetrics ``metrics`` over ranks, in
    place, with one collective for all of them."""
    if comm.world_size == 1 or not metrics:
        return
    states = [(m, name, value) for m in metrics for name, value in m.metric_state.items()]
    flat = comm.sum(torch.cat([value.reshape(-1).long() for _, _, value in states]))
    first = 0
    for m, name, value in states:
        setattr(m, name, flat[first:first + value.numel()].view(value.shape).to(value.dtype))
        first += value.numel()


def merge_top_samples(samples: dict, comm: Communicator) -> None:
    """Merge every rank's ``top_samples.TopSamples`` (one per layer, in ``samples``' order)
    in place: two gathers for all layers."""
    if comm.world_size == 1 or not samples:
        return
    parts = list(samples.values())
    sizes = [p.values.shape[0] for p in parts]
    values = comm.gather(torch.cat([p.values for p in parts]))
    indices = comm.gather(torch.cat([p.indices for p in parts]))
    for r, (v, i) in enumerate(zip(values, indices)):
        if r == comm.rank:
            continue
        for p, v_part, i_part in zip(parts, v.split(sizes), i.split(sizes)):
            p.merge_from(v_part, i_part)


_LOW_BITS = 0x7FFFFFFF


def ordered_keys(values: torch.Tensor) -> torch.Tensor:
    """int64 keys of float32 ``values`` in the same order (``-0.0`` counts as ``0.0``)."""
    bits = (values.float() + 0.0).view(torch.int32).long()
    return torch.where(bits >= 0, bits, bits ^ _LOW_BITS)


def keys_to_values(keys: torch.Tensor) -> torch.Tensor:
    """Inverse of ``ordered_keys``."""
    bits = torch.where(keys >= 0, keys, keys ^ _LOW_BITS)
    return bits.to(torch.int32).view(torch.float32)


def select_across(values: torch.Tensor, ranks: torch.Tensor, comm) -> torch.Tensor:
    """``[U, R]`` float32: for each row u, the ``ranks[u, j]``-th largest (1 = largest) of
    row u of ``values`` ``[U, s]`` taken over every rank of ``comm`` together (each rank
    holds its own values), exactly: bisection on ``ordered_keys`` with one ``[U, R]`` count
    summed over ranks per bit (32 rounds, whatever the number of ranks). ``ranks`` must
    not exceed the total number of values per row."""
    keys = ordered_keys(values).to(torch.int32).sort(dim=1).values  # ascending per row (keys fit in int32)
    ranks = ranks.to(keys.device, torch.long)
    lo = torch.full(ranks.shape, -(1 << 31), dtype=torch.long, device=keys.device)  # count(key >= lo) >= rank
    hi = torch.full(ranks.shape, 1 << 31, dtype=torch.long, device=keys.device)  # count(key >= hi) < rank
    for _ in range(32):
        mid = torch.div(lo + hi, 2, rounding_mode="floor")
        count = keys.shape[1] - torch.searchsorted(keys, mid.to(torch.int32))  # values with key >= mid
        reached = comm.sum(count) >= ranks
        lo, hi = torch.where(reached, mid, lo), torch.where(reached, hi, mid)
    return keys_to_values(lo)
