"""A segmenter's class vocabulary end to end, on a vocabulary that is not Pascal VOC: the toy
world's (background + five shapes). The region methods run on COCO items whose categories
are shape names (datasets.<name>.target_classes: categories), IoU and TCIG's loss map the
classes to channels through the segmenter's vocabulary, and a class the segmenter lacks is
a clear error (models/vocabulary.py, methods/regions.py, docs/metrics.md)."""

import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from torch import nn

from ctrlbench import config as cb_config
from ctrlbench.data.coco import coco_object_masks, read_coco
from ctrlbench.errors import ConfigError, InputError
from ctrlbench.methods import bld, multidiffusion as md, regions, tcig
from ctrlbench.methods.registry import MULTIDIFFUSION_REGIONS_DEFAULTS, REGION_BASELINE_DEFAULTS, TCIG_DEFAULTS
from ctrlbench.methods.segmentation import VOC, model_vocabulary, segment_probs, voc_index
from ctrlbench.metrics import iou as iou_metric
from ctrlbench.models import vocabulary
from ctrlbench.models.loaders import DEEPLAB_JSON, load_model
from ctrlbench.models.toy_fcn import ToyFCN
from ctrlbench.toyworld.scenes import SHAPES

SIZE = 64
CLASSES = ("background", *SHAPES)  # the toy world's segmenter: channel k is CLASSES[k]


def write_segmenter(folder, classes=CLASSES, num_classes=None) -> str:
    """A toy_fcn segmenter folder as the toy world saves it (random weights)."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = ToyFCN(num_classes or len(classes))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))
    spec = {"builder": "toy_fcn", "num_classes": num_classes or len(classes)}
    if classes is not None:
        spec["classes"] = list(classes)
    (folder / DEEPLAB_JSON).write_text(json.dumps(spec))
    return str(folder)


def polygon(top, left, bottom, right) -> list[list[float]]:
    return [[left, top, right, top, right, bottom, left, bottom]]


def write_shape_coco(root) -> str:
    """COCO 2017 layout whose categories are the toy shapes: image 1 holds a square and a
    circle (listed in that order), image 2 a triangle."""
    (root / "val2017").mkdir(parents=True)
    (root / "annotations").mkdir()
    images, annotations = [], []
    objects = {1: [("square", (8, 8, 32, 32)), ("circle", (36, 36, 60, 60))], 2: [("triangle", (16, 16, 48, 48))]}
    for image_id, shapes in objects.items():
        name = f"{image_id:012d}.png"
        Image.new("RGB", (SIZE, SIZE), (125, 125, 125)).save(root / "val2017" / name)
        images.append({"id": image_id, "file_name": name, "width": SIZE, "height": SIZE})
        for shape, (top, left, bottom, right) in shapes:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                                "category_id": SHAPES.index(shape) + 1,
                                "segmentation": polygon(top, left, bottom, right), "iscrowd": 0,
                                "bbox": [left, top, right - left, bottom - top],
                                "area": float((right - left) * (bottom - top))})
    categories = [{"id": k + 1, "name": shape, "supercategory": "shape"} for k, shape in enumerate(SHAPES)]
    (root / "annotations" / "instances_val2017.json").write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return str(root)


@pytest.fixture(scope="module")
def shapes_csv(tmp_path_factory):
    """The region input table of the shape items (as the caption-prompts shard has it)."""
    folder = tmp_path_factory.mktemp("shape_coco")
    items = read_coco(write_shape_coco(folder / "coco"), "val")
    items["prompt"] = "shapes on a gray background"
    items.to_csv(folder / "items.csv", index=False)
    return str(folder / "items.csv")


@pytest.fixture(scope="module")
def config(tiny_config, tmp_path_factory):
    config = tiny_config("vocabulary_results", {"sd": "sd", "clip": "open_clip"})
    toyseg = write_segmenter(tmp_path_factory.mktemp("toyseg") / "segmenter")
    # deeplab: a tiny VOC segmenter, never built: its vocabulary is known without it
    models = {**config["models"], "toyseg": {"kind": "deeplabv3", "source": toyseg},
              "deeplab": {"kind": "deeplabv3", "source": "tiny"}}
    return {**config, "models": models}


class StubSegmenter(nn.Module):
    """Fixed logits, whatever the image: one-hot of `labels` (a channel map [H, W]) at any
    batch size, or `per_channel` constants; `class_names` is its vocabulary."""

    def __init__(self, class_names, labels=None, per_channel=None):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))  # segment_probs reads device and dtype from it
        self.class_names = tuple(class_names)
        self.labels = None if labels is None else torch.from_numpy(labels)
        self.per_channel = per_channel

    def forward(self, x):
        n, _, height, width = x.shape
        if self.labels is not None:
            logits = nn.functional.one_hot(self.labels, len(self.class_names)).permute(2, 0, 1).float() * 10.0
        else:
            logits = torch.tensor(self.per_channel).view(-1, 1, 1).expand(-1, height, width)
        return {"out": logits.unsqueeze(0).expand(n, -1, -1, -1) + self.weight}


def box(top, left, bottom, right, size=(16, 16)) -> np.ndarray:
    mask = np.zeros(size, bool)
    mask[top:bottom, left:right] = True
    return mask


# --- the vocabulary --------------------------------------------------------------------------

def test_voc_vocabulary_keeps_the_voc_names_and_aliases():
    assert VOC.names == vocabulary.VOC_CLASSES and len(VOC.names) == 21
    assert VOC.index("tv") == VOC.index("tvmonitor") == VOC.index("20") == voc_index(20) == 20
    assert VOC.canonical("dining table") == "diningtable" and VOC.index("Background") == 0
    assert "circle" not in VOC and "dog" in VOC
    with pytest.raises(KeyError, match="'truck' is not a class of VOC"):
        VOC.index("truck")


def test_a_folder_vocabulary_comes_from_its_json(tmp_path):
    spec = {"builder": "toy_fcn", "num_classes": 6, "classes": list(CLASSES)}
    toy = vocabulary.folder_vocabulary(spec, tmp_path / DEEPLAB_JSON)
    assert toy.names == CLASSES and toy.objects == SHAPES
    assert toy.index("Square") == 2 and toy.index("bg") == 0 and "dog" not in toy
    # without `classes`, only a 21-class segmenter is VOC (the tiny stand-in)
    assert vocabulary.folder_vocabulary({"builder": "x", "num_classes": 21}, "j") is VOC
    with pytest.raises(ValueError, match="num_classes is 6, so it needs 'classes'"):
        vocabulary.folder_vocabulary({"builder": "toy_fcn", "num_classes": 6}, "j")
    with pytest.raises(ValueError, match=r"'classes' must list num_classes \(7\) names"):
        vocabulary.folder_vocabulary({**spec, "num_classes": 7}, "j")
    with pytest.raises(ValueError, match=r"\['circle'\] appear more than once"):
        vocabulary.folder_vocabulary({**spec, "classes": ["background", "circle", "Circle", "a", "b", "c"]}, "j")


def test_the_loader_gives_the_folder_classes(config, tmp_path):
    model = load_model(config, "toyseg")
    assert isinstance(model, ToyFCN) and model.class_names == CLASSES
    assert model_vocabulary(model).names == CLASSES
    assert vocabulary.segmenter_vocabulary(config, "toyseg").names == CLASSES  # without loading weights
    assert vocabulary.segmenter_vocabulary(config, "deeplab") is VOC          # a tiny build is VOC
    probs = segment_probs(model, torch.rand(1, 3, 32, 32))
    assert probs.shape == (1, 6, 32, 32)
    bad = {**config, "models": {"bad": {"kind": "deeplabv3",
                                        "source": write_segmenter(tmp_path / "bad", classes=None, num_classes=6)}}}
    with pytest.raises(ConfigError, match="models.bad.source: .*num_classes is 6, so it needs 'classes'"):
        load_model(bad, "bad")


def test_segment_probs_refuses_a_vocabulary_of_another_size():
    stub = StubSegmenter(CLASSES[:4], per_channel=[0.0] * 6)
    with pytest.raises(ValueError, match="gives 6 classes, but its vocabulary .* has 4"):
        segment_probs(stub, torch.rand(1, 3, 8, 8))


# --- target masks named by the dataset's categories --------------------------------------------

def test_item_masks_name_the_categories(shapes_csv):
    items = regions.read_inputs(shapes_csv)
    row = items.iloc[0]
    masks = regions.item_masks(row, Path("."), SIZE, SIZE, "test", "categories")
    assert list(masks) == ["square", "circle"]  # the row's order; methods sort (class_order)
    expected = dict(coco_object_masks(row["annotation_file"], row["item_id"]))
    assert all(np.array_equal(masks[name], expected[name]) for name in masks)
    assert regions.class_order(masks, "categories") == ["circle", "square"]
    assert regions.class_label("circle", "categories") == "circle" and regions.class_label("tv") == "tv"
    # read as VOC targets, the shapes are no target at all
    with pytest.raises(InputError, match="item 000000000001: no object of a COCO category with a VOC class"):
        regions.item_masks(row, Path("."), SIZE, SIZE, "test", "voc")


def test_multidiffusion_regions_on_shape_items(config, shapes_csv, tmp_path):
    params = {**MULTIDIFFUSION_REGIONS_DEFAULTS, "height": SIZE, "width": SIZE, "window_size": 8, "stride": 4,
              "num_inference_steps": 2, "bootstrap_steps": 1, "n_backgrounds": 2,
              "region_prompt": "a photo of a {class}"}
    saved = md.run_regions_shard(config, "sd", shapes_csv, str(tmp_path / "md"), params, target_classes="categories")
    assert json.loads(saved["region_prompts"][0]) == ["a photo of a circle", "a photo of a square"]
    assert json.loads(saved["masks"][0]) == [{"class": "circle", "path": "masks/000000000001_circle.png"},
                                             {"class": "square", "path": "masks/000000000001_square.png"}]
    assert json.loads(saved["masks"][1]) == [{"class": "triangle", "path": "masks/000000000002_triangle.png"}]
    assert json.loads((tmp_path / "md" / "params.json").read_text())["target_classes"] == "categories"
    with pytest.raises(InputError, match="no object of a COCO category with a VOC class"):
        md.run_regions_shard(config, "sd", shapes_csv, str(tmp_path / "voc"), params)  # target_classes voc
    assert not (tmp_path / "voc").exists()


def test_bld_on_shape_items(config, shapes_csv, tmp_path):
    params = {**REGION_BASELINE_DEFAULTS, "height": SIZE, "width": SIZE, "num_inference_steps": 2,
              "region_prompt": "a {class}"}
    saved = bld.run_shard(config, "sd", shapes_csv, str(tmp_path / "bld"), params, target_classes="categories")
    assert json.loads(saved["region_prompts"][0]) == ["a circle", "a square"]  # edits in class order
    listed = json.loads(saved["masks"][0])
    masks = regions.load_manifest_masks(tmp_path / "bld", saved["masks"][0])
    assert [m["class"] for m in listed] == list(masks) == ["circle", "square"]
    assert (tmp_path / "bld" / "backgrounds" / "000000000002_00.png").is_file()


# --- TCIG: the mask loss reads the segmenter's channels by its vocabulary -------------------------

TCIG_PARAMS = {**TCIG_DEFAULTS, "height": SIZE, "width": SIZE, "iterations": 1, "cutouts": 2,
               "num_inference_steps": 2, "stage2_strength": 0.5, "cut_method": "original"}


def test_tcig_stage1_loss_uses_the_vocabulary_channels(config):
    pipe, clip = load_model(config, "sd"), load_model(config, "clip")
    logits = [0.0, 1.0, 2.0, 0.5, 0.0, -1.0]  # a constant probability per channel, whatever the image
    probs = torch.tensor(logits).softmax(0)
    circle = box(0, 0, 32, 64, (SIZE, SIZE))
    params = {**TCIG_PARAMS, "seg_weight": {"circle": 2.0, "default": 0.0}}

    def run(class_names):
        stub = StubSegmenter(class_names, per_channel=logits)
        _, history = tcig.stage1(pipe.vae, clip, stub, "a circle", {"circle": circle}, params, seed=0)
        return history[-1]

    last = run(CLASSES)  # circle is channel 1
    expected = float(((probs[1] - torch.from_numpy(circle).float()) ** 2).mean())
    assert last["seg_circle"] == pytest.approx(expected, rel=1e-5) and last["seg"] == pytest.approx(2 * expected)
    swapped = run(("background", "square", "circle", *SHAPES[2:]))  # now channel 2
    assert swapped["seg_circle"] == pytest.approx(float(((probs[2] - torch.from_numpy(circle).float()) ** 2).mean()))
    assert swapped["seg_circle"] != pytest.approx(last["seg_circle"])
    with pytest.raises(ValueError, match="target class 'hexagon' is not a class of the segmenter"):
        tcig.stage1(pipe.vae, clip, StubSegmenter(CLASSES, per_channel=logits), "x",
                    {"hexagon": circle}, params, seed=0)


def test_tcig_run_shard_on_shape_items_with_the_toy_segmenter(config, shapes_csv, tmp_path):
    out = tmp_path / "tcig"
    saved = tcig.run_shard(config, "sd", "clip", "toyseg", shapes_csv, str(out), TCIG_PARAMS,
                           target_classes="categories")
    assert [m["class"] for m in json.loads(saved["masks"][0])] == ["square", "circle"]
    history = pd.read_csv(out / "stage1" / "000000000001_00_loss.csv")
    assert {"seg_square", "seg_circle"} <= set(history.columns) and len(history) == 2
    assert json.loads((out / "params.json").read_text())["target_classes"] == "categories"


def test_tcig_refuses_targets_its_segmenter_lacks_before_loading(config, shapes_csv, tmp_path, monkeypatch):
    monkeypatch.setattr(tcig, "load_model", lambda *a, **k: pytest.fail("a model was loaded"))
    with pytest.raises(InputError, match="TCIG: target class 'circle' is not an object class of segmenter "
                                         "'deeplab' \\(VOC: aeroplane"):
        tcig.run_shard(config, "sd", "clip", "deeplab", shapes_csv, str(tmp_path / "out"), TCIG_PARAMS,
                       target_classes="categories")
    assert not (tmp_path / "out").exists()


# --- IoU per shape class, through the segmenter's vocabulary -------------------------------------

# circle predicted on the top half, square on the bottom-left quarter
LABELS = np.zeros((16, 16), np.int64)
LABELS[box(0, 0, 8, 16)] = 1
LABELS[box(8, 0, 16, 8)] = 2
TARGETS = {"circle": box(0, 0, 8, 16), "square": box(8, 0, 16, 16)}  # the square: the bottom half


def gray(size=16) -> Image.Image:
    return Image.new("RGB", (size, size), (128, 128, 128))


def test_iou_maps_class_names_to_the_vocabulary_channels():
    [score] = iou_metric.iou_scores(StubSegmenter(CLASSES, LABELS), [gray()], [TARGETS])
    assert score == {"iou": 0.75, "n_objects": 2, "per_class": {"circle": 1.0, "square": 0.5}}
    # the same logits under another channel order: circle is channel 2, square channel 1
    swapped = StubSegmenter(("background", "square", "circle", *SHAPES[2:]), LABELS)
    [score] = iou_metric.iou_scores(swapped, [gray()], [TARGETS])
    assert score == {"iou": 0.0, "n_objects": 2, "per_class": {"square": 0.0, "circle": 0.0}}
    with pytest.raises(ValueError, match="target class 'hexagon' is not a class of the segmenter"):
        iou_metric.iou_scores(StubSegmenter(CLASSES, LABELS), [gray()], [{"hexagon": TARGETS["circle"]}])
    with pytest.raises(ValueError, match="target class index 0 is not a StubSegmenter object class"):
        iou_metric.class_ious(LABELS, {0: TARGETS["circle"]}, model_vocabulary(StubSegmenter(CLASSES, LABELS)))


def write_shard(folder, masks_json_of) -> None:
    """images/ and manifest.csv of two items; masks_json_of(item) writes and lists its masks."""
    (folder / "images").mkdir(parents=True)
    rows = []
    for item in ("a", "b"):
        gray().save(folder / "images" / f"{item}.png")
        rows.append({"item_id": item, "sample": 0, "image": f"images/{item}.png", "masks": masks_json_of(item)})
    pd.DataFrame(rows).to_csv(folder / "manifest.csv", index=False)


def test_iou_run_shard_scores_shape_classes_and_names_a_missing_one(tmp_path, monkeypatch):
    stub = StubSegmenter(CLASSES, LABELS)
    monkeypatch.setattr("ctrlbench.models.loaders.load_model", lambda config, key, device, dtype: stub)
    targets = {"a": TARGETS, "b": {"square": TARGETS["square"]}}
    write_shard(tmp_path / "run", lambda item: regions.save_item_masks(tmp_path / "run", item, targets[item]))
    frame = iou_metric.run_shard({"device": "cpu", "dtype": "float32"}, "toyseg", tmp_path / "run",
                                 tmp_path / "iou.csv")
    assert frame["value"].tolist() == [0.75, 0.5]
    assert [json.loads(p) for p in frame["per_class"]] == [{"circle": 1.0, "square": 0.5}, {"square": 0.5}]
    assert sorted(os.listdir(tmp_path / "run" / "masks")) == ["a_circle.png", "a_square.png", "b_square.png"]

    write_shard(tmp_path / "odd", lambda item: regions.save_item_masks(
        tmp_path / "odd", item, {"hexagon" if item == "b" else "circle": TARGETS["circle"]}))
    with pytest.raises(InputError, match="IoU: target class 'hexagon' is not an object class of segmenter "
                                         "'toyseg' \\(StubSegmenter: circle, square, triangle, diamond, cross\\)"):
        iou_metric.run_shard({"device": "cpu", "dtype": "float32"}, "toyseg", tmp_path / "odd", tmp_path / "x.csv")
    assert not (tmp_path / "x.csv").exists()


def test_iou_reads_manifests_written_before_the_class_key_was_renamed(tmp_path, monkeypatch):
    """Manifests list {"voc_class", "path"} from before; they score as before."""
    labels = np.zeros((16, 16), np.int64)
    labels[box(0, 0, 8, 16)] = voc_index("dog")
    monkeypatch.setattr("ctrlbench.models.loaders.load_model",
                        lambda config, key, device, dtype: StubSegmenter(vocabulary.VOC_CLASSES, labels))

    def legacy(item):
        (tmp_path / "run" / "masks").mkdir(exist_ok=True)
        Image.fromarray(box(0, 0, 16, 16).astype(np.uint8) * 255).save(tmp_path / "run" / "masks" / f"{item}_dog.png")
        return json.dumps([{"voc_class": "dog", "path": f"masks/{item}_dog.png"}])

    write_shard(tmp_path / "run", legacy)
    frame = iou_metric.run_shard({"device": "cpu", "dtype": "float32"}, "deeplab", tmp_path / "run",
                                 tmp_path / "iou.csv")
    assert frame["value"].tolist() == [0.5, 0.5] and json.loads(frame["per_class"][0]) == {"dog": 0.5}


def test_iou_with_the_loaded_toy_segmenter(config, tmp_path):
    """The real loader path: the toy folder's argmax channels, scored per shape name."""
    write_shard(tmp_path / "run", lambda item: regions.save_item_masks(tmp_path / "run", item, TARGETS))
    frame = iou_metric.run_shard(config, "toyseg", tmp_path / "run", tmp_path / "iou.csv")
    [prediction] = iou_metric.predict_classes(load_model(config, "toyseg"), [gray()])
    expected = {name: ((prediction == CLASSES.index(name)) & m).sum() / ((prediction == CLASSES.index(name)) | m).sum()
                for name, m in TARGETS.items()}
    assert json.loads(frame["per_class"][0]) == pytest.approx(expected)
    assert frame["value"][0] == pytest.approx(np.mean(list(expected.values())))


# --- the config ---------------------------------------------------------------------------------

def test_config_names_a_segmenter_that_lacks_a_target_class(default_config, tmp_path):
    default_config["models"]["toyseg"] = {"kind": "deeplabv3", "source": write_segmenter(tmp_path / "toyseg")}
    default_config["evaluation"]["iou"]["model"] = "toyseg"
    with pytest.raises(ConfigError, match="evaluation.iou.model: segmenter 'toyseg' .* has no class 'aeroplane' "
                                          r"\(nor 19 other VOC classes\), a target class of dataset 'coco'") as error:
        cb_config.validate(default_config)
    assert "datasets.coco.target_classes: categories" in str(error.value)
    default_config["datasets"]["coco"]["target_classes"] = "categories"
    assert cb_config.target_classes(cb_config.validate(default_config), "coco") == "categories"

    del default_config["datasets"]["coco"]["target_classes"]
    default_config["evaluation"]["iou"]["model"] = "deeplab"
    default_config["methods"]["tcig"]["segmenter"] = "toyseg"
    with pytest.raises(ConfigError, match="methods.tcig.segmenter: segmenter 'toyseg'"):
        cb_config.validate(default_config)
    default_config["methods"]["tcig"]["segmenter"] = "deeplab"
    default_config["datasets"]["cub"]["target_classes"] = "categories"
    with pytest.raises(ConfigError, match="datasets.cub.target_classes: only coco datasets"):
        cb_config.validate(default_config)
    default_config["datasets"]["cub"]["target_classes"] = "shapes"
    with pytest.raises(ConfigError, match="target_classes"):
        cb_config.validate(default_config)
