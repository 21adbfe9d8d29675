"""The COCO region subset: COCO images fit for mask-conditioned generation, as in
MultiDiffusion's region-based evaluation (Bar-Tal et al. 2023), and TCIG's targets.

An image is kept when it has 2-4 foreground objects, none of them a person, all of a
Pascal VOC class (so DeepLabV3 can score them, `segmentation.COCO_TO_VOC`), and every
object's mask covers at least 5% of the image. The paper's sentence ("2 to 4 foreground
objects, excluding people, and masks that occupy less than 5% of the image") also reads
as "small masks are not counted", so `small_masks` picks the reading:

    drop_image (default)  an image with a small mask is dropped
    drop_mask             small masks are removed from the image's objects first, then
                          the 2-4 count applies to what remains

The filter steps, in the order they are applied (one row each of the counts table):

    all            every image read
    annotated      at least one annotation
    no_crowd       no crowd annotation (iscrowd=1: a group of objects, not one object)
    no_excluded    no object of an excluded category (default: person), whatever its size
    voc_only       every object of a VOC class, whatever its size
    drop_image:    n_objects (min_objects..max_objects objects), then
                   mask_fraction (every object's mask >= min_mask_fraction of the image)
    drop_mask:     mask_fraction (objects under min_mask_fraction removed; drops no image),
                   then n_objects (counts the objects left)

The counts table ends with one row that is not applied: how many images the other
reading would keep, so both are visible from one run.

The cheap steps read only the items table's `objects` column; masks are computed after
voc_only, for the images that are still in. A mask's area is its pycocotools RLE area,
i.e. `annToMask(ann).sum()`. The annotation's own `area` field is not used: in the real
annotations it is a real number (e.g. 54652.9556), the area of the polygon, which is
not the pixel count of the rasterised mask.
"""

from __future__ import annotations

import json
import os
from typing import Iterable

import pandas as pd

from ctrlbench.data.readers import to_json
from ctrlbench.errors import ConfigError, DatasetError

# applied: False on the last row only, the other small_masks reading's total.
COUNT_COLUMNS = ("step", "description", "images_remaining", "images_dropped", "applied")
SMALL_MASKS = ("drop_image", "drop_mask")
# The keyword arguments of filter_region_subset, which a config's region_filter may set.
REGION_FILTER_DEFAULTS = {
    "min_objects": 2,
    "max_objects": 4,
    "min_mask_fraction": 0.05,
    "exclude_categories": ("person",),
    "voc_only": True,
    "small_masks": "drop_image",
}


def filter_region_subset(items: pd.DataFrame, min_objects: int = 2, max_objects: int = 4,
                         min_mask_fraction: float = 0.05, exclude_categories: Iterable[str] = ("person",),
                         voc_only: bool = True, small_masks: str = "drop_image") -> tuple[pd.DataFrame, pd.DataFrame]:
    """(kept items, counts) of a COCO items table (as read_coco returns it).

    kept: the rows of `items` that pass every step, same columns and order; with
    small_masks="drop_mask" a kept row's `objects` lists only the objects left, so the
    methods never generate a removed mask and IoU never scores it. counts: one row per
    step (COUNT_COLUMNS), in the order of the module docstring, then the other reading's
    total (applied False); a step that is switched off (voc_only=False, no excluded
    category) keeps its row and drops nothing.
    Bad arguments raise ConfigError; items without the COCO columns raise DatasetError.
    """
    # Imported here: segmentation imports torch, which reading items otherwise never needs.
    from ctrlbench.methods.segmentation import COCO_TO_VOC

    exclude = _check_arguments(min_objects, max_objects, min_mask_fraction, exclude_categories, voc_only,
                               small_masks)
    missing = [c for c in ("item_id", "objects", "annotation_file", "width", "height") if c not in items.columns]
    if missing:
        raise DatasetError(f"region filter: the items table lacks column(s) {missing}; it needs COCO items "
                           f"(dataset format 'coco')")
    if not items.index.is_unique:  # rows are addressed by index label below
        items = items.reset_index(drop=True)
    objects = pd.Series([_parse_objects(text, item) for text, item in zip(items["objects"], items["item_id"])],
                        index=items.index, dtype=object)
    counts: list[tuple[str, str, int, int]] = [("all", "all images", len(items), 0)]
    kept = items.index
    kept = _step(counts, kept, "annotated", "at least one annotation", lambda i: len(objects[i]) > 0)
    kept = _step(counts, kept, "no_crowd", "no crowd annotation (iscrowd=1)",
                 lambda i: not any(o.get("iscrowd", 0) for o in objects[i]))
    excluded = f"no object of {', '.join(sorted(exclude))}" if exclude else "no excluded category (none given)"
    kept = _step(counts, kept, "no_excluded", excluded, lambda i: not any(o["category"] in exclude for o in objects[i]))
    voc = "every object of a Pascal VOC class" + ("" if voc_only else " (not applied)")
    kept = _step(counts, kept, "voc_only", voc,
                 lambda i: not voc_only or all(o["category"] in COCO_TO_VOC for o in objects[i]))
    # Masks last: the only step that rasterises annotations. Both readings need them (the
    # applied one and the other's total), so every image left so far is measured once.
    small = {}
    for i in kept:
        fractions = mask_fractions(items.at[i, "annotation_file"], items.at[i, "item_id"],
                                   [o["ann_id"] for o in objects[i]])
        small[i] = {o["ann_id"] for o, f in zip(objects[i], fractions) if f < min_mask_fraction}
    limits = (min_objects, max_objects, min_mask_fraction)
    kept_final, left = _reading(small_masks, kept, objects, small, limits, counts)
    other = next(name for name in SMALL_MASKS if name != small_masks)
    other_kept, _ = _reading(other, kept, objects, small, limits, [])
    rows = [(*row, True) for row in counts]
    rows.append(("other_reading", f"not applied: the images small_masks: {other} would keep",
                 len(other_kept), len(items) - len(other_kept), False))
    out = items.loc[kept_final]
    changed = [i for i in kept_final if len(left[i]) != len(objects[i])]
    if changed:  # drop_mask: the removed objects leave the items table
        out = out.copy()
        out.loc[changed, "objects"] = [to_json(left[i]) for i in changed]
    return out, counts_frame(rows)


def _step(counts: list, kept: pd.Index, name: str, description: str, passes) -> pd.Index:
    """The images of `kept` that pass; appends the step's counts row."""
    before = len(kept)
    kept = kept[[bool(passes(index)) for index in kept]] if before else kept
    counts.append((name, description, len(kept), before - len(kept)))
    return kept


def _reading(small_masks: str, kept: pd.Index, objects: pd.Series, small: dict, limits: tuple,
             counts: list) -> tuple[pd.Index, dict]:
    """(kept images, {image: objects left}) of one small_masks reading after voc_only;
    appends its two steps' rows to `counts`."""
    min_objects, max_objects, min_mask_fraction = limits
    percent = f"{min_mask_fraction * 100:g}%"
    left = {i: objects[i] for i in kept}
    if small_masks == "drop_image":
        kept = _step(counts, kept, "n_objects", f"{min_objects}-{max_objects} objects",
                     lambda i: min_objects <= len(left[i]) <= max_objects)
        return _step(counts, kept, "mask_fraction", f"every object mask >= {percent} of the image",
                     lambda i: not small[i]), left
    left = {i: [o for o in objects[i] if o["ann_id"] not in small[i]] for i in kept}
    n_masks, n_images = sum(len(small[i]) for i in kept), sum(bool(small[i]) for i in kept)
    counts.append(("mask_fraction", f"object masks < {percent} of the image removed ({n_masks} masks of "
                   f"{n_images} images)", len(kept), 0))
    return _step(counts, kept, "n_objects", f"{min_objects}-{max_objects} objects after the removal",
                 lambda i: min_objects <= len(left[i]) <= max_objects), left


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


def counts_frame(rows: Iterable[tuple]) -> pd.DataFrame:
    """The counts table of (step, description, remaining, dropped[, applied]) rows;
    `applied` is True where a row leaves it out."""
    frame = pd.DataFrame([(*row, True) if len(row) == 4 else row for row in rows], columns=list(COUNT_COLUMNS))
    return frame.astype({"images_remaining": "int64", "images_dropped": "int64", "applied": "bool"})


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


def _check_arguments(min_objects, max_objects, min_mask_fraction, exclude_categories, voc_only,
                     small_masks) -> frozenset:
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
    if small_masks not in SMALL_MASKS:
        raise ConfigError(f"region_filter: small_masks must be one of {', '.join(SMALL_MASKS)}, got {small_masks!r}")
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
