"""Region inputs shared by the mask-conditioned methods (TCIG, MultiDiffusion regions, the
SI and BLD baselines) and the IoU metric.

A region input table (one per shard; the caption-prompts shard for COCO items) has
item_id, prompt and either

- `masks`: a JSON list of {"class": class name, "path": mask image, relative to the
  table's folder} (`voc_class`, the key's former name, is read too), or
- `annotation_file` (COCO items): masks from the instance annotations of the objects
  its `objects` column lists (every annotation of the image without that column).

Target masks are keyed by class name. Which names a dataset's objects get is its
`target_classes` (config `datasets.<name>.target_classes`, TARGET_CLASSES):

- "voc" (the default): the Pascal VOC classes. A COCO category with a VOC counterpart
  becomes its VOC name ("dining table" -> "diningtable"), other categories are skipped; an
  explicit mask's class may be a VOC name, a COCO name or a VOC index.
- "categories": the category names themselves, for a dataset whose categories are its
  segmenter's own class names (the toy world's shapes); nothing is skipped.

Methods that need no segmenter (MultiDiffusion, SI, BLD) use the names as they are (a
readable form, class_label, goes into region prompts); TCIG and the IoU metric map them
to channels by their segmenter's vocabulary (segmentation.model_vocabulary).

`item_masks` turns a row into {class name: bool mask [height, width]}: one mask per class
(several objects of a class are united, since a semantic segmenter cannot tell them
apart), resized with nearest neighbour to the generation size. Every method saves the
masks it used as `masks/<item>_<class>.png` and lists them in its manifest's `masks`
column, which is what the IoU metric reads.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from .. import io
from ..errors import InputError
from ..models.vocabulary import BACKGROUND_ALIASES
from .segmentation import COCO_TO_VOC, VOC, VOC_CLASSES

log = logging.getLogger(__name__)

MASK_DIR = "masks"
TARGET_CLASSES = ("voc", "categories")
# The manifest's key of a mask's class, and its former name (read, never written).
CLASS_KEY, LEGACY_CLASS_KEY = "class", "voc_class"
# Names that mean the background in every vocabulary: never an object to generate.
BACKGROUND_NAMES = (*BACKGROUND_ALIASES, VOC_CLASSES[0])
# VOC index -> the COCO category name (readable in prompts: "potted plant", not "pottedplant").
VOC_TO_COCO = {index: name for name, index in COCO_TO_VOC.items()}


def check_target_classes(target_classes: str) -> str:
    if target_classes not in TARGET_CLASSES:
        raise ValueError(f"target_classes must be one of {', '.join(TARGET_CLASSES)}, got {target_classes!r}")
    return target_classes


def category_class(category: str, target_classes: str = "voc") -> str | None:
    """The target class of a COCO object category: its VOC name, None without a VOC
    counterpart ("voc"); the category itself ("categories")."""
    if check_target_classes(target_classes) == "categories":
        return category
    index = COCO_TO_VOC.get(category)
    return None if index is None else VOC_CLASSES[index]


def entry_class(value, target_classes: str = "voc") -> str:
    """The target class of an explicit mask entry: the VOC name of a VOC name, COCO name or
    VOC index ("voc"; KeyError for another value); the name as written ("categories")."""
    if check_target_classes(target_classes) == "voc":
        return VOC.canonical(value)
    if not isinstance(value, str) or not value.strip():
        raise KeyError(f"{value!r} is not a class name (target_classes: categories names classes, it has "
                       f"no class indices)")
    return value.strip()


def class_label(name: str, target_classes: str = "voc") -> str:
    """Readable name of a target class, for prompts: a VOC class's COCO name ("dining table",
    "tv") for "voc", the name itself for "categories"."""
    if check_target_classes(target_classes) == "categories":
        return name
    index = VOC.index(name)
    return VOC_TO_COCO.get(index, VOC_CLASSES[index])


def class_order(names, target_classes: str = "voc") -> list[str]:
    """Target classes in a fixed order, whatever order an item lists them in: VOC-index
    order for "voc", by name for "categories"."""
    key = VOC.index if check_target_classes(target_classes) == "voc" else str
    return sorted(names, key=key)


def is_background(name) -> bool:
    return str(name).strip().lower() in BACKGROUND_NAMES or str(name).strip() == "0"


def resize_mask(mask, height: int, width: int) -> np.ndarray:
    """bool [height, width]: a bool/0-1 mask [h, w] resized with nearest neighbour."""
    array = np.asarray(mask.cpu() if isinstance(mask, torch.Tensor) else mask).astype(bool)
    if array.shape == (height, width):
        return array
    image = Image.fromarray(array.astype(np.uint8) * 255).resize((width, height), Image.NEAREST)
    return np.asarray(image) > 0


def read_inputs(inputs_csv, method: str = "TCIG") -> pd.DataFrame:
    """The shard's region input table (see the module docstring); `method` names the
    caller in errors. class_name and image are optional (copied to manifests)."""
    path = Path(inputs_csv)
    if not path.is_file():
        raise InputError(f"{method} inputs table {path} does not exist")
    frame = pd.read_csv(path, dtype={"item_id": str}, keep_default_na=False)
    missing = [c for c in ("item_id", "prompt") if c not in frame.columns]
    if missing:
        raise InputError(f"{method} inputs table {path} lacks column(s) {', '.join(missing)}")
    if "masks" not in frame.columns and "annotation_file" not in frame.columns:
        raise InputError(f"{method} inputs table {path} needs a 'masks' column (JSON list of {{class, path}}) "
                         f"or COCO items with 'annotation_file'")
    duplicated = frame["item_id"][frame["item_id"].duplicated()]
    if len(duplicated):
        raise InputError(f"{method} inputs table {path}: item {duplicated.iloc[0]} is listed twice")
    return frame


def item_masks(row, base_dir: Path, height: int, width: int, method: str = "TCIG",
               target_classes: str = "voc") -> dict[str, np.ndarray]:
    """{class name: bool [height, width]} target masks of one input row (see read_inputs),
    named by `target_classes` (module docstring), in the order the row lists them.

    Explicit masks: pixels > 0 are the class; several masks of one class are united.
    COCO items: the union of the instance masks of each category's target class, over the
    objects the row's `objects` lists (all of the image's without that column); with "voc",
    categories without a VOC counterpart are skipped. Masks of another size are resized
    (nearest) with a warning. An unknown class, a missing or empty mask raise InputError
    (COCO items: a class whose objects vanish in the resize is dropped with a warning; an
    item left without a target object raises).
    """
    check_target_classes(target_classes)
    item = row["item_id"]
    masks: dict[str, np.ndarray] = {}
    explicit = "masks" in row.index and str(row["masks"]).strip() != ""
    if not explicit and str(row.get("annotation_file", "")).strip() == "":
        raise InputError(f"{method} item {item}: no masks (empty 'masks' and no COCO 'annotation_file')")
    if explicit:
        for name, mask, what in _explicit_masks(row, base_dir, method, target_classes):
            if not mask.any():
                raise InputError(f"{method} item {item}: mask {what} of class {name} is empty")
            masks[name] = masks[name] | mask if name in masks else mask
    else:
        from ..data.coco import coco_object_masks

        for category, mask in coco_object_masks(row["annotation_file"], item, _listed_ann_ids(row, method)):
            name = category_class(category, target_classes)
            if name is None:
                log.info("%s item %s: COCO category %s has no VOC class, skipped", method, item, category)
                continue
            if is_background(name):
                raise InputError(f"{method} item {item}: category {category!r} names the background, not an object")
            masks[name] = masks[name] | mask if name in masks else mask
        if not masks:
            if target_classes == "voc":
                raise InputError(f"{method} item {item}: no object of a COCO category with a VOC class "
                                 f"({', '.join(COCO_TO_VOC)})")
            raise InputError(f"{method} item {item}: no object")
    out = {}
    for name, mask in masks.items():
        if mask.shape != (height, width):
            log.warning("%s item %s: mask of class %s is %dx%d, resized (nearest) to %dx%d",
                        method, item, name, mask.shape[1], mask.shape[0], width, height)
        resized = resize_mask(mask, height, width)
        if not resized.any():
            message = (f"{method} item {item}: mask of class {name} is empty after resizing "
                       f"from {mask.shape[1]}x{mask.shape[0]} to {width}x{height}")
            if explicit:
                raise InputError(message)
            log.warning("%s: class dropped", message)
            continue
        out[name] = resized
    if not out:
        raise InputError(f"{method} item {item}: every target mask is empty at {width}x{height}")
    return out


def _listed_ann_ids(row, method: str) -> list[int] | None:
    """The ann ids of a COCO row's `objects` (None without the column: every annotation).
    The region filter's drop_mask reading removes small objects from that list, and a
    removed object must not be generated."""
    if "objects" not in row.index or str(row["objects"]).strip() == "":
        return None
    try:
        return [int(obj["ann_id"]) for obj in json.loads(row["objects"])]
    except (json.JSONDecodeError, TypeError, KeyError, ValueError):
        raise InputError(f"{method} item {row['item_id']}: objects is not a JSON list of {{ann_id, ...}} "
                         f"(as read_coco writes it)") from None


def entry_value(entry: dict):
    """The class an entry of a `masks` JSON list names (its `class`, or `voc_class` as
    manifests written before the key's rename have it); KeyError without either."""
    if CLASS_KEY in entry:
        return entry[CLASS_KEY]
    return entry[LEGACY_CLASS_KEY]


def _explicit_masks(row, base_dir: Path, method: str, target_classes: str):
    item = row["item_id"]
    try:
        entries = json.loads(row["masks"])
    except json.JSONDecodeError as exc:
        raise InputError(f"{method} item {item}: masks is not valid JSON ({exc.msg})") from None
    if not isinstance(entries, list) or not entries:
        raise InputError(f"{method} item {item}: masks must be a non-empty JSON list of {{class, path}}")
    for entry in entries:
        if not isinstance(entry, dict) or "path" not in entry or not {CLASS_KEY, LEGACY_CLASS_KEY} & set(entry):
            raise InputError(f"{method} item {item}: mask entry {entry!r} needs class and path")
        value = entry_value(entry)
        try:
            name = entry_class(value, target_classes)
        except KeyError as exc:
            raise InputError(f"{method} item {item}: unknown class {value!r}: {exc.args[0]}") from None
        if is_background(name):
            raise InputError(f"{method} item {item}: class {value!r} is the background, not an object")
        path = Path(entry["path"])
        path = path if path.is_absolute() else base_dir / path
        if not path.is_file():
            raise InputError(f"{method} item {item}: mask {path} of class {name} does not exist")
        try:
            with Image.open(path) as image:
                array = np.asarray(image.convert("L")) > 0
        except OSError as exc:
            raise InputError(f"{method} item {item}: mask {path} cannot be read: {exc}") from None
        yield name, array, str(path)


def check_all_masks(inputs: pd.DataFrame, inputs_csv, height: int, width: int, method: str,
                    target_classes: str = "voc") -> set[str]:
    """Read every row's masks once before any model is loaded, so a bad mask fails fast;
    returns the target classes of the whole table."""
    names: set[str] = set()
    for _, row in inputs.iterrows():
        names.update(item_masks(row, Path(inputs_csv).parent, height, width, method, target_classes))
    return names


def mask_file_name(item_id: str, name: str) -> str:
    """masks/<item>_<class>.png; characters a file name must not hold become '_'."""
    return f"{MASK_DIR}/{io.safe_name(item_id)}_{re.sub(r'[^A-Za-z0-9._-]', '_', name)}.png"


def save_item_masks(out_dir: Path, item_id: str, masks: dict[str, np.ndarray]) -> str:
    """Write masks/<item>_<class>.png under out_dir; returns the manifest's `masks` JSON
    (list of {class, path relative to out_dir})."""
    (Path(out_dir) / MASK_DIR).mkdir(exist_ok=True)
    listed, files = [], {}
    for name, mask in masks.items():
        if not isinstance(name, str):
            raise TypeError(f"item {item_id}: target masks are keyed by class name, got {name!r}")
        file = mask_file_name(item_id, name)
        if file in files:  # two names that only differ in characters a file name cannot hold
            raise InputError(f"item {item_id}: classes {files[file]!r} and {name!r} would share the mask file {file}")
        files[file] = name
        io.save_image(Path(out_dir) / file, Image.fromarray(mask.astype(np.uint8) * 255))
        listed.append({CLASS_KEY: name, "path": file})
    return json.dumps(listed)


def load_manifest_masks(shard_dir, masks_json: str) -> dict[str, np.ndarray]:
    """{class name: bool mask} from a manifest's `masks` JSON (paths relative to shard_dir;
    the class under `class`, or `voc_class` in manifests written before the rename)."""
    out = {}
    for entry in json.loads(masks_json or "[]"):
        path = Path(shard_dir) / entry["path"]
        with Image.open(path) as image:
            out[str(entry_value(entry))] = np.asarray(image.convert("L")) > 0
    return out
