"""Small C kernels compiled on first use: optional speed-ups with exact torch fallbacks.

A few inner loops (iqr mode's level count, ``dissection.thresholds.level_counts``) are
much faster as one pass of plain C than as a chain of torch operations. Their sources
ship in the package (``*.c`` beside the module that uses them); ``load`` compiles one
with the system's C compiler (``$CC``, else ``cc``, ``gcc`` or ``clang``) into a shared
library in a per-user cache folder the first time it is needed, and loads it with
``ctypes``. Nothing is downloaded and nothing is required: without a compiler (or with
``GAN_MONITOR_NATIVE=0``) ``load`` returns ``None`` and the caller uses its torch code,
which gives the same results (tests compare the two).

- Cache folder: ``$GAN_MONITOR_NATIVE_DIR``, else ``$XDG_CACHE_HOME/gan_monitor/native``,
  else ``~/.cache/gan_monitor/native``. A library's file name holds a hash of its source,
  compiler, flags and platform, so a changed source is recompiled and a shared home
  folder serves several machines; it is written to a temporary name and renamed, so
  processes compiling at once (DDP ranks) do not see half-written files.
- Flags: ``-O2 -std=c99 -fPIC -shared -ffp-contract=off`` and no fast-math or
  machine-specific options: float operations round exactly as written (IEEE single
  precision, no fused multiply-add), so a kernel can reproduce torch's arithmetic bit for
  bit, and a library built on one x86-64/arm64 machine runs on any other.
- ``status(source)`` says which happened (loaded from where, or why not).
"""
from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

__all__ = ["load", "status", "forget", "cache_dir", "FLAGS", "SWITCH"]

#: Environment variable: "0" (or "false", "no", "off") never compiles or loads a kernel.
SWITCH = "GAN_MONITOR_NATIVE"
FLAGS = ("-O2", "-std=c99", "-fPIC", "-shared", "-ffp-contract=off")
_COMPILE_SECONDS = 120

_lock = threading.Lock()
_loaded: dict[str, ctypes.CDLL | None] = {}
_status: dict[str, str] = {}


def cache_dir() -> Path:
    """Where compiled kernels are kept (see the module docstring)."""
    if os.environ.get("GAN_MONITOR_NATIVE_DIR"):
        return Path(os.environ["GAN_MONITOR_NATIVE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "gan_monitor" / "native"


def _enabled() -> bool:
    return os.environ.get(SWITCH, "1").strip().lower() not in ("0", "false", "no", "off")


def _compiler() -> str | None:
    for name in ([os.environ["CC"]] if os.environ.get("CC") else []) + ["cc", "gcc", "clang"]:
        found = shutil.which(name.split()[0]) if name.strip() else None
        if found:
            return found
    return None


def _library_path(source: Path, compiler: str) -> Path:
    key = hashlib.sha256()
    for part in (source.read_bytes(), compiler.encode(), " ".join(FLAGS).encode(),
                 sys.platform.encode(), platform.machine().encode()):
        key.update(part)
        key.update(b"\0")
    return cache_dir() / f"{source.stem}-{key.hexdigest()[:20]}.so"


def _compile(source: Path, compiler: str, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{target.stem}-", suffix=".so", dir=target.parent)
    os.close(handle)
    try:
        done = subprocess.run([compiler, *FLAGS, "-o", temporary, str(source)], capture_output=True, text=True,
                              timeout=_COMPILE_SECONDS)
        if done.returncode != 0:
            raise OSError(f"{Path(compiler).name} exited with {done.returncode}: {done.stderr.strip()[:500]}")
        os.replace(temporary, target)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


def load(source: str | os.PathLike) -> ctypes.CDLL | None:
    """The compiled library of the C file ``source`` (compiled into ``cache_dir()`` the
    first time), or ``None`` if kernels are switched off or it cannot be built or loaded
    (``status(source)`` says why). Cached per process."""
    source = Path(source)
    key = str(source.resolve())
    with _lock:
        if key in _loaded:
            return _loaded[key]
        library, message = None, ""
        compiler = _compiler()
        if not _enabled():
            message = f"switched off ({SWITCH}={os.environ.get(SWITCH)})"
        elif compiler is None:
            message = "no C compiler found (set CC, or install cc/gcc/clang)"
        else:
            target = _library_path(source, compiler)
            try:
                if not target.exists():
                    _compile(source, compiler, target)
                try:
                    library = ctypes.CDLL(str(target))
                except OSError:  # e.g. a truncated file from a crashed writer: build it again
                    _compile(source, compiler, target)
                    library = ctypes.CDLL(str(target))
                message = f"loaded {target}"
            except (OSError, subprocess.SubprocessError) as error:
                library, message = None, f"could not build {source.name} with {compiler}: {error}"
        _loaded[key], _status[key] = library, message
        if library is None:  # an exact torch path takes over: worth a log line, not a warning
            logging.getLogger(__name__).info("gan_monitor: compiled kernel %s not used: %s", source.name, message)
        return library


def status(source: str | os.PathLike) -> str:
    """What ``load(source)`` did in this process ("not loaded yet" before the first call)."""
    return _status.get(str(Path(source).resolve()), "not loaded yet")


def forget() -> None:
    """Forget what this process loaded (tests; a new ``load`` looks again)."""
    with _lock:
        _loaded.clear()
        _status.clear()
