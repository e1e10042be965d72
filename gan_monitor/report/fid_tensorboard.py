"""Logging per-unit FID and artifact ablation (``gan_monitor.fid.unit_fid``) to TensorBoard.

Tags (``<layer>`` is the dotted layer name, as in :mod:`gan_monitor.report.tensorboard`):

* ``gan_monitor/<layer>/unit_fid``: histogram of the layer's per-unit FIDs;
* ``gan_monitor/<layer>/artifact_units``: image grid, one row per highest-FID unit
  with its top-activating pool images, captioned ``"unit 7 FID 84.2 (k=100)"``;
* ``gan_monitor/<layer>/fid_max`` and ``.../fid_median``: scalars;
* ``gan_monitor/<layer>/fid_before``, ``.../fid_artifacts_ablated`` and
  ``.../fid_random_ablated`` (mean over random draws): the artifact ablation.

``*_scalars`` give ``{tag: value}`` for any Lightning logger's ``log_metrics``;
``write_*`` write to a ``torch.utils.tensorboard.SummaryWriter``.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from gan_monitor.report import pictures as visualize
from gan_monitor.fid.unit_fid import ArtifactAblation, UnitFID

__all__ = ["unit_fid_scalars", "ablation_scalars", "artifact_examples", "artifact_units_grid",
           "write_unit_fid", "write_artifact_ablation"]

PREFIX = "gan_monitor"


def _tag(layer: str, name: str) -> str:
    return f"{PREFIX}/{layer}/{name}"


def unit_fid_scalars(result: UnitFID) -> dict[str, float]:
    """Highest and median per-unit FID of the layer."""
    return {_tag(result.layer, "fid_max"): float(result.fid.max()),
            _tag(result.layer, "fid_median"): float(result.fid.median())}


def ablation_scalars(result: ArtifactAblation) -> dict[str, float]:
    """The three numbers of Table 1: before, artifact units ablated, random units ablated (mean)."""
    s = result.scalars()
    return {_tag(result.layer, "fid_before"): s["before"],
            _tag(result.layer, "fid_artifacts_ablated"): s["artifacts_ablated"],
            _tag(result.layer, "fid_random_ablated"): s["random_ablated"]}


@torch.no_grad()
def artifact_examples(generator: nn.Module, result: UnitFID, n_units: int = 8, n_images: int = 5,
                      inputs: Any = None, device=None) -> list[tuple[int, torch.Tensor]]:
    """``[(unit, images [n_images, 3, H, W]), ...]`` for the ``n_units`` highest-FID units:
    their top-activating pool images, generated again from the pool's inputs
    (``result.inputs`` unless ``inputs`` is given)."""
    from gan_monitor.core.inputs import call_generator, index_inputs, move_inputs
    from gan_monitor.core.tracing import eval_mode

    inputs = result.inputs if inputs is None else inputs
    if inputs is None:
        raise ValueError("the UnitFID result holds no pool inputs (loaded from JSON?); pass inputs=.")
    units = result.artifact_units(n_units)
    n_images = min(int(n_images), result.k)
    if not units or n_images < 1:
        return []
    wanted = result.topk[units, :n_images]
    index, position = torch.unique(wanted.flatten(), return_inverse=True)
    position = position.view(len(units), n_images)
    with eval_mode(generator):
        images = call_generator(generator, move_inputs(index_inputs(inputs, index), device))
    images = images.detach().float().cpu()
    return [(u, images[position[row]]) for row, u in enumerate(units)]


def artifact_units_grid(examples, result: UnitFID, title: str | None = None):
    """PIL image: one captioned row of top images per unit of ``examples``."""
    rows = []
    for u, images in examples:
        masks = torch.ones(images.shape[0], *images.shape[-2:], dtype=torch.bool)  # no mask: plain images
        rows.append(visualize.unit_row(images, masks, f"unit {u} FID {float(result.fid[u]):.1f} (k={result.k})"))
    return visualize.top_units_grid(rows, title=title)


def write_unit_fid(writer, result: UnitFID, step: int, *, generator: nn.Module | None = None,
                   n_units: int = 8, n_images: int = 5, inputs: Any = None, device=None) -> None:
    """Histogram of per-unit FIDs, ``fid_max``/``fid_median`` scalars and, given the
    ``generator``, the image grid of the highest-FID units' top images."""
    step = int(step)
    writer.add_histogram(_tag(result.layer, "unit_fid"), result.fid.double().numpy(), step)
    for tag, value in unit_fid_scalars(result).items():
        writer.add_scalar(tag, value, step)
    if generator is not None:
        examples = artifact_examples(generator, result, n_units, n_images, inputs=inputs, device=device)
        grid = artifact_units_grid(
            examples, result, title=f"{result.layer} @ step {step}: highest per-unit FID "
                                    f"(M={result.pool}, k={result.k}, {result.extractor})")
        writer.add_image(_tag(result.layer, "artifact_units"), visualize.to_chw(grid), step, dataformats="CHW")
    writer.flush()


def write_artifact_ablation(writer, result: ArtifactAblation, step: int) -> None:
    """The three artifact-ablation scalars, and the printed table as text."""
    for tag, value in ablation_scalars(result).items():
        writer.add_scalar(tag, value, int(step))
    writer.add_text(_tag(result.layer, "artifact_ablation"), result.table(), int(step))
    writer.flush()
