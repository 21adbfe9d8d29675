"""ControlNet canny regeneration (ctrlbench.methods.controlnet) against plain diffusers, tiny models."""

import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image, ImageDraw, ImageFilter

from ctrlbench import io
from ctrlbench.errors import InputError
from ctrlbench.methods import controlnet as cn
from ctrlbench.methods.registry import CONTROLNET_DEFAULTS
from ctrlbench.models.loaders import load_model

PARAMS = {**CONTROLNET_DEFAULTS, "num_inference_steps": 2, "long_side": 64, "samples_per_input": 2,
          "batch_size": 2}
PROMPTS = {"a": "a bird of this species with a white belly", "b": "a bird of this species with a red crown"}
CLASSES = {"a": "Laysan Albatross", "b": "Red-headed Woodpecker"}


def shapes(size=(64, 64), seed=0):
    """A drawing with clear edges (random noise would be all edges)."""
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", size, tuple(int(v) for v in rng.integers(0, 256, 3)))
    draw = ImageDraw.Draw(image)
    for _ in range(3):
        x0, y0 = rng.integers(0, size[0] // 2), rng.integers(0, size[1] // 2)
        x1, y1 = x0 + rng.integers(8, size[0] // 2), y0 + rng.integers(8, size[1] // 2)
        fill = tuple(int(v) for v in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1, y1), fill=fill)
    return image


def cv2_canny(image, low=100, high=200):
    """ControlNet's CannyDetector (annotator/canny): cv2.Canny on the RGB array."""
    edges = cv2.Canny(np.array(image.convert("RGB")), low, high)
    return Image.fromarray(np.stack([edges] * 3, axis=-1))


def gray_canny(image, low=100, high=200):
    edges = cv2.Canny(cv2.cvtColor(np.array(image.convert("RGB")), cv2.COLOR_RGB2GRAY), low, high)
    return Image.fromarray(np.stack([edges] * 3, axis=-1))


def controlnet_resize_image(input_image, resolution):
    """ControlNet's annotator/util.py resize_image, as the reference the authors' canny.py calls."""
    H, W, C = input_image.shape
    H, W = float(H), float(W)
    k = float(resolution) / min(H, W)
    H *= k
    W *= k
    H = int(np.round(H / 64.0)) * 64
    W = int(np.round(W / 64.0)) * 64
    return cv2.resize(input_image, (W, H), interpolation=cv2.INTER_LANCZOS4 if k > 1 else cv2.INTER_AREA)


@pytest.fixture(scope="module")
def config(tiny_config):
    return tiny_config("controlnet_results", {"sd": "sd", "controlnet": "controlnet"})


@pytest.fixture(scope="module")
def pipe(config):
    return cn.build_pipeline(load_model(config, "sd", "cpu", torch.float32),
                             load_model(config, "controlnet", "cpu", torch.float32))


@pytest.fixture(scope="module")
def reference(config):
    """StableDiffusionControlNetPipeline built directly from the folders, not via ctrlbench."""
    from diffusers import (ControlNetModel, DDIMScheduler, StableDiffusionControlNetPipeline,
                           StableDiffusionPipeline)

    tiny = os.path.join(config["results_dir"], "models", "tiny")
    sd = StableDiffusionPipeline.from_pretrained(os.path.join(tiny, "sd"), safety_checker=None,
                                                 requires_safety_checker=False)
    pipe = StableDiffusionControlNetPipeline(
        vae=sd.vae, text_encoder=sd.text_encoder, tokenizer=sd.tokenizer, unet=sd.unet,
        controlnet=ControlNetModel.from_pretrained(os.path.join(tiny, "controlnet")),
        scheduler=DDIMScheduler.from_pretrained(os.path.join(tiny, "sd"), subfolder="scheduler"),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def make_base(folder, samples):
    """A base method's shard: {item: n base samples} -> images + manifest.csv."""
    folder.mkdir(parents=True)
    rows = []
    for k, (item, n) in enumerate(samples.items()):
        for sample in range(n):
            name = f"{item}_{sample:02d}.png"
            shapes(seed=10 * k + sample).save(folder / name)
            rows.append({"item_id": item, "sample": sample, "image": name, "prompt": PROMPTS[item], "seed": 42,
                         "class_name": CLASSES[item], "source_image": f"images/{item}.jpg"})
    pd.DataFrame(rows, columns=["item_id", "sample", "image", "prompt", "seed", "class_name",
                                "source_image"]).to_csv(folder / "manifest.csv", index=False)
    return folder


def make_prompts(path, items=PROMPTS):
    pd.DataFrame({"item_id": list(items), "prompt": [PROMPTS[i] for i in items],
                  "class_name": [CLASSES[i] for i in items],
                  "image": [f"images/{i}.jpg" for i in items]}).to_csv(path, index=False)
    return str(path)


def arrays(images):
    return [np.asarray(image) for image in images]


# --- control images ---------------------------------------------------------------------

@pytest.mark.parametrize("size, long_side, expected", [
    ((512, 384), 512, (512, 384)),
    ((500, 375), 512, (512, 384)),
    ((384, 500), 512, (384, 512)),
    ((1024, 1024), 512, (512, 512)),
    ((640, 427), 512, (512, 320)),     # 341.6 -> 320
    ((1000, 100), 512, (512, 64)),     # 51.2 -> at least 64
    ((30, 20), 64, (64, 64)),          # 42.7 -> 64
    ((30, 20), 32, (64, 64)),          # below 64 on both sides -> 64 x 64
    ((30, 20), 512, (512, 320)),       # small images are enlarged
])
def test_control_size(size, long_side, expected):
    assert cn.control_size(*size, long_side) == expected


def test_control_size_rejects_nonsense():
    with pytest.raises(ValueError):
        cn.control_size(0, 10, 512)
    with pytest.raises(ValueError):
        cn.annotator_size(10, 0, 512)
    with pytest.raises(ValueError, match="control_resize"):
        cn.resize_for_control(shapes(), 64, "nope")


@pytest.mark.parametrize("size", [(512, 384), (500, 375), (384, 500), (1024, 1024), (640, 427), (1000, 600),
                                  (512, 416), (333, 500), (30, 20), (100, 60), (64, 64)])
def test_annotator_resize_equals_controlnets_resize_image(size):
    """The authors' canny.py: resize_image(HWC3(img), int(min(w, h) / max(w, h) * 512))."""
    image = shapes(size=size)
    long_side = 512 if max(size) > 100 else 128
    resolution = int(min(size) / max(size) * long_side)
    expected = controlnet_resize_image(np.asarray(image), resolution)
    got = cn.resize_for_control(image, long_side, "annotator")
    assert got.size == cn.annotator_size(*size, long_side) == (expected.shape[1], expected.shape[0])
    assert np.array_equal(np.asarray(got), expected)


def test_annotator_and_long_side_resizes_differ_where_rounding_does():
    # 416 / 64 = 6.5: np.round (half to even) gives 384, ours rounds half up to 448
    assert cn.annotator_size(512, 416, 512) == (512, 384)
    assert cn.control_size(512, 416, 512) == (512, 448)
    # elsewhere they agree
    assert cn.annotator_size(500, 375, 512) == cn.control_size(500, 375, 512) == (512, 384)


def test_canny_map_rgb_and_gray():
    image = shapes()
    edges = cn.canny_map(image, 100, 200)  # default: on the RGB array, as ControlNet's CannyDetector
    assert edges.mode == "RGB" and edges.size == image.size
    assert np.array_equal(np.asarray(edges), np.asarray(cv2_canny(image)))
    assert np.array_equal(np.asarray(cn.canny_map(image, 100, 200, "gray")), np.asarray(gray_canny(image)))
    assert 0 < (np.asarray(edges) > 0).mean() < 0.5
    soft = image.filter(ImageFilter.GaussianBlur(2))  # weak edges: the thresholds decide
    assert (np.asarray(cn.canny_map(soft, 10, 20)) > 0).sum() > (np.asarray(cn.canny_map(soft, 100, 200)) > 0).sum()
    # red beside a green of about the same luminance: the gray copy has no edge there
    halves = np.zeros((64, 64, 3), np.uint8)
    halves[:, :32] = (200, 0, 0)
    halves[:, 32:] = (0, 102, 0)
    gray = cv2.cvtColor(halves, cv2.COLOR_RGB2GRAY)
    assert abs(int(gray[0, 0]) - int(gray[0, 63])) <= 2
    two = Image.fromarray(halves)
    assert (np.asarray(cn.canny_map(two, 100, 200, "gray")) > 0).sum() == 0
    assert (np.asarray(cn.canny_map(two, 100, 200, "rgb"))[:, 30:34] > 0).any(axis=1).all()
    with pytest.raises(ValueError, match="canny_input"):
        cn.canny_map(two, 100, 200, "hsv")


def test_control_image_resizes_then_detects():
    control = cn.control_image(shapes(size=(100, 60)), {**PARAMS, "long_side": 128})
    assert control.size == (128, 64)
    resized = cn.resize_for_control(shapes(size=(100, 60)), 128)
    assert resized.size == (128, 64)
    assert np.array_equal(np.asarray(control), np.asarray(cv2_canny(resized)))
    ours = cn.control_image(shapes(size=(100, 60)), {**PARAMS, "long_side": 128, "control_resize": "long_side",
                                                     "canny_input": "gray"})
    assert np.array_equal(np.asarray(ours), np.asarray(gray_canny(cn.resize_for_control(
        shapes(size=(100, 60)), 128, "long_side"))))


def test_regeneration_prompt():
    assert cn.regeneration_prompt(CONTROLNET_DEFAULTS["prompt_template"], "Laysan Albatross", "a bird") == \
        "a photo of Laysan Albatross, a bird, best quality, extremely detailed"
    with pytest.raises(InputError, match="prompt_template"):
        cn.regeneration_prompt("{species}", "x", "y")


# --- the shard job ----------------------------------------------------------------------

def test_run_shard_equals_plain_diffusers(config, reference, tmp_path, monkeypatch):
    base = make_base(tmp_path / "base", {"a": 2, "b": 1})
    calls = []  # (io function, file written), in call order
    for fn in ("save_image", "write_json", "write_csv"):
        original = getattr(io, fn)

        def spy(path, obj, _fn=fn, _original=original):
            path = Path(path)
            calls.append((_fn, f"canny/{path.name}" if path.parent.name == "canny" else path.name))
            return _original(path, obj)
        monkeypatch.setattr(io, fn, spy)

    out = tmp_path / "out"
    manifest = cn.run_shard(config, "sd", "controlnet", str(base), make_prompts(tmp_path / "p.csv"), str(out),
                            PARAMS)
    monkeypatch.undo()

    # manifest: complete, in item order, written last
    assert list(manifest.columns) == cn.MANIFEST_COLUMNS
    assert list(zip(manifest.item_id, manifest.base_sample, manifest["sample"])) == [
        ("a", 0, 0), ("a", 0, 1), ("b", 0, 0), ("b", 0, 1)]  # base_samples=1: only base sample 0
    assert list(manifest.image) == ["a_b0_00.png", "a_b0_01.png", "b_b0_00.png", "b_b0_01.png"]
    assert list(manifest.canny) == ["canny/a_b0.png"] * 2 + ["canny/b_b0.png"] * 2
    assert list(manifest.base_image) == ["a_00.png"] * 2 + ["b_00.png"] * 2
    assert list(manifest.source_image) == ["images/a.jpg"] * 2 + ["images/b.jpg"] * 2
    assert (manifest.seed == 42).all() and list(manifest.class_name) == [CLASSES["a"]] * 2 + [CLASSES["b"]] * 2
    assert calls[-1] == ("write_csv", "manifest.csv") and calls[-2] == ("write_json", "params.json")
    assert sorted(name for fn, name in calls if fn == "save_image") == sorted(
        list(manifest.image) + ["canny/a_b0.png", "canny/b_b0.png"])
    saved = pd.read_csv(out / "manifest.csv", dtype={"item_id": str}, keep_default_na=False)
    assert saved.equals(manifest.astype(saved.dtypes.to_dict()))
    recorded = json.loads((out / "params.json").read_text())
    assert recorded["text_handling"] == "chunked-77" and set(recorded["model"]) == {"sd", "controlnet"}
    assert recorded["params"]["canny_input"] == "rgb" and recorded["params"]["control_resize"] == "annotator"
    assert recorded["params"] == PARAMS and recorded["base_dir"] == str(base)

    # images: exactly diffusers' StableDiffusionControlNetPipeline on the same inputs
    for item in ("a", "b"):
        canny = cv2_canny(Image.open(base / f"{item}_00.png"))
        assert np.array_equal(np.asarray(Image.open(out / "canny" / f"{item}_b0.png")), np.asarray(canny))
        prompt = f"a photo of {CLASSES[item]}, {PROMPTS[item]}, best quality, extremely detailed"
        assert set(manifest[manifest.item_id == item].prompt) == {prompt}
        expected = reference(
            prompt=prompt, negative_prompt=PARAMS["negative_prompt"], image=canny,
            generator=torch.Generator().manual_seed(42), num_images_per_prompt=2, num_inference_steps=2,
            guidance_scale=9.0, controlnet_conditioning_scale=1.0, eta=0.0, height=64, width=64).images
        for sample in range(2):
            got = np.asarray(Image.open(out / f"{item}_b0_{sample:02d}.png"))
            assert np.array_equal(got, np.asarray(expected[sample])), (item, sample)


def test_base_samples_and_missing_inputs(config, tmp_path):
    base = make_base(tmp_path / "base", {"a": 2})
    prompts = make_prompts(tmp_path / "p.csv")  # also lists b, which has no base image: skipped
    params = {**PARAMS, "base_samples": 2, "samples_per_input": 1}
    manifest = cn.run_shard(config, "sd", "controlnet", str(base), prompts, str(tmp_path / "out"), params)
    assert list(manifest.image) == ["a_b0_00.png", "a_b1_00.png"] and list(manifest.base_sample) == [0, 1]
    assert sorted(os.listdir(tmp_path / "out" / "canny")) == ["a_b0.png", "a_b1.png"]
    # base_samples 0: every base image of an item (the authors' main.py), 1: only the first
    every = cn.select_inputs(pd.read_csv(make_base(tmp_path / "base3", {"a": 3, "b": 2}) / "manifest.csv"),
                             pd.read_csv(prompts), {**params, "base_samples": 0}, tmp_path / "base3")
    first = cn.select_inputs(pd.read_csv(tmp_path / "base3" / "manifest.csv"), pd.read_csv(prompts),
                             {**params, "base_samples": 1}, tmp_path / "base3")
    assert list(zip(every.item_id, every.base_sample)) == [("a", 0), ("a", 1), ("a", 2), ("b", 0), ("b", 1)]
    assert list(zip(first.item_id, first.base_sample)) == [("a", 0), ("b", 0)]

    (base / "a_01.png").unlink()
    with pytest.raises(InputError, match=r"a_01\.png"):
        cn.run_shard(config, "sd", "controlnet", str(base), prompts, str(tmp_path / "out2"), params)
    assert not (tmp_path / "out2").exists()
    with pytest.raises(InputError, match="item.* a .*no row in the prompts table"):
        cn.run_shard(config, "sd", "controlnet", str(base), make_prompts(tmp_path / "q.csv", ["b"]),
                     str(tmp_path / "out3"), PARAMS)


def test_empty_base_loads_no_model(tmp_path):
    config = {"results_dir": str(tmp_path), "hub_offline": True, "device": "cpu", "dtype": "float32",
              "models": {"sd": {"kind": "sd", "source": "tiny"},
                         "controlnet": {"kind": "controlnet", "source": "tiny"}}}  # never built
    base = make_base(tmp_path / "base", {})
    manifest = cn.run_shard(config, "sd", "controlnet", str(base), make_prompts(tmp_path / "p.csv", []),
                            str(tmp_path / "out"), PARAMS)
    assert manifest.empty
    assert list(pd.read_csv(tmp_path / "out" / "manifest.csv").columns) == cn.MANIFEST_COLUMNS


# --- regenerate -------------------------------------------------------------------------

def test_control_image_changes_the_output(pipe):
    one, other = shapes(seed=1), shapes(seed=2)
    assert not np.array_equal(np.asarray(cv2_canny(one)), np.asarray(cv2_canny(other)))
    out = cn.regenerate(pipe, [one, other], ["a bird", "a bird"], {**PARAMS, "samples_per_input": 1})
    assert np.abs(np.asarray(out[0][0]).astype(int) - np.asarray(out[1][0])).mean() > 1


def test_mixed_sizes_long_prompts_and_eta(pipe):
    long_prompt = " ".join(["red", "blue", "green", "small", "large"] * 40)
    bases = [shapes((100, 60), seed=3), shapes((60, 100), seed=4), shapes((100, 60), seed=5)]
    params = {**PARAMS, "long_side": 128, "samples_per_input": 1, "batch_size": 8}
    out = cn.regenerate(pipe, bases, ["a bird", "a bird", long_prompt], params)
    assert [images[0].size for images in out] == [(128, 64), (64, 128), (128, 64)]
    # each input alone gives the same images (float rounding of other batch sizes aside)
    alone = cn.regenerate(pipe, bases[2:], [long_prompt], params)
    assert np.abs(np.asarray(out[2][0]).astype(int) - np.asarray(alone[0][0])).max() <= 2
    # eta > 0: reproducible, and DDIM's extra noise does change the images
    params = {**PARAMS, "samples_per_input": 1}
    noisy = [arrays(cn.regenerate(pipe, bases[:1], ["a bird"], {**params, "eta": 1.0})[0]) for _ in range(2)]
    plain = arrays(cn.regenerate(pipe, bases[:1], ["a bird"], params)[0])
    assert np.array_equal(noisy[0][0], noisy[1][0])
    assert not np.array_equal(noisy[0][0], plain[0])


def test_text_handling_truncate_equals_diffusers_on_a_long_prompt(pipe, reference):
    """The authors' ControlNet (cldm's FrozenCLIPEmbedder) and diffusers keep a prompt's first
    75 tokens: text_handling "truncate" gives diffusers' images; "chunked" reads the tail too."""
    long_prompt = "a photo of a bird, " + " ".join(["red", "blue", "green", "small", "large"] * 30)
    base = shapes(seed=7)
    params = {**PARAMS, "samples_per_input": 1}
    truncated = cn.regenerate(pipe, [base], [long_prompt], {**params, "text_handling": "truncate"})[0][0]
    chunked = cn.regenerate(pipe, [base], [long_prompt], {**params, "text_handling": "chunked"})[0][0]
    expected = reference(prompt=long_prompt, image=cv2_canny(base), generator=torch.Generator().manual_seed(42),
                         num_images_per_prompt=1, num_inference_steps=2, guidance_scale=9.0,
                         negative_prompt=PARAMS["negative_prompt"], height=64, width=64).images[0]
    assert np.array_equal(np.asarray(truncated), np.asarray(expected))
    assert not np.array_equal(np.asarray(chunked), np.asarray(truncated))
