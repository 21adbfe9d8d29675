"""SD text-to-image shards (ctrlbench.methods.sd) against plain diffusers calls, tiny model."""

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from ctrlbench.methods import sd
from ctrlbench.methods.registry import SD_DEFAULTS

LONG = " ".join(["red", "blue", "green", "small", "large"] * 40)  # 200 CLIP tokens
PARAMS = {**SD_DEFAULTS, "num_inference_steps": 2, "height": 64, "width": 64, "images_per_prompt": 2,
          "batch_size": 2, "negative_prompt": "lowres, worst quality"}


@pytest.fixture(scope="module")
def config(tiny_config):
    return tiny_config("sd_results", {"sd": "sd"})


@pytest.fixture(scope="module")
def reference(config):
    """A plain diffusers pipeline straight from the folder, not through ctrlbench's loader."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(os.path.join(config["results_dir"], "models", "tiny", "sd"),
                                                   safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def write_prompts(path, prompts):
    frame = pd.DataFrame({"item_id": [f"item{i}" for i in range(len(prompts))], "prompt": prompts,
                          "class_name": "Laysan Albatross", "image": "images/x.jpg"})
    frame.to_csv(path, index=False)
    return str(path)


def run(config, tmp_path, prompts, name="out", **overrides):
    out = tmp_path / name
    manifest = sd.run_shard(config, "sd", write_prompts(tmp_path / f"{name}.csv", prompts), str(out),
                            {**PARAMS, **overrides})
    return manifest, out


def images_of(manifest, out):
    return {(r.item_id, r.sample): np.asarray(Image.open(out / r.image)) for r in manifest.itertuples()}


def diffusers_images(pipe, prompt, params=PARAMS):
    return pipe(prompt=prompt, negative_prompt=params["negative_prompt"],
                generator=torch.Generator().manual_seed(params["seed"]),
                num_images_per_prompt=params["images_per_prompt"], num_inference_steps=params["num_inference_steps"],
                guidance_scale=params["guidance_scale"], height=params["height"], width=params["width"]).images


def test_shard_equals_plain_diffusers_calls(config, reference, tmp_path):
    prompts = ["a photo of a red bird", "a small blue bird on a branch", "a photo of a red bird"]
    manifest, out = run(config, tmp_path, prompts)
    assert list(manifest.columns) == sd.MANIFEST_COLUMNS
    assert list(zip(manifest.item_id, manifest["sample"])) == [(f"item{i}", s) for i in range(3) for s in range(2)]
    assert (manifest.seed == 42).all() and list(manifest.prompt) == [p for p in prompts for _ in range(2)]
    images = images_of(manifest, out)
    for i, prompt in enumerate(prompts):
        expected = diffusers_images(reference, prompt)
        for sample in range(2):
            assert np.array_equal(images[(f"item{i}", sample)], np.asarray(expected[sample])), (i, sample)
    saved = pd.read_csv(out / "manifest.csv", dtype={"item_id": str}, keep_default_na=False)
    assert saved.equals(manifest.astype(saved.dtypes.to_dict()))
    recorded = json.loads((out / "params.json").read_text())
    assert recorded["text_handling"] == "chunked-77" and recorded["params"] == PARAMS


def test_batches_across_prompts_give_the_same_images(config, tmp_path):
    prompts = ["a photo of a red bird", "a small blue bird on a branch", "a green bird"]
    aligned, out_a = run(config, tmp_path, prompts, "aligned")
    across, out_b = run(config, tmp_path, prompts, "across", batch_size=3)  # batches straddle prompts
    a, b = images_of(aligned, out_a), images_of(across, out_b)
    assert a.keys() == b.keys()
    for key in a:  # the same noise per prompt; only float rounding of other batch sizes may differ
        assert np.abs(a[key].astype(int) - b[key]).max() <= 2, key


def test_long_prompt_is_not_truncated(config, reference, tmp_path):
    truncated = " ".join(LONG.split()[:75])
    manifest, out = run(config, tmp_path, ["a photo of a red bird", LONG, truncated], batch_size=4)
    assert len(manifest) == 6 and manifest.image.map(lambda n: (out / n).is_file()).all()
    images = images_of(manifest, out)
    # the short prompt shares no batch with the long one: exactly diffusers' images
    short = diffusers_images(reference, "a photo of a red bird")
    assert all(np.array_equal(images[("item0", s)], np.asarray(short[s])) for s in range(2))
    # the prompt's tail (tokens 76-200) changes the images: plain CLIP encoding would drop it
    assert np.abs(images[("item1", 0)].astype(int) - images[("item2", 0)]).mean() > 1


def test_empty_shard_loads_no_model(tmp_path):
    config = {"results_dir": str(tmp_path), "hub_offline": True, "device": "cpu", "dtype": "float32",
              "models": {"sd": {"kind": "sd", "source": "tiny"}}}  # never built
    manifest, out = run(config, tmp_path, [])
    assert manifest.empty and list(pd.read_csv(out / "manifest.csv").columns) == sd.MANIFEST_COLUMNS
