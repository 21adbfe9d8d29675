"""Reader for Oxford Flowers-102, with the text_c10 captions of Reed et al.

Layout (the real download and the toy copy alike):

    <root>/jpg/image_00001.jpg ...            102flowers.tgz, unpacked
    <root>/imagelabels.mat                    "labels": (1, N) class of image i at [0, i-1], 1-based
    <root>/setid.mat                          "trnid", "valid", "tstid": (1, k) 1-based image numbers
    <root>/text_c10/class_00001/image_00001.txt   10 captions (optional)

The splits are the keys of setid.mat as named: train = trnid (10 per class), val = valid
(10 per class), test = tstid (the rest, 6149 images).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.io

from ctrlbench.data.readers import (
    check_split, items_frame, read_captions, require_dir, require_file, require_images_exist, to_json,
)
from ctrlbench.errors import DatasetError

FLOWERS_URL = "https://www.robots.ox.ac.uk/~vgg/data/flowers/102/"
LAYOUT = (
    "Expected the Oxford Flowers-102 layout: <root>/jpg/image_NNNNN.jpg (102flowers.tgz), "
    "<root>/imagelabels.mat and <root>/setid.mat (captions optional in "
    f"<root>/text_c10/class_NNNNN/). Download them from {FLOWERS_URL}"
)
SPLITS = ("train", "val", "test", "all")
SPLIT_KEYS = {"train": "trnid", "val": "valid", "test": "tstid"}

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


def read_flowers(root, split: str = "test") -> pd.DataFrame:
    """Items table of Flowers-102 under `root` (see module docstring); split: train | val | test | all."""
    check_split(split, SPLITS, "Flowers")
    root = require_dir(root, "Flowers", LAYOUT)
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
    return {
        "item_id": item_id,
        "split": split,
        "class_id": class_id,
        "class_name": FLOWERS_CLASS_NAMES[class_id - 1],
        "image": os.path.abspath(root / "jpg" / f"{item_id}.jpg"),
        "captions": to_json(read_captions(root / "text_c10" / f"class_{class_id:05d}" / f"{item_id}.txt")),
        "attributes": to_json([]),
    }
