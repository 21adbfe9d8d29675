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
from ctrlbench.errors import ConfigError, DatasetError

# pycocotools' decode trips a numpy 2 deprecation warning that is not ours to fix
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:pycocotools")

N_TOY = 10  # the toy scenes, one of each: every filter step drops at least one image
IDS = {k: f"{k:012d}" for k in range(1, N_TOY + 1)}
EXPECTED_COUNTS = [
    ("all", 10, 0),
    ("annotated", 9, 1),       # 10: no objects
    ("no_crowd", 8, 1),        # 8: a crowd annotation
    ("no_excluded", 7, 1),     # 3: a person
    ("voc_only", 6, 1),        # 7: a truck or elephant
    ("n_objects", 4, 2),       # 5: five objects, 9: one object
    ("mask_fraction", 3, 1),   # 4: a tiny object
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

def test_toy_counts_per_step_and_kept_items(toy_items):
    kept, counts = filter_region_subset(toy_items)
    assert list(counts.columns) == list(COUNT_COLUMNS)
    assert list(counts[["step", "images_remaining", "images_dropped"]].itertuples(index=False, name=None)) \
        == EXPECTED_COUNTS
    assert counts["description"].tolist() == [
        "all images", "at least one annotation", "no crowd annotation (iscrowd=1)", "no object of person",
        "every object of a Pascal VOC class", "2-4 objects", "every object mask >= 5% of the image"]
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


@pytest.mark.parametrize("change, also_kept", [
    ({"exclude_categories": ()}, [3]),              # the person image is otherwise fine
    ({"voc_only": False}, [7]),                    # so is the truck / elephant image
    ({"max_objects": 5}, [5]),
    ({"min_objects": 1}, [9]),
    ({"min_mask_fraction": 0.005}, [4]),           # its tiny object covers ~0.9%
])
def test_each_reason_alone_drops_its_image(toy_items, change, also_kept):
    kept, counts = filter_region_subset(toy_items, **change)
    assert kept_ids(kept) == sorted([1, 2, 6] + also_kept)
    assert counts["images_remaining"].iloc[-1] == len(kept)
    assert (counts["images_dropped"] == counts["images_remaining"].shift(1, fill_value=10)
            - counts["images_remaining"]).all()


def test_switched_off_steps_keep_their_rows(toy_items):
    _, counts = filter_region_subset(toy_items, exclude_categories=[], voc_only=False)
    assert counts["step"].tolist() == [step for step, _, _ in EXPECTED_COUNTS]
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
    assert kept_ids(kept) == [1, 2, 6] and counts["images_remaining"].tolist() == [6, 6, 6, 5, 5, 4, 3]


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


def test_masks_are_computed_only_for_images_left_by_the_cheap_steps(toy_items, monkeypatch):
    import ctrlbench.data.coco_regions as regions

    asked = []
    real = regions.mask_fractions

    def counting(annotation_file, image_id, ann_ids):
        asked.append(int(image_id))
        return real(annotation_file, image_id, ann_ids)

    monkeypatch.setattr(regions, "mask_fractions", counting)
    filter_region_subset(toy_items)
    assert sorted(asked) == [1, 2, 4, 6]


def test_empty_items_table(toy_items):
    kept, counts = filter_region_subset(toy_items.iloc[:0])
    assert kept.empty and counts["images_remaining"].tolist() == [0] * 7


@pytest.mark.parametrize("kwargs, message", [
    ({"min_objects": 0}, "min_objects must be a positive integer"),
    ({"min_objects": 3, "max_objects": 2}, "max_objects .2. is below min_objects .3."),
    ({"min_mask_fraction": 1.5}, r"min_mask_fraction must be a number in \[0, 1\]"),
    ({"exclude_categories": ["persons"]}, r"\['persons'\] are not COCO category names"),
    ({"voc_only": "yes"}, "voc_only must be true or false"),
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
    assert list(counts[["step", "images_remaining", "images_dropped"]].itertuples(index=False, name=None)) \
        == EXPECTED_COUNTS
    shard_ids = sorted(pd.concat([pd.read_csv(p, dtype={"item_id": str}) for p in (out / "shards").glob("*.csv")])
                       ["item_id"])
    assert shard_ids == items["item_id"].tolist()
    assert os.stat(out / "counts.csv").st_mtime_ns <= os.stat(out / "items.csv").st_mtime_ns

    # settings and max_items: the filter first, then the first ids
    prepare_items("coco", str(toy_root), "val", str(out / "items.csv"), str(out / "shards"), 2, max_items=2,
                  region_filter={"min_objects": 1, "exclude_categories": []}, counts_csv=str(out / "counts.csv"))
    assert pd.read_csv(out / "items.csv", dtype={"item_id": str})["item_id"].tolist() == [IDS[1], IDS[2]]
    counts = pd.read_csv(out / "counts.csv")
    assert counts["step"].tolist()[-1] == "max_items"
    assert counts["images_remaining"].tolist()[-2:] == [5, 2]  # 1, 2, 3, 6, 9 pass; the first 2 remain


def test_prepare_items_without_a_filter_keeps_its_old_signature(toy_root, tmp_path):
    out = tmp_path / "data"
    prepare_items("coco", str(toy_root), "val", str(out / "items.csv"), str(out / "shards"), 1, 0)
    assert len(pd.read_csv(out / "items.csv")) == N_TOY and not (out / "counts.csv").exists()
    prepare_items("coco", str(toy_root), "val", str(out / "items.csv"), str(out / "shards"), 1,
                  counts_csv=str(out / "counts.csv"))
    counts = pd.read_csv(out / "counts.csv")
    assert counts.to_dict("records") == [
        {"step": "all", "description": "all items", "images_remaining": N_TOY, "images_dropped": 0}]


@pytest.mark.parametrize("fmt, region_filter, message", [
    ("cub", {}, "COCO datasets only"),
    ("coco", {"min_object": 2}, r"unknown key\(s\) \['min_object'\]"),
    ("coco", {"max_objects": 0}, "max_objects must be a positive integer"),
])
def test_prepare_items_rejects_bad_region_filters(toy_root, tmp_path, fmt, region_filter, message):
    out = tmp_path / "data"
    with pytest.raises(ConfigError, match=message):
        prepare_items(fmt, str(toy_root), "val", str(out / "items.csv"), str(out / "shards"), 1,
                      region_filter=region_filter, counts_csv=str(out / "counts.csv"))
    assert not (out / "items.csv").exists() and not (out / "counts.csv").exists()
