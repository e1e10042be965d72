"""``dissect``'s keywords of release 0.1, translated to the threshold objects for one
more release (with a ``FutureWarning`` that names the new spelling), and the removed
unit-FID filter keywords, refused with a message that says how to migrate.

=========================  ==========================================================
old keyword                new spelling
=========================  ==========================================================
``quantile=q``             ``threshold=Quantile(q)``; with ``threshold="iqr"``:
                           ``IQR(fallback=q)`` (the level a unit without a concept uses)
``iqr_n``, ``iqr_inputs``  ``threshold=IQR(n=...)``, ``IQR(inputs=...)``
``iqr_levels``             ``IQR(levels=...)``
``iqr_max_fraction``       ``IQR(max_fraction=...)``
``iqr_min_lift``           ``IQR(min_lift=...)``
``iqr_subsample``          ``IQR(subsample=...)``
``unit_fid``,              removed: ``exclude_units={layer: unrealistic_units(fids,
``max_unit_fid``           max_fid, U)}`` (``gan_monitor.fid.unit_fid``)
=========================  ==========================================================

>>> import warnings
>>> with warnings.catch_warnings(record=True) as caught:
...     warnings.simplefilter("always")
...     threshold_from_legacy("iqr", {"iqr_n": 50})
IQR(levels=100, max_fraction=0.2, min_lift=2.0, n=50, subsample=65536, fallback=0.01)
>>> print(caught[0].message)
dissect(iqr_n=...) is deprecated and will be removed in the next release; write threshold=IQR(n=50).
"""
from __future__ import annotations

import warnings
from typing import Any

from gan_monitor.dissection.thresholds.modes import IQR, Quantile, as_threshold

__all__ = ["threshold_from_legacy", "LEGACY_IQR_KEYWORDS", "REMOVED_KEYWORDS"]

#: old ``dissect`` keyword -> field of :class:`IQR`
LEGACY_IQR_KEYWORDS = {"iqr_n": "n", "iqr_inputs": "inputs", "iqr_levels": "levels",
                       "iqr_max_fraction": "max_fraction", "iqr_min_lift": "min_lift",
                       "iqr_subsample": "subsample"}
#: removed ``dissect`` keywords -> how to migrate
REMOVED_KEYWORDS = {
    "unit_fid": "dissect() no longer filters units by FID itself: give exclude_units={layer: "
                "gan_monitor.fid.unit_fid.unrealistic_units(fids, max_fid, U)} (a bool mask [U] per layer, or "
                "unit indices) instead of unit_fid=/max_unit_fid=; excluded units are never interpretable.",
}
REMOVED_KEYWORDS["max_unit_fid"] = REMOVED_KEYWORDS["unit_fid"]


def _spelling(cls_name: str, fields: dict[str, Any]) -> str:
    args = ", ".join(f"{k}=<your iqr inputs>" if k == "inputs" else f"{k}={v!r}" for k, v in fields.items())
    return f"threshold={cls_name}({args})"


def threshold_from_legacy(threshold: Any, legacy: dict[str, Any], caller: str = "dissect") -> Any:
    """``threshold`` with the old keywords in ``legacy`` folded in (one ``FutureWarning``).

    Raises ``TypeError`` for removed or unknown keywords, and when old keywords are mixed
    with a ``Quantile``/``IQR`` object (give the settings in the object only).
    """
    if not legacy:
        return threshold
    removed = [k for k in legacy if k in REMOVED_KEYWORDS]
    if removed:
        raise TypeError(f"{caller}() got the removed keyword(s) {removed}. {REMOVED_KEYWORDS[removed[0]]}")
    unknown = sorted(k for k in legacy if k != "quantile" and k not in LEGACY_IQR_KEYWORDS)
    if unknown:
        raise TypeError(f"{caller}() got unexpected keyword argument(s) {unknown}.")
    old = ", ".join(f"{k}=..." for k in legacy)
    if not isinstance(threshold, str):
        raise TypeError(f"{caller}() got threshold={threshold!r} and the old keyword(s) {old}; give every setting "
                        f"in the threshold object (e.g. threshold=IQR(n=50)).")
    mode = as_threshold(threshold)
    iqr_fields = {LEGACY_IQR_KEYWORDS[k]: v for k, v in legacy.items() if k in LEGACY_IQR_KEYWORDS}
    verb = "is" if len(legacy) == 1 else "are"
    if isinstance(mode, IQR):
        fields = dict(iqr_fields, **({"fallback": legacy["quantile"]} if "quantile" in legacy else {}))
        new, advice = IQR(**fields), f"write {_spelling('IQR', fields)}"
    else:
        fields = {"q": legacy["quantile"]} if "quantile" in legacy else {}
        new, advice = Quantile(**fields), f"write {_spelling('Quantile', fields)}" if fields else ""
        if iqr_fields:
            ignored = ", ".join(f"{k}=" for k in legacy if k in LEGACY_IQR_KEYWORDS)
            advice += f"{' and ' if advice else ''}drop {ignored} (no effect with threshold='quantile')"
    warnings.warn(f"{caller}({old}) {verb} deprecated and will be removed in the next release; {advice}.",
                  FutureWarning, stacklevel=3)
    return new
