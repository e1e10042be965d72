"""The 150 classes of ADE20K scene parsing (SceneParsing / ADEChallengeData2016) and a
category for each: ``object``, ``part``, ``material`` or ``stuff``.

Used by :mod:`gan_monitor.segmenters.huggingface` to give every class of an ADE20K-150 model a
category (dissection summaries count interpretable units per category, and the
category-restricted IoU needs them).

Source and rule of the mapping
------------------------------
* Class order and names: the 150 classes of the ADE20K scene-parsing benchmark
  (``objectInfo150``), index ``i`` here = model output ``i`` of the ADE20K
  checkpoints on the Hugging Face hub (e.g. ``nvidia/segformer-b0-finetuned-ade-512-512``,
  ``openmmlab/upernet-convnext-small``), whose ``id2label`` is the same list.  Names are
  the first synonym (``"road, route"`` -> ``"road"``).
* ``thing`` flag: the thing/stuff split of the ADE20K panoptic benchmark (100 things =
  the classes with instance annotations in the ADE20K instance-segmentation challenge,
  50 stuff), as distributed with the panoptic conversion used by Mask2Former/OneFormer
  (``ADE20K_150_CATEGORIES``, field ``isthing``).
* category, decided per class with these rules (ours; the split alone is not enough,
  since e.g. ``tree`` and ``building`` are "stuff" there only because they lack
  instance masks):

  - ``part``: components of buildings and furniture that ADE20K also annotates as parts
    of a larger object: windowpane, door, screen door, railing, bannister, countertop,
    awning, step.  (The toy world calls door and window parts too.)
  - ``material``: substances/ground covers: grass, earth, water, rock, sand, land.
  - ``stuff``: amorphous surfaces, landforms, bodies of water and ways: wall, sky, floor,
    ceiling, road, sidewalk, mountain, sea, field, path, runway, river, hill, dirt track,
    waterfall, lake.
  - ``object``: everything else, i.e. all other thing classes and the stuff classes that
    are discrete structures (building, tree, plant, house, rug, skyscraper, bridge, ...).

Object-part expansion (:mod:`gan_monitor.segmenters.parts`) splits the ``object`` classes.  Users
who prefer another grouping pass ``categories=`` to :class:`~gan_monitor.segmenters.huggingface.HFSegmenter`.
"""
from __future__ import annotations

from typing import Mapping

__all__ = ["ADE20K_CLASSES", "ADE20K_NAMES", "ADE20K_CATEGORIES", "CATEGORY_NAMES", "is_ade20k_labels",
           "clean_label"]

CATEGORY_NAMES = ("object", "part", "material", "stuff")

# (name, thing flag of the panoptic split, category); index = ADE20K-150 class index.
ADE20K_CLASSES: tuple[tuple[str, int, str], ...] = (
    ("wall", 0, "stuff"), ("building", 0, "object"), ("sky", 0, "stuff"), ("floor", 0, "stuff"),
    ("tree", 0, "object"), ("ceiling", 0, "stuff"), ("road", 0, "stuff"), ("bed", 1, "object"),
    ("windowpane", 1, "part"), ("grass", 0, "material"), ("cabinet", 1, "object"), ("sidewalk", 0, "stuff"),
    ("person", 1, "object"), ("earth", 0, "material"), ("door", 1, "part"), ("table", 1, "object"),
    ("mountain", 0, "stuff"), ("plant", 0, "object"), ("curtain", 1, "object"), ("chair", 1, "object"),
    ("car", 1, "object"), ("water", 0, "material"), ("painting", 1, "object"), ("sofa", 1, "object"),
    ("shelf", 1, "object"), ("house", 0, "object"), ("sea", 0, "stuff"), ("mirror", 1, "object"),
    ("rug", 0, "object"), ("field", 0, "stuff"), ("armchair", 1, "object"), ("seat", 1, "object"),
    ("fence", 1, "object"), ("desk", 1, "object"), ("rock", 0, "material"), ("wardrobe", 1, "object"),
    ("lamp", 1, "object"), ("bathtub", 1, "object"), ("railing", 1, "part"), ("cushion", 1, "object"),
    ("base", 0, "object"), ("box", 1, "object"), ("column", 1, "object"), ("signboard", 1, "object"),
    ("chest of drawers", 1, "object"), ("counter", 1, "object"), ("sand", 0, "material"), ("sink", 1, "object"),
    ("skyscraper", 0, "object"), ("fireplace", 1, "object"), ("refrigerator", 1, "object"),
    ("grandstand", 0, "object"), ("path", 0, "stuff"), ("stairs", 1, "object"), ("runway", 0, "stuff"),
    ("case", 1, "object"), ("pool table", 1, "object"), ("pillow", 1, "object"), ("screen door", 1, "part"),
    ("stairway", 0, "object"), ("river", 0, "stuff"), ("bridge", 0, "object"), ("bookcase", 1, "object"),
    ("blind", 0, "object"), ("coffee table", 1, "object"), ("toilet", 1, "object"), ("flower", 1, "object"),
    ("book", 1, "object"), ("hill", 0, "stuff"), ("bench", 1, "object"), ("countertop", 1, "part"),
    ("stove", 1, "object"), ("palm", 1, "object"), ("kitchen island", 1, "object"), ("computer", 1, "object"),
    ("swivel chair", 1, "object"), ("boat", 1, "object"), ("bar", 0, "object"), ("arcade machine", 1, "object"),
    ("hovel", 0, "object"), ("bus", 1, "object"), ("towel", 1, "object"), ("light", 1, "object"),
    ("truck", 1, "object"), ("tower", 0, "object"), ("chandelier", 1, "object"), ("awning", 1, "part"),
    ("streetlight", 1, "object"), ("booth", 1, "object"), ("television receiver", 1, "object"),
    ("airplane", 1, "object"), ("dirt track", 0, "stuff"), ("apparel", 1, "object"), ("pole", 1, "object"),
    ("land", 0, "material"), ("bannister", 1, "part"), ("escalator", 0, "object"), ("ottoman", 1, "object"),
    ("bottle", 1, "object"), ("buffet", 0, "object"), ("poster", 0, "object"), ("stage", 0, "object"),
    ("van", 1, "object"), ("ship", 1, "object"), ("fountain", 1, "object"), ("conveyer belt", 0, "object"),
    ("canopy", 0, "object"), ("washer", 1, "object"), ("plaything", 1, "object"), ("swimming pool", 0, "object"),
    ("stool", 1, "object"), ("barrel", 1, "object"), ("basket", 1, "object"), ("waterfall", 0, "stuff"),
    ("tent", 0, "object"), ("bag", 1, "object"), ("minibike", 1, "object"), ("cradle", 0, "object"),
    ("oven", 1, "object"), ("ball", 1, "object"), ("food", 1, "object"), ("step", 1, "part"),
    ("tank", 0, "object"), ("trade name", 1, "object"), ("microwave", 1, "object"), ("pot", 1, "object"),
    ("animal", 1, "object"), ("bicycle", 1, "object"), ("lake", 0, "stuff"), ("dishwasher", 1, "object"),
    ("screen", 1, "object"), ("blanket", 0, "object"), ("sculpture", 1, "object"), ("hood", 1, "object"),
    ("sconce", 1, "object"), ("vase", 1, "object"), ("traffic light", 1, "object"), ("tray", 1, "object"),
    ("ashcan", 1, "object"), ("fan", 1, "object"), ("pier", 0, "object"), ("crt screen", 0, "object"),
    ("plate", 1, "object"), ("monitor", 1, "object"), ("bulletin board", 1, "object"), ("shower", 0, "object"),
    ("radiator", 1, "object"), ("glass", 1, "object"), ("clock", 1, "object"), ("flag", 1, "object"),
)
ADE20K_NAMES: tuple[str, ...] = tuple(name for name, _, _ in ADE20K_CLASSES)
ADE20K_CATEGORIES: tuple[str, ...] = tuple(cat for _, _, cat in ADE20K_CLASSES)

# Classes whose position in the list identifies an ADE20K-150 label set (names vary a
# little between checkpoints: "windowpane" vs "window", "road" vs "road, route").
_ANCHORS = {0: "wall", 1: "building", 2: "sky", 3: "floor", 4: "tree", 9: "grass", 12: "person", 149: "flag"}


def clean_label(label: str) -> str:
    """A model's label as a concept name: first synonym, stripped (``"road, route"`` -> ``"road"``)."""
    return str(label).split(",")[0].strip() or str(label)


def is_ade20k_labels(labels: Mapping[int, str] | list[str]) -> bool:
    """True when ``labels`` (``id2label`` or a list, without a background class) are the
    150 ADE20K scene-parsing classes in their usual order."""
    names = [labels[i] for i in range(len(labels))] if isinstance(labels, Mapping) else list(labels)
    if len(names) != len(ADE20K_CLASSES):
        return False
    return all(clean_label(names[i]).lower() == name for i, name in _ANCHORS.items())
