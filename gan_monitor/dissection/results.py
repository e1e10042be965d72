"""Result objects of a dissection: plain data, JSON round trip, no computation
beyond the per-layer summary (which is derived from the per-unit arrays)."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping

import torch

SCHEMA_VERSION = 1

__all__ = ["SCHEMA_VERSION", "LayerDissection", "DissectionResult", "summarize"]


def summarize(
    unit_iou: torch.Tensor,
    label_index: torch.Tensor,
    interpretable: torch.Tensor,
    concepts: list[str],
    categories: list[str],
) -> dict[str, Any]:
    """Per-layer summary (docs/method.md §5) from per-unit arrays.

    ``per_category`` counts interpretable units by their label's category;
    ``units_per_concept`` counts interpretable units per label, most frequent first.
    """
    interp = interpretable.bool()
    labels = [concepts[int(i)] for i in label_index[interp].tolist()]
    per_concept: dict[str, int] = {}
    per_category: dict[str, int] = {c: 0 for c in dict.fromkeys(categories[1:])}
    for idx in label_index[interp].tolist():
        name, cat = concepts[int(idx)], categories[int(idx)]
        per_concept[name] = per_concept.get(name, 0) + 1
        per_category[cat] = per_category.get(cat, 0) + 1
    per_concept = dict(sorted(per_concept.items(), key=lambda kv: (-kv[1], concepts.index(kv[0]))))
    n_interp = int(interp.sum())
    return {
        "units": int(unit_iou.numel()),
        "interpretable_units": n_interp,
        "concept_diversity": len(set(labels)),
        "mean_iou": float(unit_iou[interp].double().mean()) if n_interp else 0.0,
        "per_category": per_category,
        "units_per_concept": per_concept,
    }


@dataclass
class LayerDissection:
    """Dissection of one layer.

    Attributes (U = units of the layer, C = concepts incl. index 0 "-", k = top images kept):
        layer: dotted module name.
        concepts, categories: the segmenter's concept names and categories (length C).
        thresholds: float [U], activation level above which a unit counts as "on"
            (in the units of the upsampled featuremap).
        iou: float [U, C], IoU of every unit with every concept (column 0 is unused, 0).
        label_index: long [U], index of each unit's label (best IoU, or best IQR in iqr mode).
        unit_iou: float [U], IoU of each unit with its label.
        interpretable: bool [U], unit_iou >= cutoff.
        topk: long [U, k], indices (into the held-out sample) of each unit's
            top-activating samples, ranked by the unit's max activation.
        topk_values: float [U, k], those max activations.
        settings: how the numbers were made (threshold mode, quantile, iou variant,
            cutoff, n, seed, ...). Reports quote it.
    """

    layer: str
    concepts: list[str]
    categories: list[str]
    thresholds: torch.Tensor
    iou: torch.Tensor
    label_index: torch.Tensor
    unit_iou: torch.Tensor
    interpretable: torch.Tensor
    topk: torch.Tensor
    topk_values: torch.Tensor
    settings: dict[str, Any] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def labels(self) -> list[str]:
        return [self.concepts[int(i)] for i in self.label_index.tolist()]

    @property
    def label_categories(self) -> list[str]:
        return [self.categories[int(i)] for i in self.label_index.tolist()]

    @property
    def num_units(self) -> int:
        return int(self.thresholds.numel())

    @property
    def summary(self) -> dict[str, Any]:
        return summarize(self.unit_iou, self.label_index, self.interpretable,
                         list(self.concepts), list(self.categories))

    def ranked_units(self, only_interpretable: bool = True) -> list[int]:
        """Unit indices sorted by IoU of their label, best first."""
        order = torch.argsort(self.unit_iou, descending=True, stable=True).tolist()
        if only_interpretable:
            order = [u for u in order if bool(self.interpretable[u])]
        return order

    # ---- serialisation -------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "layer": self.layer,
            "concepts": list(self.concepts),
            "categories": list(self.categories),
            "thresholds": self.thresholds.tolist(),
            "iou": self.iou.tolist(),
            "label_index": self.label_index.tolist(),
            "labels": self.labels,
            "unit_iou": self.unit_iou.tolist(),
            "interpretable": self.interpretable.tolist(),
            "topk": self.topk.tolist(),
            "topk_values": self.topk_values.tolist(),
            "settings": dict(self.settings),
            "extras": dict(self.extras),
            "summary": self.summary,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "LayerDissection":
        u = len(d["thresholds"])
        c = len(d["concepts"])

        def tens(key, dtype, shape):
            t = torch.tensor(d[key], dtype=dtype)
            return t.reshape(shape)

        return cls(
            layer=d["layer"],
            concepts=list(d["concepts"]),
            categories=list(d["categories"]),
            thresholds=tens("thresholds", torch.float32, (u,)),
            iou=tens("iou", torch.float32, (u, c)),
            label_index=tens("label_index", torch.long, (u,)),
            unit_iou=tens("unit_iou", torch.float32, (u,)),
            interpretable=tens("interpretable", torch.bool, (u,)),
            topk=tens("topk", torch.long, (u, -1)) if u else torch.zeros(0, 0, dtype=torch.long),
            topk_values=tens("topk_values", torch.float32, (u, -1)) if u else torch.zeros(0, 0),
            settings=dict(d.get("settings", {})),
            extras=dict(d.get("extras", {})),
        )


@dataclass
class DissectionResult:
    """Dissections of several layers of one generator on one held-out sample.

    ``sample_stats`` (None in results of older versions): concept statistics and diversity of
    the held-out sample's generated images (``gan_monitor.dissection.concept_counts``)."""

    layers: dict[str, LayerDissection]
    settings: dict[str, Any] = field(default_factory=dict)
    sample_stats: dict[str, Any] | None = None

    def __getitem__(self, layer: str) -> LayerDissection:
        try:
            return self.layers[layer]
        except KeyError:
            raise KeyError(
                f"no dissection of layer {layer!r}; dissected layers: {', '.join(self.layers)}"
            ) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self.layers)

    def __len__(self) -> int:
        return len(self.layers)

    def items(self):
        return self.layers.items()

    def to_dict(self) -> dict[str, Any]:
        out = {
            "schema_version": SCHEMA_VERSION,
            "settings": dict(self.settings),
            "layers": {name: ld.to_dict() for name, ld in self.layers.items()},
        }
        if self.sample_stats is not None:  # optional key: older readers ignore it
            out["sample_stats"] = dict(self.sample_stats)
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "DissectionResult":
        version = d.get("schema_version")
        if version != SCHEMA_VERSION:
            raise ValueError(
                f"dissection JSON has schema_version {version!r}; this gan_monitor reads "
                f"version {SCHEMA_VERSION}. Re-run the dissection with this version."
            )
        return cls(
            layers={k: LayerDissection.from_dict(v) for k, v in d["layers"].items()},
            settings=dict(d.get("settings", {})),
            sample_stats=dict(d["sample_stats"]) if d.get("sample_stats") is not None else None,
        )

    def to_json(self, path=None, indent: int | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=indent)
        if path is not None:
            with open(path, "w", encoding="utf-8") as f:
                f.write(text)
        return text

    @classmethod
    def from_json(cls, text_or_path) -> "DissectionResult":
        s = str(text_or_path)
        if not s.lstrip().startswith("{"):
            with open(s, encoding="utf-8") as f:
                s = f.read()
        return cls.from_dict(json.loads(s))
