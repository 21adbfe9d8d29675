"""Flowers-102 in its two on-disk layouts (issue 18, "Paper fidelity"): the Oxford files
(imagelabels.mat, setid.mat, jpg/) and the Kaggle "pytorch challenge" copy the mmm2025
README links (train/ and valid/ class folders, cat_to_name.json). Both read the same image
to the same item id, class and captions; the layout is detected or named; every bad input
is a DatasetError naming the file or folder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from ctrlbench import io
from ctrlbench.data import ITEM_COLUMNS
from ctrlbench.data.flowers import FLOWERS_CLASS_NAMES, FLOWERS_URL, KAGGLE_URL, read_flowers
from ctrlbench.data.items import prepare_gallery, prepare_items
from ctrlbench.data.layout import dataset_index_files, flowers_layouts_found
from ctrlbench.data.readers import read_dataset
from ctrlbench.data.toy import MARKER, make_toy_flowers
from ctrlbench.errors import ConfigError, DatasetError

# Item columns that do not depend on where the image file lies.
SAME = [column for column in ITEM_COLUMNS if column != "image"]


@pytest.fixture(scope="module")
def toys(tmp_path_factory) -> dict[str, Path]:
    """The same toy images in both layouts (shared read-only)."""
    base = tmp_path_factory.mktemp("flowers")
    return {layout: make_toy_flowers(base / layout, layout=layout) for layout in ("oxford", "kaggle")}


@pytest.fixture
def kaggle(toys, tmp_path) -> Path:
    """A private copy of the Kaggle toy, for tests that break files."""
    return Path(shutil.copytree(toys["kaggle"], tmp_path / "kaggle"))


def moved(path: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    path.rename(target)


# --- the same images in both layouts ---------------------------------------------------------

@pytest.mark.parametrize("split", ["train", "val"])
def test_both_layouts_give_the_same_items(toys, split):
    oxford, kaggle = read_flowers(toys["oxford"], split), read_flowers(toys["kaggle"], split)
    assert list(kaggle.columns) == list(ITEM_COLUMNS) and len(kaggle) == 6
    pd.testing.assert_frame_equal(oxford[SAME], kaggle[SAME])
    assert all(json.loads(captions) for captions in kaggle["captions"])  # text_c10 found beside dataset/
    for ours, theirs in zip(oxford["image"], kaggle["image"]):
        assert Path(theirs).is_absolute() and Path(theirs).read_bytes() == Path(ours).read_bytes()
    for row in kaggle.itertuples():  # the class folder is the Oxford label
        assert Path(row.image).parent.name == str(row.class_id)
        assert Path(row.image).parts[-3] == {"train": "train", "val": "valid"}[split]


def test_kaggle_all_is_every_labelled_split_folder(toys):
    kaggle = read_flowers(toys["kaggle"], "all")
    oxford = read_flowers(toys["oxford"], "all")
    assert kaggle["split"].value_counts().to_dict() == {"train": 6, "val": 6}
    pd.testing.assert_frame_equal(oxford[oxford["split"] != "test"][SAME].reset_index(drop=True), kaggle[SAME])


def test_class_names_come_from_cat_to_name_json_in_the_kaggle_layout_only(kaggle, toys):
    names = json.loads((kaggle / "cat_to_name.json").read_text())
    names["1"] = "  primrose (kaggle)  "
    (kaggle / "cat_to_name.json").write_text(json.dumps(names))
    frame = read_flowers(kaggle, "train")
    assert set(frame.loc[frame["class_id"] == 1, "class_name"]) == {"primrose (kaggle)"}
    assert set(frame.loc[frame["class_id"] == 2, "class_name"]) == {FLOWERS_CLASS_NAMES[1]}
    oxford = read_flowers(toys["oxford"], "train")
    assert set(oxford.loc[oxford["class_id"] == 1, "class_name"]) == {"pink primrose"}


def test_kaggle_captions_are_optional_and_may_sit_beside_the_split_folders(kaggle, toys):
    captions = read_flowers(toys["kaggle"], "val")["captions"].tolist()
    moved(kaggle / "text_c10", kaggle / "dataset" / "text_c10")
    assert read_flowers(kaggle, "val")["captions"].tolist() == captions
    shutil.rmtree(kaggle / "dataset" / "text_c10")
    assert set(read_flowers(kaggle, "val")["captions"]) == {"[]"}


# --- which layout ------------------------------------------------------------------------------

def test_the_layout_is_detected(toys):
    assert flowers_layouts_found(toys["oxford"]) == ["oxford"]
    assert flowers_layouts_found(toys["kaggle"]) == ["kaggle"]
    assert flowers_layouts_found(toys["kaggle"] / "dataset") == ["kaggle"]
    for layout, root in toys.items():
        pd.testing.assert_frame_equal(read_flowers(root, "train"), read_flowers(root, "train", layout=layout))
    assert "/dataset/train/" in read_flowers(toys["kaggle"], "train")["image"][0]


def test_kaggle_root_may_be_the_folder_holding_train_or_its_parent(toys):
    # cat_to_name.json lies beside dataset/, i.e. in the parent of the folder holding train/
    pd.testing.assert_frame_equal(read_flowers(toys["kaggle"], "all"), read_flowers(toys["kaggle"] / "dataset", "all"))


def test_cat_to_name_json_may_sit_beside_the_split_folders(kaggle):
    """The Udacity challenge zip (flower_data/flower_data/) keeps it beside train/ and valid/."""
    moved(kaggle / "cat_to_name.json", kaggle / "dataset" / "cat_to_name.json")
    assert len(read_flowers(kaggle, "all")) == 12


@pytest.mark.parametrize("asked, holds", [("kaggle", "oxford"), ("oxford", "kaggle")])
def test_a_layout_that_does_not_match_the_files_is_an_error(toys, asked, holds):
    with pytest.raises(DatasetError) as error:
        read_flowers(toys[holds], "train", layout=asked)
    message = str(error.value)
    assert f"layout {asked!r} was asked for" in message and str(toys[holds]) in message
    assert f"it holds the {holds} layout: set layout: {holds} or auto" in message
    assert (KAGGLE_URL if asked == "kaggle" else FLOWERS_URL) in message


def test_unknown_layout(toys):
    with pytest.raises(DatasetError, match=r"unknown layout 'imagefolder'; expected one of \['auto', 'oxford', "):
        read_flowers(toys["oxford"], layout="imagefolder")


def test_both_layouts_in_one_folder_must_be_named(toys, tmp_path):
    root = Path(shutil.copytree(toys["oxford"], tmp_path / "both"))
    shutil.copytree(toys["kaggle"] / "dataset", root / "dataset")
    shutil.copy(toys["kaggle"] / "cat_to_name.json", root)
    with pytest.raises(DatasetError, match="holds both the Oxford layout .* set layout: oxford or layout: kaggle"):
        read_flowers(root, "train")
    assert "/jpg/" in read_flowers(root, "train", layout="oxford")["image"][0]
    assert "/dataset/train/" in read_flowers(root, "train", layout="kaggle")["image"][0]


def test_a_folder_with_neither_layout_describes_both(tmp_path):
    (tmp_path / "empty").mkdir()
    for root, problem in ((tmp_path / "empty", "holds neither Flowers layout"),
                          (tmp_path / "nowhere", "does not exist")):
        with pytest.raises(DatasetError) as error:
            read_flowers(root)
        message = str(error.value)
        assert problem in message
        assert all(text in message for text in ("imagelabels.mat", "setid.mat", FLOWERS_URL,
                                                "valid/<class id>", "cat_to_name.json", KAGGLE_URL))


def test_a_partial_oxford_layout_names_its_missing_file(toys, tmp_path):
    root = Path(shutil.copytree(toys["oxford"], tmp_path / "oxford"))
    (root / "setid.mat").unlink()
    with pytest.raises(DatasetError, match=r"Flowers: missing file .*setid\.mat\. Expected the Oxford"):
        read_flowers(root)


def test_index_files_follow_the_layout(toys, kaggle):
    """The items step's Snakemake inputs: the .mat files, or cat_to_name.json wherever it is."""
    oxford = toys["oxford"]
    assert dataset_index_files("flowers", str(oxford)) == [str(oxford / "imagelabels.mat"), str(oxford / "setid.mat")]
    names = str(toys["kaggle"] / "cat_to_name.json")
    assert dataset_index_files("flowers", str(toys["kaggle"])) == [names]
    assert dataset_index_files("flowers", str(toys["kaggle"] / "dataset"), "kaggle") == [names]
    assert dataset_index_files("flowers", str(toys["kaggle"]), "oxford") == []  # the reader reports it
    (kaggle / "cat_to_name.json").unlink()
    assert dataset_index_files("flowers", str(kaggle)) == []


# --- bad Kaggle inputs -------------------------------------------------------------------------

def write_names(root: Path, text: str) -> None:
    (root / "cat_to_name.json").write_text(text, encoding="utf-8")


@pytest.mark.parametrize("damage, split, match", [
    (lambda root: (root / "cat_to_name.json").unlink(), "train",
     r"missing file .*dataset/cat_to_name\.json \(nor in .*kaggle\)\. Expected the Kaggle"),
    (lambda root: write_names(root, '{"1": "pink primrose",\n "2": }'), "train",
     r"cat_to_name\.json line 2 column 7: invalid JSON"),
    (lambda root: (root / "cat_to_name.json").write_bytes(b'{"1": "\xff"}'), "train",
     r"cat_to_name\.json is not valid UTF-8"),
    (lambda root: write_names(root, '["pink primrose"]'), "train", r"cat_to_name\.json must hold a JSON object"),
    (lambda root: write_names(root, '{}'), "train", r"cat_to_name\.json names no class"),
    (lambda root: write_names(root, '{"one": "pink primrose"}'), "train",
     r"cat_to_name\.json key 'one' is not a class id"),
    (lambda root: write_names(root, '{"1": "a", "01": "b"}'), "train", r"cat_to_name\.json names class 1 twice"),
    (lambda root: write_names(root, '{"1": "", "2": "b", "3": "c"}'), "train",
     r"cat_to_name\.json class '1' needs a non-empty name"),
    (lambda root: write_names(root, '{"1": "a", "2": "b"}'), "train",
     r"class folder .*dataset/train/3 is not a class of .*cat_to_name\.json \(it names 2 classes, 1\.\.2\)"),
    (lambda root: moved(root / "dataset/train/2", root / "dataset/train/orchid"), "train",
     r"class folder .*dataset/train/orchid must be named by its class id"),
    (lambda root: moved(root / "dataset/valid/1/image_00002.jpg", root / "dataset/valid/1/rose.jpg"), "val",
     r"dataset/valid/1/rose\.jpg: expected a file named image_NNNNN\.jpg"),
    (lambda root: shutil.copy(root / "dataset/train/1/image_00001.jpg", root / "dataset/valid/1"), "all",
     r"dataset/valid/1/image_00001\.jpg and .*dataset/train/1/image_00001\.jpg are the same image number 1"),
    (lambda root: [shutil.rmtree(d) for d in (root / "dataset/valid").iterdir()], "val",
     r"split 'val' is empty: .*dataset/valid has no class folder with images"),
    (lambda root: shutil.rmtree(root / "dataset/valid"), "val",
     r"split 'val' has no folder: .*dataset/valid does not exist\. Use a split whose folder exists, or the Oxford"),
    (lambda root: None, "test",
     r"split 'test' has no folder: .*dataset/test does not exist\. The Kaggle copy has no labelled test split"),
    (lambda root: shutil.copytree(root / "dataset", root / "flower_data"), "train",
     r"holds several Kaggle copies \(.*/dataset, .*/flower_data\); point root at one of them"),
], ids=["names_missing", "names_bad_json", "names_not_utf8", "names_not_object", "names_empty", "names_bad_key",
        "names_duplicate_key", "names_empty_name", "class_not_in_names", "class_folder_not_a_number",
        "image_misnamed", "image_in_two_splits", "split_empty", "split_folder_missing", "no_test_folder",
        "two_copies"])
def test_bad_kaggle_inputs_name_the_file_and_the_problem(kaggle, damage, split, match):
    damage(kaggle)
    with pytest.raises(DatasetError, match=match):
        read_flowers(kaggle, split)


def test_an_unlabelled_test_folder_is_refused_and_left_out_of_all(kaggle, toys):
    """The challenge's own test/ held loose images without class folders."""
    test = kaggle / "dataset" / "test"
    test.mkdir()
    shutil.copy(toys["oxford"] / "jpg" / "image_00003.jpg", test)
    with pytest.raises(DatasetError, match=r"dataset/test holds images outside class folders \(e\.g\. "
                                           r"image_00003\.jpg\), so split 'test' has no labels there\. The Kaggle"):
        read_flowers(kaggle, "test")
    assert set(read_flowers(kaggle, "all")["split"]) == {"train", "val"}


def test_a_labelled_test_folder_is_read(kaggle, toys):
    moved(kaggle / "dataset" / "valid", kaggle / "dataset" / "test")
    frame, oxford_val = read_flowers(kaggle, "test"), read_flowers(toys["oxford"], "val")
    assert set(frame["split"]) == {"test"}
    pd.testing.assert_frame_equal(frame[SAME].drop(columns="split"), oxford_val[SAME].drop(columns="split"))
    assert read_flowers(kaggle, "all")["split"].value_counts().to_dict() == {"train": 6, "test": 6}


def test_hidden_and_non_image_files_are_ignored(kaggle, toys):
    class_dir = kaggle / "dataset" / "train" / "1"
    (class_dir / ".DS_Store").write_bytes(b"\0")
    (class_dir / "._image_00001.jpg").write_bytes(b"\0")  # a macOS resource fork
    (class_dir / "notes.txt").write_text("seen by a person")
    (kaggle / "dataset" / "train" / ".cache").mkdir()
    pd.testing.assert_frame_equal(read_flowers(kaggle, "train")[SAME], read_flowers(toys["kaggle"], "train")[SAME])


# --- the items and gallery steps ----------------------------------------------------------------

def test_read_dataset_passes_the_layout_on(toys, tmp_path):
    root = toys["kaggle"]
    pd.testing.assert_frame_equal(read_dataset("flowers", root, "val", "kaggle"), read_flowers(root, "val"))
    with pytest.raises(DatasetError, match="layout 'oxford' was asked for"):
        read_dataset("flowers", root, "val", "oxford")
    with pytest.raises(ConfigError, match="layout applies to Flowers datasets only .* not format 'cub'"):
        read_dataset("cub", tmp_path, "test", "kaggle")


@pytest.mark.parametrize("layout", ["oxford", "kaggle"])
def test_items_and_gallery_steps_on_each_layout(toys, tmp_path, layout):
    out = tmp_path / "data"
    prepare_items("flowers", str(toys[layout]), "val", str(out / "items.csv"), str(out / "shards"), 2,
                  counts_csv=str(out / "counts.csv"), layout=layout)
    prepare_gallery("flowers", str(toys[layout]), "train", str(out / "gallery.csv"), layout=layout)
    items, gallery = io.read_table(out / "items.csv"), io.read_table(out / "gallery.csv")
    assert list(items.columns) == list(ITEM_COLUMNS) and len(items) == 6 and set(items["split"]) == {"val"}
    assert list(gallery["item_id"]) == list(read_flowers(toys["oxford"], "train")["item_id"])
    shards = pd.concat([io.read_table(path) for path in sorted((out / "shards").glob("shard-*.csv"))])
    assert sorted(shards["item_id"]) == list(items["item_id"])
    assert all(Path(path).is_file() for path in items["image"])


def test_items_are_the_same_from_either_layout(toys, tmp_path):
    tables = {}
    for layout, root in toys.items():
        out = tmp_path / layout
        prepare_items("flowers", str(root), "train", str(out / "items.csv"), str(out / "shards"), 1)  # detected
        tables[layout] = io.read_table(out / "items.csv")
    pd.testing.assert_frame_equal(tables["oxford"][SAME], tables["kaggle"][SAME])


# --- the toy copy ------------------------------------------------------------------------------

def test_kaggle_toy_is_deterministic_and_the_default_toy_keeps_its_marker(toys, tmp_path):
    again = make_toy_flowers(tmp_path / "again", layout="kaggle")
    files = sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(toys["kaggle"]) for p in toys["kaggle"].rglob("*") if p.is_file())
    assert all((again / f).read_bytes() == (toys["kaggle"] / f).read_bytes() for f in files)
    assert json.loads((again / MARKER).read_text())["layout"] == "kaggle"
    assert "layout" not in json.loads((toys["oxford"] / MARKER).read_text())  # the demo's toy is unchanged
    names = json.loads((again / "cat_to_name.json").read_text())
    assert len(names) == 102 and names["102"] == "blackberry lily" and list(names)[:3] == ["1", "10", "100"]


def test_toy_rejects_an_unknown_layout(tmp_path):
    with pytest.raises(ValueError, match="layout must be 'oxford' or 'kaggle'"):
        make_toy_flowers(tmp_path / "toy", layout="imagefolder")
    assert not (tmp_path / "toy").exists()
