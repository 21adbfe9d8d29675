"""TCIG two-stage generation (ctrlbench.methods.tcig, ctrlbench.methods.segmentation), tiny models, 64x64."""

import json
import logging
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torch import nn

from ctrlbench.data.coco import COCO_CATEGORIES, coco_object_masks, read_coco
from ctrlbench.data.toy import make_toy_coco
from ctrlbench.errors import InputError, ModelNotFoundError
from ctrlbench.methods import segmentation as seg
from ctrlbench.methods import tcig
from ctrlbench.methods.tcig import TCIG_CUT_METHODS, TCIG_DEFAULTS
from ctrlbench.models.loaders import load_model

SIZE = 64
PARAMS = {**TCIG_DEFAULTS, "height": SIZE, "width": SIZE, "iterations": 2, "cutouts": 4,
          "num_inference_steps": 4, "stage2_strength": 0.5}
PROMPT = "a photo of a dog on the grass"
KINDS = {"sd": "sd", "clip": "open_clip", "deeplab": "deeplabv3", "vqgan": "vqmodel"}


@pytest.fixture(scope="module")
def config(tiny_config):
    return tiny_config("tcig_results", KINDS)


@pytest.fixture(scope="module")
def pipe(config):
    return load_model(config, "sd")


@pytest.fixture(scope="module")
def clip(config):
    return load_model(config, "clip")


@pytest.fixture(scope="module")
def deeplab(config):
    """The tiny DeepLab with He-initialised convolutions.

    torchvision initialises MobileNetV3's depthwise convolutions with fan_out, which shrinks
    the signal by ~sqrt(channels) per block: the random-weight tiny model's output does not
    depend on its input (features ~1e-9), so nothing could be optimised through it. A
    trained DeepLab has no such problem; here the weights are redrawn (fan_in) so that the
    class probabilities respond to the image.
    """
    model = load_model(config, "deeplab")
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for conv in model.modules():
            if isinstance(conv, nn.Conv2d):
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=generator)
                                  * (2 / conv.weight[0].numel()) ** 0.5)
                if conv.bias is not None:
                    conv.bias.zero_()
        model.classifier[-1].weight.mul_(0.2)  # moderate logits: the softmax is not saturated
    return model


def box_mask(top, left, bottom, right, size=(SIZE, SIZE)):
    mask = np.zeros(size, bool)
    mask[top:bottom, left:right] = True
    return mask


# --- segmentation helpers ------------------------------------------------------------------

def test_voc_classes_are_torchvisions():
    from torchvision.models.segmentation import DeepLabV3_ResNet50_Weights

    assert list(seg.VOC_CLASSES) == DeepLabV3_ResNet50_Weights.COCO_WITH_VOC_LABELS_V1.meta["categories"]
    assert seg.NUM_VOC_CLASSES == 21 and seg.VOC_CLASSES[0] == "__background__"


def test_coco_to_voc_map():
    coco_names = {name for _, name, _ in COCO_CATEGORIES}
    assert len(seg.COCO_TO_VOC) == 20 and set(seg.COCO_TO_VOC) <= coco_names
    assert sorted(seg.COCO_TO_VOC.values()) == list(range(1, 21))
    renamed = {"airplane": "aeroplane", "dining table": "diningtable", "motorcycle": "motorbike",
               "potted plant": "pottedplant", "couch": "sofa", "tv": "tvmonitor"}
    for coco, voc in seg.COCO_TO_VOC.items():
        assert seg.VOC_CLASSES[voc] == renamed.get(coco, coco)
    assert seg.voc_index("tv") == seg.voc_index("tvmonitor") == seg.voc_index(20) == seg.voc_index("20") == 20
    assert seg.voc_index(" Person ") == 15 and seg.voc_index("background") == 0
    for bad in ("truck", "elephant", 21, -1, True):
        with pytest.raises(KeyError):
            seg.voc_index(bad)


def test_segment_probs_matches_torchvision_transform_and_is_differentiable(deeplab):
    from torchvision.models.segmentation import DeepLabV3_ResNet50_Weights

    images = torch.rand(2, 3, 48, SIZE, requires_grad=True)
    probs = seg.segment_probs(deeplab, images)
    assert probs.shape == (2, 21, 48, SIZE) and probs.dtype == torch.float32
    assert torch.allclose(probs.sum(dim=1), torch.ones(2, 48, SIZE), atol=1e-5)
    transform = DeepLabV3_ResNet50_Weights.COCO_WITH_VOC_LABELS_V1.transforms(resize_size=None)
    with torch.no_grad():
        expected = deeplab(transform(images.detach()))["out"].softmax(dim=1)
    assert torch.allclose(probs, expected, atol=1e-5)
    probs[:, 12].mean().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0


def test_cutouts_and_spherical_distance():
    generator = torch.Generator().manual_seed(0)
    image = torch.rand(1, 3, SIZE, 48)
    cuts = tcig.make_cutouts(image, (32, 32), 5, 1.0, generator)
    assert cuts.shape == (5, 3, 32, 32)
    a = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    assert torch.allclose(tcig.spherical_distance(a, a[:1])[0], torch.zeros(()), atol=1e-3)
    # 2 arcsin(|a-b|/2)^2 = theta^2 / 2 with theta the angle between a and b
    theta = torch.arccos((a * a[:1]).sum(-1).clamp(-1, 1))
    assert torch.allclose(tcig.spherical_distance(a, a[:1]), theta ** 2 / 2, atol=1e-3)


# --- stage 1 -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def seg_runs(pipe, clip, deeplab):
    """Stage 1 on one seed, CLIP loss alone and with a heavily weighted mask term. Plain crops
    (cut method original): with the random tiny CLIP, the augmented cutouts' loss is mostly
    augmentation noise over 20 steps, which would hide whether the optimisation works."""
    params = {**PARAMS, "iterations": 20, "cutouts": 8, "lr": 0.1, "cut_method": "original"}
    target = {"dog": box_mask(16, 8, 48, 40)}
    off = tcig.stage1(pipe.vae, clip, deeplab, PROMPT, target, {**params, "seg_weight": 0.0}, seed=3)
    on = tcig.stage1(pipe.vae, clip, deeplab, PROMPT, target, {**params, "seg_weight": 20.0}, seed=3)
    return off, on


def test_stage1_loss_decreases(seg_runs):
    (image, history), _ = seg_runs
    assert image.size == (SIZE, SIZE) and image.mode == "RGB"
    assert len(history) == 21 and [e["step"] for e in history] == list(range(21))
    assert set(history[0]) == {"step", "loss", "clip", "seg", "seg_dog"}
    losses = [e["loss"] for e in history]
    assert np.isfinite(losses).all()
    assert np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.05


def test_stage1_seg_term_moves_the_masks_toward_the_targets(seg_runs):
    (_, off), (_, on) = seg_runs
    assert on[0]["seg_dog"] == pytest.approx(off[0]["seg_dog"])  # same seed: same start
    assert on[0]["seg"] == pytest.approx(20 * on[0]["seg_dog"]) and off[0]["seg"] == 0
    mse_on = [e["seg_dog"] for e in on]
    assert np.mean(mse_on[-3:]) < np.mean(mse_on[:3])        # the term lowers its own MSE
    assert on[-1]["seg_dog"] < off[-1]["seg_dog"]              # and more than CLIP alone does


def test_stage1_is_deterministic_and_resizes_masks(pipe, clip, deeplab, caplog):
    small = box_mask(4, 4, 20, 20, size=(32, 32))  # the class mask at half size
    params = {**PARAMS, "iterations": 1, "seg_weight": {"person": 2.0, "default": 0.5}}
    with caplog.at_level(logging.WARNING, logger="ctrlbench.methods.tcig"):
        a, history = tcig.stage1(pipe.vae, clip, deeplab, PROMPT, {15: small, "cat": box_mask(0, 0, 8, 8)},
                                 params, seed=1)
    assert "resized (nearest) to 64x64" in caplog.text and "person" in caplog.text
    probs = seg.segment_probs(deeplab, torch.from_numpy(np.array(a)).permute(2, 0, 1)[None].float() / 255)
    target = torch.from_numpy(np.kron(small, np.ones((2, 2), bool))).float()
    assert history[-1]["seg_person"] == pytest.approx(float(((probs[0, 15] - target) ** 2).mean()), abs=1e-3)
    assert history[-1]["seg"] == pytest.approx(2.0 * history[-1]["seg_person"] + 0.5 * history[-1]["seg_cat"])
    b, _ = tcig.stage1(pipe.vae, clip, deeplab, PROMPT, {15: small, "cat": box_mask(0, 0, 8, 8)}, params, seed=1)
    assert np.array_equal(np.asarray(a), np.asarray(b))


# --- cutouts and their augmentations --------------------------------------------------------

def cutouts(method, seed=0, cut_pow=1.0, image=None):
    image = torch.rand(1, 3, SIZE, 48, generator=torch.Generator().manual_seed(9)) if image is None else image
    return tcig.make_cutouts(image, (32, 32), 6, cut_pow, torch.Generator().manual_seed(seed), method)


def test_cut_methods_follow_generate_py_and_are_deterministic():
    made = {method: cutouts(method) for method in TCIG_CUT_METHODS}
    for method, cuts in made.items():
        assert cuts.shape == (6, 3, 32, 32)
        assert torch.equal(cuts, cutouts(method))             # same seed, same cutouts
        assert not torch.equal(cuts, cutouts(method, seed=1))  # another seed, others
    assert not torch.equal(made["original"], made["nrupdated"])  # the same crops, then augmented
    assert not torch.equal(made["original"], made["latest"])
    assert not torch.equal(made["nrupdated"], made["latest"])
    assert made["original"].min() >= 0 and made["original"].max() <= 1  # no noise without augments
    assert made["nrupdated"].min() < 0 or made["nrupdated"].max() > 1    # augments end with noise
    # latest pools the whole image (cut_pow unused); the crops of the other two follow cut_pow
    assert torch.equal(cutouts("latest", cut_pow=4.0), made["latest"])
    assert not torch.equal(cutouts("nrupdated", cut_pow=4.0), made["nrupdated"])
    with pytest.raises(ValueError, match="unknown cut method 'pooled'"):
        cutouts("pooled")


def test_augmented_cutouts_pass_gradients_and_erase_one_box(monkeypatch):
    image = torch.rand(1, 3, SIZE, SIZE, requires_grad=True)
    cutouts("latest", image=image).square().sum().backward()
    assert image.grad is not None and image.grad.abs().sum() > 0
    # erasing (forced on): one rectangle of 10-40% of the area, the same in every cutout
    monkeypatch.setattr(tcig, "AUGMENT_P", 1.0)
    cuts = torch.rand(5, 3, 32, 32) * 0.8 + 0.1
    erased = tcig._random_erasing(cuts, torch.Generator().manual_seed(4))
    box = (erased == 0).all(dim=1)
    assert (box == box[0]).all() and 0.1 - 1 / 16 <= box[0].float().mean() <= 0.4 + 1 / 16
    rows, cols = box[0].any(dim=1).nonzero(), box[0].any(dim=0).nonzero()
    assert box[0][rows.min():rows.max() + 1, cols.min():cols.max() + 1].all()  # a filled rectangle
    assert torch.equal(erased[:, :, ~box[0]], cuts[:, :, ~box[0]])               # nothing else changed


def test_stage1_cut_method_and_optimizer_change_the_run(pipe, clip, deeplab):
    target = {"dog": box_mask(16, 8, 48, 40)}
    params = {**PARAMS, "iterations": 2, "cut_method": "original", "optimizer": "adam"}

    def run(**change):
        image, history = tcig.stage1(pipe.vae, clip, deeplab, PROMPT, target, {**params, **change}, seed=2)
        return np.asarray(image), [e["loss"] for e in history]

    plain = run()
    assert np.array_equal(plain[0], run()[0]) and plain[1] == run()[1]  # deterministic for a seed
    for change in ({"cut_method": "latest"}, {"cut_method": "nrupdated"}, {"optimizer": "adamw"}):
        other = run(**change)
        assert other[1][0] != plain[1][0] or other[1][-1] != plain[1][-1], change
        assert other[1] == run(**change)[1]
    with pytest.raises(ValueError, match="optimizer must be one of adam, adamw"):
        run(optimizer="sgd")


# --- VQModel decoder -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def vqmodel(config):
    return load_model(config, "vqgan")


def test_vqmodel_decoder(vqmodel, pipe, clip, deeplab):
    params = {**PARAMS, "decoder": "vqmodel", "iterations": 8, "cutouts": 4, "lr": 0.2, "cut_method": "original"}
    decoder = tcig.build_decoder(params, vqmodel=vqmodel)
    assert isinstance(decoder, tcig.VQModelDecoder) and decoder.latent_shape(SIZE, SIZE) == (1, 8, 4, 4)
    z = decoder.init_latent(SIZE, SIZE, torch.Generator().manual_seed(0))
    codes = z[0].reshape(8, -1).T
    assert (codes[:, None] == decoder.codebook[None]).all(-1).any(1).all()  # starts on codebook vectors
    moved = z + 100
    decoder.project_(moved)
    assert torch.equal(moved, decoder.z_max.expand_as(moved))
    image, history = tcig.stage1(decoder, clip, deeplab, PROMPT, {"dog": box_mask(16, 16, 48, 48)}, params, seed=0)
    assert image.size == (SIZE, SIZE) and len(history) == 9
    assert np.isfinite([e["loss"] for e in history]).all()
    assert min(e["loss"] for e in history[1:]) < history[0]["loss"]
    with pytest.raises(ValueError, match="needs a VQModel"):
        tcig.build_decoder(params)
    with pytest.raises(ValueError, match="unknown TCIG decoder"):
        tcig.build_decoder({**params, "decoder": "vqgan"}, vqmodel=vqmodel)
    with pytest.raises(ValueError, match="height and width must be positive multiples of 16"):
        decoder.latent_shape(SIZE, 40)


def test_missing_vqgan_stops_the_job_naming_the_key(config, tmp_path, monkeypatch):
    """A real VQGAN that is not on disk fails before SD loads, saying how to get it."""
    from ctrlbench.models import loaders

    monkeypatch.setattr(loaders, "_hub_cached", lambda *a, **k: None)  # whatever this machine caches
    real = {**config, "models": {**config["models"], "vqgan": {"kind": "vqmodel", "source": loaders.VQGAN_HUB_ID}}}
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    mask = write_mask(inputs / "m.png", box_mask(8, 8, 40, 40))
    csv = write_inputs(inputs, {"a": [{"voc_class": "dog", "path": mask}]})
    params = {**PARAMS, "decoder": "vqmodel"}
    with pytest.raises(ModelNotFoundError) as error:
        tcig.run_shard(real, "sd", "clip", "deeplab", csv, str(tmp_path / "out"), params, vqmodel_key="vqgan")
    for part in ("'vqgan'", "kind vqmodel", f"hf download {loaders.VQGAN_HUB_ID}", "models.vqgan.source"):
        assert part in str(error.value)
    with pytest.raises(ValueError, match="needs vqmodel_key"):
        tcig.run_shard(config, "sd", "clip", "deeplab", csv, str(tmp_path / "out"), params)
    assert not (tmp_path / "out").exists()


# --- stage 2 -------------------------------------------------------------------------------

def test_stage2_is_img2img_and_keeps_the_size(pipe):
    from diffusers import StableDiffusionImg2ImgPipeline

    start = Image.fromarray(np.random.default_rng(0).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8))
    out = tcig.stage2(pipe, start, PROMPT, 0.5, PARAMS, seed=7)
    assert out.size == start.size and not np.array_equal(np.asarray(out), np.asarray(start))
    reference = StableDiffusionImg2ImgPipeline(**pipe.components)
    reference.set_progress_bar_config(disable=True)
    expected = reference(PROMPT, image=start, strength=0.5, num_inference_steps=4, guidance_scale=7.5,
                         generator=torch.Generator("cpu").manual_seed(7)).images[0]
    assert np.abs(np.asarray(out, dtype=int) - np.asarray(expected, dtype=int)).max() <= 1
    assert np.array_equal(np.asarray(tcig.stage2(pipe, start, PROMPT, 0.0, PARAMS, seed=7)), np.asarray(start))
    with pytest.raises(ValueError, match="no denoising step"):
        tcig.stage2(pipe, start, PROMPT, 0.1, PARAMS, seed=7)


# --- run_shard -----------------------------------------------------------------------------

def write_mask(path, mask):
    Image.fromarray(mask.astype(np.uint8) * 255).save(path)
    return path.name


def write_inputs(folder, masks_by_item):
    folder.mkdir(parents=True, exist_ok=True)
    rows = [{"item_id": item, "prompt": f"a photo of {item}", "class_name": item, "image": f"images/{item}.jpg",
             "masks": json.dumps(masks)} for item, masks in masks_by_item.items()]
    pd.DataFrame(rows).to_csv(folder / "inputs.csv", index=False)
    return str(folder / "inputs.csv")


def test_run_shard_writes_stage1_final_and_manifest(config, tmp_path, caplog):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    dog = write_mask(inputs / "dog.png", box_mask(16, 8, 48, 40))
    person = write_mask(inputs / "person_small.png", box_mask(2, 2, 12, 12, size=(16, 16)))
    csv = write_inputs(inputs, {"a": [{"voc_class": "dog", "path": dog}, {"voc_class": 15, "path": person}],
                                "b": [{"voc_class": "tv", "path": str(inputs / "dog.png")}]})
    params = {**PARAMS, "samples_per_item": 2, "seed": 5}
    with caplog.at_level(logging.WARNING, logger="ctrlbench.methods.tcig"):
        manifest = tcig.run_shard(config, "sd", "clip", "deeplab", csv, str(tmp_path / "out"), params)
    assert "item a: mask of class person is 16x16, resized (nearest) to 64x64" in caplog.text
    out = tmp_path / "out"
    saved = pd.read_csv(out / "manifest.csv", dtype={"item_id": str}, keep_default_na=False)
    assert list(saved.columns) == tcig.MANIFEST_COLUMNS and len(saved) == 4
    assert list(saved["item_id"]) == ["a", "a", "b", "b"] and list(saved["seed"]) == [5, 6, 5, 6]
    assert list(saved["image"]) == ["a_00.png", "a_01.png", "b_00.png", "b_01.png"]
    for row in saved.itertuples():
        assert row.stage1_image == f"stage1/{row.item_id}_{row.sample:02d}.png"
        for name in (row.image, row.stage1_image):
            with Image.open(out / name) as image:
                assert image.size == (SIZE, SIZE)
        history = pd.read_csv(out / f"stage1/{row.item_id}_{row.sample:02d}_loss.csv")
        assert len(history) == PARAMS["iterations"] + 1
        assert row.stage1_final_loss == pytest.approx(history["loss"].iloc[-1])
        assert row.source_image == f"images/{row.item_id}.jpg" and row.prompt == f"a photo of {row.item_id}"
    masks = json.loads(saved["masks"][0])
    assert masks == [{"class": "dog", "path": "masks/a_dog.png"},
                     {"class": "person", "path": "masks/a_person.png"}]
    upsampled = np.kron(box_mask(2, 2, 12, 12, size=(16, 16)), np.ones((4, 4), bool))  # nearest, x4
    with Image.open(out / "masks/a_person.png") as image:
        assert np.array_equal(np.asarray(image) > 0, upsampled)
    assert json.loads(saved["masks"][2]) == [{"class": "tvmonitor", "path": "masks/b_tvmonitor.png"}]
    with Image.open(out / "a_00.png") as final, Image.open(out / "stage1/a_00.png") as first:
        assert not np.array_equal(np.asarray(final), np.asarray(first))
    record = json.loads((out / "params.json").read_text())
    assert record["method"] == "tcig" and record["params"]["samples_per_item"] == 2 and record["n_items"] == 2
    newest = max(p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.name != "manifest.csv")
    assert (out / "manifest.csv").stat().st_mtime_ns >= newest


@pytest.mark.parametrize("entry, message", [
    ({"voc_class": "dog", "path": "empty.png"}, "item x: mask .*empty.png of class dog is empty"),
    ({"voc_class": "dog", "path": "thin.png"}, "item x: mask of class dog is empty after resizing"),
    ({"voc_class": "truck", "path": "full.png"}, "item x: unknown class 'truck'"),
    ({"voc_class": "__background__", "path": "full.png"}, "item x: class '__background__' is the background"),
    ({"voc_class": "dog", "path": "missing.png"}, "item x: mask .*missing.png of class dog does not exist"),
    (None, "item x: no masks"),
])
def test_run_shard_rejects_bad_masks(config, tmp_path, entry, message):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    write_mask(inputs / "empty.png", np.zeros((SIZE, SIZE), bool))
    write_mask(inputs / "full.png", np.ones((SIZE, SIZE), bool))
    write_mask(inputs / "thin.png", box_mask(0, 0, 1, 128, size=(128, 128)))  # row 0: gone at half size
    csv = write_inputs(inputs, {"x": [entry]})
    if entry is None:  # an empty masks cell
        pd.read_csv(csv).assign(masks="").to_csv(csv, index=False)
    with pytest.raises(InputError, match=message):
        tcig.run_shard(config, "sd", "clip", "deeplab", csv, str(tmp_path / "out"), PARAMS)
    assert not (tmp_path / "out").exists()


def test_run_shard_coco_items_and_vqmodel_decoder(config, tmp_path):
    root = make_toy_coco(tmp_path / "coco", n_images=2, image_size=SIZE)
    items = read_coco(root, "val")
    items["prompt"] = [json.loads(c)[0] for c in items["captions"]]
    items.to_csv(tmp_path / "items.csv", index=False)
    params = {**PARAMS, "iterations": 1, "decoder": "vqmodel"}
    manifest = tcig.run_shard(config, "sd", "clip", "deeplab", str(tmp_path / "items.csv"),
                              str(tmp_path / "out"), params, vqmodel_key="vqgan")
    assert list(manifest["item_id"]) == list(items["item_id"])
    for row, item in zip(manifest.itertuples(), items.itertuples()):
        expected = {}
        for category, mask in coco_object_masks(item.annotation_file, item.item_id):
            voc = seg.VOC_CLASSES[seg.COCO_TO_VOC[category]]
            expected[voc] = expected.get(voc, False) | mask
        listed = json.loads(row.masks)
        assert sorted(m["class"] for m in listed) == sorted(expected)
        for m in listed:
            with Image.open(tmp_path / "out" / m["path"]) as image:
                assert np.array_equal(np.asarray(image) > 0, expected[m["class"]])
        assert row.source_image == item.image
    record = json.loads((tmp_path / "out" / "params.json").read_text())
    assert record["model"]["vqgan"] == {"kind": "vqmodel", "source": "tiny"}
    assert record["params"]["decoder"] == "vqmodel" and record["params"]["cut_method"] == "latest"


def test_read_inputs_needs_masks_or_coco(tmp_path):
    pd.DataFrame({"item_id": ["a"], "prompt": ["p"]}).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(InputError, match="'masks' column"):
        tcig.read_inputs(tmp_path / "bad.csv")
    with pytest.raises(InputError, match="does not exist"):
        tcig.read_inputs(tmp_path / "none.csv")
    pd.DataFrame({"item_id": ["a", "a"], "prompt": ["p", "q"], "masks": ["[]", "[]"]}).to_csv(
        tmp_path / "dup.csv", index=False)
    with pytest.raises(InputError, match="item a is listed twice"):
        tcig.read_inputs(tmp_path / "dup.csv")
