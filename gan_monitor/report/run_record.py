"""``run.json``: which run of ``gan-monitor dissect`` an output folder holds, and whether it
finished (the folder layout is in :mod:`gan_monitor.report.store`).

``{"format": 1, "state": "running" | "finished", "fingerprint", "settings", "command",
"done": [timeline entries]}``. ``dissect`` writes it first (state ``running``), adds each
checkpoint to ``done`` once all of its files are written, and sets ``finished`` after
``timeline.json`` and ``summary.csv``: a folder whose run was interrupted never reads as
finished, and ``report``/``compare`` refuse it (``store.check_finished``) with the way out
(rerun the same command, which completes it, or ``--overwrite``).

:func:`prepare_run` decides what a new run may do with ``--out``: a new or empty folder is
used; a folder of a run with the same settings (same ``fingerprint``) is completed or
extended (its finished checkpoints are kept); any other run is refused unless
``overwrite``, which replaces it whole (only files that ``dissect`` writes are removed: a
folder holding anything else is refused even then).
"""
from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from gan_monitor.core.errors import CommandError
from gan_monitor.report.store import (
    DISSECTION,
    PAGE,
    RUN,
    SUMMARY,
    TENSORBOARD,
    TIMELINE,
    CheckpointEntry,
    check_finished,
    read_record,
    write_text,
)

__all__ = ["RUN", "RunRecord", "fingerprint", "run_settings", "checkpoint_key", "file_stamp", "prepare_run",
           "check_finished", "read_record"]

_FORMAT = 1
# files and folders of the layout (anything else in --out is the user's, never removed)
_OWN_FILES = {RUN, TIMELINE, SUMMARY, PAGE}


def fingerprint(settings: Mapping[str, Any]) -> str:
    """A hash of the settings that decide the numbers (equal settings, equal fingerprint)."""
    text = json.dumps({k: settings[k] for k in sorted(settings)}, sort_keys=True, default=repr)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def run_settings(**settings: Any) -> dict[str, Any]:
    """The settings stored in run.json (values as JSON; objects such as a threshold mode by
    their ``repr``, which names every field)."""
    return json.loads(json.dumps(settings, default=repr))


@dataclass
class RunRecord:
    """The run a folder holds; ``save()`` writes it atomically to ``root/run.json``."""

    root: Path
    settings: dict[str, Any]
    command: str = ""
    state: str = "running"
    done: list[dict[str, Any]] = field(default_factory=list)

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.settings)

    def save(self) -> None:
        write_text(self.root / RUN, json.dumps({
            "format": _FORMAT, "state": self.state, "fingerprint": self.fingerprint, "settings": self.settings,
            "command": self.command, "done": self.done}, indent=1, default=repr))

    def done_entry(self, checkpoint: str) -> CheckpointEntry | None:
        """The finished entry of ``checkpoint`` (a path as resolved by :func:`checkpoint_key`)."""
        for d in self.done:
            if d.get("key") == checkpoint and (self.root / d["json"]).is_file():
                return CheckpointEntry.from_dict(d)
        return None

    def add_done(self, checkpoint: str, entry: CheckpointEntry, stamp: list[int] | None = None) -> None:
        """Record ``entry`` as finished (``stamp``: the checkpoint file's size and mtime)."""
        self.done = [d for d in self.done if d.get("key") != checkpoint] + [
            {"key": checkpoint, "stamp": stamp, **entry.to_dict()}]
        self.save()

    def done_xs(self) -> list[float]:
        return [float(d.get("x", 0)) for d in self.done]

    def all_entries(self, store, entries: list[CheckpointEntry]) -> list[CheckpointEntry]:
        """``entries`` (this run's, in order) and the finished ones of earlier runs with the
        same settings that this run did not list, ordered by ``x``."""
        names = {e.name for e in entries}
        earlier = [store.adopt_entry(CheckpointEntry.from_dict(d)) for d in self.done
                   if d["name"] not in names and (self.root / d["json"]).is_file()]
        return sorted(earlier + list(entries), key=lambda e: float(e.x))

    def finish(self) -> None:
        self.state = "finished"
        self.save()


def checkpoint_key(path: str | Path) -> str:
    return str(Path(path).resolve())


def file_stamp(path: str | Path) -> list[int] | None:
    """``[size, mtime_ns]`` of a file (a checkpoint rewritten since it was dissected differs)."""
    try:
        st = Path(path).stat()
    except OSError:
        return None
    return [int(st.st_size), int(st.st_mtime_ns)]


def _is_own(path: Path) -> bool:
    """Whether ``path`` (an entry of --out) is something ``gan-monitor dissect`` writes."""
    name = path.name
    if path.is_file():
        return name in _OWN_FILES or (name.startswith("bars_") and name.endswith(".png")) or \
            (name.startswith(".") and name.endswith(".tmp"))
    if path.is_dir():
        return name == TENSORBOARD or (path / DISSECTION).is_file() or (path / "units").is_dir() or \
            not any(path.iterdir())
    return False


def _changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> str:
    keys = [k for k in dict.fromkeys(list(new) + list(old)) if old.get(k) != new.get(k)]
    return ", ".join(f"{k} {old.get(k)!r} -> {new.get(k)!r}" for k in keys) or "unknown"


def prepare_run(out: str | Path, settings: Mapping[str, Any], *, overwrite: bool = False,
                command: str = "", checkpoints: Sequence[str | Path] = ()) -> tuple[RunRecord, bool]:
    """The record of the run about to write ``out`` (already saved, state ``running``) and
    whether the folder is fresh (True) or a run with the same settings is being completed or
    extended (False: its ``done`` checkpoints are kept). Raises ``CommandError`` when
    ``out`` is a file or holds another run and ``overwrite`` is not set, or when one of
    ``checkpoints`` was dissected here before its file changed; nothing in ``out`` changes then."""
    out = Path(out)
    settings = json.loads(json.dumps(dict(settings), default=repr))  # as stored
    if out.exists() and not out.is_dir():
        raise CommandError(f"--out {out} is an existing file; give a folder (it is created if missing).")
    contents = sorted(out.iterdir()) if out.is_dir() else []
    record = RunRecord(out, settings, command)
    if contents:
        try:
            previous = read_record(out)
        except CommandError:  # an unreadable run.json: only --overwrite goes on (it replaces it)
            if not overwrite:
                raise
            previous = None
        if previous is not None and previous.get("fingerprint") == record.fingerprint and not overwrite:
            record.done = [d for d in previous.get("done", []) if isinstance(d, dict) and "key" in d]
            stamps = {d["key"]: d.get("stamp") for d in record.done}
            changed = [str(p) for p in checkpoints if stamps.get(checkpoint_key(p)) not in (None, file_stamp(p))]
            if changed:
                raise CommandError(f"--out {out} holds a dissection of {', '.join(changed)} made before the file "
                                   "changed; add --overwrite to dissect again, or choose another --out.")
            (out / PAGE).unlink(missing_ok=True)  # a report of the earlier state would look current
            record.save()
            return record, False
        foreign = [p.name for p in contents if not _is_own(p)]
        if not overwrite:
            if previous is not None:
                what = f"another run (settings differ: {_changes(previous.get('settings', {}), settings)})"
            else:
                what = f"other files ({', '.join(foreign[:3])})" if foreign else "files of an earlier gan-monitor dissect"
            raise CommandError(f"--out {out} already holds {what}; add --overwrite to replace it, or choose "
                               "another --out (a run with the same settings completes or extends the folder).")
        if foreign:
            raise CommandError(f"--out {out} holds files that gan-monitor did not write ({', '.join(foreign[:3])}); "
                               "--overwrite only replaces a gan-monitor output folder: choose another --out.")
        record.save()  # first: an interrupted clean-up never looks finished
        for p in contents:
            if p.name != RUN:
                shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    record.save()
    return record, True
