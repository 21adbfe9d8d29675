"""MultiDiffusion panorama and region-based generation (ctrlbench.methods.multidiffusion), tiny SD on CPU."""

import functools
import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from ctrlbench.data.coco import read_coco
from ctrlbench.data.toy import make_toy_coco
from ctrlbench.errors import InputError
from ctrlbench.methods import multidiffusion as md
from ctrlbench.methods.registry import MULTIDIFFUSION_PANORAMA_DEFAULTS, MULTIDIFFUSION_REGIONS_DEFAULTS
from ctrlbench.methods.sd import encode_prompts, initial_latents
from ctrlbench.methods.sdedit import ddim_scheduler
from ctrlbench.models.loaders import load_model

PANO = {**MULTIDIFFUSION_PANORAMA_DEFAULTS, "height": 64, "width": 192, "window_size": 8, "stride": 4,
        "num_inference_steps": 3, "crop_size": 0}
REGIONS = {**MULTIDIFFUSION_REGIONS_DEFAULTS, "height": 64, "width": 64, "window_size": 8, "stride": 4,
           "num_inference_steps": 3, "n_backgrounds": 3}
PROMPT = "a photo of a mountain range at sunset"
SIZE = 64


@pytest.fixture(scope="module")
def config(tiny_config):
    return tiny_config("multidiffusion_results", {"sd": "sd"})


@pytest.fixture(scope="module")
def pipe(config):
    return load_model(config, "sd")


def diffusers_panorama(pipe, params, seed, output_type):
    """diffusers' StableDiffusionPanoramaPipeline on the same modules, DDIM, window and stride."""
    from diffusers import StableDiffusionPanoramaPipeline

    ref = StableDiffusionPanoramaPipeline(
        vae=pipe.vae, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer, unet=pipe.unet,
        scheduler=ddim_scheduler(pipe), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False)
    ref.set_progress_bar_config(disable=True)
    # Its __call__ uses get_views' defaults (64, 8): bind ours.
    ref.get_views = functools.partial(StableDiffusionPanoramaPipeline.get_views, ref,
                                      window_size=params["window_size"], stride=params["stride"])
    positive, negative = encode_prompts(pipe, [PROMPT], "", pipe.device)[PROMPT]
    out = ref(prompt_embeds=positive, negative_prompt_embeds=negative, height=params["height"],
              width=params["width"], num_inference_steps=params["num_inference_steps"],
              guidance_scale=params["guidance_scale"], view_batch_size=params["view_batch_size"],
              generator=torch.Generator("cpu").manual_seed(seed), output_type=output_type)
    return out.images if output_type == "latent" else out.images[0]


def sd_reference(pipe, prompt, params, seed):
    """Plain SD text-to-image latents (DDIM, the same initial noise and embeddings)."""
    from diffusers import StableDiffusionPipeline

    ref = StableDiffusionPipeline(**{**pipe.components, "scheduler": ddim_scheduler(pipe)},
                                  requires_safety_checker=False)
    ref.set_progress_bar_config(disable=True)
    positive, negative = encode_prompts(pipe, [prompt], "", pipe.device)[prompt]
    return ref(prompt_embeds=positive, negative_prompt_embeds=negative, height=params["height"],
               width=params["width"], num_inference_steps=params["num_inference_steps"],
               guidance_scale=params["guidance_scale"],
               latents=initial_latents(pipe, 1, params["height"], params["width"], seed, torch.float32),
               output_type="latent").images


def box(top, left, bottom, right, size=(SIZE, SIZE)):
    mask = np.zeros(size, bool)
    mask[top:bottom, left:right] = True
    return mask


# --- views and crops ---------------------------------------------------------------------------

@pytest.mark.parametrize("height, width, window, stride", [
    (64, 128, 8, 4), (64, 192, 8, 4), (128, 160, 8, 4), (64, 64, 8, 8), (512, 4608, 64, 8), (512, 2048, 64, 16)])
def test_views_equal_diffusers_when_covered(height, width, window, stride):
    from diffusers import StableDiffusionPanoramaPipeline

    expected = StableDiffusionPanoramaPipeline.get_views(None, height, width, window, stride)
    assert md.get_views(height, width, window, stride) == expected
    if (height, width) == (512, 4608):
        assert len(expected) == (576 - 64) // 8 + 1 == 65


@pytest.mark.parametrize("height, width", [(64, 152), (136, 152), (64, 64), (96, 200)])
def test_views_cover_every_latent_pixel(height, width):
    from diffusers import StableDiffusionPanoramaPipeline

    h, w = height // 8, width // 8
    ours = np.zeros((h, w), int)
    for h0, h1, w0, w1 in md.get_views(height, width, 8, 4):
        assert h1 - h0 == min(8, h) and w1 - w0 == min(8, w)   # all views the same size
        ours[h0:h1, w0:w1] += 1
    assert ours.min() >= 1
    theirs = np.zeros((h, w), int)
    for h0, h1, w0, w1 in StableDiffusionPanoramaPipeline.get_views(None, height, width, 8, 4):
        theirs[h0:h1, w0:w1] += 1
    if (w - 8) % 4:  # diffusers' gap that the extra, edge-flush window closes
        assert theirs[:, -((w - 8) % 4):].max() == 0


def test_views_smaller_than_window_and_validation():
    assert md.get_views(64, 128, 64, 8) == [(0, 8, 0, 16)]            # one window covering all
    assert md.get_views(64, 4608, 64, 8)[-1] == (0, 8, 512, 576)
    for args, message in [((60, 64, 8, 4), "multiples of 8"), ((64, 0, 8, 4), "multiples of 8"),
                          ((64, 64, 0, 4), "window_size must be >= 1"), ((64, 64, 8, 0), "stride must be >= 1")]:
        with pytest.raises(ValueError, match=message):
            md.get_views(*args)


def test_crop_boxes():
    assert md.crop_boxes(192, 64) == [(0, 0, 64, 64), (64, 0, 128, 64), (128, 0, 192, 64)]
    assert md.crop_boxes(152, 64, 0) == [(0, 0, 64, 64), (64, 0, 128, 64), (88, 0, 152, 64)]  # last: right edge
    assert md.crop_boxes(4608, 512) == [(512 * j, 0, 512 * (j + 1), 512) for j in range(9)]
    assert md.crop_boxes(100, 64, 32) == [(0, 16, 32, 48), (32, 16, 64, 48), (64, 16, 96, 48), (68, 16, 100, 48)]
    with pytest.raises(ValueError, match="crop_size 80"):
        md.crop_boxes(192, 64, 80)
    crops = md.panorama_crops(Image.new("RGB", (152, 64)))
    assert [c.size for c in crops] == [(64, 64)] * 3


# --- panorama ----------------------------------------------------------------------------------

@pytest.mark.parametrize("view_batch_size", [1, 2])
def test_panorama_equals_diffusers(pipe, view_batch_size):
    params = {**PANO, "view_batch_size": view_batch_size, "seed": 3}
    ours = md.panorama(pipe, PROMPT, params, output_type="latent")
    theirs = diffusers_panorama(pipe, params, 3, "latent")
    assert ours.shape == theirs.shape == (1, 4, 8, 24)
    assert torch.equal(ours, theirs)  # same UNet batches in the same layout: bit for bit
    image, reference = md.panorama(pipe, PROMPT, params), diffusers_panorama(pipe, params, 3, "pil")
    assert image.size == reference.size == (192, 64)
    assert np.array_equal(np.asarray(image), np.asarray(reference))


def test_panorama_covers_the_columns_diffusers_leaves_at_zero(pipe):
    params = {**PANO, "width": 152, "num_inference_steps": 2}   # latent width 19: (19 - 8) % 4 = 3
    theirs = diffusers_panorama(pipe, params, 0, "latent")
    assert theirs[..., 16:].abs().max() == 0                     # diffusers: uncovered -> zero
    steps = []
    ours = md.panorama(pipe, PROMPT, params, output_type="latent", callback=lambda i, t, lat: steps.append(i))
    assert steps == [0, 1]
    assert ours.abs().amax(dim=(0, 1, 2)).min() > 0.05            # no zero column
    start = initial_latents(pipe, 1, 64, 152, 0, torch.float32)
    assert (ours - start).abs().amax(dim=(0, 1, 2)).min() > 1e-3  # every column was denoised


def test_panorama_one_window_is_plain_sd_and_tiling_is_restored(pipe):
    params = {**PANO, "width": SIZE, "window_size": 64, "vae_tiling": True}
    ours = md.panorama(pipe, PROMPT, params, seed=1, output_type="latent")
    assert (ours - sd_reference(pipe, PROMPT, params, 1)).abs().max().item() < 1e-5
    tiled = md.panorama(pipe, PROMPT, {**PANO, "vae_tiling": True}, seed=1)
    assert tiled.size == (192, 64) and not pipe.vae.use_tiling


# --- regions -----------------------------------------------------------------------------------

def test_regions_full_mask_without_bootstrapping_is_plain_sd(pipe):
    params = {**REGIONS, "bootstrap_steps": 0}
    ours = md.regions(pipe, box(0, 0, SIZE, SIZE)[None], ["a red apple"], "a table", params, seed=2,
                      output_type="latent")
    # Ours runs both prompts in one UNet batch (as the public code), SD one: float32 rounding
    # differs by ~1e-6 per call, amplified by the guidance; latents are of size ~5.
    assert (ours - sd_reference(pipe, "a red apple", params, 2)).abs().max().item() < 1e-4


def test_overlapping_masks_are_averaged(pipe):
    params = {**REGIONS, "num_inference_steps": 1, "bootstrap_steps": 0}   # one step: each prompt sees the same latent
    full = box(0, 0, SIZE, SIZE)[None]
    only_a = md.regions(pipe, full, ["a cat"], "a room", params, output_type="latent")
    only_b = md.regions(pipe, full, ["a dog"], "a room", params, output_type="latent")
    masks = np.stack([box(0, 0, SIZE, 40), box(0, 24, SIZE, SIZE)])      # latent columns 0-4 and 3-7
    both = md.regions(pipe, masks, ["a cat", "a dog"], "a room", params, output_type="latent")
    assert torch.allclose(both[..., :3], only_a[..., :3], atol=1e-5)
    assert torch.allclose(both[..., 3:5], (only_a[..., 3:5] + only_b[..., 3:5]) / 2, atol=1e-5)
    assert torch.allclose(both[..., 5:], only_b[..., 5:], atol=1e-5)


def test_bootstrap_step_count():
    assert md.bootstrap_step_count({**MULTIDIFFUSION_REGIONS_DEFAULTS}) == 10             # paper: 20% of 50
    assert md.bootstrap_step_count({**MULTIDIFFUSION_REGIONS_DEFAULTS, "bootstrap_steps": 20}) == 20  # code
    assert md.bootstrap_step_count({**REGIONS, "num_inference_steps": 4, "bootstrap_fraction": 0.5}) == 2
    assert md.bootstrap_step_count({**REGIONS, "num_inference_steps": 10, "bootstrap_fraction": 0.25}) == 3
    assert md.bootstrap_step_count({**REGIONS, "bootstrap_steps": 99}) == 3
    with pytest.raises(ValueError, match="bootstrap_fraction"):
        md.bootstrap_step_count({**REGIONS, "bootstrap_fraction": 1.5})


@pytest.mark.parametrize("override, expected", [({"bootstrap_fraction": 0.5}, 2), ({"bootstrap_steps": 3}, 3)])
def test_bootstrapping_runs_the_first_steps(pipe, monkeypatch, override, expected):
    from diffusers import DDIMScheduler

    params = {**REGIONS, "num_inference_steps": 4, "width": 96, **override}  # 2 views along the width
    calls = []
    add_noise = DDIMScheduler.add_noise
    monkeypatch.setattr(DDIMScheduler, "add_noise", lambda self, *a: calls.append(1) or add_noise(self, *a))
    flags = []
    masks = np.stack([box(8, 8, 40, 40, (SIZE, 96)), box(24, 48, 56, 88, (SIZE, 96))])
    boot = md.regions(pipe, masks, ["a cat", "a dog"], "a room", params, output_type="latent",
                      callback=lambda i, t, lat, bootstrapped: flags.append(bootstrapped))
    assert flags == [True] * expected + [False] * (4 - expected)
    assert len(calls) == expected * 2                                   # once per bootstrapped step and view
    plain = md.regions(pipe, masks, ["a cat", "a dog"], "a room", {**params, "bootstrap_steps": 0},
                       output_type="latent")
    assert not torch.allclose(boot, plain, atol=1e-4)


@pytest.mark.parametrize("masks, message", [
    (np.ones((1, 32, 64), bool), "masks are 64x32 .* expected the image size 64x64"),
    (np.stack([box(0, 0, 8, 8), np.zeros((SIZE, SIZE), bool)]), "foreground mask 1 is empty$"),
    (np.zeros((0, SIZE, SIZE), bool), "at least one foreground mask"),
    (box(0, 0, 8, 8), r"must be \[K, height, width\]"),
    (box(3, 0, 4, SIZE)[None], "empty at the latent size 8x8"),                # a one-pixel row nearest skips
    (np.full((1, SIZE, SIZE), 0.4), "foreground mask 0 is empty"),             # binarised at 0.5
])
def test_bad_masks_raise(pipe, masks, message):
    with pytest.raises(ValueError, match=message):
        md.regions(pipe, masks, ["x"] * max(1, len(masks)), "bg", REGIONS)


def test_regions_needs_one_prompt_per_mask_and_is_deterministic(pipe):
    with pytest.raises(ValueError, match="2 foreground masks for 1 region prompts"):
        md.regions(pipe, np.stack([box(0, 0, 32, 32), box(32, 32, 64, 64)]), ["a cat"], "bg", REGIONS)
    masks = np.stack([box(8, 8, 40, 40)]).astype(np.float32)
    first = md.regions(pipe, masks, ["a cat"], "a garden", {**REGIONS, "bootstrap_steps": 2}, seed=4)
    again = md.regions(pipe, masks, ["a cat"], "a garden", {**REGIONS, "bootstrap_steps": 2}, seed=4)
    other = md.regions(pipe, masks, ["a cat"], "a garden", {**REGIONS, "bootstrap_steps": 2}, seed=5)
    assert first.size == (SIZE, SIZE) and first.tobytes() == again.tobytes() != other.tobytes()


# --- shard jobs -----------------------------------------------------------------------------

def test_run_panorama_shard(config, tmp_path):
    csv = tmp_path / "prompts.csv"
    pd.DataFrame({"item_id": ["p1", "p2"], "prompt": [PROMPT, "a beach"], "class_name": ["m", "b"]}).to_csv(
        csv, index=False)
    params = {**PANO, "width": 152, "num_inference_steps": 2, "samples_per_prompt": 2, "seed": 7}
    manifest = md.run_panorama_shard(config, "sd", str(csv), str(tmp_path / "out"), params)
    out = tmp_path / "out"
    saved = pd.read_csv(out / "manifest.csv", dtype={"item_id": str}, keep_default_na=False)
    assert list(saved.columns) == md.PANORAMA_COLUMNS and len(saved) == len(manifest) == 12   # 2 x 2 x 3 crops
    assert list(saved["crop"][:3]) == [0, 1, 2] and list(saved["seed"][::3]) == [7, 8, 7, 8]
    assert saved["image"][5] == "p1_01_c02.png" and saved["panorama"][5] == "panoramas/p1_01.png"
    assert list(saved["source_image"]) == [""] * 12 and saved["class_name"][11] == "b"
    with Image.open(out / "panoramas/p1_01.png") as pano, Image.open(out / "p1_01_c02.png") as crop:
        assert pano.size == (152, 64) and crop.size == (64, 64)
        assert np.array_equal(np.asarray(crop), np.asarray(pano.crop((88, 0, 152, 64))))
    direct = md.panorama(load_model(config, "sd"), PROMPT, params, seed=8)
    with Image.open(out / "panoramas/p1_01.png") as pano:
        assert np.array_equal(np.asarray(pano), np.asarray(direct))
    record = json.loads((out / "params.json").read_text())
    assert record["method"] == "multidiffusion_panorama" and record["text_handling"] == "chunked-77"
    assert record["params"]["width"] == 152 and record["model"] == {"sd": config["models"]["sd"]}


def test_run_panorama_shard_empty_and_bad_tables(tmp_path):
    csv = tmp_path / "prompts.csv"
    pd.DataFrame(columns=["item_id", "prompt"]).to_csv(csv, index=False)
    no_model = {"hub_offline": True, "device": "cpu", "dtype": "float32",
                "models": {"sd": {"kind": "sd", "source": str(tmp_path / "missing")}}}
    manifest = md.run_panorama_shard(no_model, "sd", str(csv), str(tmp_path / "out"), PANO)
    assert manifest.empty and list(pd.read_csv(tmp_path / "out" / "manifest.csv").columns) == md.PANORAMA_COLUMNS
    pd.DataFrame({"item_id": ["../x"], "prompt": ["p"]}).to_csv(csv, index=False)
    with pytest.raises(InputError, match="unsafe file name"):
        md.run_panorama_shard(no_model, "sd", str(csv), str(tmp_path / "bad"), PANO)
    pd.DataFrame({"item_id": ["a"], "prompt": ["p"]}).to_csv(csv, index=False)
    with pytest.raises(ValueError, match="multiples of 8"):
        md.run_panorama_shard(no_model, "sd", str(csv), str(tmp_path / "bad"), {**PANO, "width": 100})
    assert not (tmp_path / "bad").exists()


def write_inputs(folder, masks_by_item):
    rows = [{"item_id": item, "prompt": f"a photo of {item}", "class_name": item, "image": f"images/{item}.jpg",
             "masks": json.dumps(masks)} for item, masks in masks_by_item.items()]
    pd.DataFrame(rows).to_csv(folder / "inputs.csv", index=False)
    return str(folder / "inputs.csv")


def write_mask(path, mask):
    Image.fromarray(mask.astype(np.uint8) * 255).save(path)
    return path.name


def test_run_regions_shard_explicit_masks(config, tmp_path):
    person = write_mask(tmp_path / "person.png", box(2, 2, 12, 8, size=(16, 16)))   # resized x4 (nearest)
    dog = write_mask(tmp_path / "dog.png", box(16, 24, 56, 60))
    csv = write_inputs(tmp_path, {"a": [{"voc_class": "person", "path": person}, {"voc_class": "dog", "path": dog}],
                                  "b": [{"voc_class": "tv", "path": dog}]})
    params = {**REGIONS, "num_inference_steps": 2, "bootstrap_steps": 1, "samples_per_item": 2, "seed": 3,
              "region_prompt": "a photo of a {class}", "background_prompt": "{prompt}, best quality"}
    out = tmp_path / "out"
    md.run_regions_shard(config, "sd", csv, str(out), params)
    saved = pd.read_csv(out / "manifest.csv", dtype={"item_id": str}, keep_default_na=False)
    assert list(saved.columns) == md.REGIONS_COLUMNS and len(saved) == 4
    assert list(saved["image"]) == ["a_00.png", "a_01.png", "b_00.png", "b_01.png"]
    assert list(saved["seed"]) == [3, 4, 3, 4] and saved["prompt"][0] == "a photo of a, best quality"
    assert json.loads(saved["region_prompts"][0]) == ["a photo of a dog", "a photo of a person"]   # VOC order
    assert json.loads(saved["region_prompts"][2]) == ["a photo of a tv"]
    assert json.loads(saved["masks"][0]) == [{"class": "dog", "path": "masks/a_dog.png"},
                                             {"class": "person", "path": "masks/a_person.png"}]
    assert saved["source_image"][2] == "images/b.jpg" and saved["class_name"][2] == "b"
    with Image.open(out / "masks/a_person.png") as image:
        assert np.array_equal(np.asarray(image) > 0, np.kron(box(2, 2, 12, 8, (16, 16)), np.ones((4, 4), bool)))
    with Image.open(out / "a_01.png") as image:
        assert image.size == (SIZE, SIZE)
    record = json.loads((out / "params.json").read_text())
    assert record["method"] == "multidiffusion_regions" and record["params"]["bootstrap_steps"] == 1
    # Determinism: the same job again writes the same bytes.
    md.run_regions_shard(config, "sd", csv, str(tmp_path / "again"), params)
    for name in saved["image"]:
        assert (out / name).read_bytes() == (tmp_path / "again" / name).read_bytes()


@pytest.mark.parametrize("mask, message", [
    (np.zeros((SIZE, SIZE), bool), "mask .* of class dog is empty"),
    (box(3, 0, 4, SIZE), "item x: mask of class dog is empty at the latent size 8x8"),
])
def test_run_regions_shard_rejects_bad_masks(config, tmp_path, mask, message):
    csv = write_inputs(tmp_path, {"x": [{"voc_class": "dog", "path": write_mask(tmp_path / "m.png", mask)}]})
    with pytest.raises(InputError, match=message):
        md.run_regions_shard(config, "sd", csv, str(tmp_path / "out"), REGIONS)
    assert not (tmp_path / "out").exists()


def test_run_regions_shard_coco_items(config, tmp_path):
    root = make_toy_coco(tmp_path / "coco", n_images=2, image_size=SIZE)
    items = read_coco(root, "val")
    items["prompt"] = [json.loads(c)[0] for c in items["captions"]]
    items.to_csv(tmp_path / "items.csv", index=False)
    params = {**REGIONS, "num_inference_steps": 2, "bootstrap_steps": 1}
    manifest = md.run_regions_shard(config, "sd", str(tmp_path / "items.csv"), str(tmp_path / "out"), params)
    assert list(manifest["item_id"]) == list(items["item_id"])
    for row, item in zip(manifest.itertuples(), items.itertuples()):
        assert row.prompt == item.prompt and row.source_image == item.image
        assert len(json.loads(row.region_prompts)) == len(json.loads(row.masks)) >= 1
        assert (tmp_path / "out" / row.image).is_file()
