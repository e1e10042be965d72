"""The output folder of ``gan-monitor dissect``: its layout is written, read and listed
here and nowhere else (``cli/dissect`` writes it, ``cli/compare`` and the HTML report read it).

    OUT/
      timeline.json                       the index: layers, settings, one entry per checkpoint
      summary.csv                         one row per checkpoint and layer (the rows of ``summary_rows``)
      tensorboard/                        event files (written by ``gan_monitor.report.tensorboard``)
      <name>/dissection.json              ``DissectionResult.to_json`` of one checkpoint
      <name>/units/<layer>/unit_<u>.png   unit u's top images with its mask outlined
      <name>/bars_<layer>.png             interpretable units per concept (drawn by the report)
      index.html                          the HTML report
      run.json                            the run: settings, state "running" until the end, then
                                          "finished" (``gan_monitor.report.run_record``)

A timeline entry is ``{"name", "checkpoint", "step", "x", "json", "unit_pictures"}``: ``x`` is
the checkpoint's training step (its position in the timeline for a plain state dict, whose
step is ``null``), paths are relative to OUT. A folder holding only ``dissection.json`` reads
as one checkpoint named after the folder.

Every file is written atomically (a temporary file in the same folder, then ``os.replace``):
a reader sees the previous version or the new one, never half a file, and a writer that
fails midway leaves no partial file behind. A folder whose ``run.json`` does not say
"finished" (an interrupted or running ``dissect``) and a folder whose checkpoints were
dissected with different settings are refused by the readers (``report``, ``compare``)
with the way to fix them.
"""
from __future__ import annotations

import csv
import io
import json
import os
import re
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Iterator, Mapping, Sequence

from gan_monitor.core.errors import ReportError
from gan_monitor.dissection.results import DissectionResult

__all__ = ["TIMELINE", "SUMMARY", "DISSECTION", "TENSORBOARD", "PAGE", "RUN", "read_record", "check_finished",
           "atomic_write", "write_text", "save_image",
           "safe_name", "CheckpointEntry", "summary_rows", "rows_to_csv", "read_dissection_file", "OutputFolder"]

TIMELINE = "timeline.json"
SUMMARY = "summary.csv"
DISSECTION = "dissection.json"
TENSORBOARD = "tensorboard"
PAGE = "index.html"
RUN = "run.json"
# result settings that must agree between the checkpoints of one folder
_SAME_SETTINGS = ("threshold", "quantile", "iou", "cutoff", "n", "seed", "inputs", "input_fn", "image_range")


@contextmanager
def atomic_write(path: str | Path, mode: str = "w") -> Iterator[IO]:
    """Open a temporary file next to ``path`` for writing (``mode`` ``"w"`` or ``"wb"``);
    when the block ends without error it replaces ``path``, otherwise it is deleted."""
    if mode not in ("w", "wb"):
        raise ValueError(f"mode must be 'w' or 'wb', got {mode!r}.")
    path = Path(path)
    # created with open(..., "x") rather than mkstemp: the file gets the usual permissions (umask)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    text = {"encoding": "utf-8", "newline": ""} if mode == "w" else {}
    try:
        with open(temporary, mode.replace("w", "x"), **text) as f:
            yield f
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def write_text(path: str | Path, text: str) -> Path:
    with atomic_write(path) as f:
        f.write(text)
    return Path(path)


def save_image(path: str | Path, image) -> Path:
    """Save a PIL image as PNG at ``path``, atomically."""
    with atomic_write(path, "wb") as f:
        image.save(f, format="PNG")
    return Path(path)


def safe_name(name: str) -> str:
    """A layer name as a file name part: ``"blocks.0/conv"`` -> ``"blocks.0_conv"``."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


@dataclass
class CheckpointEntry:
    """One dissected checkpoint of the folder (``result`` is filled when read)."""

    name: str
    json: str
    step: int | None = None
    x: float = 0
    checkpoint: str | None = None
    unit_pictures: dict[str, str] = field(default_factory=dict)
    result: DissectionResult | None = field(default=None, compare=False, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "checkpoint": self.checkpoint, "step": self.step, "x": self.x,
                "json": self.json, "unit_pictures": dict(self.unit_pictures)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "CheckpointEntry":
        return cls(name=str(d["name"]), json=str(d["json"]), step=d.get("step"), x=d.get("x", 0),
                   checkpoint=d.get("checkpoint"), unit_pictures=dict(d.get("unit_pictures") or {}))


def summary_rows(result: DissectionResult, checkpoint: str, step: int | None = None,
                 layers: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """One row per layer: units, interpretable units, concepts, mean IoU (4 decimals) and
    interpretable units per category (``units_<category>``), i.e. the layer summary of
    ``docs/method.md`` §5; the rows of summary.csv, of ``gan-monitor compare`` and of the
    report's summary tables."""
    rows = []
    for layer in list(result.layers) if layers is None else layers:
        s = result[layer].summary
        row = {"checkpoint": checkpoint, "step": "" if step is None else step, "layer": layer, "units": s["units"],
               "interpretable_units": s["interpretable_units"], "concept_diversity": s["concept_diversity"],
               "mean_iou": round(s["mean_iou"], 4)}
        row.update({f"units_{category}": n for category, n in s["per_category"].items()})
        rows.append(row)
    return rows


def rows_to_csv(rows: Sequence[Mapping[str, Any]]) -> str:
    """CSV text of ``rows``; columns in order of first appearance, a missing category counts 0."""
    fields: list[str] = []
    for row in rows:
        fields.extend(k for k in row if k not in fields)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, restval=0, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def _read_result(path: Path) -> DissectionResult:
    try:
        return DissectionResult.from_json(path)
    except (OSError, ValueError, KeyError) as err:
        raise ReportError(f"cannot read {path}: {err}") from err


def read_dissection_file(path: str | Path) -> CheckpointEntry:
    """A single dissection.json as an entry named after its folder."""
    path = Path(path)
    return CheckpointEntry(name=path.parent.name, json=path.name, result=_read_result(path))


def read_record(root: str | Path) -> dict[str, Any] | None:
    """``root/run.json`` as a dict, None when there is none (a folder of an older version)."""
    path = Path(root) / RUN
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ReportError(f"cannot read {path}: {err}; rerun `gan-monitor dissect` with --overwrite.") from err
    if not isinstance(record, dict) or "state" not in record:
        raise ReportError(f"{path} is not a gan-monitor run record; rerun `gan-monitor dissect` with --overwrite.")
    return record


def check_finished(root: str | Path) -> None:
    """Raise ``ReportError`` (saying how to fix it) unless the folder's run finished."""
    record = read_record(root)
    if record is None or record.get("state") == "finished":
        return
    command = record.get("command") or f"gan-monitor dissect CKPT ... --out {root}"
    raise ReportError(
        f"{root} holds an unfinished dissection ({len(record.get('done', []))} checkpoint(s) done; the run was "
        f"interrupted or is still running). Rerun the same command to complete it: {command} "
        "(or add --overwrite to start again).")


def _check_not_mixed(root: Path, entries: Sequence[CheckpointEntry]) -> None:
    first = entries[0]
    for entry in entries[1:]:
        differ = [k for k in _SAME_SETTINGS if first.result.settings.get(k) != entry.result.settings.get(k)]
        if differ:
            what = ", ".join(f"{k} {first.result.settings.get(k)!r} vs {entry.result.settings.get(k)!r}"
                             for k in differ)
            raise ReportError(f"{root} mixes dissections made with different settings ({first.name} vs {entry.name}: "
                              f"{what}); rerun `gan-monitor dissect` on all checkpoints with --overwrite.")


class OutputFolder:
    """The output folder ``root`` (see the module docstring for its layout)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self._names: set[str] = set()

    # ---- writing ---------------------------------------------------------------------
    def new_entry(self, checkpoint: str | Path, *, step: int | None, x: float) -> CheckpointEntry:
        """An entry for ``checkpoint`` whose folder name (from the file name) is unique in this folder."""
        checkpoint = Path(checkpoint)
        base = re.sub(r"[^A-Za-z0-9_.=-]+", "_", checkpoint.stem) or "checkpoint"
        name, i = base, 1
        while name in self._names:
            i += 1
            name = f"{base}_{i}"
        self._names.add(name)
        return CheckpointEntry(name=name, json=f"{name}/{DISSECTION}", step=step, x=x, checkpoint=str(checkpoint))

    def reserve_names(self, names) -> None:
        """Folder names taken by earlier entries (``new_entry`` picks other ones)."""
        self._names.update(names)

    def adopt_entry(self, entry: CheckpointEntry) -> CheckpointEntry:
        """An entry written earlier into this folder, with its ``result`` read; its name is taken."""
        self._names.add(entry.name)
        entry.result = _read_result(self.root / entry.json)
        return entry

    def write_dissection(self, entry: CheckpointEntry, result: DissectionResult) -> Path:
        (self.root / entry.name).mkdir(parents=True, exist_ok=True)
        entry.result = result
        return write_text(self.root / entry.json, result.to_json())

    def unit_picture_path(self, entry: CheckpointEntry, layer: str, unit: int) -> Path:
        """Where unit ``unit``'s picture goes (the folder is created and listed in the entry)."""
        folder = f"{entry.name}/units/{safe_name(layer)}"
        (self.root / folder).mkdir(parents=True, exist_ok=True)
        entry.unit_pictures[layer] = folder
        return self.root / folder / f"unit_{int(unit)}.png"

    def write_timeline(self, layers: Sequence[str], entries: Sequence[CheckpointEntry],
                       settings: Mapping[str, Any]) -> Path:
        index = {"layers": list(layers), "checkpoints": [e.to_dict() for e in entries], "settings": dict(settings)}
        return write_text(self.root / TIMELINE, json.dumps(index, indent=1))

    def write_summary(self, rows: Sequence[Mapping[str, Any]]) -> str:
        """Write summary.csv and return its text."""
        table = rows_to_csv(rows)
        write_text(self.root / SUMMARY, table)
        return table

    def save_image(self, relative: str, image) -> Path:
        return save_image(self.root / relative, image)

    def write_page(self, html: str) -> Path:
        return write_text(self.root / PAGE, html)

    # ---- reading ---------------------------------------------------------------------
    def read_entries(self) -> list[CheckpointEntry]:
        """The folder's checkpoints in the order of timeline.json, each with its ``result``."""
        if not self.root.is_dir():
            raise ReportError(f"{self.root}: no such folder.")
        check_finished(self.root)
        index_file = self.root / TIMELINE
        if index_file.is_file():
            try:
                entries = [CheckpointEntry.from_dict(d)
                           for d in json.loads(index_file.read_text(encoding="utf-8"))["checkpoints"]]
            except (OSError, ValueError, KeyError, TypeError) as err:
                raise ReportError(f"cannot read {index_file}: {err}") from err
        elif (self.root / DISSECTION).is_file():
            entries = [CheckpointEntry(name=self.root.name, json=DISSECTION)]
        else:
            raise ReportError(f"{self.root} has neither {TIMELINE} nor {DISSECTION}; "
                              f"create it with `gan-monitor dissect CKPT --layers ... --out {self.root}`.")
        for entry in entries:
            entry.result = _read_result(self.root / entry.json)
        if entries:
            _check_not_mixed(self.root, entries)
        return entries

    def read_summary(self) -> list[dict[str, str]]:
        """The rows of summary.csv, as text."""
        with open(self.root / SUMMARY, encoding="utf-8", newline="") as f:
            return list(csv.DictReader(f))

    def unit_picture(self, entry: CheckpointEntry, layer: str, unit: int) -> str | None:
        """The relative path of unit ``unit``'s picture, or None when there is none."""
        folder = entry.unit_pictures.get(layer)
        if folder and (self.root / folder / f"unit_{int(unit)}.png").is_file():
            return f"{folder}/unit_{int(unit)}.png"
        return None

    def bar_chart_path(self, entry: CheckpointEntry, layer: str) -> str:
        """Relative path of the layer's units-per-concept bar graph (in the checkpoint's folder
        when it has one, else next to the page)."""
        name = f"bars_{safe_name(layer)}.png"
        return f"{entry.name}/{name}" if (self.root / entry.name).is_dir() else name
