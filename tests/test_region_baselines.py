"""SI and BLD, the baselines of MultiDiffusion's region IoU table (ctrlbench.methods.si,
ctrlbench.methods.bld, ctrlbench.methods.region_editing); tiny models, 64x64, 2-3 steps."""

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from ctrlbench.errors import ConfigError, InputError
from ctrlbench.methods import bld, region_editing, si
from ctrlbench.methods.registry import REGION_BASELINE_DEFAULTS
from ctrlbench.methods.sd import encode_prompts, initial_latents
from ctrlbench.methods.sdedit import ddim_scheduler
from ctrlbench.models.loaders import load_model

SIZE = 64
PARAMS = {**REGION_BASELINE_DEFAULTS, "height": SIZE, "width": SIZE, "num_inference_steps": 3}
PROMPT = "a photo of a dog on the grass"
KINDS = {"sd": "sd", "sd_inpaint": "sd_inpaint"}


@pytest.fixture(scope="module")
def config(tiny_config):
    return tiny_config("region_baselines", KINDS)


@pytest.fixture(scope="module")
def pipe(config):
    return load_model(config, "sd")


@pytest.fixture(scope="module")
def inpaint(config):
    return load_model(config, "sd_inpaint")


@pytest.fixture(scope="module")
def source():
    return Image.fromarray(np.random.default_rng(0).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8))


def box_mask(top, left, bottom, right, size=(SIZE, SIZE)):
    mask = np.zeros(size, bool)
    mask[top:bottom, left:right] = True
    return mask


def embeds_of(pipe, prompt=PROMPT):
    return encode_prompts(pipe, [prompt], "", pipe.device)[prompt]


def ddim_copy(pipe, cls):
    """The diffusers pipeline `cls` on `pipe`'s modules with the DDIM that SI/BLD use."""
    reference = cls(**{**pipe.components, "scheduler": ddim_scheduler(pipe)},
                    requires_safety_checker=False)
    reference.set_progress_bar_config(disable=True)
    return reference


def pixels(path):
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


# --- BLD ---------------------------------------------------------------------------------------

def test_bld_keeps_the_source_latent_outside_the_mask(pipe, source):
    mask = box_mask(16, 8, 48, 40)
    z = bld.bld_edit(pipe, source, mask, embeds_of(pipe), PARAMS, torch.Generator().manual_seed(0),
                     output_type="latent")
    z_src = bld.encode_source(pipe, source)
    inside = bld.latent_mask(mask, 8, 8).expand_as(z)
    assert inside[0, 0].sum() == 16  # nearest: rows 2-5, columns 1-4 of the 8x8 latent
    assert torch.equal(z[~inside], z_src[~inside])
    assert (z[inside] - z_src[inside]).abs().min() > 0


def test_bld_with_a_full_mask_is_plain_ddim_text_to_image(pipe, source):
    from diffusers import StableDiffusionPipeline

    positive, negative = embeds_of(pipe)
    z = bld.bld_edit(pipe, source, np.ones((SIZE, SIZE), bool), (positive, negative), PARAMS,
                     torch.Generator().manual_seed(3), output_type="latent")
    expected = ddim_copy(pipe, StableDiffusionPipeline)(
        prompt_embeds=positive, negative_prompt_embeds=negative, latents=initial_latents(pipe, 1, SIZE, SIZE, 3,
                                                                                          torch.float32),
        num_inference_steps=PARAMS["num_inference_steps"], guidance_scale=PARAMS["guidance_scale"],
        height=SIZE, width=SIZE, output_type="latent").images
    assert torch.allclose(z, expected, atol=1e-5, rtol=0)


def test_bld_blends_at_the_next_timestep(pipe, source, monkeypatch):
    calls = []
    original = type(pipe.scheduler).add_noise

    def spy(self, samples, noise, timesteps):
        calls.append(int(timesteps[0]))
        return original(self, samples, noise, timesteps)

    from diffusers import DDIMScheduler

    monkeypatch.setattr(DDIMScheduler, "add_noise", spy)
    bld.bld_edit(pipe, source, box_mask(0, 0, 32, 32), embeds_of(pipe), {**PARAMS, "num_inference_steps": 4},
                 torch.Generator().manual_seed(0), output_type="latent")
    # DDIM 4 steps (leading, offset 1): 751, 501, 251, 1; the latent reaches 501, 251, 1, then 0 (z_src).
    assert calls == [501, 251, 1]


def test_bld_masks(pipe, source):
    with pytest.raises(ValueError, match="mask is empty"):
        bld.bld_edit(pipe, source, np.zeros((SIZE, SIZE), bool), embeds_of(pipe), PARAMS, torch.Generator())
    with pytest.raises(ValueError, match="mask is 32x32, image is 64x64"):
        bld.bld_edit(pipe, source, np.ones((32, 32), bool), embeds_of(pipe), PARAMS, torch.Generator())
    thin = box_mask(1, 0, 2, SIZE)  # row 1 only: nearest sampling (cell centres, rows 4, 12, ...) misses it
    cells = bld.latent_mask(thin, 8, 8)[0, 0]
    assert cells[0].all() and cells.sum() == 8


# --- SI ----------------------------------------------------------------------------------------

def test_si_edit_is_the_diffusers_inpaint_pipeline(inpaint, source):
    from diffusers import StableDiffusionInpaintPipeline

    mask = box_mask(16, 8, 48, 40)
    edit = si.make_edit(inpaint, PARAMS)
    out = edit(source, mask, PROMPT, torch.Generator().manual_seed(4))
    expected = ddim_copy(inpaint, StableDiffusionInpaintPipeline)(
        PROMPT, image=source, mask_image=Image.fromarray(mask.astype(np.uint8) * 255), strength=1.0,
        num_inference_steps=PARAMS["num_inference_steps"], guidance_scale=PARAMS["guidance_scale"],
        height=SIZE, width=SIZE, generator=torch.Generator().manual_seed(4)).images[0]
    assert out.size == (SIZE, SIZE)
    assert np.abs(np.asarray(out, dtype=int) - np.asarray(expected, dtype=int)).max() <= 1
    assert not np.array_equal(np.asarray(out), np.asarray(source))


# --- the shared driver --------------------------------------------------------------------------

def write_mask(path, mask):
    Image.fromarray(mask.astype(np.uint8) * 255).save(path)
    return path.name


def write_inputs(folder, masks_by_item):
    folder.mkdir(parents=True, exist_ok=True)
    rows = [{"item_id": item, "prompt": f"a photo of {item}", "class_name": item, "image": f"images/{item}.jpg",
             "masks": json.dumps(masks)} for item, masks in masks_by_item.items()]
    pd.DataFrame(rows).to_csv(folder / "inputs.csv", index=False)
    return str(folder / "inputs.csv")


@pytest.fixture
def two_items(tmp_path):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    dog = write_mask(inputs / "dog.png", box_mask(16, 8, 48, 40))
    cat = write_mask(inputs / "cat.png", box_mask(0, 32, 24, 64))
    tv = write_mask(inputs / "tv.png", box_mask(40, 40, 64, 64))
    # item a lists its masks out of VOC order: dog (12) before cat (8)
    return write_inputs(inputs, {"a": [{"voc_class": "dog", "path": dog}, {"voc_class": "cat", "path": cat}],
                                 "b": [{"voc_class": "tv", "path": tv}]})


def test_driver_edits_each_mask_in_voc_order_on_the_previous_image(config, tmp_path, two_items):
    calls = []

    def make_edit(pipes, params):
        assert set(pipes) == {"sd"}

        def edit(image, mask, prompt, generator):
            colour = 40 * (len(calls) + 1)
            calls.append({"image": np.asarray(image).copy(), "mask": mask.copy(), "prompt": prompt})
            out = np.asarray(image).copy()
            out[mask] = colour
            return Image.fromarray(out)
        return edit

    params = {**PARAMS, "samples_per_item": 2, "seed": 5, "region_prompt": "a photo of a {class}",
              "background_prompt": "{prompt}, high quality"}
    out = tmp_path / "out"
    manifest = region_editing.run_shard(config, "fake", "sd", two_items, str(out), params, make_edit)
    assert [c["prompt"] for c in calls] == ["a photo of a cat", "a photo of a dog"] * 2 + ["a photo of a tv"] * 2
    assert np.array_equal(calls[0]["mask"], box_mask(0, 32, 24, 64))
    assert np.array_equal(calls[1]["mask"], box_mask(16, 8, 48, 40))
    saved = pd.read_csv(out / "manifest.csv", dtype={"item_id": str}, keep_default_na=False)
    assert list(saved.columns) == region_editing.MANIFEST_COLUMNS and len(saved) == 4
    assert list(manifest["image"]) == list(saved["image"])
    assert list(saved["item_id"]) == ["a", "a", "b", "b"] and list(saved["seed"]) == [5, 6, 5, 6]
    assert list(saved["image"]) == ["a_00.png", "a_01.png", "b_00.png", "b_01.png"]
    assert list(saved["background"]) == [f"backgrounds/{n}" for n in saved["image"]]
    assert saved["prompt"][0] == "a photo of a, high quality"
    assert json.loads(saved["region_prompts"][0]) == ["a photo of a cat", "a photo of a dog"]
    assert json.loads(saved["masks"][0]) == [{"class": "cat", "path": "masks/a_cat.png"},
                                             {"class": "dog", "path": "masks/a_dog.png"}]
    assert saved["source_image"][2] == "images/b.jpg" and saved["class_name"][2] == "b"
    # edit 1 gets the saved background, edit 2 edit 1's output; the final image is edit 2's
    assert np.array_equal(calls[0]["image"], pixels(out / "backgrounds/a_00.png"))
    assert (calls[1]["image"][box_mask(0, 32, 24, 64)] == 40).all()
    final = pixels(out / "a_00.png")
    assert (final[box_mask(16, 8, 48, 40)] == 80).all()
    untouched = ~(box_mask(0, 32, 24, 64) | box_mask(16, 8, 48, 40))
    assert np.array_equal(final[untouched], pixels(out / "backgrounds/a_00.png")[untouched])
    # seed + sample: the two samples' backgrounds differ
    assert not np.array_equal(pixels(out / "backgrounds/a_00.png"), pixels(out / "backgrounds/a_01.png"))
    record = json.loads((out / "params.json").read_text())
    assert record["method"] == "fake" and record["n_items"] == 2 and record["text_handling"] == "chunked-77"
    newest = max(p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.name != "manifest.csv")
    assert (out / "manifest.csv").stat().st_mtime_ns >= newest


def test_si_and_bld_shards_share_the_background_and_are_deterministic(config, tmp_path):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    dog = write_mask(inputs / "dog.png", box_mask(16, 8, 48, 40))
    cat = write_mask(inputs / "cat.png", box_mask(0, 32, 24, 64))
    csv = write_inputs(inputs, {"a": [{"voc_class": "dog", "path": dog}, {"voc_class": "cat", "path": cat}]})
    params = {**PARAMS, "num_inference_steps": 2, "seed": 1}
    bld.run_shard(config, "sd", csv, str(tmp_path / "bld"), params)
    bld.run_shard(config, "sd", csv, str(tmp_path / "bld_again"), params)
    manifest = si.run_shard(config, "sd", csv, str(tmp_path / "si"), params, inpaint_key="sd_inpaint")
    assert list(manifest["image"]) == ["a_00.png"] and list(manifest["seed"]) == [1]
    for name in ("a_00.png", "backgrounds/a_00.png"):
        assert (tmp_path / "bld" / name).read_bytes() == (tmp_path / "bld_again" / name).read_bytes()
    assert np.array_equal(pixels(tmp_path / "bld" / "backgrounds/a_00.png"),
                          pixels(tmp_path / "si" / "backgrounds/a_00.png"))
    for method in ("bld", "si"):
        assert not np.array_equal(pixels(tmp_path / method / "a_00.png"),
                                  pixels(tmp_path / method / "backgrounds/a_00.png"))
    record = json.loads((tmp_path / "si" / "params.json").read_text())
    assert record["method"] == "si" and set(record["model"]) == {"sd", "sd_inpaint"}
    assert set(json.loads((tmp_path / "bld" / "params.json").read_text())["model"]) == {"sd"}


def test_run_shard_errors_leave_no_output(config, tmp_path, monkeypatch):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    write_mask(inputs / "empty.png", np.zeros((SIZE, SIZE), bool))
    csv = write_inputs(inputs, {"x": [{"voc_class": "dog", "path": "empty.png"}]})
    monkeypatch.setattr(region_editing, "load_model", lambda *a, **k: pytest.fail("model loaded"))
    out = tmp_path / "out"
    with pytest.raises(InputError, match="BLD item x: mask .*empty.png of class dog is empty"):
        bld.run_shard(config, "sd", csv, str(out), PARAMS)
    with pytest.raises(InputError, match="SI item x: mask .*empty.png of class dog is empty"):
        si.run_shard(config, "sd", csv, str(out), PARAMS, inpaint_key="sd_inpaint")
    with pytest.raises(ConfigError, match="SI needs inpaint_key"):
        si.run_shard(config, "sd", csv, str(out), PARAMS)
    with pytest.raises(ConfigError, match="has kind 'sd'; SI needs kind sd_inpaint"):
        si.run_shard(config, "sd", csv, str(out), PARAMS, inpaint_key="sd")
    with pytest.raises(ConfigError, match="region_prompt"):
        bld.run_shard(config, "sd", csv, str(out), {**PARAMS, "region_prompt": "a {label}"})
    assert not out.exists() and list(tmp_path.glob(".out*")) == []


def test_run_shard_failing_mid_job_leaves_no_output(config, tmp_path, two_items):
    def make_edit(pipes, params):
        def edit(image, mask, prompt, generator):
            raise RuntimeError("edit failed")
        return edit

    with pytest.raises(RuntimeError, match="edit failed"):
        region_editing.run_shard(config, "fake", "sd", two_items, str(tmp_path / "out"), PARAMS, make_edit)
    assert not (tmp_path / "out").exists() and list(tmp_path.glob(".out*")) == []


def test_empty_inputs_give_an_empty_manifest_without_a_model(config, tmp_path, monkeypatch):
    pd.DataFrame(columns=["item_id", "prompt", "masks"]).to_csv(tmp_path / "empty.csv", index=False)
    monkeypatch.setattr(region_editing, "load_model", lambda *a, **k: pytest.fail("model loaded"))
    manifest = si.run_shard(config, "sd", str(tmp_path / "empty.csv"), str(tmp_path / "out"), PARAMS,
                            inpaint_key="sd_inpaint")
    assert manifest.empty and list(manifest.columns) == region_editing.MANIFEST_COLUMNS
    saved = pd.read_csv(tmp_path / "out" / "manifest.csv")
    assert saved.empty and list(saved.columns) == region_editing.MANIFEST_COLUMNS
    assert json.loads((tmp_path / "out" / "params.json").read_text())["n_items"] == 0
