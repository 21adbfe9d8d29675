"""Toy-world datasets (ctrlbench.toyworld.formats): each format read back by the workflow's
own reader matches the scenes it was written from; writes are deterministic; the config
keys are validated; a dataset with root: toyworld is built by the toyworld_data rule."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from ctrlbench import config as cb_config
from ctrlbench.data.coco import coco_object_masks
from ctrlbench.data.coco_regions import filter_region_subset
from ctrlbench.data.readers import read_dataset
from ctrlbench.errors import ConfigError, DatasetError
from ctrlbench.methods.regions import item_masks
from ctrlbench.toyworld import DATASET_FORMATS, TRAINING_SEEDS, formats, scenes

from conftest import ROOT, dry_run

SEED, SIZE = 1000, 32
SMALL = {"coco": {"n_images": 8}, "cub": {"n_classes": 4, "train_per_class": 2, "test_per_class": 1},
         "strokes": {"n_images": 3}, "paraprompts": {"n_prompts": 3, "min_objects": 3}, "prompts": {"n_prompts": 4}}


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def pixels(path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("toyworld")
    return {fmt: formats.make_toyworld(fmt, base / fmt, image_size=SIZE, seed=SEED, **SMALL[fmt])
            for fmt in DATASET_FORMATS}


def scene_of(item_id: str) -> scenes.Scene:
    """The scene an item id names: its number is the world index + 1 in every format."""
    return scenes.scene_for(SEED, int(re.search(r"(\d+)$", item_id).group(1)) - 1)


# --- read back by the real readers --------------------------------------------------------------

def test_coco_holds_every_scene_with_shape_categories_and_exact_masks(world):
    items = read_dataset("coco", world["coco"])
    assert list(items["item_id"]) == [f"{n:012d}" for n in range(1, 9)]
    instances = json.loads((world["coco"] / "annotations" / "instances_val2017.json").read_text())
    assert [(c["id"], c["name"], c["supercategory"]) for c in instances["categories"]] == \
        [(i + 1, shape, "shape") for i, shape in enumerate(scenes.SHAPES)]
    for item in items.itertuples():
        scene = scene_of(item.item_id)
        objects = json.loads(item.objects)
        masks = scenes.instance_masks(scene, SIZE)
        assert [o["category"] for o in objects] == [obj.shape for obj in scene.objects]
        read = coco_object_masks(item.annotation_file, item.item_id)
        assert [name for name, _ in read] == [obj.shape for obj in scene.objects]
        for (_, mask), expected, obj in zip(read, masks, objects):
            assert np.array_equal(mask, expected)
            ys, xs = np.nonzero(expected)
            assert obj["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
            assert obj["area_fraction"] == round(expected.sum() / SIZE ** 2, 6)
        captions = json.loads(item.captions)
        assert captions[0] == scene.caption() and len(set(captions)) == formats.COCO_CAPTIONS
        assert np.array_equal(pixels(item.image), np.asarray(scenes.render(scene, SIZE)))


def test_coco_region_subset_needs_voc_only_false(world):
    items = read_dataset("coco", world["coco"])
    kept, counts = filter_region_subset(items, voc_only=False, exclude_categories=[], min_mask_fraction=0.01)
    expected = [item_id for item_id in items["item_id"] if 2 <= len(scene_of(item_id).objects) <= 4]
    assert list(kept["item_id"]) == expected and 0 < len(expected) < len(items)
    _, counts = filter_region_subset(items)  # the default keeps VOC classes only: no shape is one
    assert counts.set_index("step").at["voc_only", "images_remaining"] == 0


def test_region_targets_named_by_category_are_the_scene_masks_united_by_shape(world):
    for row in read_dataset("coco", world["coco"]).to_dict("records"):
        scene = scene_of(row["item_id"])
        expected = {}
        for obj, mask in zip(scene.objects, scenes.instance_masks(scene, SIZE)):
            expected[obj.shape] = expected.get(obj.shape, False) | mask
        masks = item_masks(pd.Series(row), world["coco"], SIZE, SIZE, "MultiDiffusion", "categories")
        assert masks.keys() == expected.keys()
        assert all(np.array_equal(masks[shape], expected[shape]) for shape in expected)


def test_cub_items_are_one_object_scenes_classed_by_shape_and_colour(world):
    train, test = (read_dataset("cub", world["cub"], split) for split in ("train", "test"))
    for split, count in ((train, 2), (test, 1)):
        assert split["class_id"].value_counts().to_dict() == {class_id: count for class_id in range(1, 5)}
    assert not set(train["item_id"]) & set(test["item_id"])
    assert formats.cub_folder(1) == "001.Red_Circle" and formats.cub_folder(30) == "030.Orange_Cross"
    for item in [*train.itertuples(), *test.itertuples()]:
        scene = scene_of(item.item_id)
        assert item.image_id == int(item.item_id.rsplit("_", 1)[1]) and len(scene.objects) == 1
        obj = scene.objects[0]
        assert item.class_name == f"{obj.color.capitalize()} {obj.shape.capitalize()}"
        assert json.loads(item.attributes) == [f"has_shape::{obj.shape}", f"has_color::{obj.color}",
                                               f"has_size::{obj.size}", f"has_background::{scene.background}"]
        assert sorted(set(item.attribute_vector.split(","))) == ["0", "1"]  # certainty 4: nothing hidden
        captions = json.loads(item.captions)
        assert captions[0] == scene.caption() and len(set(captions)) == formats.CUB_CAPTIONS
        assert np.array_equal(pixels(item.image), np.asarray(scenes.render(scene, SIZE)))
    names = (world["cub"] / "attributes.txt").read_text().split("\n")
    assert names[:2] == ["1 has_shape::circle", "2 has_shape::square"] and "has_color::red" in names[5]


def test_cub_growth_keeps_existing_items(world, tmp_path):
    big = formats.make_toyworld_cub(tmp_path / "big", n_classes=5, train_per_class=3, test_per_class=2,
                                    image_size=SIZE, seed=SEED)
    small_files, big_files = tree_bytes(world["cub"]), tree_bytes(big)
    images = [name for name in small_files if name.startswith(("CUB_200_2011/images/", "text_c10/"))]
    assert images and all(big_files[name] == small_files[name] for name in images)
    assert len([name for name in big_files if name.startswith("CUB_200_2011/images/")]) == 5 * (3 + 2)
    for name in ("images.txt", "train_test_split.txt", "image_class_labels.txt"):
        old, new = (set((root / "CUB_200_2011" / name).read_text().splitlines()) for root in (world["cub"], big))
        assert old < new, name


def test_strokes_pair_each_painting_with_its_caption_real_scene_and_masks(world):
    items = read_dataset("strokes", world["strokes"])
    assert list(items["item_id"]) == ["scene_000001", "scene_000002", "scene_000003"]
    table = pd.read_csv(world["strokes"] / "prompts.csv", dtype=str, keep_default_na=False)
    for item, row in zip(items.itertuples(), table.itertuples()):
        scene, index = scene_of(item.item_id), int(row.world_index)
        assert (index, int(row.world_seed)) == (int(item.item_id[-6:]) - 1, SEED)
        assert item.prompt == scene.caption()
        assert np.array_equal(pixels(item.image), np.asarray(scenes.stroke_painting(scene, SIZE, seed=index)))
        assert np.array_equal(pixels(world["strokes"] / row.real_image), np.asarray(scenes.render(scene, SIZE)))
        labels = pixels(world["strokes"] / row.masks)
        masks = scenes.instance_masks(scene, SIZE)
        assert labels.max() == len(masks)
        assert all(np.array_equal(labels == k + 1, mask) for k, mask in enumerate(masks))
        assert json.loads(row.objects) == [{"shape": o.shape, "color": o.color, "size": o.size} for o in scene.objects]


def test_paraprompts_are_the_paragraphs_of_scenes_with_enough_objects(world):
    items = read_dataset("paraprompts", world["paraprompts"])
    wanted = [index for index in range(200) if len(scenes.scene_for(SEED, index).objects) >= 3][:3]
    assert list(items["item_id"]) == [formats.scene_name(index) for index in wanted]
    for item in items.itertuples():
        scene = scene_of(item.item_id)
        assert json.loads(item.captions) == [scene.paragraph()]
        assert item.category == {3: "three shapes", 4: "four shapes"}[len(scene.objects)]


def test_prompts_are_the_objects_of_each_scene_without_background(world):
    items = read_dataset("prompts", world["prompts"])  # items are keyed by a hash of the prompt
    prompts = sorted(json.loads(captions)[0] for captions in items["captions"])
    wanted = [scenes.scene_for(SEED, index) for index in range(4)]
    assert prompts == sorted(formats.objects_prompt(scene) for scene in wanted)
    for scene in wanted:
        prompt = formats.objects_prompt(scene)
        assert "background" not in prompt and scene.caption().startswith(prompt)
        assert all(o.name in prompt for o in scene.objects)


# --- determinism and errors ---------------------------------------------------------------------

@pytest.mark.parametrize("fmt", DATASET_FORMATS)
def test_writes_are_byte_identical_and_follow_the_seed(fmt, world, tmp_path):
    again = formats.make_toyworld(fmt, tmp_path / "again", image_size=SIZE, seed=SEED, **SMALL[fmt])
    assert tree_bytes(again) == tree_bytes(world[fmt])
    other = tree_bytes(formats.make_toyworld(fmt, tmp_path / "other", image_size=SIZE, seed=SEED + 1, **SMALL[fmt]))
    assert other != tree_bytes(world[fmt])


@pytest.mark.parametrize("fmt, kwargs, fragment", [
    ("cub", {"n_classes": 31}, "n_classes"), ("coco", {"seed": -1}, "seed"), ("strokes", {"image_size": 8}, "image_size"),
    ("paraprompts", {"min_objects": 5}, "min_objects"), ("prompts", {"n_prompts": 0}, "n_prompts"),
])
def test_bad_arguments_are_rejected_before_writing(fmt, kwargs, fragment, tmp_path):
    with pytest.raises(ValueError, match=fragment):
        formats.make_toyworld(fmt, tmp_path / "out", **kwargs)
    assert not any(tmp_path.iterdir())


def test_unknown_format_names_the_formats(tmp_path):
    with pytest.raises(DatasetError, match="coco, cub, strokes, paraprompts, prompts"):
        formats.make_toyworld("flowers", tmp_path / "x")


def test_training_seeds_are_the_worlds_train_py_draws():
    source = (ROOT / "ctrlbench" / "toyworld" / "train.py").read_text()
    from ctrlbench.toyworld.train import TRAIN_SEED

    # The VAE and SD draw scene_batch's default world, TRAIN_SEED; CLIP, the segmenter and the
    # ControlNet draw TRAIN_SEED + k.
    offsets = {int(k) for k in re.findall(r"TRAIN_SEED \+ (\d+)", source)}
    assert set(TRAINING_SEEDS) == {TRAIN_SEED, *(TRAIN_SEED + k for k in offsets)}


# --- config and workflow ---------------------------------------------------------------------------

def with_toyworld(config: dict, **toyworld) -> dict:
    config["toyworld"] = toyworld
    config["datasets"]["shapes"] = {"format": "coco", "root": "toyworld", "split": "val", "target_classes": "categories",
                                    "region_filter": {"voc_only": False, "exclude_categories": []}}
    return config


def test_toyworld_defaults_are_filled(default_config):
    config = cb_config.validate(with_toyworld(default_config, cub={"n_classes": 3}))
    assert config["toyworld"]["seed"] not in TRAINING_SEEDS
    assert config["toyworld"]["cub"] == {"n_classes": 3, "train_per_class": 2, "test_per_class": 2}
    assert config["toyworld"]["coco"] == {"n_images": 16}


@pytest.mark.parametrize("toyworld, fragment", [
    ({"seed": 1}, "toyworld.seed: 1 is a world the toy models were trained on"),
    ({"seed": -3}, "toyworld.seed"),
    ({"cub": {"n_classes": 31}}, "toyworld.cub.n_classes"),
    ({"coco": {"n_image": 4}}, "n_image"),
    ({"paraprompts": {"min_objects": 0}}, "toyworld.paraprompts.min_objects"),
    ({"flowers": {"n_classes": 2}}, "flowers"),
])
def test_bad_toyworld_keys_are_named(default_config, toyworld, fragment):
    with pytest.raises(ConfigError, match=re.escape(fragment)):
        cb_config.validate(with_toyworld(default_config, **toyworld))


def test_toyworld_root_needs_a_format_the_world_is_written_in(default_config):
    default_config["datasets"]["flowers"]["root"] = "toyworld"
    with pytest.raises(ConfigError, match="datasets.flowers: the toy world .* not flowers"):
        cb_config.validate(default_config)


def test_the_toyworld_data_rule_builds_toyworld_roots(default_config, tmp_path):
    config = with_toyworld(default_config, seed=7, coco={"n_images": 3})
    result = dry_run(tmp_path, config, ["results/data/shapes/items.csv"])
    assert result.returncode == 0, result.stderr
    planned = result.stdout
    assert re.search(r"rule toyworld_data:\n\s+output: results/toyworld/coco\n", planned)
    assert "input: results/toyworld/coco" in planned and "toy_data" not in planned
