"""The :class:`~gan_monitor.callbacks.dissection_monitor.DissectionMonitor` keywords of
gan_monitor 0.1, translated to the grouped options for one more release.

=====================================================  ==========================================
old keyword                                            new spelling
=====================================================  ==========================================
``quantile=q``                                         ``threshold=Quantile(q)`` (iqr mode: ``IQR(fallback=q)``)
``dissect_options={"iqr_n": 50, "iqr_levels": ...}``   ``threshold=IQR(n=50, levels=...)``
``top_units=``, ``top_images=``, ``log_images=``       ``pictures=PictureOptions(...)``
``fid_real_stats=``, ``fid_extractor=``, ``fid_k=``,   ``unit_fid=UnitFIDOptions(real_stats, extractor=,
``fid_layers=``, ``fid_every_n_steps=``,               k=, layers=, every_n_steps=, every_n_epochs=,
``fid_every_n_epochs=``, ``max_unit_fid=``,            max_unit_fid=, artifact_ablation_on_save=,
``artifact_ablation_on_save=``, ``artifact_units=``,   artifact_units=, random_draws=)``
``artifact_random_draws=``
``ace_concepts=``, ``ace_options={...}``               ``ace=AceOptions(concepts, **options)``
=====================================================  ==========================================

:func:`translate_legacy_arguments` is the only place that knows the old keywords; it emits
one ``FutureWarning`` (on rank 0, through ``lightning_utilities``' ``rank_zero_warn``) that
names the new spelling of what was passed.
"""
from __future__ import annotations

import warnings
from dataclasses import MISSING, fields, is_dataclass
from typing import Any

from lightning_utilities.core.rank_zero import rank_zero_warn

from gan_monitor.callbacks.ace import AceOptions
from gan_monitor.callbacks.context import PictureOptions
from gan_monitor.callbacks.unit_fid import UnitFIDOptions
from gan_monitor.dissection.legacy_keywords import LEGACY_IQR_KEYWORDS, threshold_from_legacy
from gan_monitor.dissection.thresholds.modes import Quantile

__all__ = ["LEGACY_KEYWORDS", "translate_legacy_arguments"]

_PICTURES = ("top_units", "top_images", "log_images")
_FID = {"fid_real_stats": "real_stats", "fid_extractor": "extractor", "fid_k": "k", "fid_layers": "layers",
        "fid_every_n_steps": "every_n_steps", "fid_every_n_epochs": "every_n_epochs",
        "max_unit_fid": "max_unit_fid", "artifact_ablation_on_save": "artifact_ablation_on_save",
        "artifact_units": "artifact_units", "artifact_random_draws": "random_draws"}
# fid_* keywords that did something only with fid_real_stats (the others were ignored without it)
_FID_NEEDS_STATS = ("fid_extractor", "fid_layers", "fid_every_n_steps", "fid_every_n_epochs",
                    "artifact_ablation_on_save", "max_unit_fid")
_ACE = ("top_n", "n", "on_save", "every_n_epochs", "causal")
LEGACY_KEYWORDS = frozenset({"quantile", "dissect_options", "ace_concepts", "ace_options", *_PICTURES, *_FID})


def _spelling(value: Any) -> str:
    """``UnitFIDOptions(real_stats=<RealStats>, k=10)``: a dataclass's non-default fields."""
    if not is_dataclass(value):
        return repr(value)
    parts = []
    for f in fields(value):
        v = getattr(value, f.name)
        simple = v is None or isinstance(v, (bool, int, float, str)) or (
            isinstance(v, tuple) and all(isinstance(x, str) for x in v))
        if not f.repr or v is f.default or (simple and f.default is not MISSING and v == f.default):
            continue
        parts.append(f"{f.name}={v!r}" if simple else f"{f.name}=<{type(v).__name__}>")
    return f"{type(value).__name__}({', '.join(parts)})"


def _threshold(threshold: Any, quantile: Any, options: Any, owner: str) -> tuple[Any, str]:
    """The threshold object from ``threshold``, the old ``quantile`` and ``dissect_options``
    (folded in by ``dissect``'s own translation, whose warning this module's replaces)."""
    if options is not None and not isinstance(options, dict):
        raise TypeError(f"dissect_options must be a dict of dissect() arguments, got {type(options).__name__}.")
    options = dict(options or {})
    bad = sorted(set(options) - set(LEGACY_IQR_KEYWORDS))
    if bad:
        fid = any(k in ("unit_fid", "max_unit_fid") for k in bad)
        hint = (" A fixed per-unit FID filter is no longer a monitor option: use "
                "unit_fid=UnitFIDOptions(real_stats, max_unit_fid=...), one or the other." if fid else "")
        raise ValueError(f"dissect_options {bad} are not extra arguments of gan_monitor.dissect; allowed: "
                         f"{', '.join(sorted(LEGACY_IQR_KEYWORDS))} (the others are DissectionMonitor "
                         f"arguments).{hint}")
    legacy = dict(options, **({} if quantile is None else {"quantile": quantile}))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        new = threshold_from_legacy(threshold, legacy, caller=owner)
    dropped = sorted(options) if isinstance(new, Quantile) else []
    return new, f" ({', '.join(dropped)} did nothing in quantile mode and are dropped)" if dropped else ""


def translate_legacy_arguments(legacy: dict[str, Any], *, threshold: Any, pictures: PictureOptions | None,
                               unit_fid: UnitFIDOptions | None, ace: AceOptions | None,
                               owner: str = "DissectionMonitor") -> dict[str, Any]:
    """``{"threshold", "pictures", "unit_fid", "ace"}`` with the old keywords of ``legacy``
    folded in (see the module docstring); a ``FutureWarning`` names the new spelling.
    An unknown keyword raises ``TypeError``; an old keyword given together with its
    new argument raises ``ValueError``."""
    unknown = sorted(set(legacy) - LEGACY_KEYWORDS)
    if unknown:
        raise TypeError(f"{owner}.__init__() got an unexpected keyword argument {unknown[0]!r}.")
    new: dict[str, Any] = {"threshold": threshold, "pictures": pictures, "unit_fid": unit_fid, "ace": ace}
    if not legacy:
        return new
    spelled, notes = [], ""

    def group(names, argument: str, given: Any) -> list[str]:
        old = [k for k in names if k in legacy]
        if old and given is not None:
            raise ValueError(f"{owner}: {', '.join(old)} and {argument}= set the same thing; "
                             f"use {argument}= only.")
        return old

    if group(("quantile", "dissect_options"), "threshold", None):
        new["threshold"], notes = _threshold(threshold, legacy.get("quantile"), legacy.get("dissect_options"), owner)
        spelled.append(("quantile/dissect_options", f"threshold={_spelling(new['threshold'])}"))
    if group(_PICTURES, "pictures", pictures):
        new["pictures"] = PictureOptions(**{k: legacy[k] for k in _PICTURES if k in legacy})
        spelled.append(("top_units/top_images/log_images", f"pictures={_spelling(new['pictures'])}"))
    if group(_FID, "unit_fid", unit_fid):
        if legacy.get("fid_real_stats") is None:
            defaults = {"artifact_ablation_on_save": False}
            given = [k for k in _FID_NEEDS_STATS if legacy.get(k, defaults.get(k)) != defaults.get(k)]
            if given:
                raise ValueError(f"{', '.join(given)} need(s) fid_real_stats: pass "
                                 "unit_fid=UnitFIDOptions(real_stats=RealStats(...), ...) (e.g. "
                                 "gan_monitor.fid.features.toy_real_stats()) to turn per-unit FID on.")
        else:
            new["unit_fid"] = UnitFIDOptions(**{new_name: legacy[k] for k, new_name in _FID.items() if k in legacy})
            spelled.append(("fid_*/artifact_*/max_unit_fid", f"unit_fid={_spelling(new['unit_fid'])}"))
    if group(("ace_concepts", "ace_options"), "ace", ace):
        options = legacy.get("ace_options")
        if options is not None and not isinstance(options, dict):
            raise TypeError(f"ace_options must be a dict, got {type(options).__name__}.")
        extra = sorted(set(options or {}) - set(_ACE))
        if extra:
            raise ValueError(f"unknown ace_options {extra}; allowed: {sorted(_ACE)}.")
        if legacy.get("ace_concepts"):
            new["ace"] = AceOptions(legacy["ace_concepts"], **(options or {}))
            spelled.append(("ace_concepts/ace_options", f"ace={_spelling(new['ace'])}"))
    advice = ("write " + "; ".join(f"{old} -> {spelling}" for old, spelling in spelled)) if spelled else "drop them"
    rank_zero_warn(f"gan_monitor: {owner}({', '.join(sorted(legacy))}) uses keywords that will be removed in "
                   f"the next release; {advice}{notes}.", category=FutureWarning, stacklevel=6)
    return new
