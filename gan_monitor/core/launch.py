"""Running one function on several processes that form one ``torch.distributed`` group.

* :func:`spawn` starts ``devices`` local processes (``torch.multiprocessing``, start
  method "spawn"): gloo on the CPU, nccl with one GPU per process on CUDA; the group
  gets a timeout, so a rank that stops answering ends the run instead of hanging it.
* :func:`torchrun_world_size` tells whether this process was started by ``torchrun``
  (several nodes: ``torchrun --nnodes 2 --nproc-per-node 4 ...``); :func:`join_torchrun`
  then joins that group (``env://``) and runs the function in this process.

The function is called as ``fn(comm, device, *args)`` with a
``gan_monitor.core.distributed.TorchDistributed`` communicator and the rank's torch device.
"""
from __future__ import annotations

import datetime
import os
import socket
from typing import Any, Callable

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from gan_monitor.core.distributed import TorchDistributed
from gan_monitor.core.errors import LaunchError

__all__ = ["spawn", "torchrun_world_size", "join_torchrun", "LaunchError"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _backend(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


def _rank_device(device: str, local_rank: int) -> torch.device:
    dev = torch.device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    return dev


def _run(fn, device, args):
    return fn(TorchDistributed(), device, *args)


def _worker(index, fn, world, device, port, timeout, threads, queue, args):
    if threads:
        torch.set_num_threads(threads)
    dev = _rank_device(device, index)
    dist.init_process_group(_backend(dev), init_method=f"tcp://127.0.0.1:{port}", rank=index, world_size=world,
                            timeout=datetime.timedelta(seconds=timeout))
    try:
        queue.put((index, True, _run(fn, dev, args)))
    except BaseException as err:  # noqa: BLE001 - reported to the parent
        queue.put((index, False, (type(err).__name__, " ".join(str(err).split()))))
    finally:
        dist.destroy_process_group()


def spawn(fn: Callable, devices: int, device: str = "cpu", *, args: tuple = (), timeout: float = 1800.0) -> list[Any]:
    """``fn(comm, device, *args)`` on ``devices`` new local processes; each rank's return
    value, in rank order. Raises :class:`LaunchError` (the lowest failing rank's error)
    if a rank raised or died. ``fn`` must be importable (a module-level function)."""
    devices = int(devices)
    if devices < 1:
        raise ValueError(f"devices must be a positive number of processes, got {devices}.")
    if torch.device(device).type == "cuda" and devices > torch.cuda.device_count():
        raise ValueError(f"devices={devices} processes need as many GPUs; {torch.cuda.device_count()} visible.")
    threads = max(1, (os.cpu_count() or 1) // devices) if torch.device(device).type == "cpu" else 0
    queue = mp.get_context("spawn").SimpleQueue()
    died, outcomes = None, {}

    def drain():  # read while the ranks run: a large result must not block its sender
        while not queue.empty():
            rank, ok, payload = queue.get()
            outcomes[rank] = (ok, payload)

    context = mp.start_processes(_worker, args=(fn, devices, device, _free_port(), float(timeout), threads, queue,
                                                args), nprocs=devices, join=False, start_method="spawn")
    try:
        while not context.join(timeout=0.2):
            drain()
    except Exception as err:  # noqa: BLE001 - a process died without reporting (killed, timeout)
        died = err
    drain()
    failed = sorted(r for r, (ok, _) in outcomes.items() if not ok)
    if failed:
        kind, message = outcomes[failed[0]][1]
        raise LaunchError(message, kind)
    if died is not None or len(outcomes) != devices:
        raise LaunchError(f"a process of the distributed run died without reporting an error ({died}).")
    return [outcomes[r][1] for r in range(devices)]


def torchrun_world_size() -> int:
    """The world size ``torchrun`` (or another ``env://`` launcher) set, else 1."""
    return int(os.environ.get("WORLD_SIZE", "1")) if "RANK" in os.environ else 1


def join_torchrun(fn: Callable, device: str = "cpu", *, args: tuple = (), timeout: float = 1800.0) -> Any:
    """Join the ``env://`` group ``torchrun`` set up and run ``fn(comm, device, *args)`` here."""
    dev = _rank_device(device, int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(_backend(dev), init_method="env://", timeout=datetime.timedelta(seconds=timeout))
    try:
        return _run(fn, dev, args)
    finally:
        dist.destroy_process_group()
