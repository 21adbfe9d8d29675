"""SDEdit and GradOP+ on stroke paintings (tiny SD, 64x64), the stroke dataset, faithfulness."""

import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pandas as pd
import pytest
import torch
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image, ImageDraw

from ctrlbench import io
from ctrlbench.data import ITEM_COLUMNS
from ctrlbench.data.strokes import make_toy_strokes, read_strokes, stroke_painting
from ctrlbench.errors import DatasetError, InputError
from ctrlbench.methods import gradop as gp
from ctrlbench.methods import sdedit as se
from ctrlbench.metrics.faithfulness import faithfulness_mse, faithfulness_shard, gaussian_blur
from ctrlbench.models.loaders import load_model

SIZE = {"height": 64, "width": 64}
SDEDIT = {**se.SDEDIT_DEFAULTS, **SIZE, "num_inference_steps": 4, "batch_size": 1}
# 64x64 tests: a small painting function (the paper's 35/7 is for 512x512)
GRADOP = {**gp.GRADOP_DEFAULTS, **SIZE, "num_inference_steps": 6, "num_iterative_steps": 2,
          "grad_steps_per_iter": 8, "blur_kernel": 9, "blur_sigma": 2.0}
PROMPTS = ["a photo of a red bird", "a small blue house", "a cat on a sofa", "a green tree"]


def shapes(seed, size=64):
    """A flat-colour drawing: background plus three ellipses/rectangles."""
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(0, 256, 3)))
    draw = ImageDraw.Draw(image)
    for _ in range(3):
        x0, y0 = rng.integers(0, size // 2), rng.integers(0, size // 2)
        x1, y1 = x0 + rng.integers(16, size // 2), y0 + rng.integers(16, size // 2)
        fill = tuple(int(v) for v in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1, y1), fill=fill)
    return image


STROKES = [stroke_painting(shapes(seed)) for seed in range(4)]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models on a shared 2-core machine: one torch thread is several times faster."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def config(tiny_config):
    return tiny_config("stroke_results", {"sd": "sd"})


@pytest.fixture(scope="module")
def pipe(config):
    return load_model(config, "sd", "cpu", torch.float32)


@pytest.fixture(scope="module")
def reference(config):
    """Plain diffusers pipelines straight from the folder (its scheduler is DDIM)."""
    from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionPipeline

    text2img = StableDiffusionPipeline.from_pretrained(os.path.join(config["results_dir"], "models", "tiny", "sd"),
                                                       safety_checker=None, requires_safety_checker=False)
    img2img = StableDiffusionImg2ImgPipeline(**text2img.components, requires_safety_checker=False)
    for p in (text2img, img2img):
        p.set_progress_bar_config(disable=True)
    return {"text2img": text2img, "img2img": img2img}


def arr(image):
    return np.asarray(image).astype(int)


def write_inputs(path, items):
    """A shard's inputs table: {item_id: (prompt, stroke image)}; images saved beside it."""
    rows = []
    for item, (prompt, image) in items.items():
        image_path = path.parent / f"{item}_stroke.png"
        image.save(image_path)
        rows.append({"item_id": item, "prompt": prompt, "image": str(image_path), "class_name": ""})
    pd.DataFrame(rows).to_csv(path, index=False)
    return str(path)


# --- SDEdit ---------------------------------------------------------------------------

@pytest.mark.parametrize("strength", [0.5, 0.75])
def test_sdedit_equals_img2img_pipeline(pipe, reference, strength):
    params = {**SDEDIT, "strength": strength, "negative_prompt": "blurry"}
    ours = se.sdedit(pipe, STROKES[:2], PROMPTS[:2], params, seeds=[3, 4])
    for k in range(2):
        expected = reference["img2img"](prompt=PROMPTS[k], image=STROKES[k], strength=strength,
                                        num_inference_steps=4, guidance_scale=7.5, negative_prompt="blurry",
                                        generator=torch.Generator().manual_seed(3 + k)).images[0]
        assert np.array_equal(arr(ours[k]), arr(expected)), (strength, k)


def test_strength_sets_the_start_timestep(pipe, monkeypatch):
    assert se.start_index(50, 0.8) == 10 and se.start_index(4, 0.5) == 2 and se.start_index(4, 1.0) == 0
    with pytest.raises(ValueError):
        se.start_index(50, 1.5)
    started = []
    original = se.ddim_scheduler

    def spy(p):
        scheduler = original(p)
        add_noise = scheduler.add_noise
        scheduler.add_noise = lambda x, noise, t: (started.append(int(t[0])), add_noise(x, noise, t))[1]
        return scheduler
    monkeypatch.setattr(se, "ddim_scheduler", spy)
    images = [se.sdedit(pipe, STROKES[:1], PROMPTS[:1], {**SDEDIT, "strength": s})[0] for s in (0.5, 0.75, 1.0)]
    # DDIM, 4 steps, steps_offset 1: timesteps 751, 501, 251, 1; strength s starts at index 4 - int(4 s)
    assert started == [251, 501, 751]
    assert np.abs(arr(images[0]) - arr(images[1])).mean() > 1 and np.abs(arr(images[1]) - arr(images[2])).mean() > 1


def test_sdedit_run_shard(config, reference, tmp_path, monkeypatch):
    calls = []
    for fn in ("save_image", "write_json", "write_csv"):
        original = getattr(io, fn)
        monkeypatch.setattr(io, fn, lambda path, obj, _fn=fn, _o=original: (calls.append((_fn, Path(path).name)),
                                                                            _o(path, obj))[1])
    inputs = write_inputs(tmp_path / "inputs.csv", {"fox": (PROMPTS[0], STROKES[0]), "tree": (PROMPTS[3], STROKES[3])})
    params = {**SDEDIT, "samples_per_input": 2, "batch_size": 2, "seed": 7}
    manifest = se.run_shard(config, "sd", inputs, str(tmp_path / "out"), params)
    monkeypatch.undo()
    assert list(manifest.columns) == se.MANIFEST_COLUMNS
    assert list(zip(manifest.item_id, manifest["sample"], manifest.seed)) == [
        ("fox", 0, 7), ("fox", 1, 8), ("tree", 0, 7), ("tree", 1, 8)]
    assert calls[-2:] == [("write_json", "params.json"), ("write_csv", "manifest.csv")]
    out = tmp_path / "out"
    recorded = json.loads((out / "params.json").read_text())
    assert recorded["params"] == params and recorded["method"] == "sdedit"
    for row in manifest.itertuples():  # sample s = one img2img call with seed + s (batch of 2: +-2 levels)
        k = 0 if row.item_id == "fox" else 3
        expected = reference["img2img"](prompt=PROMPTS[k], image=STROKES[k], strength=0.8, num_inference_steps=4,
                                        guidance_scale=7.5, generator=torch.Generator().manual_seed(row.seed)).images[0]
        assert np.abs(arr(Image.open(out / row.image)) - arr(expected)).max() <= 2, row


def test_empty_shards_load_no_model(tmp_path):
    config = {"results_dir": str(tmp_path), "hub_offline": True, "device": "cpu", "dtype": "float32",
              "models": {"sd": {"kind": "sd", "source": "tiny"}}}  # never built
    pd.DataFrame(columns=["item_id", "prompt", "image"]).to_csv(tmp_path / "empty.csv", index=False)
    for module, name in ((se, "a"), (gp, "b")):
        manifest = module.run_shard(config, "sd", str(tmp_path / "empty.csv"), str(tmp_path / name),
                                    {**(SDEDIT if module is se else GRADOP)})
        assert manifest.empty and list(pd.read_csv(tmp_path / name / "manifest.csv").columns) == module.MANIFEST_COLUMNS
    with pytest.raises(InputError, match="prompt"):
        pd.DataFrame({"item_id": ["x"], "image": ["x.png"]}).to_csv(tmp_path / "bad.csv", index=False)
        se.run_shard(config, "sd", str(tmp_path / "bad.csv"), str(tmp_path / "c"), SDEDIT)


# --- GradOP+ --------------------------------------------------------------------------

def test_optimised_steps():
    assert gp.optimised_steps(50, 0.8, 3) == [9, 10, 11]  # int(50 * (1 - 0.8)) = 9 in floating point
    assert gp.optimised_steps(6, 0.5, 2) == [3, 4]
    assert gp.optimised_steps(6, 0.2, 3) == [4]           # never after the last step
    assert gp.optimised_steps(6, 0.8, 0) == [] and gp.optimised_steps(6, 0.8, 3, grad_steps_per_iter=0) == []
    with pytest.raises(ValueError, match="memory_saver"):
        gp.check_params({**GRADOP, "memory_saver": "offload"})
    with pytest.raises(ValueError, match="odd"):
        gp.check_params({**GRADOP, "blur_kernel": 8})


@pytest.mark.parametrize("off", [{"num_iterative_steps": 0}, {"grad_steps_per_iter": 0}])
def test_gradop_without_optimisation_is_plain_text_to_image(pipe, reference, off):
    ours = gp.gradop(pipe, STROKES[:2], PROMPTS[:2], {**GRADOP, **off, "batch_size": 1}, [5, 6])
    for k in range(2):
        noise = randn_tensor((1, 4, 8, 8), generator=torch.Generator().manual_seed(5 + k), dtype=torch.float32)
        expected = reference["text2img"](prompt=PROMPTS[k], latents=noise, num_inference_steps=6, guidance_scale=7.5,
                                         height=64, width=64).images[0]
        assert np.array_equal(arr(ours[k]), arr(expected)), k


def test_more_grad_steps_are_more_faithful(pipe):
    """Same seeds, K=2, 6 steps: G=8 Adam steps per iteration beat G=1 on every image, and
    every inner optimisation lowers its loss."""
    results = {}
    for steps in (1, 8):
        loss_log = []
        images = gp.gradop(pipe, STROKES, PROMPTS, {**GRADOP, "grad_steps_per_iter": steps, "batch_size": 4},
                           [0, 1, 2, 3], loss_log=loss_log)
        results[steps] = np.array([faithfulness_mse(image, stroke, 9, 2.0) for image, stroke in zip(images, STROKES)])
        assert [[e["step"] for e in entries] for entries in loss_log] == [[1, 2]] * 4  # int(6 * 0.2) = 1
        assert all(len(e["losses"]) == steps for entries in loss_log for e in entries)
        if steps == 8:
            for entries in loss_log:
                for e in entries:
                    assert e["losses"][-1] < e["losses"][0], e
    assert (results[8] < results[1]).all(), results
    assert (results[8] / results[1]).mean() < 0.97, results


def test_memory_savers(pipe):
    params = {**GRADOP, "num_iterative_steps": 1, "grad_steps_per_iter": 3, "batch_size": 2}
    runs = {}
    for saver in gp.MEMORY_SAVERS:
        loss_log = []
        runs[saver] = gp.gradop(pipe, STROKES[:2], PROMPTS[:2], {**params, "memory_saver": saver}, 0, loss_log=loss_log)
        assert all(e["losses"][-1] < e["losses"][0] for entries in loss_log for e in entries), saver
    for saver in ("vae_slicing", "checkpointing"):  # the same optimisation, other memory use
        for a, b in zip(runs["none"], runs[saver]):
            assert np.abs(arr(a) - arr(b)).max() <= 1, saver
    # the pipeline's own VAE is untouched (the optimisation uses a float32 copy)
    assert not pipe.vae.use_tiling and all(p.grad is None for p in pipe.vae.parameters())


def test_float16_pipeline_optimises_in_float32(config, pipe):
    half = load_model(config, "sd", "cpu", torch.float16)
    params = {**GRADOP, "num_inference_steps": 4, "num_iterative_steps": 1, "grad_steps_per_iter": 3}
    assert gp.make_grad_vae(half.vae).dtype == torch.float32 and half.vae.dtype == torch.float16
    logs = {}
    for name, p in (("fp32", pipe), ("fp16", half)):
        logs[name] = []
        (image,) = gp.gradop(p, STROKES[:1], PROMPTS[:1], params, 0, loss_log=logs[name])
        assert image.size == (64, 64)
    # same optimisation up to the fp16 denoising before it
    assert np.allclose(logs["fp16"][0][0]["losses"], logs["fp32"][0][0]["losses"], rtol=1e-2)


def test_gradop_run_shard(config, tmp_path):
    inputs = write_inputs(tmp_path / "inputs.csv", {"cat": (PROMPTS[2], STROKES[2])})
    params = {**GRADOP, "num_inference_steps": 4, "num_iterative_steps": 1, "grad_steps_per_iter": 2,
              "samples_per_input": 2}
    manifest = gp.run_shard(config, "sd", inputs, str(tmp_path / "out"), params)
    assert list(manifest.columns) == gp.MANIFEST_COLUMNS and list(manifest.seed) == [0, 1]
    for row in manifest.itertuples():
        assert Image.open(tmp_path / "out" / row.image).size == (64, 64)
        (entry,) = json.loads(row.gradop_losses)
        assert entry["step"] == 0 and entry["first"] > entry["last"] > 0  # int(4 * 0.2) = 0
    recorded = json.loads((tmp_path / "out" / "params.json").read_text())
    assert recorded["params"] == params and recorded["optimisation_dtype"] == "float32"


# --- stroke datasets ------------------------------------------------------------------

def test_read_strokes(tmp_path):
    (tmp_path / "images").mkdir()
    STROKES[0].save(tmp_path / "images" / "my fox.png")
    STROKES[1].save(tmp_path / "images" / "tree.png")
    pd.DataFrame({"image": ["tree.png", "my fox.png"], "prompt": ["a tree", " a fox "]}).to_csv(
        tmp_path / "prompts.csv", index=False)
    items = read_strokes(tmp_path)
    assert list(items.columns) == list(ITEM_COLUMNS) + ["prompt"]
    assert list(items.item_id) == ["my_fox", "tree"] and list(items.prompt) == ["a fox", "a tree"]
    assert items.image[0] == str((tmp_path / "images" / "my fox.png").resolve())
    assert json.loads(items.captions[0]) == ["a fox"] and (items.class_id == -1).all() and (items.split == "test").all()


def test_read_strokes_gradop_naming(tmp_path):
    (tmp_path / "input-images").mkdir()
    STROKES[0].save(tmp_path / "input-images" / "fox.png")
    pd.DataFrame({"img_path": ["./input-images/fox.png", "fox.png"], "prompt": ["a photo of a fox", "a fox painting"],
                  "item_id": ["fox", "fox-2"]}).to_csv(tmp_path / "prompts.csv", index=False)
    items = read_strokes(tmp_path)
    assert list(items.item_id) == ["fox", "fox-2"] and items.image.nunique() == 1


@pytest.mark.parametrize("rows, message", [
    (None, "prompts.csv"),
    ({"image": ["a.png", "gone.png"], "prompt": ["x", "y"]}, "line 3.*gone.png"),
    ({"image": ["a.png"], "prompt": ["  "]}, "line 2: empty prompt"),
    ({"image": ["a.png", "a.png"], "prompt": ["x", "y"]}, "not unique"),
    ({"file": ["a.png"], "prompt": ["x"]}, "needs columns"),
])
def test_read_strokes_errors(tmp_path, rows, message):
    (tmp_path / "images").mkdir()
    STROKES[0].save(tmp_path / "images" / "a.png")
    if rows is not None:
        pd.DataFrame(rows).to_csv(tmp_path / "prompts.csv", index=False)
    with pytest.raises(DatasetError, match=message):
        read_strokes(tmp_path)


def test_toy_strokes_are_deterministic(tmp_path):
    sources = []
    for seed in range(3):
        sources.append(tmp_path / f"bird {seed}.png")
        shapes(seed, size=80).save(sources[-1])
    (tmp_path / "elsewhere").mkdir()
    moved = [tmp_path / "elsewhere" / s.name for s in sources]
    for source, target in zip(sources, moved):
        target.write_bytes(source.read_bytes())
    first = make_toy_strokes(tmp_path / "a", sources, PROMPTS[:3])
    make_toy_strokes(tmp_path / "b", moved, PROMPTS[:3])  # the sources' folder leaves no trace
    make_toy_strokes(tmp_path / "a", sources, PROMPTS[:3])  # replacing a toy copy is allowed
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*") if p.is_file())
    assert all((first / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files)
    items = read_strokes(first)
    assert list(items.item_id) == ["bird_0", "bird_1", "bird_2"] and list(items.prompt) == PROMPTS[:3]
    assert all(Image.open(path).size == (64, 64) for path in items.image)
    flat = stroke_painting(shapes(0, size=80), 64, n_colors=4, blur_radius=0)
    assert len(np.unique(np.asarray(flat).reshape(-1, 3), axis=0)) <= 4
    with pytest.raises(DatasetError, match="refusing"):
        (tmp_path / "real").mkdir()
        (tmp_path / "real" / "data.txt").write_text("x")
        make_toy_strokes(tmp_path / "real", sources, PROMPTS[:3])


# --- faithfulness -----------------------------------------------------------------------

def test_faithfulness_mse_known_values():
    grey = Image.new("RGB", (64, 64), (200, 200, 200))
    assert faithfulness_mse(grey, grey, 9, 2.0) == pytest.approx(0.0, abs=1e-20)
    dark = Image.new("RGB", (32, 32), (100, 100, 100))  # resized to 64x64: still uniform
    assert faithfulness_mse(grey, dark, 9, 2.0) == pytest.approx((100 / 255) ** 2, rel=1e-9)
    # one channel off by 255 everywhere: MSE = 1/3
    red = Image.new("RGB", (64, 64), (255, 0, 0))
    assert faithfulness_mse(red, Image.new("RGB", (64, 64), (0, 0, 0)), 35, 7.0) == pytest.approx(1 / 3, rel=1e-9)
    # an edge: the blurred edge differs from the sharp one, and a wider blur differs more
    half = np.zeros((64, 64, 3), np.uint8)
    half[:, 32:] = 255
    edge = Image.fromarray(half)
    assert 0 < faithfulness_mse(edge, edge, 9, 2.0) < faithfulness_mse(edge, edge, 35, 7.0)


def test_blur_equals_torchvision_gaussian_blur():
    from torchvision.transforms.functional import gaussian_blur as tv_blur

    x = torch.rand(2, 3, 40, 48, dtype=torch.float64)
    for kernel, sigma in ((9, 2.0), (35, 7.0)):
        assert torch.allclose(gaussian_blur(x, kernel, sigma), tv_blur(x, [kernel, kernel], [sigma, sigma]),
                              atol=1e-12)


def test_faithfulness_shard(tmp_path):
    inputs = write_inputs(tmp_path / "inputs.csv", {"a": ("x", STROKES[0]), "b": ("y", STROKES[1])})
    out = tmp_path / "images"
    out.mkdir()
    rows = []
    for item, sample, image in (("a", 0, STROKES[0]), ("a", 1, STROKES[2]), ("b", 0, STROKES[1])):
        image.save(out / f"{item}_{sample:02d}.png")
        rows.append({"item_id": item, "sample": sample, "image": f"{item}_{sample:02d}.png"})
    pd.DataFrame(rows).to_csv(out / "manifest.csv", index=False)
    frame = faithfulness_shard(str(out), inputs, str(tmp_path / "m.csv"), 9, 2.0)
    saved = pd.read_csv(tmp_path / "m.csv", dtype={"item_id": str}, keep_default_na=False)
    assert list(saved.columns) == ["item_id", "sample", "image", "metric", "value", "scale", "model", "text_handling"]
    assert list(saved.metric) == ["faithfulness_mse"] * 3 and list(saved.scale) == ["mse"] * 3
    assert saved.value[0] == pytest.approx(faithfulness_mse(STROKES[0], STROKES[0], 9, 2.0))
    assert saved.value[1] > saved.value[0]  # another item's painting is less faithful
    assert len(frame) == 3
