"""From a :class:`~gan_monitor.dissection.results.DissectionResult` to the full HTML report,
unit pictures included, in one call::

    from gan_monitor import dissect, write_report

    result = dissect(generator, ["layer3"], segmenter, n=1000, seed=0)
    page = write_report(result, generator, "dissect/")       # dissect/index.html

A ``dissection.json`` holds the numbers and, per unit, the indices of its top held-out
samples, not the images: the pictures are generated again from the generator and the
held-out inputs (drawn again from the result's ``n`` and ``seed``, with the same
``input_fn`` if the dissection had one, or the very ``inputs=`` it was given). The folder
has the layout of ``gan-monitor dissect`` (:mod:`gan_monitor.report.store`), so
``gan-monitor report`` and ``gan-monitor compare`` read it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from gan_monitor.core.inputs import make_inputs, num_samples
from gan_monitor.dissection.results import DissectionResult
from gan_monitor.report import pictures
from gan_monitor.report.html import build_report
from gan_monitor.report.run_record import checkpoint_key, prepare_run, run_settings
from gan_monitor.report.store import CheckpointEntry, OutputFolder, save_image, summary_rows
from gan_monitor.report.unit_examples import top_unit_examples

__all__ = ["write_report", "write_unit_pictures", "held_out_inputs"]

_KEPT = ("threshold", "quantile", "iou", "cutoff", "n", "seed", "inputs", "topk", "image_range")


def held_out_inputs(result: DissectionResult, generator: nn.Module, *, inputs: Any = None,
                    input_fn: Callable | None = None) -> Any:
    """The held-out inputs ``result`` was dissected on: ``inputs`` when given (checked to
    hold ``n`` samples), else drawn again from its ``n`` and ``seed`` (with ``input_fn``)."""
    n, seed = result.settings.get("n"), result.settings.get("seed")
    if inputs is not None:
        if num_samples(inputs) != n:
            raise ValueError(f"inputs hold {num_samples(inputs)} samples but the dissection used n={n}; "
                             "pass the inputs= the dissection was given.")
        return inputs
    if result.settings.get("inputs") == "given":
        raise ValueError("this dissection ran on inputs= you gave (they cannot be drawn again): pass the same "
                         "inputs= to draw the unit pictures.")
    if n is None or seed is None:
        raise ValueError("the result's settings have no n and seed to draw the held-out inputs again; pass inputs=.")
    return make_inputs(generator, int(n), int(seed), input_fn=input_fn)


def write_unit_pictures(store: OutputFolder, entry: CheckpointEntry, generator: nn.Module, result: DissectionResult,
                        inputs: Any, topk: int, *, device: torch.device | str | None = None) -> dict[str, list]:
    """One PNG per unit and layer (its ``topk`` top images, mask outlined) into the entry's
    folder; returns each layer's ``(unit, images, masks)`` (for the TensorBoard grid)."""
    examples_by_layer = {}
    for layer, ld in result.items():
        examples = top_unit_examples(generator, inputs, ld, list(range(ld.num_units)), topk, device=device)
        cutoff, labels = ld.settings.get("cutoff"), ld.labels
        for unit, images, masks in examples:
            caption = pictures.unit_caption(unit, labels[unit], float(ld.unit_iou[unit]), cutoff)
            save_image(store.unit_picture_path(entry, layer, unit), pictures.unit_row(images, masks, caption))
        examples_by_layer[layer] = examples
    return examples_by_layer


def write_report(result: DissectionResult, generator: nn.Module, out: str | Path, *, inputs: Any = None,
                 input_fn: Callable | None = None, name: str = "dissection", device: torch.device | str | None = None,
                 overwrite: bool = False) -> Path:
    """Write ``out/<name>/dissection.json``, the unit pictures and ``out/index.html``; return
    the page's path.

    ``generator`` must be the dissected one; the held-out inputs come from ``inputs`` or are
    drawn again (:func:`held_out_inputs`; pass the dissection's ``input_fn`` if it had one).
    ``out`` is refused when it holds another run (``overwrite=True`` replaces it), as with
    ``gan-monitor dissect``.
    """
    if not isinstance(result, DissectionResult):
        raise TypeError(f"result must be a DissectionResult (from gan_monitor.dissect), got {type(result).__name__}.")
    if not isinstance(generator, nn.Module):
        raise TypeError(f"generator must be the dissected nn.Module, got {type(generator).__name__}.")
    held_out = held_out_inputs(result, generator, inputs=inputs, input_fn=input_fn)
    settings = {k: result.settings.get(k) for k in _KEPT}
    record, _ = prepare_run(Path(out), run_settings(**settings, source="write_report"), overwrite=overwrite,
                            command=f"gan_monitor.write_report(result, generator, {str(out)!r})")
    store = OutputFolder(out)
    step = result.settings.get("step")
    entry = store.new_entry(Path(name), step=step, x=step if isinstance(step, (int, float)) else 0)
    entry.checkpoint = None
    store.write_dissection(entry, result)
    topk = int(result.settings.get("topk") or 5)
    write_unit_pictures(store, entry, generator, result, held_out, topk, device=device)
    record.add_done(checkpoint_key(Path(out) / entry.name), entry)
    entries = record.all_entries(store, [entry])
    store.write_timeline(list(result.layers), entries, settings)
    store.write_summary([row for e in entries for row in summary_rows(e.result, e.name, e.step)])
    record.finish()
    return build_report(out, checkpoint=entry.name)

