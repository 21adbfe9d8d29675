"""The COCO region subset: COCO images fit for mask-conditioned generation, as in
MultiDiffusion's region-based evaluation (Bar-Tal et al. 2023), and TCIG's targets.

An image is kept when it has 2-4 foreground objects, none of them a person, all of a
Pascal VOC class (so DeepLabV3 can score them, `segmentation.COCO_TO_VOC`), and every
object's mask covers at least 5% of the image. The filter steps, in the order they are
applied (one row each of the counts table):

    all            every image read
    annotated      at least one annotation
    no_crowd       no crowd annotation (iscrowd=1: a group of objects, not one object)
    no_excluded    no object of an excluded category (default: person)
    voc_only       every object of a VOC class
    n_objects      min_objects..max_objects objects
    mask_fraction  every object's mask >= min_mask_fraction of the image

The cheap steps read only the items table's `objects` column; masks are computed last,
for the images that are still in. A mask's area is its pycocotools RLE area, i.e.
`annToMask(ann).sum()`. The annotation's own `area` field is not used: in the real
annotations it is a real number (e.g. 54652.9556), the area of the polygon, which is
not the pixel count of the rasterised mask.
"""

from __future__ import annotations

import json
import os
from typing import Iterable

import pandas as pd

from ctrlbench.errors import ConfigError, DatasetError

COUNT_COLUMNS = ("step", "description", "images_remaining", "images_dropped")
# The keyword arguments of filter_region_subset, which a config's region_filter may set.
REGION_FILTER_DEFAULTS = {
    "min_objects": 2,
    "max_objects": 4,
    "min_mask_fraction": 0.05,
    "exclude_categories": ("person",),
    "voc_only": True,
}


def filter_region_subset(items: pd.DataFrame, min_objects: int = 2, max_objects: int = 4,
                         min_mask_fraction: float = 0.05, exclude_categories: Iterable[str] = ("person",),
                         voc_only: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(kept items, counts) of a COCO items table (as read_coco returns it).

    kept: the rows of `items` that pass every step, same columns and order. counts: one
    row per step (COUNT_COLUMNS), in the order of the module docstring; a step that is
    switched off (voc_only=False, no excluded category) keeps its row and drops nothing.
    Bad arguments raise ConfigError; items without the COCO columns raise DatasetError.
    """
    # Imported here: segmentation imports torch, which reading items otherwise never needs.
    from ctrlbench.methods.segmentation import COCO_TO_VOC

    exclude = _check_arguments(min_objects, max_objects, min_mask_fraction, exclude_categories, voc_only)
    missing = [c for c in ("item_id", "objects", "annotation_file", "width", "height") if c not in items.columns]
    if missing:
        raise DatasetError(f"region filter: the items table lacks column(s) {missing}; it needs COCO items "
                           f"(dataset format 'coco')")
    if not items.index.is_unique:  # rows are addressed by index label below
        items = items.reset_index(drop=True)
    objects = pd.Series([_parse_objects(text, item) for text, item in zip(items["objects"], items["item_id"])],
                        index=items.index, dtype=object)
    counts: list[tuple[str, str, int, int]] = []
    kept = items.index

    def step(name: str, description: str, passes) -> None:
        nonlocal kept
        before = len(kept)
        kept = kept[[bool(passes(index)) for index in kept]] if before else kept
        counts.append((name, description, len(kept), before - len(kept)))

    counts.append(("all", "all images", len(kept), 0))
    step("annotated", "at least one annotation", lambda i: len(objects[i]) > 0)
    step("no_crowd", "no crowd annotation (iscrowd=1)",
         lambda i: not any(o.get("iscrowd", 0) for o in objects[i]))
    excluded = f"no object of {', '.join(sorted(exclude))}" if exclude else "no excluded category (none given)"
    step("no_excluded", excluded, lambda i: not any(o["category"] in exclude for o in objects[i]))
    step("voc_only", "every object of a Pascal VOC class" + ("" if voc_only else " (not applied)"),
         lambda i: not voc_only or all(o["category"] in COCO_TO_VOC for o in objects[i]))
    step("n_objects", f"{min_objects}-{max_objects} objects",
         lambda i: min_objects <= len(objects[i]) <= max_objects)
    # Masks last: the only step that rasterises annotations, run on the few images left.
    fractions = {i: mask_fractions(items.at[i, "annotation_file"], items.at[i, "item_id"],
                                   [o["ann_id"] for o in objects[i]]) for i in kept}
    step("mask_fraction", f"every object mask >= {min_mask_fraction * 100:g}% of the image",
         lambda i: all(f >= min_mask_fraction for f in fractions[i]))
    return items.loc[kept], counts_frame(counts)


def mask_fractions(annotation_file, image_id, ann_ids: Iterable[int]) -> list[float]:
    """Mask area / (width * height) of each annotation, in the order of `ann_ids`.

    The area is pycocotools' RLE area of the annotation's mask (= annToMask(ann).sum(),
    without decoding the mask). `image_id` is the COCO id as int or 12-digit string.
    """
    from pycocotools import mask as mask_utils

    # The cached pycocotools index that coco_object_masks uses as well.
    from ctrlbench.data.coco import _load_coco

    path = os.path.abspath(annotation_file)
    if not os.path.isfile(path):
        raise DatasetError(f"COCO: annotation file {path} does not exist")
    stat = os.stat(path)
    coco = _load_coco(path, stat.st_mtime_ns, stat.st_size)
    image = coco.imgs.get(int(image_id))
    if image is None:
        raise DatasetError(f"COCO: {path} has no image with id {int(image_id)}")
    pixels = int(image["width"]) * int(image["height"])
    out = []
    for ann_id in ann_ids:
        ann = coco.anns.get(ann_id)
        if ann is None or ann["image_id"] != image["id"]:
            raise DatasetError(f"COCO: {path} has no annotation {ann_id} of image {image['id']}; "
                               f"was the file changed after the items were read?")
        out.append(float(mask_utils.area(coco.annToRLE(ann))) / pixels)
    return out


def counts_frame(rows: Iterable[tuple[str, str, int, int]]) -> pd.DataFrame:
    frame = pd.DataFrame(list(rows), columns=list(COUNT_COLUMNS))
    return frame.astype({"images_remaining": "int64", "images_dropped": "int64"})


def region_filter_arguments(region_filter: dict) -> dict:
    """The keyword arguments for filter_region_subset from a config's region_filter dict
    (defaults for absent keys); unknown keys raise ConfigError."""
    if not isinstance(region_filter, dict):
        raise ConfigError(f"region_filter must be a mapping of {sorted(REGION_FILTER_DEFAULTS)}, "
                          f"got {region_filter!r}")
    unknown = sorted(set(region_filter) - set(REGION_FILTER_DEFAULTS))
    if unknown:
        raise ConfigError(f"region_filter: unknown key(s) {unknown}; expected {sorted(REGION_FILTER_DEFAULTS)}")
    return {**REGION_FILTER_DEFAULTS, **region_filter}


def _check_arguments(min_objects, max_objects, min_mask_fraction, exclude_categories, voc_only) -> frozenset:
    for name, value in (("min_objects", min_objects), ("max_objects", max_objects)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"region_filter: {name} must be a positive integer, got {value!r}")
    if max_objects < min_objects:
        raise ConfigError(f"region_filter: max_objects ({max_objects}) is below min_objects ({min_objects})")
    if isinstance(min_mask_fraction, bool) or not isinstance(min_mask_fraction, (int, float)) \
            or not 0 <= min_mask_fraction <= 1:
        raise ConfigError(f"region_filter: min_mask_fraction must be a number in [0, 1], got {min_mask_fraction!r}")
    if not isinstance(voc_only, bool):
        raise ConfigError(f"region_filter: voc_only must be true or false, got {voc_only!r}")
    if isinstance(exclude_categories, str):  # one name, not its letters
        exclude_categories = (exclude_categories,)
    from ctrlbench.data.coco import COCO_CATEGORIES

    known = {name for _, name, _ in COCO_CATEGORIES}
    exclude = frozenset(exclude_categories or ())
    # A misspelt name would silently exclude nothing.
    unknown = sorted(str(name) for name in exclude if name not in known)
    if unknown:
        raise ConfigError(f"region_filter: exclude_categories {unknown} are not COCO category names "
                          f"(e.g. 'person', 'dining table')")
    return exclude


def _parse_objects(text, item_id) -> list[dict]:
    try:
        objects = json.loads(text) if isinstance(text, str) else text
    except json.JSONDecodeError as error:
        raise DatasetError(f"region filter: item {item_id}: objects is not valid JSON ({error.msg})") from None
    if not isinstance(objects, list) or not all(isinstance(o, dict) and "category" in o and "ann_id" in o
                                                for o in objects):
        raise DatasetError(f"region filter: item {item_id}: objects must be a JSON list of "
                           f"{{ann_id, category, ...}} (as read_coco writes it)")
    return objects
