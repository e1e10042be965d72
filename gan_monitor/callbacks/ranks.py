"""One dissection of :class:`~gan_monitor.callbacks.dissection_monitor.DissectionMonitor`, on every rank.

Under DDP (``trainer.world_size > 1``) every rank calls :func:`dissect_and_log` at
the same batches (the monitor schedules by its own batch counter), dissects its
shard of the held-out sample and gets the same result
(:func:`gan_monitor.dissection.pipeline.dissect` with a ``TorchDistributed`` communicator).
Scalars are therefore identical on every rank; Lightning's loggers write them on
rank 0, where the pictures (top-unit grids, histograms) are built, and only there.
Each rank's local work is followed by a vote (``distributed.run_phase``), so a
failure on one rank makes every rank abandon this dissection together.

Per-unit FID and causal effects stay on rank 0 (no collective inside them); when
``max_unit_fid`` filters units, rank 0's per-unit FIDs are sent to every rank before
each dissection so the filter, too, is the same everywhere.
"""
from __future__ import annotations

from typing import Any

import torch

from gan_monitor.core.distributed import SingleProcess, TorchDistributed, run_phase

__all__ = ["communicator", "dissect_and_log", "shared_unit_fid_filter"]


def communicator(trainer):
    """The ranks that dissect together: all of the trainer's processes (one process
    when ``torch.distributed`` is not initialised)."""
    import torch.distributed as dist

    if int(getattr(trainer, "world_size", 1)) > 1 and dist.is_available() and dist.is_initialized():
        return TorchDistributed()
    return SingleProcess()


def shared_unit_fid_filter(monitor, comm) -> dict[str, Any]:
    """``dissect`` arguments of the unrealistic-unit filter, from rank 0's per-unit FIDs
    (which the other ranks then also keep, with their step, so all ranks' state agrees)."""
    schedule = monitor.unit_fid
    local = schedule.dissect_filter()
    if comm.world_size == 1 or schedule.max_unit_fid is None:
        return local
    layers = list(schedule.layers)
    fids = local.get("unit_fid", {})
    if fids:  # [step, batches, number of units per layer..., FIDs...] as float64
        values = [torch.as_tensor(getattr(fids[x], "fid", fids[x]), dtype=torch.float64).flatten().cpu()
                  for x in layers]
        head = [float(schedule.last_step or 0), float(schedule.last_batches or 0)] + [float(v.numel()) for v in values]
        packed = torch.cat([torch.tensor(head, dtype=torch.float64)] + values)
    else:
        packed = torch.zeros(0, dtype=torch.float64)
    zero = comm.gather(packed)[0]
    if not zero.numel():
        return {}
    step, batches = int(zero[0]), int(zero[1])
    sizes = [int(s) for s in zero[2:2 + len(layers)].tolist()]
    fids = dict(zip(layers, zero[2 + len(layers):].split(sizes)))
    if comm.rank != 0:
        schedule.fids = {name: f.clone() for name, f in fids.items()}
        schedule.last_step, schedule.last_batches = step, batches
    return {"unit_fid": fids, "max_unit_fid": schedule.max_unit_fid}


def dissect_and_log(monitor, trainer, pl_module, step: int):
    """Dissect on every rank (same result everywhere), then log on rank 0."""
    from gan_monitor.dissection.pipeline import dissect
    from gan_monitor.report.unit_examples import top_unit_examples

    comm = communicator(trainer)
    device = pl_module.device

    def prepare():
        generator = monitor.resolve_generator(pl_module)
        return generator, monitor.sample.inputs(generator, device)

    generator, inputs = run_phase(comm, "dissection (preparing)", prepare)
    result = dissect(
        generator, monitor.layers, monitor.segmenter, inputs=inputs, n=monitor.sample.n,
        seed=monitor.sample.seed, input_fn=monitor.sample.input_fn, threshold=monitor.threshold,
        quantile=monitor.quantile, iou=monitor.iou, cutoff=monitor.cutoff, batch_size=monitor.batch_size,
        device=device, topk=monitor.top_images, distributed=comm, **monitor.dissect_options,
        **shared_unit_fid_filter(monitor, comm),
    )
    monitor.last_step = step  # from here on this step counts as logged

    def log():
        if comm.rank != 0:
            return
        examples = None
        if monitor.log_images and monitor._writer.rich_loggers(trainer.loggers):
            examples = {layer: top_unit_examples(generator, inputs, ld, monitor.top_units, monitor.top_images,
                                                 device=device)
                        for layer, ld in result.items()}
        monitor._writer.write(trainer.loggers, result, step, examples)

    run_phase(comm, "logging the dissection", log)
    return result
