"""Toy-world datasets in the on-disk formats the workflow reads (docs/data.md, "Toy world
datasets").

Every dataset is a view of one world, `scenes.scene_for(seed, index)`, and names each
scene by its number `index + 1` (1-based, as COCO ids are), so the same number is the same
scene in every format written from the same seed:

    coco         scenes 1..n_images: instances (categories = the five shapes, one RLE
                 mask per object) and captions, val2017 layout
    cub          the one-object scenes, in scene order, until every class (shape x colour,
                 30) has its train and test items: CUB-200-2011 layout with attributes
                 (has_shape, has_color, has_size, has_background) and text_c10 captions
    strokes      scenes 1..n_images: the stroke painting and the caption (GradOP's
                 layout), plus the real render (real/) and an object label map (masks/)
    paraprompts  the scenes with at least `min_objects` objects, in scene order: the
                 scene's paragraph in the ParaPrompts-400 CSV
    prompts      scenes 1..n_prompts: the caption without its background ("a red circle
                 left of a blue square"), one a line in prompts.txt (panorama prompts)

Images are PNG: the scenes are flat colours whose masks match their pixels exactly, and
the toy models were trained on lossless renders (JPEG would shift colours and edges).
Like ctrlbench.data.toy, the same arguments give byte-identical files, larger counts only
add items, and each dataset is built in a staging folder renamed into place with a marker.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
from PIL import Image

from ctrlbench.data.cub import CERTAINTIES
from ctrlbench.data.paraprompts import FILE_NAME as PARAPROMPTS_FILE
from ctrlbench.data.paraprompts import REQUIRED_COLUMNS as PARAPROMPTS_COLUMNS
from ctrlbench.data.strokes import PROMPTS_CSV
from ctrlbench.data.toy import (
    _check_counts, _check_image_size, _check_range, _check_seed, _coco_image_entry, _lines, _staged,
    _uncompressed_rle, _write_coco_annotations, _write_text,
)
from ctrlbench.errors import DatasetError

from . import DATASET_FORMATS, scenes
from .scenes import _COUNTS, _article, _region

DEFAULT_SEED = 1000  # a held-out world: the toy models were trained on worlds 0-3 (TRAINING_SEEDS)
COCO_CAPTIONS = 5    # per image, as in captions_val2017.json
CUB_CAPTIONS = 10    # per image, as in text_c10
# CUB classes: every (shape, colour), shape-major: 001.Red_Circle, 002.Green_Circle, ...
CUB_CLASSES = tuple((shape, color) for shape in scenes.SHAPES for color in scenes.COLORS)
# attributes.txt: group -> values, in file order.
ATTRIBUTE_GROUPS = (("has_shape", scenes.SHAPES), ("has_color", tuple(scenes.COLORS)),
                    ("has_size", tuple(scenes.SIZES)), ("has_background", tuple(scenes.BACKGROUNDS)))
ATTRIBUTES = tuple(f"{group}::{value}" for group, values in ATTRIBUTE_GROUPS for value in values)
MAX_SCAN = 1_000_000  # scenes looked at before a filtered dataset gives up
MAX_PER_CLASS = 999   # CUB items per class and split; 999 take about 240,000 scenes, within MAX_SCAN


def make_toyworld(dataset_format: str, root, **kwargs) -> Path:
    """Write the toy-world dataset of `dataset_format` ("coco" | "cub" | "strokes" |
    "paraprompts") at `root`."""
    makers = {"coco": make_toyworld_coco, "cub": make_toyworld_cub, "strokes": make_toyworld_strokes,
              "paraprompts": make_toyworld_paraprompts, "prompts": make_toyworld_prompts}
    if dataset_format not in DATASET_FORMATS:
        raise DatasetError(f"toy world: no {dataset_format!r} dataset; the world is written as "
                           f"{', '.join(DATASET_FORMATS)}")
    return makers[dataset_format](root, **kwargs)


def scene_number(index: int) -> int:
    """The id of world scene `index` in every format: COCO and CUB image id, the digits of
    the strokes and paraprompts item ids (scene_000001)."""
    return index + 1


def scene_name(index: int) -> str:
    return f"scene_{scene_number(index):06d}"


# --- text -------------------------------------------------------------------------------------

def _listing(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + f" and {parts[-1]}"


def captions(scene: scenes.Scene, n: int) -> list[str]:
    """The scene's caption first (the text the toy SD and CLIP were trained on), then up to
    n - 1 paraphrases in a fixed order. Objects are listed left to right, as the caption does."""
    objects = sorted(scene.objects, key=lambda o: o.x)
    names = _listing([f"{_article(o.name)} {o.name}" for o in objects])
    sized = _listing([f"{_article(o.size)} {o.size} {o.name}" for o in objects])
    placed = _listing([f"{_article(o.size)} {o.size} {o.name} in {_region(o)}" for o in objects])
    bg = scene.background
    texts = [
        scene.caption(),
        f"a picture of {names} on a plain {bg} background",
        f"{sized} on a {bg} background",
        f"a simple drawing of {names} in flat colours",
        f"a plain {bg} background with {names}",
        f"{_COUNTS[len(objects)]} on a {bg} background: {names}",
        f"{placed}, on {bg}",
        f"a flat coloured drawing on {bg}: {names}",
        f"an image of {sized} with sharp edges",
        f"{names} and nothing else, on a {bg} background",
    ]
    if not 1 <= n <= len(texts):
        raise ValueError(f"toy world: 1-{len(texts)} captions per scene, not {n}")
    return texts[:n]


# --- pixels -----------------------------------------------------------------------------------

def _save_png(path: Path, image: Image.Image) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG")


def _bbox(mask: np.ndarray, where: str) -> list[float]:
    """[x, y, w, h] of a mask's pixels (pycocotools' toBbox of its RLE)."""
    ys, xs = np.nonzero(mask)
    if not len(xs):
        raise DatasetError(f"toy world: {where} covers no pixel; use a larger image_size")
    return [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]


def label_map(scene: scenes.Scene, size: int) -> Image.Image:
    """"L" image: 0 background, k + 1 where scene.objects[k] is (objects never overlap)."""
    labels = np.zeros((size, size), np.uint8)
    for k, mask in enumerate(scenes.instance_masks(scene, size)):
        labels[mask] = k + 1
    return Image.fromarray(labels)


def _scan(seed: int):
    """(index, scene) of the world `seed` in index order, for loops that break when they have
    enough; a DatasetError after MAX_SCAN scenes."""
    for index in range(MAX_SCAN):
        yield index, scenes.scene_for(seed, index)
    raise DatasetError(f"toy world: not enough scenes of the kind asked for in the first {MAX_SCAN} "
                       f"scenes of world {seed}")


# --- COCO -------------------------------------------------------------------------------------

def make_toyworld_coco(root, n_images: int = 16, image_size: int = 64, seed: int = DEFAULT_SEED) -> Path:
    """Write <root>/val2017/<id:012d>.png and <root>/annotations/{instances,captions}_val2017.json:
    scenes 1..n_images. Categories 1-5 are scenes.SHAPES (supercategory "shape"); annotation
    id * 10 + k + 1 is scene.objects[k], its mask as uncompressed RLE (= scenes.instance_masks),
    its area the mask's pixel count, plus the object's "color" and "size" (extra keys that
    COCO readers ignore). Captions: the scene caption first, then paraphrases."""
    _check_counts(n_images=n_images)
    _check_image_size(image_size)
    _check_seed(seed)
    images, annotations, texts = [], [], []
    settings = dict(n_images=n_images, image_size=image_size, seed=seed)
    with _staged(root, "toyworld_coco", settings) as staging:
        for index in range(n_images):
            scene, image_id = scenes.scene_for(seed, index), scene_number(index)
            entry = _coco_image_entry(image_id, f"{image_id:012d}.png", image_size)
            _save_png(staging / "val2017" / entry["file_name"], scenes.render(scene, image_size))
            images.append(entry)
            for k, (obj, mask) in enumerate(zip(scene.objects, scenes.instance_masks(scene, image_size))):
                annotations.append({
                    "segmentation": _uncompressed_rle(mask), "area": float(mask.sum()), "iscrowd": 0,
                    "image_id": image_id, "bbox": _bbox(mask, f"object {k} of scene {image_id}"),
                    "category_id": scenes.SHAPES.index(obj.shape) + 1, "id": image_id * 10 + k + 1,
                    "color": obj.color, "size": obj.size})
            texts += [{"image_id": image_id, "id": image_id * 10 + k + 1, "caption": text}
                      for k, text in enumerate(captions(scene, COCO_CAPTIONS))]
        categories = [{"supercategory": "shape", "id": i + 1, "name": shape} for i, shape in enumerate(scenes.SHAPES)]
        _write_coco_annotations(staging, images, annotations, categories, texts,
                                description=f"ctrlbench toy world {seed} in the COCO 2017 format")
    return Path(root)


# --- CUB-200-2011 -----------------------------------------------------------------------------

def cub_folder(class_id: int) -> str:
    """"001.Red_Circle": the class folder of class_id (1-based index of CUB_CLASSES)."""
    shape, color = CUB_CLASSES[class_id - 1]
    return f"{class_id:03d}.{color.capitalize()}_{shape.capitalize()}"


def cub_class_id(obj: scenes.ToyObject) -> int:
    return CUB_CLASSES.index((obj.shape, obj.color)) + 1


def make_toyworld_cub(root, n_classes: int = len(CUB_CLASSES), train_per_class: int = 2, test_per_class: int = 2,
                      image_size: int = 64, seed: int = DEFAULT_SEED) -> Path:
    """Write <root>/CUB_200_2011/, <root>/attributes.txt and <root>/text_c10/ from the
    world's one-object scenes (a CUB image shows one bird; here one shape, whose shape and
    colour are the class).

    Scenes are taken in order; the j-th one of a class (j = 0, 1, ...) has the number
    j + 1 within the class and goes to train for even j, test for odd j (CUB's
    train_test_split), kept while its split has fewer than train_per_class /
    test_per_class; so larger counts only add items. Classes 1..n_classes of CUB_CLASSES.
    Image id = scene number; file <NNN.Color_Shape>/<Color_Shape>_<number:04d>_<id>.png.
    Every image lists every attribute in image_attribute_labels.txt, certainty 4
    (definitely): present for its shape, colour, size and background.
    """
    _check_counts(n_classes=n_classes, train_per_class=train_per_class, test_per_class=test_per_class)
    _check_range("n_classes", n_classes, len(CUB_CLASSES))
    _check_range("train_per_class", train_per_class, MAX_PER_CLASS)
    _check_range("test_per_class", test_per_class, MAX_PER_CLASS)
    _check_image_size(image_size)
    _check_seed(seed)
    items = cub_items(seed, n_classes, train_per_class, test_per_class)
    settings = dict(n_classes=n_classes, train_per_class=train_per_class, test_per_class=test_per_class,
                    image_size=image_size, seed=seed)
    with _staged(root, "toyworld_cub", settings) as staging:
        _write_cub(staging, items, n_classes, image_size)
    return Path(root)


def cub_items(seed: int, n_classes: int, train_per_class: int, test_per_class: int) -> list[tuple]:
    """(index, scene, class_id, number, is_train) of the toy CUB items, in index (= image id)
    order: see make_toyworld_cub."""
    quota = {True: train_per_class, False: test_per_class}
    seen = {class_id: 0 for class_id in range(1, n_classes + 1)}
    needed = max(2 * train_per_class - 1, 2 * test_per_class)  # scenes per class to fill both splits
    items = []
    for index, scene in _scan(seed):
        if all(count >= needed for count in seen.values()):
            break
        class_id = cub_class_id(scene.objects[0]) if len(scene.objects) == 1 else None
        if class_id not in seen:
            continue
        j = seen[class_id]
        seen[class_id] += 1
        if j // 2 < quota[j % 2 == 0]:
            items.append((index, scene, class_id, j + 1, j % 2 == 0))
    return items


def _write_cub(staging: Path, items, n_classes: int, image_size: int) -> None:
    cub = staging / "CUB_200_2011"
    index_lines = {name: [] for name in ("images", "labels", "split", "boxes", "attributes")}
    for index, scene, class_id, number, is_train in items:
        image_id, obj = scene_number(index), scene.objects[0]
        species = cub_folder(class_id).split(".", 1)[1]
        relpath = f"{cub_folder(class_id)}/{species}_{number:04d}_{image_id}.png"
        _save_png(cub / "images" / relpath, scenes.render(scene, image_size))
        mask = scenes.instance_masks(scene, image_size)[0]
        index_lines["images"].append(f"{image_id} {relpath}")
        index_lines["labels"].append(f"{image_id} {class_id}")
        index_lines["split"].append(f"{image_id} {int(is_train)}")
        index_lines["boxes"].append(f"{image_id} " + " ".join(f"{v:.1f}" for v in _bbox(mask, f"scene {image_id}")))
        present = {f"has_shape::{obj.shape}", f"has_color::{obj.color}", f"has_size::{obj.size}",
                   f"has_background::{scene.background}"}
        index_lines["attributes"] += [f"{image_id} {a} {int(name in present)} 4 0.0000"
                                      for a, name in enumerate(ATTRIBUTES, 1)]
        _write_text(staging / "text_c10" / Path(relpath).with_suffix(".txt"), _lines(captions(scene, CUB_CAPTIONS)))
    for name, file in (("images", "images.txt"), ("labels", "image_class_labels.txt"),
                       ("split", "train_test_split.txt"), ("boxes", "bounding_boxes.txt"),
                       ("attributes", "attributes/image_attribute_labels.txt")):
        _write_text(cub / file, _lines(index_lines[name]))
    _write_text(cub / "classes.txt", _lines(f"{c} {cub_folder(c)}" for c in range(1, n_classes + 1)))
    _write_text(cub / "attributes" / "certainties.txt", _lines(f"{k} {v}" for k, v in CERTAINTIES.items()))
    # As in the real tarball: attributes.txt beside CUB_200_2011/.
    _write_text(staging / "attributes.txt", _lines(f"{i} {name}" for i, name in enumerate(ATTRIBUTES, 1)))


# --- stroke paintings -------------------------------------------------------------------------

STROKES_COLUMNS = ("image", "prompt", "real_image", "masks", "objects", "world_seed", "world_index")


def make_toyworld_strokes(root, n_images: int = 8, image_size: int = 64, seed: int = DEFAULT_SEED) -> Path:
    """Write a strokes dataset of scenes 1..n_images: images/scene_NNNNNN.png is
    scenes.stroke_painting(scene, image_size, seed=index), the prompt is the scene caption.
    Beside them, for realism and faithfulness checks: real/scene_NNNNNN.png (the scene's
    render) and masks/scene_NNNNNN.png (label_map: value k + 1 = scene.objects[k]). The
    CSV's columns after image,prompt (which the strokes reader ignores): real_image, masks,
    objects (JSON list of {shape, color, size} in label order), world_seed, world_index."""
    _check_counts(n_images=n_images)
    _check_image_size(image_size)
    _check_seed(seed)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(STROKES_COLUMNS)
    settings = dict(n_images=n_images, image_size=image_size, seed=seed)
    with _staged(root, "toyworld_strokes", settings) as staging:
        for index in range(n_images):
            scene, name = scenes.scene_for(seed, index), f"{scene_name(index)}.png"
            _save_png(staging / "images" / name, scenes.stroke_painting(scene, image_size, seed=index))
            _save_png(staging / "real" / name, scenes.render(scene, image_size))
            _save_png(staging / "masks" / name, label_map(scene, image_size))
            objects = json.dumps([{"shape": o.shape, "color": o.color, "size": o.size} for o in scene.objects])
            writer.writerow([name, scene.caption(), f"real/{name}", f"masks/{name}", objects, seed, index])
        _write_text(staging / PROMPTS_CSV, buffer.getvalue())
    return Path(root)


# --- ParaPrompts-400 --------------------------------------------------------------------------

def make_toyworld_paraprompts(root, n_prompts: int = 8, min_objects: int = 1, image_size: int = 64,
                              seed: int = DEFAULT_SEED) -> Path:
    """Write <root>/ParaPrompts_400.csv (header Image,Prompt,Category; the optional
    Prompt_Chinese is left out): one row per scene with at least `min_objects` objects, in
    scene order, until n_prompts. Prompt = scene.paragraph() (over 77 CLIP tokens from
    three objects on); Image = scene_NNNNNN.png (no file: ParaPrompts ships none), so the
    item id is scene_NNNNNN; Category = the object count ("three shapes").
    `image_size` is accepted (the workflow passes it to every maker) and unused."""
    _check_counts(n_prompts=n_prompts, min_objects=min_objects)
    _check_range("min_objects", min_objects, scenes.MAX_OBJECTS)
    _check_image_size(image_size)
    _check_seed(seed)
    kept = []
    for index, scene in _scan(seed):
        if len(kept) == n_prompts:
            break
        if len(scene.objects) >= min_objects:
            kept.append((index, scene))
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")  # minimal quoting, as the real file
    writer.writerow(PARAPROMPTS_COLUMNS)
    for index, scene in kept:
        writer.writerow([f"{scene_name(index)}.png", scene.paragraph(), _COUNTS[len(scene.objects)]])
    with _staged(root, "toyworld_paraprompts", dict(n_prompts=n_prompts, min_objects=min_objects, seed=seed)) as staging:
        _write_text(staging / PARAPROMPTS_FILE, buffer.getvalue())
    return Path(root)


def objects_prompt(scene: scenes.Scene) -> str:
    """The caption without its background: the panorama prompt of a scene (the background is
    left to the model, as a landscape prompt leaves a panorama's details)."""
    return scene.caption().rsplit(" on a ", 1)[0]


def make_toyworld_prompts(root, n_prompts: int = 8, image_size: int = 64, seed: int = DEFAULT_SEED) -> Path:
    """Write <root>/prompts.txt: the objects_prompt of scenes 1..n_prompts, one a line (the
    prompt-list format, docs/data.md). `image_size` is accepted and unused."""
    _check_counts(n_prompts=n_prompts)
    _check_image_size(image_size)
    _check_seed(seed)
    prompts = [objects_prompt(scenes.scene_for(seed, index)) for index in range(n_prompts)]
    with _staged(root, "toyworld_prompts", dict(n_prompts=n_prompts, seed=seed)) as staging:
        header = ["# ctrlbench toy-world panorama prompts: the objects of scenes 1..n, no background"]
        _write_text(staging / "prompts.txt", _lines(header + prompts))
    return Path(root)
