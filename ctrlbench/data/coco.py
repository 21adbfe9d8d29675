"""Reader for COCO 2017 instance annotations, and per-object masks via pycocotools.

Layout (the real download and the toy copy alike):

    <root>/val2017/000000000139.jpg ...                     (train2017/ for split "train")
    <root>/annotations/instances_val2017.json               images, annotations, categories
    <root>/annotations/captions_val2017.json                captions (optional)

An image holds several objects, so class_id is -1 and class_name "" for every row; the
objects column lists them instead. Images without annotations are kept (objects = []).
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
from pathlib import Path

import numpy as np
import pandas as pd

from ctrlbench.data.readers import (
    check_split, items_frame, load_json_object, require_dir, require_file, require_images_exist, to_json,
)
from ctrlbench.errors import DatasetError

COCO_URL = "https://cocodataset.org/#download"
LAYOUT = (
    "Expected the COCO 2017 layout: <root>/val2017/*.jpg (or train2017/) and "
    "<root>/annotations/instances_val2017.json (or instances_train2017.json), from "
    f"2017 Val images and 2017 Train/Val annotations at {COCO_URL}"
)
# COCO's test2017 images come without instance annotations, so there is no "test" split.
SPLITS = ("train", "val", "all")
EXTRA_COLUMNS = ("width", "height", "objects", "annotation_file")

# (id, name, supercategory) of the 80 COCO categories, as in instances_*2017.json.
COCO_CATEGORIES = (
    (1, "person", "person"), (2, "bicycle", "vehicle"), (3, "car", "vehicle"),
    (4, "motorcycle", "vehicle"), (5, "airplane", "vehicle"), (6, "bus", "vehicle"),
    (7, "train", "vehicle"), (8, "truck", "vehicle"), (9, "boat", "vehicle"),
    (10, "traffic light", "outdoor"), (11, "fire hydrant", "outdoor"), (13, "stop sign", "outdoor"),
    (14, "parking meter", "outdoor"), (15, "bench", "outdoor"), (16, "bird", "animal"),
    (17, "cat", "animal"), (18, "dog", "animal"), (19, "horse", "animal"), (20, "sheep", "animal"),
    (21, "cow", "animal"), (22, "elephant", "animal"), (23, "bear", "animal"),
    (24, "zebra", "animal"), (25, "giraffe", "animal"), (27, "backpack", "accessory"),
    (28, "umbrella", "accessory"), (31, "handbag", "accessory"), (32, "tie", "accessory"),
    (33, "suitcase", "accessory"), (34, "frisbee", "sports"), (35, "skis", "sports"),
    (36, "snowboard", "sports"), (37, "sports ball", "sports"), (38, "kite", "sports"),
    (39, "baseball bat", "sports"), (40, "baseball glove", "sports"), (41, "skateboard", "sports"),
    (42, "surfboard", "sports"), (43, "tennis racket", "sports"), (44, "bottle", "kitchen"),
    (46, "wine glass", "kitchen"), (47, "cup", "kitchen"), (48, "fork", "kitchen"),
    (49, "knife", "kitchen"), (50, "spoon", "kitchen"), (51, "bowl", "kitchen"),
    (52, "banana", "food"), (53, "apple", "food"), (54, "sandwich", "food"), (55, "orange", "food"),
    (56, "broccoli", "food"), (57, "carrot", "food"), (58, "hot dog", "food"), (59, "pizza", "food"),
    (60, "donut", "food"), (61, "cake", "food"), (62, "chair", "furniture"),
    (63, "couch", "furniture"), (64, "potted plant", "furniture"), (65, "bed", "furniture"),
    (67, "dining table", "furniture"), (70, "toilet", "furniture"), (72, "tv", "electronic"),
    (73, "laptop", "electronic"), (74, "mouse", "electronic"), (75, "remote", "electronic"),
    (76, "keyboard", "electronic"), (77, "cell phone", "electronic"), (78, "microwave", "appliance"),
    (79, "oven", "appliance"), (80, "toaster", "appliance"), (81, "sink", "appliance"),
    (82, "refrigerator", "appliance"), (84, "book", "indoor"), (85, "clock", "indoor"),
    (86, "vase", "indoor"), (87, "scissors", "indoor"), (88, "teddy bear", "indoor"),
    (89, "hair drier", "indoor"), (90, "toothbrush", "indoor"),
)

_IMAGE_KEYS = ("id", "file_name", "width", "height")
_ANNOTATION_KEYS = ("id", "image_id", "category_id", "bbox", "area")


def read_coco(root, split: str = "val") -> pd.DataFrame:
    """Items table of COCO 2017 under `root` (see module docstring); split: train | val | all.

    Extra columns: width, height, objects (JSON list of {ann_id, category_id, category,
    bbox [x, y, w, h], area_fraction, iscrowd}), annotation_file (absolute path).
    "all" reads every split whose annotation file is present.
    """
    check_split(split, SPLITS, "COCO")
    root = require_dir(root, "COCO", LAYOUT)
    names = [split]
    if split == "all":  # with neither file present, the error names the missing val file
        names = [name for name in ("train", "val") if annotation_path(root, name).is_file()] or ["val"]
    rows = [row for name in names for row in _read_split(root, name)]
    return items_frame(rows, EXTRA_COLUMNS, "COCO")


def annotation_path(root, split: str) -> Path:
    return Path(root) / "annotations" / f"instances_{split}2017.json"


def coco_object_masks(annotation_file, image_id, ann_ids=None) -> list[tuple[str, np.ndarray]]:
    """(category name, bool mask [height, width]) of every annotation of one image, by ann id.

    `image_id` is the COCO id as int or as the 12-digit item_id string. `ann_ids`: only
    these annotations (the objects an items row lists); None = all of the image's.
    """
    path = require_file(os.path.abspath(annotation_file), "COCO", LAYOUT)
    stat = path.stat()
    coco = _load_coco(str(path), stat.st_mtime_ns, stat.st_size)
    image_id = int(image_id)
    if image_id not in coco.imgs:
        raise DatasetError(f"COCO: {annotation_file} has no image with id {image_id}")
    annotations = sorted(coco.loadAnns(coco.getAnnIds(imgIds=[image_id])), key=lambda a: a["id"])
    if ann_ids is not None:
        wanted = set(ann_ids)
        missing = sorted(wanted - {a["id"] for a in annotations})
        if missing:
            raise DatasetError(f"COCO: {annotation_file} has no annotation(s) {missing} of image {image_id}; "
                               f"was the file changed after the items were read?")
        annotations = [a for a in annotations if a["id"] in wanted]
    return [(coco.cats[a["category_id"]]["name"], coco.annToMask(a).astype(bool)) for a in annotations]


@functools.lru_cache(maxsize=2)
def _load_coco(annotation_file: str, mtime_ns: int, size: int):
    """pycocotools index of one annotation file; mtime and size key the cache so a
    regenerated file is read again. Cached because indexing the real train file takes
    ~20 s and callers ask for one image at a time."""
    from pycocotools.coco import COCO

    coco = COCO()  # built from our own load: readable errors, and no progress printing
    coco.dataset = load_json_object(Path(annotation_file), "COCO", LAYOUT)
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _read_split(root: Path, split: str) -> list[dict]:
    annotation_file = require_file(annotation_path(root, split), "COCO", LAYOUT)
    data = load_json_object(annotation_file, "COCO", LAYOUT)
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise DatasetError(f"COCO: {annotation_file} has no list {key!r}; is it an instances_*.json file?")
    categories = {c.get("id"): c.get("name", "") for c in data["categories"]}
    images = [_checked(image, _IMAGE_KEYS, annotation_file, f"images[{i}]") for i, image in enumerate(data["images"])]
    objects = _objects_by_image(data["annotations"], categories, {im["id"]: im for im in images}, annotation_file)
    captions = _read_captions(root / "annotations" / f"captions_{split}2017.json")

    rows = []
    for image in images:
        rows.append({
            "item_id": f"{int(image['id']):012d}",
            "split": split,
            "class_id": -1,
            "class_name": "",
            "image": os.path.abspath(root / f"{split}2017" / image["file_name"]),
            "captions": to_json(captions.get(image["id"], [])),
            "attributes": to_json([]),
            "width": int(image["width"]),
            "height": int(image["height"]),
            "objects": to_json(objects.get(image["id"], [])),
            "annotation_file": os.path.abspath(annotation_file),
        })
    require_images_exist([row["image"] for row in rows], str(annotation_file), "COCO")
    return rows


def _objects_by_image(annotations, categories, images, annotation_file) -> dict[int, list[dict]]:
    objects: dict[int, list[dict]] = {}
    for i, ann in enumerate(annotations):
        _checked(ann, _ANNOTATION_KEYS, annotation_file, f"annotations[{i}]")
        where = f"annotations[{i}] (id {ann['id']})"
        if ann["category_id"] not in categories:
            raise DatasetError(f"COCO: {annotation_file} {where} has unknown category_id {ann['category_id']}")
        if ann["image_id"] not in images:
            raise DatasetError(f"COCO: {annotation_file} {where} refers to missing image_id {ann['image_id']}")
        image = images[ann["image_id"]]
        objects.setdefault(ann["image_id"], []).append({
            "ann_id": ann["id"],
            "category_id": ann["category_id"],
            "category": categories[ann["category_id"]],
            "bbox": [float(v) for v in ann["bbox"]],
            "area_fraction": round(float(ann["area"]) / (image["width"] * image["height"]), 6),
            "iscrowd": int(ann.get("iscrowd", 0)),
        })
    for listed in objects.values():
        listed.sort(key=lambda obj: obj["ann_id"])
    return objects


def _read_captions(path: Path) -> dict[int, list[str]]:
    """image id -> captions from captions_<split>2017.json; {} when the file is absent."""
    if not path.is_file():
        return {}
    data = load_json_object(path, "COCO", LAYOUT)
    by_image: dict[int, list[tuple[int, str]]] = {}
    for ann in data.get("annotations", []):
        by_image.setdefault(ann["image_id"], []).append((ann.get("id", 0), str(ann["caption"]).strip()))
    return {image_id: [text for _, text in sorted(pairs)] for image_id, pairs in by_image.items()}


def _checked(entry, keys, path, where: str) -> dict:
    if not isinstance(entry, dict):
        raise DatasetError(f"COCO: {path} {where} must be an object")
    missing = [key for key in keys if key not in entry]
    if missing:
        raise DatasetError(f"COCO: {path} {where} lacks {missing}")
    return entry
