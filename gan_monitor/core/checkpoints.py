"""Loading a generator out of a saved checkpoint, with one-line errors.

* a Lightning ``.ckpt`` (a dict with ``state_dict`` and ``pytorch-lightning_version``)
  is loaded through the LightningModule's ``load_from_checkpoint`` and the generator
  is its attribute ``generator_attr`` (default ``generator``);
* anything else must be a plain state dict (optionally under ``state_dict``) of the
  generator that ``generator_factory()`` builds.

Files are read with ``torch.load(weights_only=True)`` unless ``trust=True``. Every
failure is a :class:`CheckpointError` whose message says what was wrong and how to fix it.
"""
from __future__ import annotations

import importlib
import os
import pickle
import sys
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from gan_monitor.core.errors import CheckpointError

__all__ = ["CheckpointError", "LoadedGenerator", "import_object", "read_checkpoint", "load_generator"]


@dataclass
class LoadedGenerator:
    generator: nn.Module
    step: int | None  # training step (Lightning ``global_step``), None for a plain state dict
    path: Path


def _import_module(mod_name: str, what: str):
    """``importlib.import_module``; a module not found on ``sys.path`` is looked for in the
    current folder too (as ``python -m`` and ``python script.py`` do), appended last so it
    never shadows an installed package."""
    try:
        return importlib.import_module(mod_name)
    except ModuleNotFoundError as err:
        cwd = os.getcwd()
        missing = err.name or ""
        own = missing and (mod_name == missing or mod_name.startswith(missing + "."))
        if own and cwd not in sys.path and "" not in sys.path:
            sys.path.append(cwd)
            importlib.invalidate_caches()
            try:
                return importlib.import_module(mod_name)
            except ModuleNotFoundError as again:
                err = again
        if own:
            top = mod_name.split(".")[0]
            raise CheckpointError(
                f"cannot import module {mod_name!r} for {what} ({err}); it was looked for on sys.path and in the "
                f"current folder {cwd}: run from the folder that holds {top}.py (or the package folder {top}/), or "
                f"add its folder to PYTHONPATH (PYTHONPATH=/path/to/folder), or pip install your package.") from err
        raise CheckpointError(f"cannot import module {mod_name!r} for {what} ({err}).") from err
    except ImportError as err:
        raise CheckpointError(f"cannot import module {mod_name!r} for {what} ({err}).") from err


def import_object(spec: str, what: str) -> Any:
    """``"pkg.mod:Name"`` -> the object ``Name`` of module ``pkg.mod`` (found on ``sys.path``
    or in the current folder)."""
    mod_name, sep, attr = str(spec).partition(":")
    if not sep or not mod_name or not attr:
        raise CheckpointError(f"{what} must look like pkg.module:Name, got {spec!r}.")
    mod = _import_module(mod_name, what)
    obj = mod
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise CheckpointError(f"module {mod_name!r} has no {attr!r} (needed for {what}).")
        obj = getattr(obj, part)
    return obj


def read_checkpoint(path: str | Path, trust: bool = False) -> Any:
    """``torch.load`` on CPU; ``weights_only`` unless ``trust``."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file.")
    if not path.is_file():
        raise CheckpointError(f"{path} is not a file.")
    if _is_plain_pickle(path):
        if not trust:
            raise CheckpointError(
                f"{path} is a plain pickle file (pickle.dump), not a torch.save checkpoint; reading it means "
                "unpickling, which can execute code stored in the file, so it is refused by default. If you trust "
                "where it comes from, re-run with --trust-checkpoint (trust=True in Python), or re-save it with "
                "torch.save(obj.state_dict(), path).")
        with open(path, "rb") as f:
            return pickle.load(f)  # noqa: S301  (the user said they trust this file)
    try:
        return torch.load(path, map_location="cpu", weights_only=not trust)
    except pickle.UnpicklingError as err:
        # a torch.save file is a zip archive; other bytes fail the unpickler too, with another message
        if not trust and (zipfile.is_zipfile(path) or "Unsupported global" in str(err)):
            raise CheckpointError(
                f"{path} contains pickled Python objects that torch.load(weights_only=True) refuses "
                f"to load. If you trust where this file comes from, re-run with --trust-checkpoint "
                f"(this can execute code stored in the file)."
            ) from err
        raise CheckpointError(f"{path} is not a PyTorch checkpoint (not a torch.save file: "
                              f"the unpickler stopped at its first bytes).") from err
    except Exception as err:  # zip / pickle garbage: torch raises RuntimeError, EOFError, ...
        raise CheckpointError(f"{path} is not a PyTorch checkpoint ({_first_line(err)}).") from err


def _is_plain_pickle(path: Path) -> bool:
    """A ``pickle.dump`` file (protocol >= 2 opcode first), as opposed to ``torch.save``'s zip
    archive or its legacy format (which starts with a pickled magic number, then more pickles)."""
    if zipfile.is_zipfile(path):
        return False
    with open(path, "rb") as f:
        head = f.read(2)
    if len(head) < 2 or head[0] != 0x80:
        return False
    try:  # torch's legacy format: its first pickle is a magic number (an int)
        with open(path, "rb") as f:
            first = pickle.Unpickler(f)
            first.find_class = _refuse_globals  # only plain data may be read here
            return not isinstance(first.load(), int)
    except Exception:
        return True


def _refuse_globals(module: str, name: str):
    raise pickle.UnpicklingError(f"global {module}.{name}")


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0][:300] if text else type(err).__name__


def _is_lightning(blob: Any) -> bool:
    return isinstance(blob, dict) and "state_dict" in blob and "pytorch-lightning_version" in blob


def _key_report(expected: list[str], got: list[str]) -> str:
    missing = [k for k in expected if k not in set(got)]
    unexpected = [k for k in got if k not in set(expected)]
    parts = []
    for name, keys in (("missing keys", missing), ("unexpected keys", unexpected)):
        if keys:
            shown = ", ".join(keys[:6]) + (f", ... ({len(keys)} in all)" if len(keys) > 6 else "")
            parts.append(f"{name}: {shown}")
    return "; ".join(parts)


def _load_state(model: nn.Module, state: dict, path: Path, what: str) -> None:
    report = _key_report(list(model.state_dict()), list(state))
    if report:
        raise CheckpointError(f"{path} does not fit {what} ({report}). Is it a checkpoint of another model? "
                              f"Pick the model with --module or --generator-factory.")
    try:
        model.load_state_dict(state)
    except RuntimeError as err:  # size mismatches
        msg = " ".join(str(err).split())
        raise CheckpointError(f"{path} does not fit {what}: {msg[:400]}") from err


def load_generator(path: str | Path, *, module: str = "gan_monitor.toyworld.gan:ToyGAN",
                   generator_factory: str | Callable[[], nn.Module] | None = None,
                   generator_attr: str = "generator", trust: bool = False,
                   device: str | torch.device = "cpu") -> LoadedGenerator:
    """Read ``path`` and return its generator (eval mode, on ``device``) and training step."""
    path = Path(path)
    blob = read_checkpoint(path, trust)
    if _is_lightning(blob) and generator_factory is None:
        cls = import_object(module, "--module")
        if not hasattr(cls, "load_from_checkpoint"):
            raise CheckpointError(f"{module} is not a LightningModule (it has no load_from_checkpoint).")
        try:
            with warnings.catch_warnings():  # key mismatches are reported below, in one line
                warnings.simplefilter("ignore")
                model = cls.load_from_checkpoint(path, map_location="cpu", weights_only=not trust, strict=False)
        except pickle.UnpicklingError as err:
            raise CheckpointError(f"{path}: torch.load(weights_only=True) refused it; re-run with "
                                  f"--trust-checkpoint if you trust the file.") from err
        except Exception as err:
            raise CheckpointError(f"cannot build {cls.__name__} from {path} ({_first_line(err)}). "
                                  f"Is it a checkpoint of another model? Pick it with --module.") from err
        report = _key_report(list(model.state_dict()), list(blob["state_dict"]))
        if report:
            raise CheckpointError(f"{path} is not a checkpoint of {cls.__name__} ({report}). "
                                  f"Pick the model with --module.")
        gen = getattr(model, generator_attr, None)
        if not isinstance(gen, nn.Module):
            raise CheckpointError(f"{cls.__name__} has no generator attribute {generator_attr!r}; "
                                  f"name it with --generator-attr.")
        step = blob.get("global_step")
        return LoadedGenerator(gen.to(device).eval(), int(step) if step is not None else None, path)
    state = blob.get("state_dict", blob) if isinstance(blob, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} is neither a Lightning checkpoint nor a state dict of tensors.")
    if generator_factory is None:
        raise CheckpointError(f"{path} is a plain state dict; give --generator-factory pkg.mod:function "
                              f"that builds the generator it belongs to.")
    factory = (import_object(generator_factory, "--generator-factory")
               if isinstance(generator_factory, str) else generator_factory)
    gen = factory()
    if not isinstance(gen, nn.Module):
        raise CheckpointError(f"--generator-factory returned {type(gen).__name__}, not a torch.nn.Module.")
    if _is_lightning(blob):  # a Lightning checkpoint with a generator factory: take the generator's keys
        prefix = generator_attr + "."
        state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    _load_state(gen, state, path, f"the generator from {generator_factory}")
    step = blob.get("global_step") if isinstance(blob, dict) else None
    return LoadedGenerator(gen.to(device).eval(), int(step) if isinstance(step, int) else None, path)
