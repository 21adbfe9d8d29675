"""Reader for Oxford Flowers-102, with the text_c10 captions of Reed et al., in two layouts.

The Oxford layout (the real download and the toy copy alike):

    <root>/jpg/image_00001.jpg ...            102flowers.tgz, unpacked
    <root>/imagelabels.mat                    "labels": (1, N) class of image i at [0, i-1], 1-based
    <root>/setid.mat                          "trnid", "valid", "tstid": (1, k) 1-based image numbers
    <root>/text_c10/class_00001/image_00001.txt   10 captions (optional)

Its splits are the keys of setid.mat as named: train = trnid (10 per class), val = valid
(10 per class), test = tstid (the rest, 6149 images).

The Kaggle "pytorch challenge" layout (the copy the mmm2025 README links), the same images
sorted into one folder per class, the folder named by the Oxford label:

    <base>/train/<class id>/image_NNNNN.jpg   train (6552 images in the real copy)
    <base>/valid/<class id>/image_NNNNN.jpg   val (818)
    <base>/test/<class id>/image_NNNNN.jpg    test: read only when it has class folders
    cat_to_name.json                          {"1": "pink primrose", ...}, in <base> or its parent
    text_c10/class_NNNNN/image_NNNNN.txt      optional, in <base> or its parent

`root` is <base> or the folder holding it (the download unpacks to dataset/ or flower_data/
beside cat_to_name.json). Its splits are a random 80/10/10 split of all 8189 images, not
Oxford's: the same image has the same item id and class in both layouts, not the same split.
`layout` picks one ("oxford" | "kaggle") or, "auto", detects it (docs/data.md).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.io

from ctrlbench.data.layout import (
    FLOWERS_LAYOUTS, KAGGLE_CLASS_NAMES, KAGGLE_SPLIT_DIRS, OXFORD_MARKERS, flowers_layouts_found, kaggle_bases,
    kaggle_beside,
)
from ctrlbench.data.readers import (
    check_split, items_frame, load_json_object, read_captions, require_dir, require_file, require_images_exist,
    to_json,
)
from ctrlbench.errors import DatasetError

FLOWERS_URL = "https://www.robots.ox.ac.uk/~vgg/data/flowers/102/"
KAGGLE_URL = "https://www.kaggle.com/datasets/nunenuh/pytorch-challange-flower-dataset"
LAYOUT = (
    "Expected the Oxford Flowers-102 layout: <root>/jpg/image_NNNNN.jpg (102flowers.tgz), "
    "<root>/imagelabels.mat and <root>/setid.mat (captions optional in "
    f"<root>/text_c10/class_NNNNN/). Download them from {FLOWERS_URL}"
)
_KAGGLE_SHAPE = (
    "<root>/train/<class id>/image_NNNNN.jpg and <root>/valid/<class id>/image_NNNNN.jpg (test/ the same, "
    "optional), with cat_to_name.json ({\"1\": \"pink primrose\", ...}) in <root> or its parent; <root> "
    f"may also be the folder holding them (e.g. the one holding dataset/). Download: {KAGGLE_URL}"
)
KAGGLE_LAYOUT = f"Expected the Kaggle 'pytorch challenge' layout: {_KAGGLE_SHAPE}"
BOTH_LAYOUTS = f"{LAYOUT}. Or the Kaggle 'pytorch challenge' layout: {_KAGGLE_SHAPE}"
LAYOUT_TEXT = {"oxford": LAYOUT, "kaggle": KAGGLE_LAYOUT}
SPLITS = ("train", "val", "test", "all")
SPLIT_KEYS = {"train": "trnid", "val": "valid", "test": "tstid"}
_MISSING = {"oxford": "none of imagelabels.mat, setid.mat, jpg/",
            "kaggle": "no train/ or valid/ folder, in it or in one of its subfolders"}
# What to use instead when a Kaggle split has no labelled folder.
_OTHER_SPLIT = f"Use a split whose folder exists, or the Oxford layout ({FLOWERS_URL})."
_KAGGLE_ALTERNATIVE = {
    "train": _OTHER_SPLIT,
    "val": _OTHER_SPLIT,
    "test": ("The Kaggle copy has no labelled test split (the challenge kept its test images back): use split "
             "'val' (valid/) or 'train', or the Oxford layout, whose test split is setid.mat tstid "
             f"(6149 images; layout: oxford, {FLOWERS_URL})."),
}
_IMAGE_SUFFIXES = (".jpg", ".jpeg")

# The class names CLIP and most zero-shot benchmarks use for label 1..102.
FLOWERS_CLASS_NAMES = (
    "pink primrose", "hard-leaved pocket orchid", "canterbury bells", "sweet pea",
    "english marigold", "tiger lily", "moon orchid", "bird of paradise", "monkshood",
    "globe thistle", "snapdragon", "colt's foot", "king protea", "spear thistle",
    "yellow iris", "globe flower", "purple coneflower", "peruvian lily", "balloon flower",
    "giant white arum lily", "fire lily", "pincushion flower", "fritillary", "red ginger",
    "grape hyacinth", "corn poppy", "prince of wales feathers", "stemless gentian",
    "artichoke", "sweet william", "carnation", "garden phlox", "love in the mist",
    "mexican aster", "alpine sea holly", "ruby-lipped cattleya", "cape flower",
    "great masterwort", "siam tulip", "lenten rose", "barbeton daisy", "daffodil",
    "sword lily", "poinsettia", "bolero deep blue", "wallflower", "marigold", "buttercup",
    "oxeye daisy", "common dandelion", "petunia", "wild pansy", "primula", "sunflower",
    "pelargonium", "bishop of llandaff", "gaura", "geranium", "orange dahlia",
    "pink and yellow dahlia", "cautleya spicata", "japanese anemone", "black-eyed susan",
    "silverbush", "californian poppy", "osteospermum", "spring crocus", "bearded iris",
    "windflower", "tree poppy", "gazania", "azalea", "water lily", "rose", "thorn apple",
    "morning glory", "passion flower", "lotus", "toad lily", "anthurium", "frangipani",
    "clematis", "hibiscus", "columbine", "desert-rose", "tree mallow", "magnolia",
    "cyclamen", "watercress", "canna lily", "hippeastrum", "bee balm", "air plant",
    "foxglove", "bougainvillea", "camellia", "mallow", "mexican petunia", "bromelia",
    "blanket flower", "trumpet creeper", "blackberry lily",
)


def read_flowers(root, split: str = "test", layout: str = "auto") -> pd.DataFrame:
    """Items table of Flowers-102 under `root` (see module docstring); split: train | val | test |
    all; layout: auto | oxford | kaggle."""
    check_split(split, SPLITS, "Flowers")
    if layout not in FLOWERS_LAYOUTS:
        raise DatasetError(f"Flowers: unknown layout {layout!r}; expected one of {list(FLOWERS_LAYOUTS)}")
    root = require_dir(root, "Flowers", BOTH_LAYOUTS)
    if _choose_layout(root, layout) == "kaggle":
        return _read_kaggle(root, split)
    return _read_oxford(root, split)


def _choose_layout(root: Path, layout: str) -> str:
    found = flowers_layouts_found(root)
    if layout != "auto":
        if layout not in found:
            seen = f" (it holds the {found[0]} layout: set layout: {found[0]} or auto)" if found else ""
            raise DatasetError(f"Flowers: layout {layout!r} was asked for, but {root} has "
                               f"{_MISSING[layout]}{seen}. {LAYOUT_TEXT[layout]}")
        return layout
    if len(found) == 2:
        raise DatasetError(f"Flowers: {root} holds both the Oxford layout ({', '.join(OXFORD_MARKERS)}) and the "
                           "Kaggle one (train/ or valid/ class folders): set layout: oxford or layout: kaggle "
                           "in the dataset's config entry")
    if not found:
        raise DatasetError(f"Flowers: {root} holds neither Flowers layout. {BOTH_LAYOUTS}")
    return found[0]


# --- the Oxford layout ------------------------------------------------------------------------

def _read_oxford(root: Path, split: str) -> pd.DataFrame:
    labels_path = require_file(root / "imagelabels.mat", "Flowers", LAYOUT)
    setid_path = require_file(root / "setid.mat", "Flowers", LAYOUT)
    labels = load_mat_vector(labels_path, "labels")
    sets = {name: load_mat_vector(setid_path, key) for name, key in SPLIT_KEYS.items()}
    wanted = SPLIT_KEYS if split == "all" else (split,)

    rows = []
    for name in wanted:
        _check_numbers(sets[name], len(labels), f"{setid_path} key {SPLIT_KEYS[name]!r}")
        rows += [_item_row(root, int(number), name, int(labels[number - 1]), labels_path)
                 for number in sets[name]]
    frame = items_frame(rows, (), "Flowers")
    require_images_exist(frame["image"], f"{setid_path} (split {split!r})", "Flowers")
    return frame


def load_mat_vector(path: Path, key: str) -> np.ndarray:
    """The 1-D int64 contents of one (1, k) array in a MATLAB file."""
    try:
        contents = scipy.io.loadmat(path)
    except Exception as error:  # scipy raises several types for a corrupt or foreign file
        raise DatasetError(f"Flowers: cannot read {path} as a MATLAB .mat file: {error}") from None
    if key not in contents:
        found = sorted(k for k in contents if not k.startswith("__"))
        raise DatasetError(f"Flowers: {path} has no key {key!r} (found {found}). {LAYOUT}")
    values = np.asarray(contents[key])
    if values.size and not np.issubdtype(values.dtype, np.number):
        raise DatasetError(f"Flowers: {path} key {key!r} must hold numbers, got dtype {values.dtype}")
    if values.size and (values != np.round(values)).any():
        raise DatasetError(f"Flowers: {path} key {key!r} must hold whole numbers")
    return values.reshape(-1).astype(np.int64)


def _check_numbers(numbers: np.ndarray, n_images: int, source: str) -> None:
    bad = numbers[(numbers < 1) | (numbers > n_images)]
    if bad.size:
        raise DatasetError(f"Flowers: {source} lists image number {int(bad[0])}, outside 1..{n_images} "
                           "(the length of imagelabels.mat 'labels')")


def _item_row(root: Path, number: int, split: str, class_id: int, labels_path: Path) -> dict:
    if not 1 <= class_id <= len(FLOWERS_CLASS_NAMES):
        raise DatasetError(f"Flowers: {labels_path} gives image {number} the label {class_id}, "
                           f"outside 1..{len(FLOWERS_CLASS_NAMES)}")
    item_id = f"image_{number:05d}"
    return _flower_row(item_id, split, class_id, FLOWERS_CLASS_NAMES[class_id - 1],
                       root / "jpg" / f"{item_id}.jpg", root / "text_c10")


def _flower_row(item_id: str, split: str, class_id: int, class_name: str, image: Path, captions: Path) -> dict:
    """One items-table row, the same in both layouts: captions from text_c10/class_NNNNN/<item_id>.txt."""
    return {
        "item_id": item_id,
        "split": split,
        "class_id": class_id,
        "class_name": class_name,
        "image": os.path.abspath(image),
        "captions": to_json(read_captions(captions / f"class_{class_id:05d}" / f"{item_id}.txt")),
        "attributes": to_json([]),
    }


# --- the Kaggle "pytorch challenge" layout --------------------------------------------------------

def _read_kaggle(root: Path, split: str) -> pd.DataFrame:
    bases = kaggle_bases(root)
    if len(bases) > 1:
        raise DatasetError(f"Flowers: {root} holds several Kaggle copies ({', '.join(str(b) for b in bases)}); "
                           "point root at one of them")
    base = bases[0]
    names_path = kaggle_beside(base, KAGGLE_CLASS_NAMES)
    if names_path is None:
        raise DatasetError(f"Flowers: missing file {base / KAGGLE_CLASS_NAMES} (nor in {base.parent}). "
                           f"{KAGGLE_LAYOUT}")
    names = _read_class_names(names_path)
    captions = kaggle_beside(base, "text_c10") or base / "text_c10"
    rows, seen = [], {}
    for name in _kaggle_splits(base, split):
        for class_id, number, image in _split_images(base, name, names, names_path):
            item_id = f"image_{number:05d}"
            if item_id in seen:
                raise DatasetError(f"Flowers: {image} and {seen[item_id]} are the same image number {number}; "
                                   "each image may appear in one class folder of one split only")
            seen[item_id] = image
            rows.append(_flower_row(item_id, name, class_id, names[class_id], image, captions))
    return items_frame(rows, (), "Flowers")


def _read_class_names(path: Path) -> dict[int, str]:
    """cat_to_name.json: {"<class id>": "<name>"} -> {class id: name}."""
    data = load_json_object(path, "Flowers", KAGGLE_LAYOUT)
    names: dict[int, str] = {}
    for key, value in data.items():
        if not re.fullmatch(r"[0-9]+", key) or int(key) < 1:
            raise DatasetError(f"Flowers: {path} key {key!r} is not a class id (a positive whole number, "
                               "e.g. \"21\")")
        if int(key) in names:
            raise DatasetError(f"Flowers: {path} names class {int(key)} twice")
        if not isinstance(value, str) or not value.strip():
            raise DatasetError(f"Flowers: {path} class {key!r} needs a non-empty name, got {value!r}")
        names[int(key)] = value.strip()
    if not names:
        raise DatasetError(f"Flowers: {path} names no class. {KAGGLE_LAYOUT}")
    return names


def _kaggle_splits(base: Path, split: str) -> tuple[str, ...]:
    """The splits to read: `all` is every split folder present, except a test/ of loose
    images (unlabelled, as the challenge's own test folder was)."""
    if split != "all":
        return (split,)
    return tuple(name for name, folder in KAGGLE_SPLIT_DIRS.items() if (base / folder).is_dir()
                 and (name != "test" or any(entry.is_dir() for entry in _visible(base / folder))))


def _split_images(base: Path, split: str, names: dict[int, str], names_path: Path) -> list[tuple[int, int, Path]]:
    """(class id, image number, path) of every image of one split folder."""
    folder = base / KAGGLE_SPLIT_DIRS[split]
    if not folder.is_dir():
        raise DatasetError(f"Flowers: split {split!r} has no folder: {folder} does not exist. "
                           f"{_KAGGLE_ALTERNATIVE[split]}")
    entries = _visible(folder)
    loose = [entry for entry in entries if _is_image(entry)]
    if loose:
        raise DatasetError(f"Flowers: {folder} holds images outside class folders (e.g. {loose[0].name}), so "
                           f"split {split!r} has no labels there. {_KAGGLE_ALTERNATIVE[split]}")
    found = [(_class_id(class_dir, names, names_path), _image_number(image), image)
             for class_dir in entries if class_dir.is_dir()
             for image in _visible(class_dir) if _is_image(image)]
    if not found:
        raise DatasetError(f"Flowers: split {split!r} is empty: {folder} has no class folder with images. "
                           f"{KAGGLE_LAYOUT}")
    return found


def _class_id(class_dir: Path, names: dict[int, str], names_path: Path) -> int:
    if not re.fullmatch(r"[0-9]+", class_dir.name):
        raise DatasetError(f"Flowers: class folder {class_dir} must be named by its class id (the Oxford "
                           f"label, a key of {names_path})")
    class_id = int(class_dir.name)
    if class_id not in names:
        raise DatasetError(f"Flowers: class folder {class_dir} is not a class of {names_path} "
                           f"(it names {len(names)} classes, {min(names)}..{max(names)})")
    return class_id


def _image_number(image: Path) -> int:
    match = re.fullmatch(r"image_([0-9]{5})", image.stem)
    if not match or int(match.group(1)) == 0:
        raise DatasetError(f"Flowers: {image}: expected a file named image_NNNNN.jpg (the Oxford image number, "
                           "which the item id and the text_c10 captions use)")
    return int(match.group(1))


def _visible(folder: Path) -> list[Path]:
    """The entries of `folder` in name order, without hidden ones (.DS_Store, macOS ._ files)."""
    return sorted(entry for entry in folder.iterdir() if not entry.name.startswith("."))


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in _IMAGE_SUFFIXES
