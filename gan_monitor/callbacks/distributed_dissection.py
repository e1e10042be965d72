"""One dissection of the :class:`~gan_monitor.callbacks.dissection_monitor.DissectionMonitor`,
on every rank of a DDP run (docs/method.md §9).

Under DDP (``trainer.world_size > 1``) every rank calls :func:`dissect_on_every_rank` at
the same batches (the monitor schedules by its own batch counter), dissects its shard of
the held-out sample and gets the same result (:func:`gan_monitor.dissection.pipeline.dissect`
with a ``TorchDistributed`` communicator). Scalars are therefore identical on every rank;
Lightning's loggers write them on rank 0, where :func:`log_dissection` also builds the
pictures (top-unit grids, histograms), and only there. Each rank's local work is followed
by a vote (``gan_monitor.core.distributed.run_phase``), so a failure on one rank makes every
rank abandon the dissection together.

Per-unit FID and causal effects stay on rank 0 (no collective inside them); when
``max_unit_fid`` filters units, :func:`share_unit_fids` sends rank 0's per-unit FIDs to
every rank before each dissection, so the filter, too, is the same everywhere.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from gan_monitor.callbacks.context import MonitorContext
from gan_monitor.callbacks.unit_fid import UnitFIDSchedule
from gan_monitor.core.distributed import SingleProcess, current, run_phase
from gan_monitor.core.inputs import default_input_fn
from gan_monitor.dissection.options import DissectionOptions
from gan_monitor.dissection.pipeline import dissect
from gan_monitor.report.tensorboard import DissectionWriter
from gan_monitor.report.unit_examples import top_unit_examples

__all__ = ["communicator", "rank_zero_unit_fids", "share_unit_fids", "dissect_on_every_rank", "log_dissection"]


def communicator(trainer):
    """The ranks that dissect together: all of the trainer's processes (one process
    when the trainer runs one, or ``torch.distributed`` is not initialised)."""
    if int(getattr(trainer, "world_size", 1)) > 1:
        return current()
    return SingleProcess()


def rank_zero_unit_fids(fids: dict[str, torch.Tensor], step: int | None, batches: int | None,
                        layers: list[str], comm) -> tuple[dict[str, torch.Tensor], int | None, int | None]:
    """Rank 0's ``(fids, step, batches)`` on every rank (``fids``: ``{layer: [U] float64}``
    for ``layers``, or empty before the first per-unit FIDs)."""
    if comm.world_size == 1:
        return fids, step, batches
    if fids:  # [step, batches, number of units per layer..., FIDs...] as float64
        values = [torch.as_tensor(fids[x], dtype=torch.float64).flatten().cpu() for x in layers]
        head = [float(step or 0), float(batches or 0)] + [float(v.numel()) for v in values]
        packed = torch.cat([torch.tensor(head, dtype=torch.float64)] + values)
    else:
        packed = torch.zeros(0, dtype=torch.float64)
    zero = comm.gather(packed)[0]
    if not zero.numel():
        return {}, None, None
    sizes = [int(s) for s in zero[2:2 + len(layers)].tolist()]
    shared = dict(zip(layers, zero[2 + len(layers):].split(sizes)))
    return shared, int(zero[0]), int(zero[1])


def share_unit_fids(schedule: UnitFIDSchedule, comm) -> None:
    """Copy rank 0's per-unit FIDs and their step into every rank's ``schedule`` (when it
    filters units), so that all ranks exclude the same units and keep the same state."""
    if comm.world_size == 1 or not schedule.filters_units:
        return
    fids, step, batches = rank_zero_unit_fids(schedule.fids, schedule.last_step, schedule.last_batches,
                                              schedule.layers, comm)
    if comm.rank != 0:
        schedule.fids = {name: f.clone() for name, f in fids.items()}
        schedule.last_step, schedule.last_batches = step, batches


def dissect_on_every_rank(context: MonitorContext, options: DissectionOptions, unit_fid: UnitFIDSchedule,
                          pl_module, comm) -> tuple[Any, nn.Module, Any]:
    """``(result, generator, inputs)``: the dissection of the generator on the held-out
    sample, the same on every rank, with units above ``max_unit_fid`` left out of labelling."""
    device = pl_module.device
    sample = context.sample

    def prepare():
        generator = context.resolve_generator(pl_module)
        return generator, sample.inputs(generator, device)

    generator, inputs = run_phase(comm, "dissection (preparing)", prepare)
    share_unit_fids(unit_fid, comm)
    # the held-out inputs were drawn by input_fn (default: Gaussian latents), so the iqr
    # sample may be drawn the same way: say so explicitly
    input_fn = sample.input_fn if sample.input_fn is not None else default_input_fn(generator)
    result = dissect(generator, list(context.layers), context.segmenter, inputs=inputs, n=sample.n,
                     seed=sample.seed, input_fn=input_fn, threshold=options.threshold, iou=options.iou,
                     cutoff=options.cutoff, batch_size=options.batch_size, topk=options.topk, device=device,
                     distributed=comm, exclude_units=unit_fid.exclude_units(), image_range=options.image_range,
                     allow_nondeterministic=options.allow_nondeterministic, memory_budget=options.memory_budget)
    unit_fid.annotate(result)
    return result, generator, inputs


def log_dissection(writer: DissectionWriter, context: MonitorContext, trainer, result, generator, inputs,
                   step: int, device, comm) -> None:
    """Log ``result`` at ``step`` on rank 0 (scalars to every logger, pictures to TensorBoard)."""
    def log():
        if comm.rank != 0:
            return
        pictures = context.pictures
        examples = None
        if context.image_loggers(trainer.loggers):
            examples = {layer: top_unit_examples(generator, inputs, ld, pictures.top_units, pictures.top_images,
                                                 device=device)
                        for layer, ld in result.items()}
        writer.write(trainer.loggers, result, step, examples)

    run_phase(comm, "logging the dissection", log)
