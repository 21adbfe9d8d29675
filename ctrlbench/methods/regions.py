"""Region inputs shared by the mask-conditioned methods (TCIG, MultiDiffusion regions, the
SI and BLD baselines) and the IoU metric.

A region input table (one per shard; the caption-prompts shard for COCO items) has
item_id, prompt and either

- `masks`: a JSON list of {"voc_class": VOC name, COCO name or index, "path": mask image,
  relative to the table's folder}, or
- `annotation_file` (COCO items): masks from the instance annotations of the objects
  its `objects` column lists (every annotation of the image without that column).

`item_masks` turns a row into {VOC index: bool mask [height, width]}: one mask per class
(several objects of a class are united, since a semantic segmenter cannot tell them
apart), resized with nearest neighbour to the generation size. Every method saves the
masks it used as `masks/<item>_<voc class>.png` and lists them in its manifest's `masks`
column, which is what the IoU metric reads.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from .. import io
from ..errors import InputError
from .segmentation import COCO_TO_VOC, VOC_CLASSES, voc_index

log = logging.getLogger(__name__)

MASK_DIR = "masks"
# VOC index -> the COCO category name (readable in prompts: "potted plant", not "pottedplant").
VOC_TO_COCO = {index: name for name, index in COCO_TO_VOC.items()}


def class_label(index: int) -> str:
    """Readable name of a VOC class index, for prompts ("dining table", "tv")."""
    return VOC_TO_COCO.get(index, VOC_CLASSES[index])


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
        raise InputError(f"{method} inputs table {path} needs a 'masks' column (JSON list of {{voc_class, path}}) "
                         f"or COCO items with 'annotation_file'")
    duplicated = frame["item_id"][frame["item_id"].duplicated()]
    if len(duplicated):
        raise InputError(f"{method} inputs table {path}: item {duplicated.iloc[0]} is listed twice")
    return frame


def item_masks(row, base_dir: Path, height: int, width: int, method: str = "TCIG") -> dict[int, np.ndarray]:
    """{VOC index: bool [height, width]} target masks of one input row (see read_inputs).

    Explicit masks: pixels > 0 are the class; several masks of one class are united.
    COCO items: the union of the instance masks of each category with a VOC counterpart,
    over the objects the row's `objects` lists (all of the image's without that column);
    other categories are skipped. Masks of another size are resized (nearest) with a
    warning. An unknown class, a missing or empty mask raise InputError (COCO items: a
    class whose objects vanish in the resize is dropped with a warning; an item left
    without a VOC object raises).
    """
    item = row["item_id"]
    masks: dict[int, np.ndarray] = {}
    explicit = "masks" in row.index and str(row["masks"]).strip() != ""
    if not explicit and str(row.get("annotation_file", "")).strip() == "":
        raise InputError(f"{method} item {item}: no masks (empty 'masks' and no COCO 'annotation_file')")
    if explicit:
        for index, mask, what in _explicit_masks(row, base_dir, method):
            if not mask.any():
                raise InputError(f"{method} item {item}: mask {what} of class {VOC_CLASSES[index]} is empty")
            masks[index] = masks[index] | mask if index in masks else mask
    else:
        from ..data.coco import coco_object_masks

        for category, mask in coco_object_masks(row["annotation_file"], item, _listed_ann_ids(row, method)):
            index = COCO_TO_VOC.get(category)
            if index is None:
                log.info("%s item %s: COCO category %s has no VOC class, skipped", method, item, category)
                continue
            masks[index] = masks[index] | mask if index in masks else mask
        if not masks:
            raise InputError(f"{method} item {item}: no object of a COCO category with a VOC class "
                             f"({', '.join(COCO_TO_VOC)})")
    out = {}
    for index, mask in masks.items():
        if mask.shape != (height, width):
            log.warning("%s item %s: mask of class %s is %dx%d, resized (nearest) to %dx%d",
                        method, item, VOC_CLASSES[index], mask.shape[1], mask.shape[0], width, height)
        resized = resize_mask(mask, height, width)
        if not resized.any():
            message = (f"{method} item {item}: mask of class {VOC_CLASSES[index]} is empty after resizing "
                       f"from {mask.shape[1]}x{mask.shape[0]} to {width}x{height}")
            if explicit:
                raise InputError(message)
            log.warning("%s: class dropped", message)
            continue
        out[index] = resized
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


def _explicit_masks(row, base_dir: Path, method: str):
    item = row["item_id"]
    try:
        entries = json.loads(row["masks"])
    except json.JSONDecodeError as exc:
        raise InputError(f"{method} item {item}: masks is not valid JSON ({exc.msg})") from None
    if not isinstance(entries, list) or not entries:
        raise InputError(f"{method} item {item}: masks must be a non-empty JSON list of {{voc_class, path}}")
    for entry in entries:
        if not isinstance(entry, dict) or "voc_class" not in entry or "path" not in entry:
            raise InputError(f"{method} item {item}: mask entry {entry!r} needs voc_class and path")
        try:
            index = voc_index(entry["voc_class"])
        except KeyError as exc:
            raise InputError(f"{method} item {item}: unknown class {entry['voc_class']!r}: {exc.args[0]}") from None
        if index == 0:
            raise InputError(f"{method} item {item}: class {entry['voc_class']!r} is the background, not an object")
        path = Path(entry["path"])
        path = path if path.is_absolute() else base_dir / path
        if not path.is_file():
            raise InputError(f"{method} item {item}: mask {path} of class {VOC_CLASSES[index]} does not exist")
        try:
            with Image.open(path) as image:
                array = np.asarray(image.convert("L")) > 0
        except OSError as exc:
            raise InputError(f"{method} item {item}: mask {path} cannot be read: {exc}") from None
        yield index, array, str(path)


def check_all_masks(inputs: pd.DataFrame, inputs_csv, height: int, width: int, method: str) -> None:
    """Read every row's masks once before any model is loaded, so a bad mask fails fast."""
    for _, row in inputs.iterrows():
        item_masks(row, Path(inputs_csv).parent, height, width, method)


def save_item_masks(out_dir: Path, item_id: str, masks: dict[int, np.ndarray]) -> str:
    """Write masks/<item>_<voc class>.png under out_dir; returns the manifest's `masks`
    JSON (list of {voc_class, path relative to out_dir})."""
    (Path(out_dir) / MASK_DIR).mkdir(exist_ok=True)
    listed = []
    for index, mask in masks.items():
        name = f"{MASK_DIR}/{io.safe_name(item_id)}_{VOC_CLASSES[index]}.png"
        io.save_image(Path(out_dir) / name, Image.fromarray(mask.astype(np.uint8) * 255))
        listed.append({"voc_class": VOC_CLASSES[index], "path": name})
    return json.dumps(listed)


def load_manifest_masks(shard_dir, masks_json: str) -> dict[int, np.ndarray]:
    """{VOC index: bool mask} from a manifest's `masks` JSON (paths relative to shard_dir)."""
    out = {}
    for entry in json.loads(masks_json or "[]"):
        path = Path(shard_dir) / entry["path"]
        with Image.open(path) as image:
            out[voc_index(entry["voc_class"])] = np.asarray(image.convert("L")) > 0
    return out
