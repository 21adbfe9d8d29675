"""Reader for CUB-200-2011 (Caltech-UCSD Birds), with the text_c10 captions of Reed et al.

Layout (the real download and the toy copy alike):

    <root>/CUB_200_2011/images.txt               "<image_id> <NNN.Class_Name>/<file>.jpg"
    <root>/CUB_200_2011/classes.txt              "<class_id> <NNN.Class_Name>"
    <root>/CUB_200_2011/image_class_labels.txt   "<image_id> <class_id>"
    <root>/CUB_200_2011/train_test_split.txt     "<image_id> <1 = train | 0 = test>"
    <root>/CUB_200_2011/images/<NNN.Class_Name>/<file>.jpg
    <root>/CUB_200_2011/attributes/image_attribute_labels.txt
                                   "<image_id> <attribute_id> <is_present> <certainty_id> <time>"
    <root>/attributes.txt                        "<attribute_id> <has_group::value>" (optional)
    <root>/text_c10/<NNN.Class_Name>/<file stem>.txt   10 captions (optional)

`root` may also be the CUB_200_2011 folder itself. attributes.txt is looked up in
CUB_200_2011/, beside it, and in CUB_200_2011/attributes/; without it the published 312
names (CUB_ATTRIBUTES) are used. text_c10 may sit inside CUB_200_2011/ or beside it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pandas as pd

from ctrlbench.data.readers import (
    check_split, items_frame, malformed, parse_int, read_captions, read_index, read_int_map,
    read_lines, require_dir, require_file, require_images_exist, to_json,
)
from ctrlbench.errors import DatasetError

CUB_URL = "https://www.vision.caltech.edu/datasets/cub_200_2011/"
LAYOUT = (
    "Expected the CUB-200-2011 layout: <root>/CUB_200_2011/ holding images.txt, classes.txt, "
    "image_class_labels.txt, train_test_split.txt, images/<NNN.Class_Name>/*.jpg and "
    "attributes/image_attribute_labels.txt (attributes.txt beside or inside CUB_200_2011/, "
    f"captions optional in text_c10/). Download CUB_200_2011.tgz from {CUB_URL}"
)
SPLITS = ("train", "test", "all")

# The 200 class names of classes.txt, without their "NNN." prefix.
CUB_CLASS_NAMES = (
    "Black_footed_Albatross", "Laysan_Albatross", "Sooty_Albatross", "Groove_billed_Ani",
    "Crested_Auklet", "Least_Auklet", "Parakeet_Auklet", "Rhinoceros_Auklet",
    "Brewer_Blackbird", "Red_winged_Blackbird", "Rusty_Blackbird",
    "Yellow_headed_Blackbird", "Bobolink", "Indigo_Bunting", "Lazuli_Bunting",
    "Painted_Bunting", "Cardinal", "Spotted_Catbird", "Gray_Catbird",
    "Yellow_breasted_Chat", "Eastern_Towhee", "Chuck_will_Widow", "Brandt_Cormorant",
    "Red_faced_Cormorant", "Pelagic_Cormorant", "Bronzed_Cowbird", "Shiny_Cowbird",
    "Brown_Creeper", "American_Crow", "Fish_Crow", "Black_billed_Cuckoo", "Mangrove_Cuckoo",
    "Yellow_billed_Cuckoo", "Gray_crowned_Rosy_Finch", "Purple_Finch", "Northern_Flicker",
    "Acadian_Flycatcher", "Great_Crested_Flycatcher", "Least_Flycatcher",
    "Olive_sided_Flycatcher", "Scissor_tailed_Flycatcher", "Vermilion_Flycatcher",
    "Yellow_bellied_Flycatcher", "Frigatebird", "Northern_Fulmar", "Gadwall",
    "American_Goldfinch", "European_Goldfinch", "Boat_tailed_Grackle", "Eared_Grebe",
    "Horned_Grebe", "Pied_billed_Grebe", "Western_Grebe", "Blue_Grosbeak",
    "Evening_Grosbeak", "Pine_Grosbeak", "Rose_breasted_Grosbeak", "Pigeon_Guillemot",
    "California_Gull", "Glaucous_winged_Gull", "Heermann_Gull", "Herring_Gull",
    "Ivory_Gull", "Ring_billed_Gull", "Slaty_backed_Gull", "Western_Gull",
    "Anna_Hummingbird", "Ruby_throated_Hummingbird", "Rufous_Hummingbird",
    "Green_Violetear", "Long_tailed_Jaeger", "Pomarine_Jaeger", "Blue_Jay", "Florida_Jay",
    "Green_Jay", "Dark_eyed_Junco", "Tropical_Kingbird", "Gray_Kingbird",
    "Belted_Kingfisher", "Green_Kingfisher", "Pied_Kingfisher", "Ringed_Kingfisher",
    "White_breasted_Kingfisher", "Red_legged_Kittiwake", "Horned_Lark", "Pacific_Loon",
    "Mallard", "Western_Meadowlark", "Hooded_Merganser", "Red_breasted_Merganser",
    "Mockingbird", "Nighthawk", "Clark_Nutcracker", "White_breasted_Nuthatch",
    "Baltimore_Oriole", "Hooded_Oriole", "Orchard_Oriole", "Scott_Oriole", "Ovenbird",
    "Brown_Pelican", "White_Pelican", "Western_Wood_Pewee", "Sayornis", "American_Pipit",
    "Whip_poor_Will", "Horned_Puffin", "Common_Raven", "White_necked_Raven",
    "American_Redstart", "Geococcyx", "Loggerhead_Shrike", "Great_Grey_Shrike",
    "Baird_Sparrow", "Black_throated_Sparrow", "Brewer_Sparrow", "Chipping_Sparrow",
    "Clay_colored_Sparrow", "House_Sparrow", "Field_Sparrow", "Fox_Sparrow",
    "Grasshopper_Sparrow", "Harris_Sparrow", "Henslow_Sparrow", "Le_Conte_Sparrow",
    "Lincoln_Sparrow", "Nelson_Sharp_tailed_Sparrow", "Savannah_Sparrow", "Seaside_Sparrow",
    "Song_Sparrow", "Tree_Sparrow", "Vesper_Sparrow", "White_crowned_Sparrow",
    "White_throated_Sparrow", "Cape_Glossy_Starling", "Bank_Swallow", "Barn_Swallow",
    "Cliff_Swallow", "Tree_Swallow", "Scarlet_Tanager", "Summer_Tanager", "Artic_Tern",
    "Black_Tern", "Caspian_Tern", "Common_Tern", "Elegant_Tern", "Forsters_Tern",
    "Least_Tern", "Green_tailed_Towhee", "Brown_Thrasher", "Sage_Thrasher",
    "Black_capped_Vireo", "Blue_headed_Vireo", "Philadelphia_Vireo", "Red_eyed_Vireo",
    "Warbling_Vireo", "White_eyed_Vireo", "Yellow_throated_Vireo", "Bay_breasted_Warbler",
    "Black_and_white_Warbler", "Black_throated_Blue_Warbler", "Blue_winged_Warbler",
    "Canada_Warbler", "Cape_May_Warbler", "Cerulean_Warbler", "Chestnut_sided_Warbler",
    "Golden_winged_Warbler", "Hooded_Warbler", "Kentucky_Warbler", "Magnolia_Warbler",
    "Mourning_Warbler", "Myrtle_Warbler", "Nashville_Warbler", "Orange_crowned_Warbler",
    "Palm_Warbler", "Pine_Warbler", "Prairie_Warbler", "Prothonotary_Warbler",
    "Swainson_Warbler", "Tennessee_Warbler", "Wilson_Warbler", "Worm_eating_Warbler",
    "Yellow_Warbler", "Northern_Waterthrush", "Louisiana_Waterthrush", "Bohemian_Waxwing",
    "Cedar_Waxwing", "American_Three_toed_Woodpecker", "Pileated_Woodpecker",
    "Red_bellied_Woodpecker", "Red_cockaded_Woodpecker", "Red_headed_Woodpecker",
    "Downy_Woodpecker", "Bewick_Wren", "Cactus_Wren", "Carolina_Wren", "House_Wren",
    "Marsh_Wren", "Rock_Wren", "Winter_Wren", "Common_Yellowthroat",
)

# The 312 attributes of attributes.txt: 28 groups, in file order.
CUB_COLORS = ("blue", "brown", "iridescent", "purple", "rufous", "grey", "yellow", "olive",
              "green", "pink", "orange", "black", "white", "red", "buff")
_PATTERNS = ("solid", "spotted", "striped", "multi-colored")
CUB_ATTRIBUTE_GROUPS = (
    ("has_bill_shape", ("curved_(up_or_down)", "dagger", "hooked", "needle", "hooked_seabird",
                        "spatulate", "all-purpose", "cone", "specialized")),
    ("has_wing_color", CUB_COLORS),
    ("has_upperparts_color", CUB_COLORS),
    ("has_underparts_color", CUB_COLORS),
    ("has_breast_pattern", _PATTERNS),
    ("has_back_color", CUB_COLORS),
    ("has_tail_shape", ("forked_tail", "rounded_tail", "notched_tail", "fan-shaped_tail",
                        "pointed_tail", "squared_tail")),
    ("has_upper_tail_color", CUB_COLORS),
    ("has_head_pattern", ("spotted", "malar", "crested", "masked", "unique_pattern", "eyebrow",
                          "eyering", "plain", "eyeline", "striped", "capped")),
    ("has_breast_color", CUB_COLORS),
    ("has_throat_color", CUB_COLORS),
    ("has_eye_color", tuple(color for color in CUB_COLORS if color != "iridescent")),
    ("has_bill_length", ("about_the_same_as_head", "longer_than_head", "shorter_than_head")),
    ("has_forehead_color", CUB_COLORS),
    ("has_under_tail_color", CUB_COLORS),
    ("has_nape_color", CUB_COLORS),
    ("has_belly_color", CUB_COLORS),
    ("has_wing_shape", ("rounded-wings", "pointed-wings", "broad-wings", "tapered-wings",
                        "long-wings")),
    ("has_size", ("large_(16_-_32_in)", "small_(5_-_9_in)", "very_large_(32_-_72_in)",
                  "medium_(9_-_16_in)", "very_small_(3_-_5_in)")),
    ("has_shape", ("upright-perching_water-like", "chicken-like-marsh", "long-legged-like",
                   "duck-like", "owl-like", "gull-like", "hummingbird-like", "pigeon-like",
                   "tree-clinging-like", "hawk-like", "sandpiper-like", "upland-ground-like",
                   "swallow-like", "perching-like")),
    ("has_back_pattern", _PATTERNS),
    ("has_tail_pattern", _PATTERNS),
    ("has_belly_pattern", _PATTERNS),
    ("has_primary_color", CUB_COLORS),
    ("has_leg_color", CUB_COLORS),
    ("has_bill_color", CUB_COLORS),
    ("has_crown_color", CUB_COLORS),
    ("has_wing_pattern", _PATTERNS),
)
CUB_ATTRIBUTES = tuple(f"{group}::{value}" for group, values in CUB_ATTRIBUTE_GROUPS for value in values)
CERTAINTIES = {1: "not visible", 2: "guessing", 3: "probably", 4: "definitely"}

_LABEL_FIELDS = ("image_id", "attribute_id", "is_present", "certainty_id")


def read_cub(root, split: str = "test") -> pd.DataFrame:
    """Items table of CUB-200-2011 under `root` (see module docstring); split: train | test | all.

    Extra column: attribute_vector, the comma-joined per-attribute values in attributes.txt
    order (1 present, 0 absent, -1 not visible, i.e. certainty 1, or not annotated).
    """
    check_split(split, SPLITS, "CUB")
    cub_dir = find_cub_dir(root)
    index = {name: require_file(cub_dir / name, "CUB", LAYOUT) for name in (
        "images.txt", "classes.txt", "image_class_labels.txt", "train_test_split.txt",
        "attributes/image_attribute_labels.txt")}
    images = _read_image_paths(index["images.txt"])
    classes = _read_classes(index["classes.txt"])
    labels = read_int_map(index["image_class_labels.txt"], "image_id", "class_id")
    is_train = read_int_map(index["train_test_split.txt"], "image_id", "is_training_image", allowed=(0, 1))
    image_ids = [image_id for image_id, train in sorted(is_train.items())
                 if split == "all" or train == (split == "train")]
    _check_ids_known(image_ids, images, labels, classes, index)

    attribute_names = read_attribute_names(cub_dir)
    vectors = read_attribute_vectors(index["attributes/image_attribute_labels.txt"], image_ids, len(attribute_names))
    captions_dir = find_captions_dir(cub_dir)
    rows = [
        {**_item_row(cub_dir, images[image_id], "train" if is_train[image_id] else "test",
                     labels[image_id], classes[labels[image_id]], vector, attribute_names, captions_dir),
         "image_id": image_id}  # CUB's own id: retrieval breaks ties by lowest image id
        for image_id, vector in zip(image_ids, vectors)
    ]
    frame = items_frame(rows, ("attribute_vector", "image_id"), "CUB")
    require_images_exist(frame["image"], f"{index['images.txt']} (split {split!r})", "CUB")
    return frame


def find_cub_dir(root) -> Path:
    """The CUB_200_2011 folder: `root` itself or its CUB_200_2011/ child."""
    root = require_dir(root, "CUB", LAYOUT)
    if (root / "CUB_200_2011").is_dir():
        return root / "CUB_200_2011"
    if (root / "images.txt").is_file():
        return root
    raise DatasetError(f"CUB: {root} holds neither CUB_200_2011/ nor images.txt. {LAYOUT}")


def find_captions_dir(cub_dir: Path) -> Path | None:
    for candidate in (cub_dir / "text_c10", cub_dir.parent / "text_c10"):
        if candidate.is_dir():
            return candidate
    return None


def class_display_name(folder_name: str) -> str:
    """'001.Black_footed_Albatross' -> 'Black footed Albatross'."""
    return re.sub(r"^\d+\.", "", folder_name).replace("_", " ").strip()


def _item_row(cub_dir, relpath, split, class_id, class_folder, vector, attribute_names, captions_dir) -> dict:
    relpath = Path(relpath)
    captions = []
    if captions_dir is not None:
        captions = read_captions(captions_dir / relpath.parent / f"{relpath.stem}.txt")
    return {
        # Real stems are already safe; the substitution guards odd names in hand-made copies.
        "item_id": re.sub(r"[^A-Za-z0-9._-]", "_", relpath.stem),
        "split": split,
        "class_id": class_id,
        "class_name": class_display_name(class_folder),
        "image": os.path.abspath(cub_dir / "images" / relpath),
        "captions": to_json(captions),
        "attributes": to_json([attribute_names[j] for j in np.flatnonzero(vector == 1)]),
        "attribute_vector": ",".join(map(str, vector.tolist())),
    }


def _read_image_paths(path: Path) -> dict[int, str]:
    images = {}
    for number, (id_text, relpath) in read_index(path, ("image_id", "image_path")):
        image_id = parse_int(path, number, id_text, "image_id")
        if image_id in images:
            raise malformed(path, number, f"image_id {image_id} appears twice")
        images[image_id] = relpath
    return images


def _read_classes(path: Path) -> dict[int, str]:
    classes = {}
    for number, (id_text, folder) in read_index(path, ("class_id", "class_name")):
        classes[parse_int(path, number, id_text, "class_id")] = folder
    return classes


def _check_ids_known(image_ids, images, labels, classes, index) -> None:
    """Every image of the split needs a path, a class, and that class a name."""
    split_file = index["train_test_split.txt"]
    for image_id in image_ids:
        if image_id not in images:
            raise DatasetError(f"CUB: {split_file} lists image_id {image_id}, "
                               f"which {index['images.txt']} does not have")
        if image_id not in labels:
            raise DatasetError(f"CUB: {index['image_class_labels.txt']} has no class for "
                               f"image_id {image_id} ({images[image_id]})")
        if labels[image_id] not in classes:
            raise DatasetError(f"CUB: {index['classes.txt']} has no class_id {labels[image_id]} "
                               f"(class of image {images[image_id]})")


# --- attributes -----------------------------------------------------------------------------

def read_attribute_names(cub_dir: Path) -> list[str]:
    """Attribute names in id order, from attributes.txt wherever the download put it."""
    for path in (cub_dir / "attributes.txt", cub_dir.parent / "attributes.txt",
                 cub_dir / "attributes" / "attributes.txt"):
        if path.is_file():
            return _parse_attribute_names(path)
    # attributes.txt ships outside the CUB_200_2011 folder and is easily lost; the list is
    # fixed by the dataset, so fall back to the published names.
    return list(CUB_ATTRIBUTES)


def _parse_attribute_names(path: Path) -> list[str]:
    names = []
    for number, (id_text, name) in read_index(path, ("attribute_id", "attribute_name")):
        attribute_id = parse_int(path, number, id_text, "attribute_id")
        if attribute_id != len(names) + 1:
            raise malformed(path, number, f"attribute ids must run 1, 2, 3, ...; expected {len(names) + 1}")
        names.append(name)
    if not names:
        raise DatasetError(f"CUB: {path} lists no attributes")
    return names


def read_attribute_vectors(path: Path, image_ids: list[int], n_attributes: int) -> np.ndarray:
    """int8 array [len(image_ids), n_attributes]: 1 present, 0 absent, -1 not visible.

    A present attribute with certainty 1 ("not visible") counts as not visible; an
    (image, attribute) pair missing from the file is -1 as well (nothing is known).
    """
    labels = _read_attribute_labels(path, n_attributes)
    vectors = np.full((len(image_ids), n_attributes), -1, dtype=np.int8)
    rows = pd.Index(image_ids).get_indexer(labels[:, 0])
    wanted = rows >= 0
    values = np.where(labels[:, 3] == 1, -1, labels[:, 2])
    vectors[rows[wanted], labels[wanted, 1] - 1] = values[wanted]
    return vectors


def _read_attribute_labels(path: Path, n_attributes: int) -> np.ndarray:
    """[N, 4] int64: image_id, attribute_id, is_present, certainty_id (extra fields ignored).

    The real file has 3.7 million lines, so pandas parses it (usecols makes it skip the
    extra columns a few real lines have); when pandas or the checks fail, the line-by-line
    parser runs to report the first bad line by number.
    """
    try:
        table = pd.read_csv(path, sep=r"\s+", header=None, usecols=range(4), engine="c")
    except pd.errors.EmptyDataError:
        raise DatasetError(f"CUB: {path} is empty") from None
    except (pd.errors.ParserError, ValueError):
        table = None
    if table is not None and all(pd.api.types.is_integer_dtype(table[c]) for c in range(4)):
        labels = table.to_numpy(dtype=np.int64)
        if _labels_in_range(labels, n_attributes):
            return labels
    return _read_attribute_labels_by_line(path, n_attributes)


def _labels_in_range(labels: np.ndarray, n_attributes: int) -> bool:
    return bool(((labels[:, 1] >= 1) & (labels[:, 1] <= n_attributes)).all()
                and np.isin(labels[:, 2], (0, 1)).all()
                and ((labels[:, 3] >= 1) & (labels[:, 3] <= 4)).all())


def _read_attribute_labels_by_line(path: Path, n_attributes: int) -> np.ndarray:
    rows = []
    for number, line in read_lines(path):
        parts = line.split()
        if len(parts) < 4:
            raise malformed(path, number, "expected <image_id> <attribute_id> <is_present> <certainty_id> <time>", line)
        row = [parse_int(path, number, text, field, line) for text, field in zip(parts, _LABEL_FIELDS)]
        if not 1 <= row[1] <= n_attributes:
            raise malformed(path, number, f"attribute_id must be in 1..{n_attributes} (attributes.txt)", line)
        if row[2] not in (0, 1):
            raise malformed(path, number, "is_present must be 0 or 1", line)
        if not 1 <= row[3] <= 4:
            raise malformed(path, number, "certainty_id must be in 1..4", line)
        rows.append(row)
    return np.array(rows, dtype=np.int64).reshape(-1, 4)
