"""The COCO region subset (ctrlbench.data.coco_regions) and its wiring into prepare_items."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from ctrlbench.data.coco import coco_object_masks, read_coco
from ctrlbench.data.coco_regions import COUNT_COLUMNS, filter_region_subset, mask_fractions
from ctrlbench.data.items import prepare_items
from ctrlbench.data.toy import make_toy_coco
from ctrlbench.errors import ConfigError, DatasetError, InputError
from ctrlbench.methods.regions import item_masks
from ctrlbench.methods.segmentation import COCO_TO_VOC, VOC_CLASSES

# pycocotools' decode trips a numpy 2 deprecation warning that is not ours to fix
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:pycocotools")

N_TOY = 11  # the toy scenes, one of each: every filter step drops at least one image
IDS = {k: f"{k:012d}" for k in range(1, N_TOY + 1)}
EXPECTED_COUNTS = [
    ("all", 11, 0),
    ("annotated", 10, 1),      # 10: no objects
    ("no_crowd", 9, 1),        # 8: a crowd annotation
    ("no_excluded", 8, 1),     # 3: a person
    ("voc_only", 7, 1),        # 7: a truck or elephant
    ("n_objects", 5, 2),       # 5: five objects, 9: one object
    ("mask_fraction", 3, 2),   # 4 and 11: a tiny object
]
# small_masks: drop_mask. The tiny objects of 4 and 11 are removed first; 4 is left with
# one object, 11 with two, so 11 is kept.
DROP_MASK_COUNTS = EXPECTED_COUNTS[:5] + [
    ("mask_fraction", 7, 0),   # removes masks, not images
    ("n_objects", 4, 3),       # 5: five objects, 9: one, 4: one left
]


@pytest.fixture(scope="module")
def toy_root(tmp_path_factory) -> Path:
    return make_toy_coco(tmp_path_factory.mktemp("regions") / "coco", n_images=N_TOY)


@pytest.fixture(scope="module")
def toy_items(toy_root) -> pd.DataFrame:
    return read_coco(toy_root)


def kept_ids(frame: pd.DataFrame) -> list[int]:
    return [int(item_id) for item_id in frame["item_id"]]


# --- the toy set ------------------------------------------------------------------------------

def steps(counts: pd.DataFrame) -> list[tuple[str, int, int]]:
    """(step, remaining, dropped) of the applied rows."""
    applied = counts[counts["applied"]]
    return list(applied[["step", "images_remaining", "images_dropped"]].itertuples(index=False, name=None))


def other_reading(counts: pd.DataFrame) -> tuple[str, int, int]:
    """(description, remaining, dropped) of the last row, the reading not applied."""
    assert counts["applied"].tolist() == [True] * (len(counts) - 1) + [False]
    row = counts.iloc[-1]
    assert row["step"] == "other_reading"
    return row["description"], row["images_remaining"], row["images_dropped"]


def test_toy_counts_per_step_and_kept_items(toy_items):
    kept, counts = filter_region_subset(toy_items)
    assert list(counts.columns) == list(COUNT_COLUMNS)
    assert steps(counts) == EXPECTED_COUNTS
    assert counts["description"].tolist()[:-1] == [
        "all images", "at least one annotation", "no crowd annotation (iscrowd=1)", "no object of person",
        "every object of a Pascal VOC class", "2-4 objects", "every object mask >= 5% of the image"]
    # the other reading keeps 11 too: 4 of 11 images, 7 dropped
    assert other_reading(counts) == ("not applied: the images small_masks: drop_mask would keep", 4, 7)
    assert kept_ids(kept) == [1, 2, 6]
    # the kept rows are the original rows, untouched
    pd.testing.assert_frame_equal(kept, toy_items.iloc[[0, 1, 5]])


def test_toy_scenes_show_each_reason(toy_items):
    objects = {int(row.item_id): json.loads(row.objects) for row in toy_items.itertuples()}
    assert objects[10] == []
    assert [o["iscrowd"] for o in objects[8]] == [0, 0, 1]
    assert [o["category"] for o in objects[3]][0] == "person"
    assert objects[7][-1]["category"] in ("truck", "elephant")
    assert (len(objects[5]), len(objects[9])) == (5, 1)
    assert min(o["area_fraction"] for o in objects[4]) < 0.05
    assert len(objects[11]) == 3 and [o["area_fraction"] < 0.05 for o in objects[11]] == [False, False, True]


@pytest.mark.parametrize("change, also_kept", [
    ({"exclude_categories": ()}, [3]),              # the person image is otherwise fine
    ({"voc_only": False}, [7]),                    # so is the truck / elephant image
    ({"max_objects": 5}, [5]),
    ({"min_objects": 1}, [9]),
    ({"min_mask_fraction": 0.005}, [4, 11]),       # their tiny objects cover ~0.9% and ~0.6%
    ({"small_masks": "drop_mask"}, [11]),          # 11 without its tiny object; 4 is left with one
])
def test_each_reason_alone_drops_its_image(toy_items, change, also_kept):
    kept, counts = filter_region_subset(toy_items, **change)
    assert kept_ids(kept) == sorted([1, 2, 6] + also_kept)
    applied = counts[counts["applied"]]
    assert applied["images_remaining"].iloc[-1] == len(kept)
    assert (applied["images_dropped"] == applied["images_remaining"].shift(1, fill_value=N_TOY)
            - applied["images_remaining"]).all()


# --- small_masks: the two readings of "masks that occupy less than 5% of the image" ---------

def test_the_two_readings_differ_on_an_image_with_one_tiny_mask(toy_items):
    """Image 11: two objects >= 5% and one tiny one. drop_image drops it; drop_mask keeps it
    without the tiny object, which leaves its objects (what the methods generate and IoU
    scores), while the images untouched by the removal keep their rows as they were."""
    by_image, image_kept = filter_region_subset(toy_items, small_masks="drop_image")
    by_mask, mask_kept = filter_region_subset(toy_items, small_masks="drop_mask")
    assert kept_ids(by_image) == [1, 2, 6] and kept_ids(by_mask) == [1, 2, 6, 11]
    assert steps(image_kept) == EXPECTED_COUNTS and steps(mask_kept) == DROP_MASK_COUNTS
    # each run also gives the other reading's total, equal to that reading's own run
    assert other_reading(image_kept)[1:] == (4, 7) and other_reading(mask_kept)[1:] == (3, 8)
    assert "drop_image would keep" in other_reading(mask_kept)[0]
    assert "(2 masks of 2 images)" in mask_kept.set_index("step").loc["mask_fraction", "description"]

    original = json.loads(toy_items.set_index("item_id").loc[IDS[11], "objects"])
    tiny = [o for o in original if o["area_fraction"] < 0.05]
    assert len(original) == 3 and len(tiny) == 1
    left = json.loads(by_mask.set_index("item_id").loc[IDS[11], "objects"])
    assert left == [o for o in original if o["ann_id"] != tiny[0]["ann_id"]]
    pd.testing.assert_frame_equal(by_mask.iloc[:3], by_image)

    # the region methods' masks (regions.item_masks) follow the row's objects: the tiny
    # object's class is neither generated nor saved for IoU; the unfiltered row still has it
    row = by_mask.set_index("item_id", drop=False).loc[IDS[11]]
    masks = item_masks(row, Path("."), 64, 64, "test")  # keyed by VOC class name
    assert sorted(masks) == sorted(VOC_CLASSES[COCO_TO_VOC[o["category"]]] for o in left)
    assert VOC_CLASSES[COCO_TO_VOC[tiny[0]["category"]]] not in masks
    full = item_masks(toy_items.set_index("item_id", drop=False).loc[IDS[11]], Path("."), 64, 64, "test")
    assert VOC_CLASSES[COCO_TO_VOC[tiny[0]["category"]]] in full


def test_masks_of_listed_objects_only(toy_items):
    row = toy_items.set_index("item_id", drop=False).loc[IDS[11]]
    ids = [o["ann_id"] for o in json.loads(row["objects"])]
    assert [m.sum() for _, m in coco_object_masks(row["annotation_file"], 11, ids[1:])] \
        == [m.sum() for _, m in coco_object_masks(row["annotation_file"], 11)][1:]
    with pytest.raises(DatasetError, match=r"no annotation\(s\) \[99\] of image 11"):
        coco_object_masks(row["annotation_file"], 11, [ids[0], 99])
    bad = row.copy()
    bad["objects"] = "[1, 2]"
    with pytest.raises(InputError, match="item 000000000011: objects is not a JSON list"):
        item_masks(bad, Path("."), 64, 64, "test")


def test_drop_mask_counts_the_objects_left(toy_items):
    """The removal comes before the count: 11 has 3 objects, 2 after the removal, so with
    max_objects 2 drop_mask keeps it and drop_image drops it at n_objects (before masks)."""
    kept, counts = filter_region_subset(toy_items, max_objects=2, small_masks="drop_mask")
    assert 11 in kept_ids(kept)
    kept, counts = filter_region_subset(toy_items, max_objects=2, small_masks="drop_image")
    assert 11 not in kept_ids(kept) and other_reading(counts)[1] == len(kept) + 1


def test_persons_drop_the_image_in_both_readings(toy_items):
    """Only the mask-size rule changes with small_masks: image 3 (a person beside two
    other objects, all >= 5%) is dropped at no_excluded either way."""
    for reading in ("drop_image", "drop_mask"):
        kept, counts = filter_region_subset(toy_items, small_masks=reading)
        assert 3 not in kept_ids(kept)
        assert counts.set_index("step").loc["no_excluded", "images_dropped"] == 1


def test_switched_off_steps_keep_their_rows(toy_items):
    _, counts = filter_region_subset(toy_items, exclude_categories=[], voc_only=False)
    assert counts["step"].tolist() == [step for step, _, _ in EXPECTED_COUNTS] + ["other_reading"]
    by_step = counts.set_index("step")
    assert by_step.loc["no_excluded", "images_dropped"] == 0 == by_step.loc["voc_only", "images_dropped"]
    assert "none given" in by_step.loc["no_excluded", "description"]
    assert "not applied" in by_step.loc["voc_only", "description"]


def test_crowd_annotation_is_uncompressed_rle(toy_root, toy_items):
    data = json.loads((toy_root / "annotations/instances_val2017.json").read_text())
    crowd = [a for a in data["annotations"] if a["iscrowd"]]
    assert len(crowd) == 1 and crowd[0]["image_id"] == 8
    assert isinstance(crowd[0]["segmentation"]["counts"], list) and crowd[0]["segmentation"]["size"] == [64, 64]
    masks = coco_object_masks(toy_items.loc[7, "annotation_file"], 8)
    assert masks[-1][1].sum() == crowd[0]["area"]


def test_first_six_toy_images_are_unchanged(toy_root, tmp_path):
    small = make_toy_coco(tmp_path / "small", n_images=6)
    old = json.loads((small / "annotations/instances_val2017.json").read_text())
    new = json.loads((toy_root / "annotations/instances_val2017.json").read_text())
    assert new["images"][:6] == old["images"]
    assert new["annotations"][:len(old["annotations"])] == old["annotations"]
    for k in range(1, 7):
        name = f"val2017/{k:012d}.jpg"
        assert (small / name).read_bytes() == (toy_root / name).read_bytes()
    kept, counts = filter_region_subset(read_coco(small))  # the default toy set: 3 of 6 pass
    assert kept_ids(kept) == [1, 2, 6] and counts["images_remaining"].tolist() == [6, 6, 6, 5, 5, 4, 3, 3]


# --- the 5% boundary, on constructed annotations ----------------------------------------------

def write_coco(root: Path, objects_per_image: list[list[tuple[str, int, float]]], side: int = 20) -> Path:
    """A COCO layout with side x side images; each object (category, pixel count, area
    field) is a mask of its first `pixels` pixels in row-major order, as compressed RLE."""
    from pycocotools import mask as mask_utils

    from ctrlbench.data.coco import COCO_CATEGORIES

    ids = {name: cid for cid, name, _ in COCO_CATEGORIES}
    images, annotations = [], []
    (root / "val2017").mkdir(parents=True)
    for image_id, objects in enumerate(objects_per_image, start=1):
        Image.new("RGB", (side, side)).save(root / "val2017" / f"{image_id:012d}.jpg")
        images.append({"id": image_id, "file_name": f"{image_id:012d}.jpg", "width": side, "height": side})
        for k, (category, pixels, area) in enumerate(objects):
            mask = np.zeros(side * side, np.uint8)
            mask[:pixels] = 1
            rle = mask_utils.encode(np.asfortranarray(mask.reshape(side, side)))
            rle["counts"] = rle["counts"].decode("ascii")
            annotations.append({"id": image_id * 10 + k, "image_id": image_id, "category_id": ids[category],
                                "segmentation": rle, "area": area, "bbox": [0, 0, side, side], "iscrowd": 0})
    categories = [{"id": cid, "name": name, "supercategory": sup} for cid, name, sup in COCO_CATEGORIES]
    (root / "annotations").mkdir()
    (root / "annotations/instances_val2017.json").write_text(json.dumps(
        {"images": images, "annotations": annotations, "categories": categories}))
    return root


def test_mask_fraction_boundary_uses_the_mask_not_the_area_field(tmp_path):
    # 20 x 20 = 400 pixels: 20 pixels are exactly 5%, 19 are not. The area fields lie
    # the other way round, so passing them through would flip both results.
    root = write_coco(tmp_path / "coco", [
        [("dog", 200, 200.0), ("cat", 20, 19.4)],    # exactly 5%: kept
        [("dog", 200, 200.0), ("cat", 19, 20.6)],    # just under: dropped
    ])
    items = read_coco(root)
    assert mask_fractions(items.loc[0, "annotation_file"], 1, [11]) == [0.05]
    assert mask_fractions(items.loc[1, "annotation_file"], "000000000002", [21]) == [0.0475]
    kept, counts = filter_region_subset(items)
    assert kept_ids(kept) == [1]
    assert counts.set_index("step").loc["mask_fraction", "images_dropped"] == 1
    kept, _ = filter_region_subset(items, min_mask_fraction=0.0475)
    assert kept_ids(kept) == [1, 2]
    # drop_mask: the 19-pixel cat goes, the dog alone is too few; with min_objects 1 it stays
    kept, _ = filter_region_subset(items, small_masks="drop_mask", min_objects=1)
    assert kept_ids(kept) == [1, 2] and [o["category"] for o in json.loads(kept["objects"].iloc[1])] == ["dog"]


def test_masks_are_computed_only_for_images_left_by_the_category_steps(toy_items, monkeypatch):
    import ctrlbench.data.coco_regions as regions

    asked = []
    real = regions.mask_fractions

    def counting(annotation_file, image_id, ann_ids):
        asked.append(int(image_id))
        return real(annotation_file, image_id, ann_ids)

    monkeypatch.setattr(regions, "mask_fractions", counting)
    filter_region_subset(toy_items)
    # after voc_only (both readings need them), once each; not 3, 7, 8, 10
    assert sorted(asked) == [1, 2, 4, 5, 6, 9, 11]


def test_empty_items_table(toy_items):
    kept, counts = filter_region_subset(toy_items.iloc[:0])
    assert kept.empty and counts["images_remaining"].tolist() == [0] * 8


@pytest.mark.parametrize("kwargs, message", [
    ({"min_objects": 0}, "min_objects must be a positive integer"),
    ({"min_objects": 3, "max_objects": 2}, "max_objects .2. is below min_objects .3."),
    ({"min_mask_fraction": 1.5}, r"min_mask_fraction must be a number in \[0, 1\]"),
    ({"exclude_categories": ["persons"]}, r"\['persons'\] are not COCO category names"),
    ({"voc_only": "yes"}, "voc_only must be true or false"),
    ({"small_masks": "drop"}, "small_masks must be one of drop_image, drop_mask, got 'drop'"),
])
def test_bad_arguments(toy_items, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        filter_region_subset(toy_items, **kwargs)


def test_a_single_category_name_is_not_split_into_letters(toy_items):
    kept, _ = filter_region_subset(toy_items, exclude_categories="person")
    assert kept_ids(kept) == [1, 2, 6]


def test_items_without_coco_columns(toy_items):
    with pytest.raises(DatasetError, match="needs COCO items"):
        filter_region_subset(toy_items.drop(columns=["objects"]))


# --- prepare_items --------------------------------------------------------------------------------

def test_prepare_items_with_the_region_filter(toy_root, tmp_path):
    out = tmp_path / "data"
    prepare_items("coco", str(toy_root), "val", str(out / "items.csv"), str(out / "shards"), 2,
                  region_filter={}, counts_csv=str(out / "counts.csv"))
    items = pd.read_csv(out / "items.csv", dtype={"item_id": str})
    assert items["item_id"].tolist() == [IDS[1], IDS[2], IDS[6]]
    counts = pd.read_csv(out / "counts.csv")
    assert steps(counts) == EXPECTED_COUNTS and other_reading(counts)[1:] == (4, 7)
    shard_ids = sorted(pd.concat([pd.read_csv(p, dtype={"item_id": str}) for p in (out / "shards").glob("*.csv")])
                       ["item_id"])
    assert shard_ids == items["item_id"].tolist()
    assert os.stat(out / "counts.csv").st_mtime_ns <= os.stat(out / "items.csv").st_mtime_ns

    # settings and max_items: the filter first, then the first ids
    prepare_items("coco", str(toy_root), "val", str(out / "items.csv"), str(out / "shards"), 2, max_items=2,
                  region_filter={"min_objects": 1, "exclude_categories": []}, counts_csv=str(out / "counts.csv"))
    assert pd.read_csv(out / "items.csv", dtype={"item_id": str})["item_id"].tolist() == [IDS[1], IDS[2]]
    counts = pd.read_csv(out / "counts.csv")
    # max_items follows the applied steps; the other reading's total (no max_items) stays last
    assert counts["step"].tolist()[-2:] == ["max_items", "other_reading"]
    # 1, 2, 3, 6, 9 pass and the first 2 remain; drop_mask would also keep 4 and 11 (tiny objects gone)
    assert counts["images_remaining"].tolist()[-3:] == [5, 2, 7]
    assert steps(counts)[-1] == ("max_items", 2, 3)


def test_prepare_items_drop_mask_writes_the_objects_left(toy_root, tmp_path):
    out = tmp_path / "data"
    prepare_items("coco", str(toy_root), "val", str(out / "items.csv"), str(out / "shards"), 1,
                  region_filter={"small_masks": "drop_mask"}, counts_csv=str(out / "counts.csv"))
    items = pd.read_csv(out / "items.csv", dtype={"item_id": str}, keep_default_na=False).set_index("item_id")
    assert items.index.tolist() == [IDS[1], IDS[2], IDS[6], IDS[11]]
    assert [o["area_fraction"] >= 0.05 for o in json.loads(items.loc[IDS[11], "objects"])] == [True, True]
    counts = pd.read_csv(out / "counts.csv")
    assert steps(counts) == DROP_MASK_COUNTS and other_reading(counts)[1:] == (3, 8)


def test_prepare_items_without_a_filter_keeps_its_old_signature(toy_root, tmp_path):
    out = tmp_path / "data"
    prepare_items("coco", str(toy_root), "val", str(out / "items.csv"), str(out / "shards"), 1, 0)
    assert len(pd.read_csv(out / "items.csv")) == N_TOY and not (out / "counts.csv").exists()
    prepare_items("coco", str(toy_root), "val", str(out / "items.csv"), str(out / "shards"), 1,
                  counts_csv=str(out / "counts.csv"))
    counts = pd.read_csv(out / "counts.csv")
    assert counts.to_dict("records") == [
        {"step": "all", "description": "all items", "images_remaining": N_TOY, "images_dropped": 0, "applied": True}]


@pytest.mark.parametrize("fmt, region_filter, message", [
    ("cub", {}, "COCO datasets only"),
    ("coco", {"min_object": 2}, r"unknown key\(s\) \['min_object'\]"),
    ("coco", {"max_objects": 0}, "max_objects must be a positive integer"),
    ("coco", {"small_masks": "keep"}, "small_masks must be one of"),
])
def test_prepare_items_rejects_bad_region_filters(toy_root, tmp_path, fmt, region_filter, message):
    out = tmp_path / "data"
    with pytest.raises(ConfigError, match=message):
        prepare_items(fmt, str(toy_root), "val", str(out / "items.csv"), str(out / "shards"), 1,
                      region_filter=region_filter, counts_csv=str(out / "counts.csv"))
    assert not (out / "items.csv").exists() and not (out / "counts.csv").exists()
