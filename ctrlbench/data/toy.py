"""Deterministic toy datasets in the real on-disk formats of CUB-200-2011, Oxford
Flowers-102 and COCO 2017, so the whole workflow runs without downloads (docs/data.md).

Every item (image, attribute labels, captions) comes from its own random generator,
np.random.default_rng([seed, class_id, number]) (COCO: [seed, image_id]); class-level
properties (colours, attributes) from default_rng([seed, class_id]). So the same
arguments give byte-identical files, and larger counts only add items: the files and
ids of existing items stay as they were. Each make_* builds the dataset in a temporary
sibling folder and renames it into place at the end, replacing an earlier toy copy.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import os
import re
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Iterator, NamedTuple

import numpy as np
import scipy.io
from PIL import Image, ImageDraw

from ctrlbench.data.coco import COCO_CATEGORIES
from ctrlbench.data.cub import CERTAINTIES, CUB_ATTRIBUTE_GROUPS, CUB_ATTRIBUTES, CUB_CLASS_NAMES, CUB_COLORS
from ctrlbench.data.flowers import FLOWERS_CLASS_NAMES
from ctrlbench.data.layout import KAGGLE_CLASS_NAMES, KAGGLE_SPLIT_DIRS
from ctrlbench.data.paraprompts import COLUMNS as PARAPROMPTS_COLUMNS
from ctrlbench.data.paraprompts import FILE_NAME as PARAPROMPTS_FILE
from ctrlbench.errors import DatasetError

JPEG_QUALITY = 90
MARKER = ".ctrlbench_toy.json"  # written last; says a folder is a toy copy that may be replaced

RGB = {
    "blue": (45, 85, 200), "brown": (120, 80, 45), "iridescent": (40, 150, 150),
    "purple": (115, 55, 150), "rufous": (175, 75, 35), "grey": (130, 130, 130),
    "yellow": (235, 205, 45), "olive": (110, 115, 45), "green": (50, 145, 60),
    "pink": (235, 150, 180), "orange": (240, 135, 35), "black": (25, 25, 25),
    "white": (240, 240, 235), "red": (205, 35, 35), "buff": (220, 190, 140),
    "lavender": (180, 160, 225),
}


def make_toy(dataset_format: str, root, **kwargs) -> Path:
    """Write the toy copy of `dataset_format` ("cub" | "flowers" | "coco" | "strokes" |
    "prompts" | "paraprompts") at `root`."""
    makers = {"cub": make_toy_cub, "flowers": make_toy_flowers, "coco": make_toy_coco,
              "strokes": make_toy_strokes_dataset, "prompts": make_toy_prompts,
              "paraprompts": make_toy_paraprompts}
    if dataset_format not in makers:
        raise DatasetError(f"unknown dataset format {dataset_format!r}; expected one of {sorted(makers)}")
    return makers[dataset_format](root, **kwargs)


def make_toy_strokes_dataset(root, n_images: int = 4, image_size: int = 64, seed: int = 0) -> Path:
    """Toy stroke paintings (GradOP's layout): flat-colour, blurred versions of toy CUB
    test images, each with the prompt "a photo of a <class>"."""
    import tempfile

    from .cub import read_cub
    from .strokes import make_toy_strokes as paint

    with tempfile.TemporaryDirectory() as tmp:
        make_toy_cub(tmp, n_classes=max(1, (n_images + 1) // 2), train_per_class=1, test_per_class=2,
                     image_size=image_size, seed=seed)
        sources = read_cub(tmp, "test").head(n_images)
        return paint(root, sources["image"].tolist(), [f"a photo of a {c}" for c in sources["class_name"]],
                     image_size=image_size)


# --- CUB-200-2011 ---------------------------------------------------------------------------

_MAIN_COLOR_GROUPS = ("has_wing_color", "has_upperparts_color", "has_back_color", "has_upper_tail_color",
                      "has_primary_color", "has_crown_color", "has_nape_color", "has_forehead_color")
_SECOND_COLOR_GROUPS = ("has_underparts_color", "has_breast_color", "has_throat_color",
                        "has_belly_color", "has_under_tail_color")
# Roughly the real plumage of the first three classes (the albatrosses); later classes draw theirs.
_FIRST_CUB_COLORS = (("black", "white"), ("white", "grey"), ("brown", "buff"))
_BIRD_CAPTIONS = (
    "this bird has a {wing} wing and a {belly} belly.",
    "a {size} bird with {primary} feathers and a {bill_shape} bill.",
    "this {primary} bird has a {breast} breast and a {bill} bill.",
    "the bird has a {crown} crown, a {throat} throat and {eye} eyes.",
    "a {primary} and {belly} bird with a {tail_shape}.",
    "this bird is {primary} with {belly} on its belly and {leg} legs.",
    "a {size} {shape} bird with a {bill_length} bill.",
    "this bird has {wing} wings, a {belly} belly and a {head_pattern} pattern on its head.",
    "the {primary} bird has a {bill_shape} {bill} bill.",
    "a bird with a {breast} breast, {wing} wings and a {wing_pattern} wing pattern.",
    "this small animal has a {crown} head and a {throat} throat.",
    "a {primary} bird perched with its {tail_shape} showing.",
)

_BILL_LENGTHS = {"about_the_same_as_head": "head-length", "longer_than_head": "long", "shorter_than_head": "short"}


class _BirdClass(NamedTuple):
    class_id: int
    folder: str               # "001.Black_footed_Albatross"
    values: dict              # attribute group -> chosen value
    in_profile: np.ndarray    # bool [312]: attributes the class has
    always_visible: np.ndarray  # bool [312]: the main colour, never hidden, so the class is recognisable


class _CubItem(NamedTuple):
    bird: _BirdClass
    number: int               # within the class: odd = train, even = test
    is_train: bool

    @property
    def image_id(self) -> int:
        return self.bird.class_id * 10000 + self.number

    @property
    def relpath(self) -> str:
        # Real files capitalise every word: 001.Black_footed_Albatross/Black_Footed_Albatross_0001_796111.jpg
        species = "_".join(word.capitalize() for word in self.bird.folder.split(".", 1)[1].split("_"))
        return f"{self.bird.folder}/{species}_{self.number:04d}_{self.image_id}.jpg"


def make_toy_cub(root, n_classes: int = 3, train_per_class: int = 2, test_per_class: int = 2,
                 image_size: int = 64, seed: int = 0) -> Path:
    """Write <root>/CUB_200_2011/, <root>/attributes.txt and <root>/text_c10/ (see cub.py)."""
    _check_counts(n_classes=n_classes, train_per_class=train_per_class, test_per_class=test_per_class)
    _check_range("n_classes", n_classes, len(CUB_CLASS_NAMES))
    _check_range("train_per_class", train_per_class, 4999)
    _check_range("test_per_class", test_per_class, 4999)
    _check_image_size(image_size)
    _check_seed(seed)
    birds = [_bird_class(seed, class_id) for class_id in range(1, n_classes + 1)]
    # Train items take the odd numbers, test items the even ones, so growing either split
    # leaves the other's ids alone.
    items = [_CubItem(bird, 2 * i + 1, True) for bird in birds for i in range(train_per_class)]
    items += [_CubItem(bird, 2 * i + 2, False) for bird in birds for i in range(test_per_class)]
    items.sort(key=lambda item: item.image_id)
    settings = dict(n_classes=n_classes, train_per_class=train_per_class, test_per_class=test_per_class,
                    image_size=image_size, seed=seed)
    with _staged(root, "cub", settings) as staging:
        _write_cub(staging, birds, items, image_size, seed)
    return Path(root)


def _write_cub(staging: Path, birds, items, image_size: int, seed: int) -> None:
    cub = staging / "CUB_200_2011"
    boxes, label_lines = [], []
    for item in items:
        rng = np.random.default_rng([seed, item.bird.class_id, item.number])
        image, box = _draw_bird(rng, item.bird, image_size)
        _save_jpeg(cub / "images" / item.relpath, image)
        boxes.append(f"{item.image_id} " + " ".join(f"{v:.1f}" for v in box))
        label_lines += _bird_attribute_lines(rng, item)
        stem = Path(item.relpath)
        _write_text(staging / "text_c10" / stem.parent / f"{stem.stem}.txt", _lines(_bird_captions(rng, item.bird)))
    _write_text(cub / "images.txt", _lines(f"{item.image_id} {item.relpath}" for item in items))
    _write_text(cub / "classes.txt", _lines(f"{bird.class_id} {bird.folder}" for bird in birds))
    _write_text(cub / "image_class_labels.txt", _lines(f"{item.image_id} {item.bird.class_id}" for item in items))
    _write_text(cub / "train_test_split.txt", _lines(f"{item.image_id} {int(item.is_train)}" for item in items))
    _write_text(cub / "bounding_boxes.txt", _lines(boxes))
    _write_text(cub / "attributes" / "image_attribute_labels.txt", _lines(label_lines))
    _write_text(cub / "attributes" / "certainties.txt", _lines(f"{k} {v}" for k, v in CERTAINTIES.items()))
    # The real tarball puts attributes.txt beside CUB_200_2011/, not inside it.
    _write_text(staging / "attributes.txt", _lines(f"{i} {name}" for i, name in enumerate(CUB_ATTRIBUTES, 1)))


def _bird_class(seed: int, class_id: int) -> _BirdClass:
    rng = np.random.default_rng([seed, class_id])
    if class_id <= len(_FIRST_CUB_COLORS):
        main, second = _FIRST_CUB_COLORS[class_id - 1]
    else:
        main, second = (CUB_COLORS[i] for i in rng.choice(len(CUB_COLORS), size=2, replace=False))
    values = {}
    for group, options in CUB_ATTRIBUTE_GROUPS:
        drawn = options[rng.integers(len(options))]  # drawn for every group: same stream for every class
        values[group] = main if group in _MAIN_COLOR_GROUPS else second if group in _SECOND_COLOR_GROUPS else drawn
    in_profile = np.array([name.split("::")[1] == values[name.split("::")[0]] for name in CUB_ATTRIBUTES])
    always_visible = in_profile & np.array([name.split("::")[0] in _MAIN_COLOR_GROUPS for name in CUB_ATTRIBUTES])
    folder = f"{class_id:03d}.{CUB_CLASS_NAMES[class_id - 1]}"
    return _BirdClass(class_id, folder, values, in_profile, always_visible)


def _bird_attribute_lines(rng, item: _CubItem) -> list[str]:
    """One image's lines of image_attribute_labels.txt, every attribute, as in the real file."""
    bird, n = item.bird, len(CUB_ATTRIBUTES)
    present = bird.in_profile ^ (rng.random(n) < 0.01)  # annotators disagree now and then
    present |= bird.always_visible
    certainty = rng.choice([1, 2, 3, 4], size=n, p=[0.1, 0.15, 0.35, 0.4])  # 1 = not visible
    certainty[bird.always_visible] = rng.choice([3, 4], size=int(bird.always_visible.sum()))
    seconds = rng.uniform(2.0, 30.0, size=n)
    return [f"{item.image_id} {a + 1} {int(present[a])} {certainty[a]} {seconds[a]:.4f}" for a in range(n)]


def _bird_captions(rng, bird: _BirdClass) -> list[str]:
    words = {key: _phrase(bird.values[f"has_{key}"]) for key in (
        "wing_color", "belly_color", "size", "primary_color", "bill_shape", "breast_color", "bill_color",
        "crown_color", "throat_color", "eye_color", "tail_shape", "leg_color", "shape", "bill_length",
        "head_pattern", "wing_pattern")}
    words = {key.removesuffix("_color"): value for key, value in words.items()}
    words["bill_length"] = _BILL_LENGTHS[bird.values["has_bill_length"]]
    chosen = rng.permutation(len(_BIRD_CAPTIONS))[:10]
    return [_BIRD_CAPTIONS[i].format(**words) for i in chosen]


def _phrase(value: str) -> str:
    """Attribute value as caption words: 'curved_(up_or_down)' -> 'curved', 'forked_tail' -> 'forked tail'."""
    return re.sub(r"_\(.*\)$", "", value).replace("_", " ")


def _draw_bird(rng, bird: _BirdClass, size: int) -> tuple[Image.Image, tuple[float, ...]]:
    """A bird of the class colours on a sky-to-ground gradient; returns (image, [x, y, w, h] box)."""
    image = Image.fromarray(_gradient(rng, size, (150, 235), (60, 140)))
    draw = ImageDraw.Draw(image)
    colors = {key: RGB[bird.values[group]] for key, group in (
        ("main", "has_primary_color"), ("belly", "has_belly_color"),
        ("bill", "has_bill_color"), ("eye", "has_eye_color"))}
    cx, cy = size * rng.uniform(0.4, 0.6), size * rng.uniform(0.48, 0.6)
    w, h = size * rng.uniform(0.42, 0.56), size * rng.uniform(0.26, 0.34)
    facing = 1 if rng.random() < 0.5 else -1
    tail_x = cx - facing * w * 0.75
    draw.polygon([(cx - facing * w * 0.3, cy - h * 0.15), (tail_x, cy - h * 0.35), (tail_x, cy + h * 0.1)],
                 fill=colors["main"])
    draw.ellipse([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], fill=colors["main"])
    draw.ellipse([cx - w / 3, cy, cx + w / 3, cy + h / 2], fill=colors["belly"])
    hx, hy, r = cx + facing * w * 0.42, cy - h * 0.55, h * 0.4
    draw.ellipse([hx - r, hy - r, hx + r, hy + r], fill=colors["main"])
    tip = hx + facing * r * 2.0
    draw.polygon([(hx + facing * r * 0.8, hy - r * 0.35), (tip, hy), (hx + facing * r * 0.8, hy + r * 0.35)],
                 fill=colors["bill"])
    ex, ey, er = hx + facing * r * 0.35, hy - r * 0.2, max(1.0, r * 0.22)
    draw.ellipse([ex - er, ey - er, ex + er, ey + er], fill=colors["eye"])
    xs = (cx - w / 2, cx + w / 2, hx - r, hx + r, tip, tail_x)
    x0, x1 = max(0.0, min(xs)), min(float(size), max(xs))
    y0, y1 = max(0.0, hy - r), min(float(size), cy + h / 2)
    return image, (x0, y0, x1 - x0, y1 - y0)


# --- Oxford Flowers-102 ----------------------------------------------------------------------

# Image numbers are class_block + 3 * i + split offset: every (class, split, i) keeps its number
# whatever the counts (numbers left unused are simply absent, like images never listed in
# setid.mat). 640 * 102 stays below 65536, so the indices fit uint16 as in the real setid.mat.
_FLOWERS_BLOCK = 640
_FLOWERS_SPLIT_OFFSETS = {"train": 1, "val": 2, "test": 3}
_PETAL_COLORS = ("pink", "yellow", "purple", "white", "red", "orange", "blue", "lavender")
_CENTER_COLORS = ("yellow", "brown", "black", "white", "green", "orange")
_PETAL_SHAPES = ("rounded", "pointed", "long and thin", "broad", "ruffled")
_FLOWER_CAPTIONS = (
    "this flower has {n} {color} petals and a {center} center.",
    "the petals of this flower are {color} and {shape}.",
    "a {color} flower with {n} petals around a {center} pistil.",
    "this flower is {color} in color, with {shape} petals.",
    "the flower has {shape} {color} petals surrounding {center} stamen.",
    "a flower with {n} {shape} petals that are {color}.",
    "this {color} flower has a {center} center and green leaves behind it.",
    "the {n} petals are {color} and the center is {center}.",
    "a close up of a {color} flower with a {center} middle.",
    "this flower has petals that are {color} with a {center} ovary.",
    "{color} petals, {shape}, spread around a {center} center.",
)


class _FlowerClass(NamedTuple):
    class_id: int
    color: str
    center: str
    shape: str
    n_petals: int
    petal_length: float  # fraction of the image size


def make_toy_flowers(root, n_classes: int = 3, train_per_class: int = 2, test_per_class: int = 2,
                     image_size: int = 64, seed: int = 0, val_per_class: int | None = None,
                     layout: str = "oxford") -> Path:
    """Write <root>/jpg/, imagelabels.mat, setid.mat and text_c10/ (see flowers.py).

    val_per_class defaults to test_per_class. layout "kaggle" writes the same train and val
    images, with the same numbers, in the Kaggle layout instead: <root>/dataset/train/<class
    id>/ and dataset/valid/<class id>/, with cat_to_name.json and text_c10/ beside dataset/.
    Its test images are left out, as the real Kaggle copy has no labelled test split.
    """
    if layout not in ("oxford", "kaggle"):
        raise ValueError(f"toy data: layout must be 'oxford' or 'kaggle', got {layout!r}")
    val_per_class = test_per_class if val_per_class is None else val_per_class
    counts = {"train": train_per_class, "val": val_per_class, "test": test_per_class}
    _check_counts(n_classes=n_classes, **{f"{k}_per_class": v for k, v in counts.items()})
    _check_range("n_classes", n_classes, len(FLOWERS_CLASS_NAMES))
    for split, count in counts.items():
        _check_range(f"{split}_per_class", count, (_FLOWERS_BLOCK - 1) // 3)
    _check_image_size(image_size)
    _check_seed(seed)
    flowers = [_flower_class(seed, class_id) for class_id in range(1, n_classes + 1)]
    numbers = {split: sorted((f.class_id - 1) * _FLOWERS_BLOCK + 3 * i + _FLOWERS_SPLIT_OFFSETS[split]
                             for f in flowers for i in range(count)) for split, count in counts.items()}
    settings = dict(n_classes=n_classes, train_per_class=train_per_class, val_per_class=val_per_class,
                    test_per_class=test_per_class, image_size=image_size, seed=seed)
    if layout == "kaggle":  # only then: the default marker, and so the demo, stays byte-identical
        settings["layout"] = layout
    with _staged(root, "flowers", settings) as staging:
        if layout == "kaggle":
            _write_flowers_kaggle(staging, flowers, numbers, image_size, seed)
        else:
            _write_flowers(staging, flowers, numbers, image_size, seed)
    return Path(root)


def _write_flowers(staging: Path, flowers, numbers: dict, image_size: int, seed: int) -> None:
    _write_flower_images(staging, flowers, numbers, image_size, seed, lambda split, class_id: staging / "jpg")
    n_labels = max(n for listed in numbers.values() for n in listed)
    labels = np.array([[(n - 1) // _FLOWERS_BLOCK + 1 for n in range(1, n_labels + 1)]], dtype=np.uint8)
    _save_mat(staging / "imagelabels.mat", {"labels": labels})
    _save_mat(staging / "setid.mat", {key: np.array([numbers[split]], dtype=np.uint16) for split, key in
                                      (("train", "trnid"), ("val", "valid"), ("test", "tstid"))})


def _write_flowers_kaggle(staging: Path, flowers, numbers: dict, image_size: int, seed: int) -> None:
    labelled = {split: numbers[split] for split in ("train", "val")}
    _write_flower_images(staging, flowers, labelled, image_size, seed,
                         lambda split, class_id: staging / "dataset" / KAGGLE_SPLIT_DIRS[split] / str(class_id))
    # All 102 classes, keys as strings and not in numeric order, like the real file.
    names = {str(class_id): name for class_id, name in enumerate(FLOWERS_CLASS_NAMES, start=1)}
    _write_text(staging / KAGGLE_CLASS_NAMES, json.dumps(names, sort_keys=True) + "\n")


def _write_flower_images(staging: Path, flowers, numbers: dict, image_size: int, seed: int, folder) -> None:
    """Every image of `numbers` ({split: image numbers}) into folder(split, class id), and its
    captions into text_c10/; each image is drawn from its own generator, so the folder does
    not change its pixels."""
    for split, listed in numbers.items():
        for number in listed:
            flower = flowers[(number - 1) // _FLOWERS_BLOCK]
            rng = np.random.default_rng([seed, flower.class_id, number])
            image = _draw_flower(rng, flower, image_size)
            _save_jpeg(folder(split, flower.class_id) / f"image_{number:05d}.jpg", image)
            captions = _lines(_flower_captions(rng, flower))
            _write_text(staging / "text_c10" / f"class_{flower.class_id:05d}" / f"image_{number:05d}.txt", captions)


def _flower_class(seed: int, class_id: int) -> _FlowerClass:
    rng = np.random.default_rng([seed, class_id])
    color = _PETAL_COLORS[class_id - 1] if class_id <= 3 else _PETAL_COLORS[rng.integers(len(_PETAL_COLORS))]
    return _FlowerClass(class_id, color, _CENTER_COLORS[rng.integers(len(_CENTER_COLORS))],
                        _PETAL_SHAPES[rng.integers(len(_PETAL_SHAPES))], int(rng.integers(4, 10)),
                        float(rng.uniform(0.22, 0.34)))


def _draw_flower(rng, flower: _FlowerClass, size: int) -> Image.Image:
    """Petals of the class colour around a centre disc, on a foliage-green gradient."""
    image = Image.fromarray(_gradient(rng, size, (90, 150), (20, 80), green=True))
    draw = ImageDraw.Draw(image)
    cx, cy = size * rng.uniform(0.42, 0.58), size * rng.uniform(0.42, 0.58)
    length = size * flower.petal_length * rng.uniform(0.9, 1.1)
    width = length * 0.45
    turn = rng.uniform(0, 2 * np.pi)
    t = np.linspace(0, 2 * np.pi, 16, endpoint=False)
    for k in range(flower.n_petals):
        angle = turn + 2 * np.pi * k / flower.n_petals
        along, across = length / 2 * (1 + np.cos(t)), width / 2 * np.sin(t)
        xs = cx + along * np.cos(angle) - across * np.sin(angle)
        ys = cy + along * np.sin(angle) + across * np.cos(angle)
        draw.polygon(list(zip(xs.tolist(), ys.tolist())), fill=RGB[flower.color], outline=(60, 60, 60))
    r = length * 0.3
    draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=RGB[flower.center])
    return image


def _flower_captions(rng, flower: _FlowerClass) -> list[str]:
    chosen = rng.permutation(len(_FLOWER_CAPTIONS))[:10]
    return [_FLOWER_CAPTIONS[i].format(n=flower.n_petals, color=flower.color, center=flower.center,
                                       shape=flower.shape) for i in chosen]


def _save_mat(path: Path, arrays: dict) -> None:
    buffer = io.BytesIO()
    scipy.io.savemat(buffer, arrays, do_compression=False)
    data = bytearray(buffer.getvalue())
    # savemat stamps the creation time into the 116-byte text header; a fixed text keeps
    # the file byte-identical between runs.
    data[:116] = b"MATLAB 5.0 MAT-file, Platform: posix, Created by: ctrlbench toy data".ljust(116)
    path.write_bytes(bytes(data))


# --- COCO 2017 --------------------------------------------------------------------------------

# Scenes cycle with the image id; new scenes are only ever appended, so existing images
# never change. The region filter (coco_regions: annotated, no crowd, no person, VOC
# classes only, 2-4 objects, every mask >= 5%) keeps images 1, 2 and 6 and drops each of
# the others for one reason: 3 a person, 4 a tiny object (about 1%), 5 five objects,
# 7 a truck or elephant (no VOC class), 8 a crowd annotation, 9 one object, 10 no objects,
# 11 a tiny object beside two others. The two small_masks readings differ on 11: drop_mask
# keeps it with two objects (4 is left with one, so both readings drop it).
_COCO_SCENES = (("plain", 2), ("plain", 3), ("person", 3), ("tiny", 2), ("plain", 5), ("plain", 4),
                ("non_voc", 2), ("crowd", 3), ("plain", 1), ("plain", 0), ("tiny", 3))
# Pascal VOC classes other than person, by COCO id.
_VOC_OBJECT_IDS = (2, 3, 4, 5, 6, 7, 9, 16, 17, 18, 19, 20, 21, 44, 62, 63, 64, 67, 72)
# COCO categories without a VOC class, for the "non_voc" scene: truck, elephant.
_NON_VOC_IDS = (8, 22)
_CATEGORY_NAMES = {cid: name for cid, name, _ in COCO_CATEGORIES}
_SHAPES = ("rectangle", "ellipse", "triangle", "diamond")


def make_toy_coco(root, n_images: int = 6, image_size: int = 64, seed: int = 0) -> Path:
    """Write <root>/val2017/*.jpg and <root>/annotations/{instances,captions}_val2017.json."""
    _check_counts(n_images=n_images)
    _check_image_size(image_size)
    _check_seed(seed)
    images, annotations, captions = [], [], []
    settings = dict(n_images=n_images, image_size=image_size, seed=seed)
    with _staged(root, "coco", settings) as staging:
        for image_id in range(1, n_images + 1):
            rng = np.random.default_rng([seed, image_id])
            entry, objects, picture = _coco_image(rng, image_id, image_size)
            _save_jpeg(staging / "val2017" / entry["file_name"], picture)
            images.append(entry)
            annotations += objects
            captions += _coco_captions(rng, image_id, [obj["category_id"] for obj in objects])
        categories = [{"supercategory": sup, "id": cid, "name": name} for cid, name, sup in COCO_CATEGORIES]
        _write_coco_annotations(staging, images, annotations, categories, captions)
    return Path(root)


def _coco_image(rng, image_id: int, size: int) -> tuple[dict, list[dict], Image.Image]:
    kind, n_objects = _COCO_SCENES[(image_id - 1) % len(_COCO_SCENES)]
    category_ids = [int(c) for c in rng.choice(_VOC_OBJECT_IDS, size=n_objects, replace=False)]
    if kind == "person":
        category_ids[0] = 1
    elif kind == "non_voc":
        category_ids[-1] = int(rng.choice(_NON_VOC_IDS))
    picture = Image.fromarray(_gradient(rng, size, (170, 230), (110, 190)))
    draw = ImageDraw.Draw(picture)
    objects = []
    for k, (category_id, cell) in enumerate(zip(category_ids, _grid_cells(rng, n_objects, size))):
        tiny = kind == "tiny" and k == n_objects - 1
        polygon = _shape_polygon(rng, cell, size, tiny)
        draw.polygon(polygon, fill=_category_color(category_id))
        crowd = kind == "crowd" and k == n_objects - 1
        objects.append(_coco_annotation(image_id * 100 + k + 1, image_id, category_id, polygon, size, crowd))
    return _coco_image_entry(image_id, f"{image_id:012d}.jpg", size), objects, picture


def _grid_cells(rng, n_objects: int, size: int) -> list[tuple[float, float, float, float]]:
    """Disjoint cells (x, y, w, h), one per object, so no object hides another and every
    polygon equals its visible mask."""
    cols, rows = (2, 1) if n_objects <= 2 else (2, 2) if n_objects <= 4 else (3, 2)
    w, h = size / cols, size / rows
    cells = [(c * w, r * h, w, h) for r in range(rows) for c in range(cols)]
    return [cells[i] for i in rng.permutation(len(cells))[:n_objects]]


def _shape_polygon(rng, cell, size: int, tiny: bool) -> list[tuple[float, float]]:
    x, y, w, h = cell
    if tiny:  # about 1% of the image: well under a 5% minimum-mask filter
        bw = bh = size * 0.1
    else:  # at least 0.75 of the cell each way: >= 7% of the image for every shape in a 2x2 grid
        bw, bh = w * rng.uniform(0.75, 0.95), h * rng.uniform(0.75, 0.95)
    x0, y0 = x + rng.uniform(0, w - bw), y + rng.uniform(0, h - bh)
    shape = _SHAPES[rng.integers(len(_SHAPES))]
    if shape == "rectangle":
        points = [(0, 0), (1, 0), (1, 1), (0, 1)]
    elif shape == "triangle":
        points = [(0.5, 0), (1, 1), (0, 1)]
    elif shape == "diamond":
        points = [(0.5, 0), (1, 0.5), (0.5, 1), (0, 0.5)]
    else:
        t = np.linspace(0, 2 * np.pi, 20, endpoint=False)
        points = list(zip((0.5 + 0.5 * np.cos(t)).tolist(), (0.5 + 0.5 * np.sin(t)).tolist()))
    return [(round(x0 + px * bw, 2), round(y0 + py * bh, 2)) for px, py in points]


def _coco_annotation(ann_id: int, image_id: int, category_id: int, polygon, size: int,
                     crowd: bool = False) -> dict:
    from pycocotools import mask as mask_utils

    flat = [v for point in polygon for v in point]
    rle = mask_utils.merge(mask_utils.frPyObjects([flat], size, size))
    area = float(mask_utils.area(rle))
    xs, ys = [p[0] for p in polygon], [p[1] for p in polygon]
    bbox = [min(xs), min(ys), round(max(xs) - min(xs), 2), round(max(ys) - min(ys), 2)]
    segmentation = [flat]
    if crowd:  # real crowd annotations hold their mask as uncompressed RLE, not as polygons
        with warnings.catch_warnings():  # pycocotools' decode trips a numpy 2 DeprecationWarning
            warnings.simplefilter("ignore", DeprecationWarning)
            segmentation = _uncompressed_rle(mask_utils.decode(rle))
    return {"segmentation": segmentation, "area": area, "iscrowd": int(crowd), "image_id": image_id,
            "bbox": bbox, "category_id": category_id, "id": ann_id}


def _uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO's uncompressed RLE of a 0/1 mask: run lengths in column-major order, starting
    with a (possibly empty) run of zeros."""
    flat = np.asarray(mask, dtype=np.uint8).flatten(order="F")
    changes = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], changes, [flat.size]])
    runs = np.diff(bounds).tolist()
    if flat.size and flat[0] == 1:
        runs = [0] + runs
    return {"counts": [int(r) for r in runs], "size": [int(mask.shape[0]), int(mask.shape[1])]}


def _category_color(category_id: int) -> tuple[int, int, int]:
    """A fixed, well-separated colour per category (golden-ratio hue steps)."""
    import colorsys

    red, green, blue = colorsys.hsv_to_rgb((category_id * 0.618034) % 1.0, 0.75, 0.85)
    return int(red * 255), int(green * 255), int(blue * 255)


def _coco_captions(rng, image_id: int, category_ids: list[int]) -> list[dict]:
    names = [_CATEGORY_NAMES[c] for c in category_ids]
    if not names:  # the scene without objects
        texts = ("an empty scene.", "a plain background.", "nothing but a gradient.",
                 "a picture without objects.", "a blank background with soft colours.")
        order = rng.permutation(len(texts))
        return [{"image_id": image_id, "id": image_id * 10 + k + 1, "caption": texts[i]} for k, i in enumerate(order)]
    things = [f"{'an' if name[0] in 'aeiou' else 'a'} {name}" for name in names]
    listed = things[0] if len(things) == 1 else ", ".join(things[:-1]) + " and " + things[-1]
    templates = (f"{listed}.", f"a picture of {listed}.", f"{listed} on a plain background.",
                 f"a simple drawing showing {listed}.", f"{len(things)} objects: {', '.join(names)}.")
    order = rng.permutation(len(templates))
    return [{"image_id": image_id, "id": image_id * 10 + k + 1, "caption": templates[i]} for k, i in enumerate(order)]


def _coco_image_entry(image_id: int, file_name: str, size: int) -> dict:
    """An `images` entry of instances_*.json, with the real file's keys."""
    return {"license": 1, "file_name": file_name, "coco_url": "", "height": size, "width": size,
            "date_captured": "2017-01-01 00:00:00", "flickr_url": "", "id": image_id}


def _write_coco_annotations(staging: Path, images: list[dict], annotations: list[dict], categories: list[dict],
                            captions: list[dict], description: str = "ctrlbench toy data in the COCO 2017 format",
                            split: str = "val") -> None:
    """annotations/instances_<split>2017.json and captions_<split>2017.json under `staging`."""
    header = {
        "info": {"description": description, "url": "", "version": "1.0",
                 "year": 2017, "contributor": "ctrlbench", "date_created": "2017/09/01"},
        "licenses": [{"url": "", "id": 1, "name": "generated toy data"}],
    }
    _write_text(staging / "annotations" / f"instances_{split}2017.json", json.dumps(
        {**header, "images": images, "annotations": annotations, "categories": categories}))
    _write_text(staging / "annotations" / f"captions_{split}2017.json", json.dumps(
        {**header, "images": images, "annotations": captions}))


# --- prompt lists (panoramas) ----------------------------------------------------------------

# Wide landscape scenes, as in MultiDiffusion's panorama prompts; then every place x time.
_PANORAMA_PROMPTS = (
    "a photo of the dolomites", "a city skyline at night", "a photo of a snowy mountain range at sunrise",
    "a sandy beach with palm trees at sunset", "a forest with a river running through it",
    "desert dunes under a clear blue sky", "a field of sunflowers stretching to the horizon",
    "a harbour full of sailing boats at dawn",
)
_PANORAMA_PLACES = ("a mountain lake", "rolling green hills", "a rocky coastline", "a frozen tundra",
                    "a canyon with red cliffs", "a rice terrace", "a lavender field", "an old town square",
                    "a volcanic landscape", "a misty pine forest", "a savanna with acacia trees", "a glacier")
_PANORAMA_TIMES = ("at sunrise", "at noon", "at sunset", "at night under the stars", "in the fog", "in winter")


def _panorama_prompts() -> tuple[str, ...]:
    return _PANORAMA_PROMPTS + tuple(f"a photo of {place} {time}" for place in _PANORAMA_PLACES
                                     for time in _PANORAMA_TIMES)


def make_toy_prompts(root, n_prompts: int = 4, image_size: int = 64, seed: int = 0) -> Path:
    """Write <root>/prompts.txt: n_prompts landscape (panorama) prompts, one a line.

    The file holds the first n_prompts of the built-in list, so a larger count only appends
    lines. seed 0 takes the list as written (the hand-written scenes, "a photo of the
    dolomites" first); another seed a fixed shuffle of it. `image_size` is accepted (the
    workflow passes it to every toy maker) and unused: a prompt list has no images.
    """
    _check_counts(n_prompts=n_prompts)
    available = _panorama_prompts()
    _check_range("n_prompts", n_prompts, len(available))
    _check_image_size(image_size)
    _check_seed(seed)
    order = np.arange(len(available)) if seed == 0 else np.random.default_rng([seed]).permutation(len(available))
    prompts = [available[i] for i in order[:n_prompts]]
    with _staged(root, "prompts", dict(n_prompts=n_prompts, seed=seed)) as staging:
        header = ["# ctrlbench toy prompt list: one prompt a line (see docs/data.md)"]
        _write_text(staging / "prompts.txt", _lines(header + prompts))
    return Path(root)


# --- ParaPrompts-400 (paragraph prompts) ------------------------------------------------------

# (category, English scene, Chinese summary). Each toy paragraph is a scene followed by one
# closing sentence: 8 scenes x 3 closings = 24 paragraphs of 100-140 words, all longer than
# CLIP's 77-token context, as the real ParaPrompts paragraphs are.
_PARA_SCENES = (
    ("Human",
     "A young woman with short black hair sits on a wooden bench in a small park, reading a thick book "
     "with a green cover. She wears a yellow raincoat, blue jeans and white sneakers, and a brown leather "
     "bag rests beside her on the bench. To her left, an old man in a grey coat and a flat cap is feeding "
     "pigeons from a paper bag, and several birds gather around his feet. Behind them, a row of tall plane "
     "trees lines a gravel path, where a boy in a red jacket rides a small bicycle toward a fountain.",
     "一位短黑发的年轻女子坐在公园的木长椅上看书，旁边一位穿灰色外套的老人在喂鸽子，后面的小路上一个穿红夹克的男孩骑着自行车。"),
    ("Animal",
     "A large brown dog with floppy ears lies on a faded red carpet in front of a fireplace, its head "
     "resting on its front paws. Next to the dog, a small grey cat with white paws is curled up inside a "
     "woven basket lined with a blue blanket. On the stone mantel stand two brass candlesticks and a clock "
     "with a round white face, and a pile of split logs is stacked on the right side. A window on the left "
     "shows falling snow, and a pair of black boots stands on the floor beneath it.",
     "一只棕色大狗趴在壁炉前的红地毯上，旁边的篮子里蜷着一只灰色小猫，壁炉上放着烛台和时钟，左边窗外下着雪。"),
    ("Landscape",
     "A narrow river winds through a wide green valley, its water clear enough to show the smooth grey "
     "stones on the bottom. On the near bank, tall grass and small purple flowers bend in the wind, and a "
     "wooden fence runs down to the water. Across the river, a herd of white sheep grazes on a gentle "
     "slope, watched by a shepherd holding a long stick. Far in the distance, snow-capped mountains rise "
     "above a dark pine forest, and a thin line of smoke climbs from the chimney of a lonely farmhouse.",
     "一条清澈的小河蜿蜒穿过绿色山谷，河岸上开着紫色小花，对岸山坡上有一群白羊和一位牧羊人，远处是雪山和松林。"),
    ("Architecture",
     "An old stone church with a tall pointed bell tower stands at the end of a cobbled square. Its heavy "
     "wooden doors are painted dark green, and above them a round stained glass window shines in red, blue "
     "and gold. On the left side of the square, a row of narrow houses with orange tiled roofs stands close "
     "together, each with flower boxes under its windows. A bakery on the corner has a hand-painted sign "
     "that reads \"FRESH BREAD\", and two bicycles lean against the wall beneath it.",
     "一座带尖顶钟楼的古老石头教堂矗立在鹅卵石广场尽头，左边是一排橙色屋顶的窄房子，街角面包店的招牌上写着“新鲜面包”。"),
    ("Indoor",
     "A bright kitchen has white cabinets along the back wall and a long wooden counter in the middle of "
     "the room. On the counter lie a cutting board with sliced tomatoes, a glass bowl of lemons, and a "
     "silver kettle with a black handle. Three tall stools with round seats stand in front of the counter, "
     "and a striped towel hangs from the oven door. Sunlight comes through a large window above the sink, "
     "where a row of small potted herbs grows on the sill, and a calendar with a picture of the sea hangs "
     "beside it.",
     "明亮的厨房里有白色橱柜和长木台，台上放着切好的番茄、一碗柠檬和银色水壶，水槽上方的窗台上种着香草。"),
    ("Food",
     "A round white plate in the middle of a dark wooden table holds a stack of thick pancakes covered with "
     "fresh strawberries, blueberries and a spoonful of whipped cream. Golden syrup runs down the sides of "
     "the stack and gathers at the edge of the plate. To the right stand a tall glass of orange juice and a "
     "small jug of milk, and on the left lie a silver fork, a knife and a folded napkin with blue checks. "
     "Behind the plate, a basket of croissants and a jar of honey with a wooden dipper complete the breakfast.",
     "深色木桌中间的白盘子里放着一摞松饼，上面有草莓、蓝莓和奶油，右边是一杯橙汁和一小壶牛奶，后面有一篮牛角包和一罐蜂蜜。"),
    ("Vehicle",
     "A red double-decker bus drives along a wet city street, its headlights reflected in the puddles on "
     "the road. Several passengers can be seen through the upper windows, one of them a girl pressing her "
     "hand against the glass. In front of the bus, a yellow taxi waits at a traffic light, and a cyclist in "
     "a green helmet stops beside it with one foot on the curb. On the pavement, people with black umbrellas "
     "hurry past shop windows, and a newspaper stand with colourful magazines stands under a striped awning.",
     "一辆红色双层巴士行驶在湿漉漉的城市街道上，前面一辆黄色出租车在等红灯，人行道上撑着黑伞的行人匆匆走过。"),
    ("Art",
     "A large oil painting hangs on a pale blue wall in a quiet gallery, showing a sailing ship on a stormy "
     "sea under dark clouds. The painting has a heavy golden frame, and a small white card with its title "
     "is fixed to the wall beside it. In front of the painting, an elderly couple stands holding hands, the "
     "woman pointing at the waves with her free hand. A long grey bench stands in the middle of the room, "
     "and through an open doorway on the right, a marble statue of a horse can be seen in the next hall.",
     "安静的画廊里，淡蓝色墙上挂着一幅描绘暴风雨中帆船的油画，画前一对老夫妇手牵手站着，右边门后能看到一座大理石马的雕像。"),
)
_PARA_CLOSINGS = (
    ("The light is soft and warm, and the whole scene feels calm and peaceful.",
     "光线柔和温暖，整个画面安静祥和。"),
    ("It is early evening, the sky is turning orange and pink, and long shadows stretch across the scene, "
     "giving the picture a quiet, slightly nostalgic mood.",
     "傍晚时分，天空变成橙色和粉色，长长的影子投在画面上，带着一丝怀旧的气息。"),
    ("The background is slightly blurred, so the eye goes first to the foreground, where every object is "
     "sharp and full of small details.",
     "背景略微虚化，前景中的每样东西都清晰而富有细节。"),
)


def _toy_paragraphs(seed: int) -> list[tuple[str, str, str]]:
    """(category, English paragraph, Chinese) in file order: every scene with the first
    closing, then every scene with the second, ... (scenes in the same order), so any 8
    consecutive paragraphs cover all 8 categories. seed 0: the order as written; another seed shuffles the
    scenes and the closings (a fixed shuffle per seed)."""
    scenes, closings = np.arange(len(_PARA_SCENES)), np.arange(len(_PARA_CLOSINGS))
    if seed != 0:
        rng = np.random.default_rng([seed])
        scenes, closings = rng.permutation(scenes), rng.permutation(closings)
    paragraphs = []
    for c in closings:
        closing, closing_chinese = _PARA_CLOSINGS[c]
        for s in scenes:
            category, scene, chinese = _PARA_SCENES[s]
            paragraphs.append((category, f"{scene} {closing}", chinese + closing_chinese))
    return paragraphs


def make_toy_paraprompts(root, n_prompts: int = 3, image_size: int = 64, seed: int = 0) -> Path:
    """Write <root>/ParaPrompts_400.csv in the real format: the header
    Image,Prompt,Category,Prompt_Chinese and one row per paragraph, csv-quoted.

    The paragraphs (100-140 words, 8 categories) are built from the scenes above; the file
    holds the first n_prompts of `_toy_paragraphs(seed)`, so a larger count only appends
    rows. Image is md5(paragraph) + ".JPEG", like the real names (32 hex digits); there is
    no image file. `image_size` is accepted (the workflow passes it to every toy maker)
    and unused.
    """
    _check_counts(n_prompts=n_prompts)
    _check_range("n_prompts", n_prompts, len(_PARA_SCENES) * len(_PARA_CLOSINGS))
    _check_image_size(image_size)
    _check_seed(seed)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")  # minimal quoting, as the real file
    writer.writerow(PARAPROMPTS_COLUMNS)
    for category, paragraph, chinese in _toy_paragraphs(seed)[:n_prompts]:
        image = hashlib.md5(paragraph.encode("utf-8")).hexdigest() + ".JPEG"
        writer.writerow([image, paragraph, category, chinese])
    with _staged(root, "paraprompts", dict(n_prompts=n_prompts, seed=seed)) as staging:
        _write_text(staging / PARAPROMPTS_FILE, buffer.getvalue())
    return Path(root)


# --- shared ---------------------------------------------------------------------------------

@contextlib.contextmanager
def _staged(root, generator: str, settings: dict) -> Iterator[Path]:
    """Yield an empty sibling folder of `root`; on success it replaces `root` in one rename."""
    root = Path(root)
    _refuse_foreign(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
    try:
        yield staging
        _write_text(staging / MARKER, json.dumps({"generator": generator, **settings}, sort_keys=True) + "\n")
        os.chmod(staging, 0o755)  # mkdtemp makes it 0700
        _swap_into_place(staging, root)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _refuse_foreign(root: Path) -> None:
    """Never delete a folder with files that make_toy did not write (e.g. a real dataset)."""
    if not root.exists():
        return
    if not root.is_dir():
        raise DatasetError(f"toy data: {root} exists and is not a folder")
    if not (root / MARKER).is_file() and any(path.is_file() for path in root.rglob("*")):
        raise DatasetError(f"toy data: refusing to replace {root}: it holds files that were not "
                           f"written by make_toy (no {MARKER}); choose an empty or new folder")


def _swap_into_place(staging: Path, root: Path) -> None:
    if not root.exists():
        os.rename(staging, root)
        return
    trash = Path(tempfile.mkdtemp(prefix=f".{root.name}.old-", dir=root.parent))
    os.rename(root, trash / root.name)
    os.rename(staging, root)
    shutil.rmtree(trash, ignore_errors=True)


def _gradient(rng, size: int, top: tuple[int, int], bottom: tuple[int, int], green: bool = False) -> np.ndarray:
    """uint8 [size, size, 3]: vertical gradient between two random colours, plus mild noise."""
    top_color, bottom_color = rng.integers(*top, size=3), rng.integers(*bottom, size=3)
    if green:  # foliage: green dominates
        top_color[1], bottom_color[1] = top_color[1] + 60, bottom_color[1] + 60
    t = np.linspace(0.0, 1.0, size)[:, None, None]
    pixels = np.broadcast_to(top_color * (1 - t) + bottom_color * t, (size, size, 3))
    return np.clip(pixels + rng.normal(0, 5, (size, size, 3)), 0, 255).astype(np.uint8)


def _save_jpeg(path: Path, image: Image.Image) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="JPEG", quality=JPEG_QUALITY)


def _write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as handle:
        handle.write(text)


def _lines(lines) -> str:
    return "".join(f"{line}\n" for line in lines)


def _check_counts(**counts: int) -> None:
    for name, value in counts.items():
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
            raise ValueError(f"toy data: {name} must be a positive integer, got {value!r}")


def _check_range(name: str, value: int, maximum: int) -> None:
    if value > maximum:
        raise ValueError(f"toy data: {name} must be at most {maximum}, got {value}")


def _check_seed(seed: int) -> None:
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"toy data: seed must be a non-negative integer (numpy seeding), got {seed!r}")


def _check_image_size(image_size: int) -> None:
    _check_counts(image_size=image_size)
    if image_size < 16:
        raise ValueError(f"toy data: image_size must be at least 16, got {image_size}")
