"""Toy-data generators and dataset readers (ctrlbench.data)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.io
from PIL import Image

from ctrlbench.data import ITEM_COLUMNS
from ctrlbench.data.coco import coco_object_masks, read_coco
from ctrlbench.data.cub import CUB_ATTRIBUTE_GROUPS, CUB_ATTRIBUTES, CUB_URL, read_cub
from ctrlbench.data.flowers import FLOWERS_CLASS_NAMES, FLOWERS_URL, read_flowers
from ctrlbench.data.readers import read_dataset
from ctrlbench.data.toy import MARKER, make_toy, make_toy_coco, make_toy_cub, make_toy_flowers
from ctrlbench.errors import DatasetError

FORMATS = ("cub", "flowers", "coco")
WING_BLACK = CUB_ATTRIBUTES.index("has_wing_color::black")  # 0-based; id 21 in attributes.txt


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


@pytest.fixture(scope="module")
def toy_roots(tmp_path_factory) -> dict[str, Path]:
    """The default toy datasets, shared read-only by the tests that do not modify files."""
    base = tmp_path_factory.mktemp("toy")
    return {fmt: make_toy(fmt, base / fmt) for fmt in FORMATS}


@pytest.fixture
def toy_copy(toy_roots, tmp_path):
    """A private copy of one toy dataset, for tests that break files."""
    def copy(fmt: str) -> Path:
        return Path(shutil.copytree(toy_roots[fmt], tmp_path / fmt))
    return copy


def rewrite(path: Path, edit) -> None:
    path.write_text("".join(f"{line}\n" for line in edit(lines(path))))


# --- toy data: determinism and growth --------------------------------------------------------

@pytest.mark.parametrize("fmt", FORMATS)
def test_toy_data_is_byte_identical_for_same_arguments(fmt, tmp_path):
    first = tree_bytes(make_toy(fmt, tmp_path / "a", image_size=32, seed=3))
    second = tree_bytes(make_toy(fmt, tmp_path / "b", image_size=32, seed=3))
    assert first == second
    other_seed = tree_bytes(make_toy(fmt, tmp_path / "c", image_size=32, seed=4))
    jpgs = [name for name in first if name.endswith(".jpg")]
    assert jpgs and all(first[name] != other_seed[name] for name in jpgs)


def test_toy_regeneration_replaces_the_folder_atomically(tmp_path):
    root = tmp_path / "cub"
    make_toy_cub(root, n_classes=2, seed=1)
    (root / "stale.txt").write_text("from an older run")
    make_toy_cub(root, n_classes=2, seed=1)
    assert not (root / "stale.txt").exists()
    assert json.loads((root / MARKER).read_text())["n_classes"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cub"]  # no staging or trash folders left


def test_toy_refuses_to_replace_a_folder_it_did_not_write(tmp_path):
    root = tmp_path / "real_data"
    root.mkdir()
    (root / "precious.jpg").write_bytes(b"not ours")
    with pytest.raises(DatasetError, match="refusing to replace"):
        make_toy_flowers(root)
    assert (root / "precious.jpg").read_bytes() == b"not ours"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["real_data"]


@pytest.mark.parametrize("maker, kwargs", [
    (make_toy_cub, {"n_classes": 201}), (make_toy_cub, {"seed": -1}), (make_toy_flowers, {"n_classes": 103}),
    (make_toy_flowers, {"train_per_class": 0}), (make_toy_coco, {"image_size": 8}),
])
def test_toy_rejects_bad_arguments_before_writing(maker, kwargs, tmp_path):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        maker(tmp_path / "toy", **kwargs)
    assert not any(tmp_path.iterdir())


def test_make_toy_rejects_unknown_format(tmp_path):
    with pytest.raises(DatasetError, match="unknown dataset format 'imagenet'"):
        make_toy("imagenet", tmp_path / "x")


def assert_grown(small: Path, big: Path, item_dirs: tuple[str, ...]) -> None:
    small_files, big_files = tree_bytes(small), tree_bytes(big)
    items = [name for name in small_files if name.startswith(item_dirs)]
    assert items
    assert len([name for name in big_files if name.startswith(item_dirs)]) > len(items)
    for name in items:
        assert big_files[name] == small_files[name], name


def test_cub_growth_keeps_existing_items(tmp_path):
    small = make_toy_cub(tmp_path / "small", n_classes=2, train_per_class=2, test_per_class=1)
    big = make_toy_cub(tmp_path / "big", n_classes=3, train_per_class=3, test_per_class=2)
    assert_grown(small, big, ("CUB_200_2011/images/", "text_c10/"))
    for name in ("images.txt", "train_test_split.txt", "image_class_labels.txt",
                 "attributes/image_attribute_labels.txt"):
        old, new = lines(small / "CUB_200_2011" / name), lines(big / "CUB_200_2011" / name)
        assert set(old) < set(new), name


def test_flowers_growth_keeps_existing_items(tmp_path):
    small = make_toy_flowers(tmp_path / "small", n_classes=2, train_per_class=1, test_per_class=1)
    big = make_toy_flowers(tmp_path / "big", n_classes=3, train_per_class=2, test_per_class=3)
    assert_grown(small, big, ("jpg/", "text_c10/"))
    old, new = read_flowers(small, "all"), read_flowers(big, "all")
    kept = new.set_index("item_id").loc[old["item_id"]]
    assert (kept["class_id"].to_numpy() == old["class_id"].to_numpy()).all()
    assert (kept["split"].to_numpy() == old["split"].to_numpy()).all()


def test_coco_growth_keeps_existing_items(tmp_path):
    small = make_toy_coco(tmp_path / "small", n_images=6)
    big = make_toy_coco(tmp_path / "big", n_images=8)
    assert_grown(small, big, ("val2017/",))
    old = json.loads((small / "annotations/instances_val2017.json").read_text())
    new = json.loads((big / "annotations/instances_val2017.json").read_text())
    assert new["annotations"][:len(old["annotations"])] == old["annotations"]
    assert new["images"][:6] == old["images"]


# --- CUB --------------------------------------------------------------------------------------

def test_cub_attribute_list_is_the_published_one():
    assert len(CUB_ATTRIBUTES) == 312 and len(set(CUB_ATTRIBUTES)) == 312
    assert len(CUB_ATTRIBUTE_GROUPS) == 28
    assert CUB_ATTRIBUTES[0] == "has_bill_shape::curved_(up_or_down)"
    assert CUB_ATTRIBUTES[20] == "has_wing_color::black"
    assert CUB_ATTRIBUTES[-1] == "has_wing_pattern::multi-colored"


def test_cub_items_table_columns_splits_and_classes(toy_roots):
    root = toy_roots["cub"]
    test, train, every = (read_cub(root, split) for split in ("test", "train", "all"))
    assert list(test.columns) == [*ITEM_COLUMNS, "attribute_vector", "image_id"]
    assert (len(test), len(train), len(every)) == (6, 6, 12)
    assert set(test["split"]) == {"test"} and set(train["split"]) == {"train"}
    assert not set(test["item_id"]) & set(train["item_id"])
    assert list(every["item_id"]) == sorted(every["item_id"])
    assert dict(zip(every["class_id"], every["class_name"])) == {
        1: "Black footed Albatross", 2: "Laysan Albatross", 3: "Sooty Albatross"}
    assert every["class_id"].value_counts().to_dict() == {1: 4, 2: 4, 3: 4}
    assert every.loc[0, "item_id"] == "Black_Footed_Albatross_0001_10001"
    for item_id, image in zip(every["item_id"], every["image"]):
        assert Path(image).is_absolute() and Path(image).stem == item_id
        assert re.fullmatch(r"[A-Za-z0-9._-]+", item_id)
        with Image.open(image) as picture:
            assert picture.size == (64, 64) and picture.format == "JPEG"


def test_cub_default_split_is_test_and_read_dataset_dispatches(toy_roots):
    pd.testing.assert_frame_equal(read_dataset("cub", toy_roots["cub"]), read_cub(toy_roots["cub"], "test"))
    pd.testing.assert_frame_equal(read_cub(toy_roots["cub"]), read_cub(toy_roots["cub"], "test"))


def test_cub_attributes_match_the_label_file(toy_roots):
    """attributes = present with certainty > 1; vector: 1 / 0 / -1 for certainty 1."""
    root = toy_roots["cub"]
    frame = read_cub(root, "all")
    ids = {line.split()[1].rsplit("/", 1)[1][:-4]: int(line.split()[0])
           for line in lines(root / "CUB_200_2011/images.txt")}
    table = np.loadtxt(root / "CUB_200_2011/attributes/image_attribute_labels.txt", usecols=range(4), dtype=int)
    for row in frame.itertuples():
        vector = np.array([int(v) for v in row.attribute_vector.split(",")])
        assert len(vector) == 312 and set(vector) <= {-1, 0, 1}
        mine = table[table[:, 0] == ids[row.item_id]]
        assert len(mine) == 312
        expected_vector = np.where(mine[:, 3] == 1, -1, mine[:, 2])
        assert (vector[mine[:, 1] - 1] == expected_vector).all()
        expected = [CUB_ATTRIBUTES[a - 1] for a, present, certainty in mine[:, 1:4] if present and certainty > 1]
        assert json.loads(row.attributes) == expected
    # the toy data contains hidden ("not visible") attributes, so the -1 case is exercised
    assert any("-1" in v.split(",") for v in frame["attribute_vector"])


def test_cub_black_attribute_is_kept_and_classes_differ(toy_roots):
    frame = read_cub(toy_roots["cub"], "all")
    attributes = frame["attributes"].map(lambda text: set(json.loads(text)))
    black_footed = attributes[frame["class_id"] == 1]
    assert all("has_wing_color::black" in found for found in black_footed)
    assert not any("has_wing_color::black" in found for found in attributes[frame["class_id"] == 2])
    # captions are per image but follow the class: the black albatross is described as black
    for captions in frame.loc[frame["class_id"] == 1, "captions"]:
        captions = json.loads(captions)
        assert len(captions) == 10 and sum("black" in c for c in captions) >= 5


def test_cub_certainty_decides_what_counts_as_present(toy_copy):
    root = toy_copy("cub")
    image_id = lines(root / "CUB_200_2011/images.txt")[0].split()[0]
    wanted = {1: "1 2", 2: "0 4", WING_BLACK + 1: "1 1"}  # present+guessing, absent, present+not visible

    def edit(rows):
        out = []
        for row in rows:
            fields = row.split()
            if fields[0] == image_id and int(fields[1]) in wanted:
                fields[2:4] = wanted[int(fields[1])].split()
            out.append(" ".join(fields))
        return out

    rewrite(root / "CUB_200_2011/attributes/image_attribute_labels.txt", edit)
    row = read_cub(root, "all").iloc[0]
    vector = [int(v) for v in row["attribute_vector"].split(",")]
    assert vector[0] == 1 and vector[1] == 0 and vector[WING_BLACK] == -1
    attributes = json.loads(row["attributes"])
    assert CUB_ATTRIBUTES[0] in attributes
    assert CUB_ATTRIBUTES[1] not in attributes and "has_wing_color::black" not in attributes


def test_cub_label_lines_with_extra_columns_are_tolerated(toy_copy, toy_roots, monkeypatch):
    import ctrlbench.data.cub as cub

    def no_fallback(*args):
        raise AssertionError("the pandas fast path should handle extra columns")

    # the real file has 3.7M lines: extra columns must not push it onto the slow parser
    monkeypatch.setattr(cub, "_read_attribute_labels_by_line", no_fallback)
    root = toy_copy("cub")
    path = root / "CUB_200_2011/attributes/image_attribute_labels.txt"
    rewrite(path, lambda rows: [row + " 0 7.5" if i % 50 == 7 else row for i, row in enumerate(rows)])
    pd.testing.assert_frame_equal(read_cub(root, "all").drop(columns="image"),
                                  read_cub(toy_roots["cub"], "all").drop(columns="image"))


def test_cub_root_may_be_the_cub_200_2011_folder(toy_roots):
    root = toy_roots["cub"]
    pd.testing.assert_frame_equal(read_cub(root / "CUB_200_2011", "all"), read_cub(root, "all"))


def test_cub_attribute_names_come_from_attributes_txt_wherever_it_is(toy_copy):
    root = toy_copy("cub")
    # a renamed attribute proves the file is read rather than the built-in list
    rewrite(root / "attributes.txt", lambda rows: [r.replace("wing_color::black", "wing_color::jet") for r in rows])
    (root / "attributes.txt").rename(root / "CUB_200_2011/attributes/attributes.txt")
    renamed = read_cub(root, "all")
    assert "has_wing_color::jet" in json.loads(renamed.loc[0, "attributes"])
    (root / "CUB_200_2011/attributes/attributes.txt").unlink()
    fallback = read_cub(root, "all")  # no attributes.txt anywhere: the published names
    assert "has_wing_color::black" in json.loads(fallback.loc[0, "attributes"])


def test_cub_captions_are_optional_and_may_sit_inside_cub_200_2011(toy_copy):
    root = toy_copy("cub")
    before = read_cub(root, "all")["captions"]
    (root / "text_c10").rename(root / "CUB_200_2011/text_c10")
    assert read_cub(root, "all")["captions"].equals(before)
    shutil.rmtree(root / "CUB_200_2011/text_c10")
    assert set(read_cub(root, "all")["captions"]) == {"[]"}


def test_cub_missing_root_and_index_files(toy_copy, tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        read_cub(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="neither CUB_200_2011/ nor images.txt"):
        read_cub(tmp_path / "empty")
    root = toy_copy("cub")
    (root / "CUB_200_2011/train_test_split.txt").unlink()
    with pytest.raises(DatasetError) as error:
        read_cub(root)
    assert "train_test_split.txt" in str(error.value) and CUB_URL in str(error.value)


def test_cub_malformed_lines_are_reported_with_line_numbers(toy_copy):
    root = toy_copy("cub")
    images = root / "CUB_200_2011/images.txt"
    original = lines(images)
    rewrite(images, lambda rows: rows[:2] + ["three"] + rows[3:])
    with pytest.raises(DatasetError, match=r"images\.txt line 3: expected <image_id> <image_path>"):
        read_cub(root)
    rewrite(images, lambda rows: original)
    split_file = root / "CUB_200_2011/train_test_split.txt"
    rewrite(split_file, lambda rows: rows[:4] + [rows[4].split()[0] + " 2"] + rows[5:])
    with pytest.raises(DatasetError, match=r"train_test_split\.txt line 5: is_training_image must be one of"):
        read_cub(root)


@pytest.mark.parametrize("bad_line, problem", [
    ("10001 7 yes 3 1.0", "is_present must be an integer"),
    ("10001 7", "expected <image_id> <attribute_id>"),
    ("10001 313 1 3 1.0", r"attribute_id must be in 1\.\.312"),
    ("10001 7 1 5 1.0", r"certainty_id must be in 1\.\.4"),
])
def test_cub_malformed_attribute_labels_name_the_line(toy_copy, bad_line, problem):
    root = toy_copy("cub")
    labels = root / "CUB_200_2011/attributes/image_attribute_labels.txt"
    rewrite(labels, lambda rows: rows[:99] + [bad_line] + rows[100:])
    with pytest.raises(DatasetError, match=rf"image_attribute_labels\.txt line 100: {problem}"):
        read_cub(root)


def test_cub_missing_image_listed_in_split(toy_copy):
    root = toy_copy("cub")
    test = read_cub(root, "test")
    missing = Path(test.loc[0, "image"])
    missing.unlink()
    with pytest.raises(DatasetError, match=re.escape(missing.name)):
        read_cub(root, "test")
    assert len(read_cub(root, "train")) == 6  # the other split does not need that image


def test_cub_split_listing_an_unknown_image_id(toy_copy):
    root = toy_copy("cub")
    rewrite(root / "CUB_200_2011/train_test_split.txt", lambda rows: rows + ["99999 0"])
    with pytest.raises(DatasetError, match="lists image_id 99999"):
        read_cub(root)


@pytest.mark.parametrize("reader, split", [(read_cub, "val"), (read_flowers, "validation"), (read_coco, "test")])
def test_unknown_split(toy_roots, reader, split):
    fmt = {read_cub: "cub", read_flowers: "flowers", read_coco: "coco"}[reader]
    with pytest.raises(DatasetError, match=f"unknown split '{split}'"):
        reader(toy_roots[fmt], split)


def test_read_dataset_rejects_unknown_format(tmp_path):
    with pytest.raises(DatasetError, match="unknown dataset format 'imagenet'"):
        read_dataset("imagenet", tmp_path)


# --- Flowers-102 ------------------------------------------------------------------------------

def test_flowers_class_names_are_the_102_standard_ones():
    assert len(FLOWERS_CLASS_NAMES) == 102 and len(set(FLOWERS_CLASS_NAMES)) == 102
    assert FLOWERS_CLASS_NAMES[:2] == ("pink primrose", "hard-leaved pocket orchid")
    assert FLOWERS_CLASS_NAMES[-1] == "blackberry lily"


def test_flowers_items_table(toy_roots):
    root = toy_roots["flowers"]
    frames = {split: read_flowers(root, split) for split in ("train", "val", "test", "all")}
    assert list(frames["all"].columns) == list(ITEM_COLUMNS)
    assert {split: len(f) for split, f in frames.items()} == {"train": 6, "val": 6, "test": 6, "all": 18}
    every = frames["all"]
    assert every["split"].value_counts().to_dict() == {"train": 6, "val": 6, "test": 6}
    assert list(every["item_id"]) == sorted(every["item_id"])
    labels = scipy.io.loadmat(root / "imagelabels.mat")["labels"].reshape(-1)
    for row in every.itertuples():
        number = int(re.fullmatch(r"image_(\d{5})", row.item_id).group(1))
        assert row.class_id == labels[number - 1]
        assert row.class_name == FLOWERS_CLASS_NAMES[row.class_id - 1]
        assert Path(row.image).is_file() and Path(row.image).name == f"{row.item_id}.jpg"
        captions = json.loads(row.captions)
        assert len(captions) == 10 and row.attributes == "[]"
    assert set(every["class_name"]) == {"pink primrose", "hard-leaved pocket orchid", "canterbury bells"}
    pink = every.loc[every["class_id"] == 1, "captions"].map(json.loads)
    assert all(any("pink" in c for c in captions) for captions in pink)


def test_flowers_errors(toy_copy, tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        read_flowers(tmp_path / "nowhere")
    root = toy_copy("flowers")
    setid = root / "setid.mat"
    setid.rename(tmp_path / "setid.mat.bak")
    with pytest.raises(DatasetError) as error:
        read_flowers(root)
    assert "setid.mat" in str(error.value) and FLOWERS_URL in str(error.value)

    setid.write_bytes(b"this is not a MATLAB file")
    with pytest.raises(DatasetError, match=r"cannot read .*setid\.mat as a MATLAB"):
        read_flowers(root)

    scipy.io.savemat(setid, {"trnid": np.array([[1]]), "valid": np.array([[2]])})
    with pytest.raises(DatasetError, match=r"setid\.mat has no key 'tstid'"):
        read_flowers(root)

    scipy.io.savemat(setid, {"trnid": np.array([[1]]), "valid": np.array([[2]]), "tstid": np.array([[3, 99999]])})
    with pytest.raises(DatasetError, match="lists image number 99999"):
        read_flowers(root)


def test_flowers_missing_image_listed_in_split(toy_copy):
    root = toy_copy("flowers")
    (root / "jpg/image_00003.jpg").unlink()  # a test image
    with pytest.raises(DatasetError, match=r"image_00003\.jpg is listed in .*setid\.mat"):
        read_flowers(root, "test")
    assert len(read_flowers(root, "train")) == 6


# --- COCO ---------------------------------------------------------------------------------------

def keeps(objects: list[dict]) -> bool:
    """The object filter the toy data is built to exercise."""
    return (2 <= len(objects) <= 4 and all(o["category"] != "person" for o in objects)
            and all(o["area_fraction"] >= 0.05 for o in objects))


def test_coco_items_table_and_filter_cases(toy_roots):
    root = toy_roots["coco"]
    frame = read_coco(root)
    assert list(frame.columns) == [*ITEM_COLUMNS, "width", "height", "objects", "annotation_file"]
    assert list(frame["item_id"]) == [f"{i:012d}" for i in range(1, 7)]
    assert set(frame["split"]) == {"val"} and set(frame["class_id"]) == {-1} and set(frame["class_name"]) == {""}
    assert set(frame["width"]) == {64} and set(frame["height"]) == {64}
    assert frame["annotation_file"].map(lambda p: Path(p).is_absolute() and Path(p).is_file()).all()
    objects = frame["objects"].map(json.loads)
    assert [len(o) for o in objects] == [2, 3, 3, 2, 5, 4]
    assert [keeps(o) for o in objects] == [True, True, False, False, False, True]
    assert any(o["category"] == "person" and o["category_id"] == 1 for o in objects[2])
    assert min(o["area_fraction"] for o in objects[3]) < 0.05
    captions = frame["captions"].map(json.loads)
    assert all(len(c) == 5 and objects[i][0]["category"] in c[0] for i, c in enumerate(captions))
    pd.testing.assert_frame_equal(read_dataset("coco", root), frame)
    pd.testing.assert_frame_equal(read_coco(root, "all"), frame)  # only val2017 exists


def test_coco_categories_use_real_ids(toy_roots):
    data = json.loads((toy_roots["coco"] / "annotations/instances_val2017.json").read_text())
    names = {c["id"]: (c["name"], c["supercategory"]) for c in data["categories"]}
    assert len(names) == 80
    for cid, name in {1: "person", 2: "bicycle", 5: "airplane", 9: "boat", 16: "bird", 44: "bottle",
                      62: "chair", 63: "couch", 64: "potted plant", 67: "dining table", 72: "tv"}.items():
        assert names[cid][0] == name
    assert names[16][1] == "animal" and names[1][1] == "person"


# pycocotools' decode trips a numpy 2 deprecation warning that is not ours to fix
@pytest.mark.filterwarnings("ignore::DeprecationWarning:pycocotools")
def test_coco_masks_match_objects_and_pixels(toy_roots):
    from ctrlbench.data.toy import _category_color

    frame = read_coco(toy_roots["coco"])
    for row in frame.itertuples():
        objects = json.loads(row.objects)
        masks = coco_object_masks(row.annotation_file, row.item_id)
        assert [name for name, _ in masks] == [o["category"] for o in objects]
        pixels = np.asarray(Image.open(row.image).convert("RGB"), dtype=float)
        for (name, mask), obj in zip(masks, objects):
            assert mask.shape == (64, 64) and mask.dtype == bool
            assert mask.mean() == pytest.approx(obj["area_fraction"], abs=1e-6)
            ys, xs = np.nonzero(mask)
            x, y, w, h = obj["bbox"]
            assert x - 1 <= xs.min() and xs.max() <= x + w + 1 and y - 1 <= ys.min() and ys.max() <= y + h + 1
            # the drawn shape sits under its polygon: the masked pixels have the category colour
            colour = pixels[mask].mean(axis=0)
            assert np.abs(colour - _category_color(obj["category_id"])).max() < 30, name
    first_object = json.loads(frame.loc[0, "objects"])[0]["category"]
    assert coco_object_masks(frame.loc[0, "annotation_file"], 1)[0][0] == first_object  # int ids work too


def test_coco_errors(toy_copy, tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        read_coco(tmp_path / "nowhere")
    root = toy_copy("coco")
    annotations = root / "annotations/instances_val2017.json"
    text = annotations.read_text()
    with pytest.raises(DatasetError, match="has no image with id 77"):
        coco_object_masks(annotations, 77)

    annotations.write_text(text[:1000].replace(",", ",\n") + "\n]")
    with pytest.raises(DatasetError, match=r"instances_val2017\.json line \d+ column \d+: invalid JSON"):
        read_coco(root)

    annotations.unlink()
    with pytest.raises(DatasetError) as error:
        read_coco(root)
    assert "instances_val2017.json" in str(error.value) and "https://cocodataset.org/#download" in str(error.value)
    with pytest.raises(DatasetError, match="instances_train2017.json"):
        read_coco(root, "train")

    annotations.write_text(text)
    (root / "val2017/000000000004.jpg").unlink()
    with pytest.raises(DatasetError, match=r"000000000004\.jpg is listed in .*instances_val2017\.json"):
        read_coco(root)
