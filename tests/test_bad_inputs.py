"""Bad inputs (issue "Reliability", part 2): every case gives a clear error that names the
item, file or key and the problem, leaves no partial output (no file or folder under the
final name, no hidden `.*.tmp*` sibling), and leaves the other shards' results as they
were. Valid but unusual inputs (image modes, long and non-ASCII prompts, a batch that runs
out of GPU memory) must work. docs/reliability.md lists the cases."""

from __future__ import annotations

import copy
import errno
import json
import logging
import os
import re
import shutil
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from ctrlbench import config as cb_config
from ctrlbench import io
from ctrlbench.data.items import prepare_items
from ctrlbench.data.readers import read_dataset
from ctrlbench.data.toy import make_toy
from ctrlbench.errors import ConfigError, DatasetError, InputError, ModelNotFoundError
from ctrlbench.methods import multidiffusion as md
from ctrlbench.methods import sd
from ctrlbench.methods.registry import MULTIDIFFUSION_REGIONS_DEFAULTS, SD_DEFAULTS
from ctrlbench.metrics.clip_score import similarity_shard
from ctrlbench.metrics.embeddings import (embed_method_images, embed_prompts, load_embeddings, open_rgb,
                                          save_embeddings)
from ctrlbench.metrics.faithfulness import faithfulness_shard
from ctrlbench.prompts.llm import LLMError, llm_prompts_for_shard
from ctrlbench.report.tables import summarize_metric_files

# The fake OpenAI-format server and its helpers live in test_llm_prompts; its fixtures
# `server` (module scope) and `llm` are reused here under their own names.
import test_llm_prompts as fake_llm
from test_llm_prompts import ITEMS, cfg, unused_port, write_items

server = fake_llm.server
llm = fake_llm.llm

SD_PARAMS = {**SD_DEFAULTS, "num_inference_steps": 2, "height": 64, "width": 64, "images_per_prompt": 2,
             "batch_size": 2, "negative_prompt": "lowres"}
REGIONS = {**MULTIDIFFUSION_REGIONS_DEFAULTS, "height": 64, "width": 64, "window_size": 8, "stride": 4,
           "num_inference_steps": 2, "bootstrap_steps": 1, "n_backgrounds": 2, "samples_per_item": 1}


# --- helpers --------------------------------------------------------------------------------

def strays(folder: Path) -> list[str]:
    """Hidden temporary files or folders (`.*.tmp*`) that an atomic write left in `folder`."""
    folder = Path(folder)
    return sorted(p.name for p in folder.glob(".*.tmp*")) if folder.is_dir() else []


def assert_no_output(path: Path) -> None:
    """Nothing under the final name and no temporary sibling of it."""
    path = Path(path)
    assert not path.exists(), f"{path} was left behind"
    assert strays(path.parent) == [], f"temporary files left in {path.parent}"


def tree(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` (or the file itself) with its bytes."""
    folder = Path(folder)
    if folder.is_file():
        return {folder.name: folder.read_bytes()}
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


class Good:
    """A good shard's results (copied into the test's own folder): `path`, and `intact()`
    says whether its files are byte for byte what they were."""

    def __init__(self, source: Path, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, path)
        else:
            shutil.copyfile(source, path)
        self.path, self.before = path, tree(path)

    def intact(self) -> bool:
        return self.path.exists() and tree(self.path) == self.before


def write_prompts(path: Path, prompts: list[str], prefix: str = "item") -> str:
    frame = pd.DataFrame({"item_id": [f"{prefix}{i}" for i in range(len(prompts))], "prompt": prompts,
                          "class_name": "Laysan Albatross", "image": ""})
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False)
    return str(path)


# --- shared builds --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def models(tiny_config):
    return tiny_config("bad_inputs", {"sd": "sd", "clip": "open_clip"})


@pytest.fixture(scope="module")
def toy_roots(tmp_path_factory):
    base = tmp_path_factory.mktemp("toy")
    return {fmt: make_toy(fmt, base / fmt) for fmt in ("cub", "coco", "flowers")}


@pytest.fixture(scope="module")
def good_sd(models, tmp_path_factory):
    """shard-000 of an SD run, made once."""
    folder = tmp_path_factory.mktemp("good_sd")
    out = folder / "shard-000"
    sd.run_shard(models, "sd", write_prompts(folder / "p0.csv", ["a photo of a red bird"]), str(out), SD_PARAMS)
    return out


@pytest.fixture
def sd_shards(good_sd, tmp_path):
    """(shard-000 of the run, copied: a Good; the folder of shard-001)."""
    parent = tmp_path / "images" / "birds" / "sd" / "default"
    return Good(good_sd, parent / "shard-000"), parent / "shard-001"


def run_sd(config, tmp_path, prompts, out, **params):
    return sd.run_shard(config, "sd", write_prompts(tmp_path / "prompts" / f"{out.name}.csv", prompts), str(out),
                        {**SD_PARAMS, **params})


# === 1. datasets ============================================================================

def _remove_first_image(root: Path, fmt: str) -> None:
    os.remove(read_dataset(fmt, root)["image"][0])


@pytest.mark.parametrize("fmt, damage, match", [
    ("cub", lambda root: os.remove(root / "CUB_200_2011" / "images.txt"),
     r"CUB: missing file .*CUB_200_2011/images\.txt\. Expected the CUB-200-2011 layout"),
    ("coco", lambda root: shutil.rmtree(root / "annotations"),
     r"COCO: missing file .*annotations/instances_val2017\.json\. Expected the COCO 2017 layout"),
    ("cub", lambda root: _remove_first_image(root, "cub"),
     r"CUB: image .*\.jpg is listed in .*images\.txt \(split 'test'\) but the file is missing"),
    ("flowers", lambda root: _remove_first_image(root, "flowers"),
     r"Flowers: image .*image_\d+\.jpg is listed in .*setid\.mat \(split 'test'\) but the file is missing"),
], ids=["cub_images_txt_missing", "coco_annotations_missing", "cub_image_missing", "flowers_split_lists_missing"])
def test_broken_dataset_fails_the_items_step_and_keeps_the_last_items(toy_roots, tmp_path, fmt, damage, match):
    root = Path(shutil.copytree(toy_roots[fmt], tmp_path / "data"))
    results = tmp_path / "results" / "data" / fmt
    kwargs = dict(items_csv=str(results / "items.csv"), shard_dir=str(results / "shards"), n_shards=2,
                  counts_csv=str(results / "item_counts.csv"))
    prepare_items(fmt, str(root), None, **kwargs)  # a first, good run
    before = tree(results)
    damage(root)
    with pytest.raises(DatasetError, match=match):
        prepare_items(fmt, str(root), None, **kwargs)
    assert tree(results) == before  # nothing rewritten, nothing half-written
    assert strays(results) == [] and strays(results / "shards") == []


# === 2. images ==============================================================================

@pytest.fixture(scope="module")
def good_clip(models, tmp_path_factory):
    """A method shard folder with two good images and its CLIP cache (shard-000)."""
    base = tmp_path_factory.mktemp("good_clip")
    images = base / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a_00.png", "b_00.png"):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(images / name)
    pd.DataFrame({"item_id": ["a", "b"], "sample": [0, 0], "image": ["a_00.png", "b_00.png"]}).to_csv(
        images / "manifest.csv", index=False)
    embed_method_images(models, "clip", str(images), str(base / "shard-000.npz"))
    return base / "shard-000.npz"


def _image_bytes(kind: str) -> bytes:
    import io as stdio

    rng = np.random.default_rng(1)
    image = Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
    buffer = stdio.BytesIO()
    image.save(buffer, "JPEG" if kind == "truncated_jpeg" else "PNG")
    data = buffer.getvalue()
    if kind == "truncated_jpeg":
        return data[: len(data) // 2]
    if kind == "corrupt_png":  # the compressed pixel data overwritten with zeros
        start = data.find(b"IDAT") + 8
        return data[:start] + bytes(len(data) - start - 16) + data[-16:]
    return b""  # zero_byte


@pytest.mark.parametrize("kind, name, problem", [
    ("truncated_jpeg", "bad_00.jpg", "[Tt]runcated"),
    ("corrupt_png", "bad_00.png", "broken data stream"),
    ("zero_byte", "bad_00.png", "cannot identify image file"),
], ids=["truncated_jpeg", "corrupt_png", "zero_byte"])
def test_unreadable_image_fails_its_embedding_shard(models, good_clip, tmp_path, kind, name, problem):
    cache = tmp_path / "cache" / "clip" / "clip" / "birds" / "sd" / "default"
    good = Good(good_clip, cache / "shard-000.npz")
    shard = tmp_path / "images" / "shard-001"
    shard.mkdir(parents=True)
    Image.new("RGB", (32, 32), (200, 10, 10)).save(shard / "ok_00.png")
    (shard / name).write_bytes(_image_bytes(kind))
    pd.DataFrame({"item_id": ["ok", "bad"], "sample": [0, 0], "image": ["ok_00.png", name]}).to_csv(
        shard / "manifest.csv", index=False)
    out = cache / "shard-001.npz"
    with pytest.raises(InputError, match=rf"image .*shard-001/{name} cannot be read: .*{problem}"):
        embed_method_images(models, "clip", str(shard), str(out))
    assert_no_output(out)
    assert good.intact()


def _unusual(mode: str, path: Path) -> tuple[Path, tuple[int, int, int]]:
    """An image of `mode` and the RGB colour it should read as."""
    if mode == "L":
        image, rgb = Image.new("L", (32, 32), 100), (100, 100, 100)
    elif mode == "RGBA":  # composited over white: half of (10, 200, 30), half white
        image = Image.new("RGBA", (32, 32), (10, 200, 30, 128))
        rgb = tuple(round(c * 128 / 255 + 255 * 127 / 255) for c in (10, 200, 30))
    elif mode == "CMYK":  # saved as JPEG, the format that carries CMYK
        image, rgb = Image.new("CMYK", (32, 32), (0, 255, 255, 0)), (255, 0, 0)
        path = path.with_suffix(".jpg")
    elif mode == "I;16":  # 25700 / 65535 of full scale = 100 / 255
        image, rgb = Image.fromarray(np.full((32, 32), 25700, np.uint16)), (100, 100, 100)
    else:  # P
        image, rgb = Image.new("RGB", (32, 32), (0, 0, 255)).quantize(4), (0, 0, 255)
    image.save(path)
    with Image.open(path) as reopened:
        assert reopened.mode == mode
    return path, rgb


@pytest.mark.parametrize("mode", ["L", "RGBA", "CMYK", "I;16", "P"])
def test_unusual_image_modes_are_read_as_rgb(models, tmp_path, mode):
    shard = tmp_path / "shard-000"
    shard.mkdir()
    path, rgb = _unusual(mode, shard / "x_00.png")
    image = open_rgb(path)
    assert image.mode == "RGB" and image.size == (32, 32)
    assert np.abs(np.asarray(image, dtype=int) - rgb).max() <= 3, np.asarray(image)[0, 0]
    # CLIP embeddings are computed ...
    pd.DataFrame({"item_id": ["x"], "sample": [0], "image": [path.name]}).to_csv(shard / "manifest.csv", index=False)
    embed_method_images(models, "clip", str(shard), str(tmp_path / "clip.npz"))
    keys, emb = load_embeddings(tmp_path / "clip.npz")
    assert list(keys["image"]) == [path.name] and emb.shape[0] == 1
    assert np.isfinite(emb).all() and abs(np.linalg.norm(emb[0]) - 1) < 1e-4
    # ... and so is an image metric with it as the stroke painting
    outputs = tmp_path / "outputs"
    outputs.mkdir()
    Image.new("RGB", (32, 32), rgb).save(outputs / "x_00.png")
    pd.DataFrame({"item_id": ["x"], "sample": [0], "image": ["x_00.png"]}).to_csv(outputs / "manifest.csv",
                                                                                    index=False)
    pd.DataFrame({"item_id": ["x"], "image": [str(path)]}).to_csv(tmp_path / "inputs.csv", index=False)
    frame = faithfulness_shard(str(outputs), str(tmp_path / "inputs.csv"), str(tmp_path / "f.csv"), kernel=5,
                               sigma=1.0)
    assert frame["value"].iloc[0] < 1e-3  # the same flat colour: blurred, still the same


# === 3. config ==============================================================================

@pytest.mark.parametrize("mutate, match", [
    (lambda c: c.update(n_shard=3),
     r"Additional properties are not allowed \('n_shard' was unexpected\) at '\(top level\)'; allowed keys: "),
    (lambda c: c["methods"]["sd_template"]["params"].update(num_steps=3),
     r"methods\.sd_template\.params: unknown parameter\(s\) num_steps for kind 'sd' \(known: .*num_inference_steps"),
    (lambda c: c.update(n_shards="two"), r"'n_shards': 'two' is not of type 'integer'"),
    (lambda c: c["methods"]["sd_template"]["params"].update(num_inference_steps="4"),
     r"methods\.sd_template\.params\.num_inference_steps: expected int, got '4'"),
    (lambda c: c["methods"]["sd_template"].update(kind="dalle"),
     r"'methods\.sd_template\.kind': 'dalle' is not one of \['sd', "),
    (lambda c: c["methods"]["sd_template"].update(model="sd2"),
     r"methods\.sd_template\.model: unknown model 'sd2' \(models: .*\bsd\b"),
    (lambda c: c["methods"]["sd_template"].update(datasets=["imagenet"]),
     r"methods\.sd_template\.datasets: unknown dataset 'imagenet' \(datasets: .*cub"),
], ids=["unknown_top_level_key", "method_param_typo", "string_for_int", "string_for_int_param",
        "unknown_method_kind", "unknown_model_name", "unknown_dataset"])
def test_config_mistakes_name_the_key(default_config, mutate, match):
    config = copy.deepcopy(default_config)
    mutate(config)
    frozen = copy.deepcopy(config)
    with pytest.raises(ConfigError, match=match):
        cb_config.validate(config)
    assert config == frozen  # validation never edits the caller's dict


def test_model_that_is_not_on_disk_fails_its_shard(models, sd_shards, tmp_path):
    good, out = sd_shards
    config = {**models, "models": {"sd": {"kind": "sd", "source": "no-such-org/no-such-model"}}}
    with pytest.raises(ModelNotFoundError, match=r"model 'sd' \(kind sd, source 'no-such-org/no-such-model'\) "
                                                 r"is not available locally: .*hf download no-such-org/no-such-model"):
        run_sd(config, tmp_path, ["a photo of a bird"], out)
    assert_no_output(out)
    assert good.intact()


# === 4. masks (region methods) ==============================================================

@pytest.fixture(scope="module")
def good_regions(models, tmp_path_factory):
    folder = tmp_path_factory.mktemp("good_regions")
    mask = np.zeros((64, 64), np.uint8)
    mask[8:40, 8:40] = 255
    Image.fromarray(mask).save(folder / "dog.png")
    csv = write_regions(folder, "good", [{"voc_class": "dog", "path": "dog.png"}])
    md.run_regions_shard(models, "sd", csv, str(folder / "shard-000"), REGIONS)
    return folder / "shard-000"


def write_regions(folder: Path, item: str, masks: list[dict]) -> str:
    pd.DataFrame([{"item_id": item, "prompt": "a dog in a park", "masks": json.dumps(masks)}]).to_csv(
        folder / "inputs.csv", index=False)
    return str(folder / "inputs.csv")


def _mask(folder: Path, name: str, size: tuple[int, int], box=None) -> str:
    array = np.zeros(size, np.uint8)
    if box is not None:
        top, left, bottom, right = box
        array[top:bottom, left:right] = 255
    Image.fromarray(array).save(folder / name)
    return name


@pytest.mark.parametrize("case, match", [
    ("empty", r"MultiDiffusion item bad: mask .*empty\.png of class dog is empty"),
    ("missing", r"MultiDiffusion item bad: mask .*missing\.png of class dog does not exist"),
    ("vanishes_when_resized", r"MultiDiffusion item bad: mask of class dog is empty after resizing "
                              r"from 640x640 to 64x64"),
    ("not_an_image", r"MultiDiffusion item bad: mask .*broken\.png cannot be read: cannot identify image file"),
], ids=["empty", "missing", "vanishes_when_resized", "not_an_image"])
def test_bad_mask_fails_before_the_model_loads(models, good_regions, tmp_path, monkeypatch, case, match):
    parent = tmp_path / "images" / "coco" / "multidiffusion" / "default"
    good = Good(good_regions, parent / "shard-000")
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    name = {"empty": lambda: _mask(inputs, "empty.png", (64, 64)),
            "missing": lambda: "missing.png",
            "vanishes_when_resized": lambda: _mask(inputs, "line.png", (640, 640), (0, 0, 640, 1)),
            "not_an_image": lambda: (inputs / "broken.png").write_bytes(b"not a png") and "broken.png"}[case]()
    csv = write_regions(inputs, "bad", [{"voc_class": "dog", "path": name}])
    monkeypatch.setattr(md, "load_model", lambda *a, **k: pytest.fail("the model must not be loaded"))
    out = parent / "shard-001"
    with pytest.raises(InputError, match=match):
        md.run_regions_shard(models, "sd", csv, str(out), REGIONS)
    assert_no_output(out)
    assert good.intact()


def test_mask_of_another_size_is_resized_with_a_warning(models, tmp_path, caplog):
    """Documented behaviour, not an error: a mask of another size is resized (nearest)."""
    csv = write_regions(tmp_path, "x", [{"voc_class": "dog", "path": _mask(tmp_path, "dog.png", (32, 32),
                                                                           (4, 4, 20, 20))}])
    with caplog.at_level(logging.WARNING, logger="ctrlbench.methods.regions"):
        manifest = md.run_regions_shard(models, "sd", csv, str(tmp_path / "out"), REGIONS)
    assert "MultiDiffusion item x: mask of class dog is 32x32, resized (nearest) to 64x64" in caplog.text
    with Image.open(tmp_path / "out" / json.loads(manifest["masks"][0])[0]["path"]) as saved:
        assert saved.size == (64, 64) and (np.asarray(saved) > 0).sum() == 32 * 32


# === 5. prompts =============================================================================

def test_empty_prompt_fails_before_the_model_loads(models, sd_shards, tmp_path, monkeypatch):
    good, out = sd_shards
    monkeypatch.setattr(sd, "load_model", lambda *a, **k: pytest.fail("the model must not be loaded"))
    with pytest.raises(InputError, match=r"prompts table .*shard-001\.csv: item item1 has an empty prompt"):
        run_sd(models, tmp_path, ["a photo of a bird", "   "], out)
    assert_no_output(out)
    assert good.intact()


def test_very_long_prompt_is_chunked_not_truncated(models, tmp_path):
    long = " ".join(f"a small red bird number {i} sits on a green branch," for i in range(120))
    pipe = sd.load_model(models, "sd")
    n_content = len(pipe.tokenizer(long).input_ids) - 2  # without start and end tokens
    assert n_content > 1000
    positive, negative = sd.encode_prompts(pipe, [long], "", pipe.device)[long]
    assert positive.shape[1] == negative.shape[1] == 77 * -(-n_content // 75)  # every token, in 75-token chunks
    manifest = run_sd(models, tmp_path, [long], tmp_path / "out", images_per_prompt=1)
    saved = pd.read_csv(tmp_path / "out" / "manifest.csv", keep_default_na=False)
    assert saved["prompt"][0] == long and (tmp_path / "out" / manifest["image"][0]).is_file()
    # CLIP text embeddings of it: truncated and chunked, both finite
    csv = write_prompts(tmp_path / "clip_prompts.csv", [long])
    embed_prompts(models, "clip", csv, str(tmp_path / "text.npz"), long_text=("truncate", "chunked"))
    keys, chunked = load_embeddings(tmp_path / "text.npz", "emb_chunked")
    assert keys["n_tokens"][0] > 1000 and keys["n_chunks"][0] >= 14 and np.isfinite(chunked).all()


def test_non_ascii_prompts_work(models, tmp_path):
    prompts = ["一只红色的小鸟站在树枝上", "a parrot 🦜 on a branch 🌳", "Ελληνικά, русский, עברית"]
    manifest = run_sd(models, tmp_path, prompts, tmp_path / "out", images_per_prompt=1)
    saved = pd.read_csv(tmp_path / "out" / "manifest.csv", keep_default_na=False, encoding="utf-8")
    assert list(saved["prompt"]) == prompts
    assert all((tmp_path / "out" / name).is_file() for name in manifest["image"])
    csv = write_prompts(tmp_path / "clip_prompts.csv", prompts)
    embed_prompts(models, "clip", csv, str(tmp_path / "text.npz"), long_text=("truncate", "chunked"))
    keys, emb = load_embeddings(tmp_path / "text.npz")
    assert list(keys["prompt"]) == prompts and np.isfinite(emb).all()


# === 6. LLM endpoint ========================================================================

@pytest.mark.parametrize("mode, settings, match", [
    ("down", {"retries": 1}, r"LLM request for item 0003 failed: could not connect to "
                             r"http://127\.0\.0\.1:\d+/v1/completions: Connection refused"),
    ("slow", {"timeout": 0.2, "retries": 0}, r"item 0003 failed: request to .*/v1/completions timed out after 0\.2 s"),
    ("503", {"retries": 1}, r"item 0003 failed: .*/v1/completions answered HTTP 503 .*\(after 2 attempts\)"),
    ("malformed", {}, r"item 0003 failed: .*/v1/completions answered malformed JSON"),
    ("empty", {}, r"item 0003 failed: .*/v1/completions answered an empty completion"),
], ids=["connection_refused", "timeout", "http_5xx", "invalid_json", "empty_completion"])
def test_llm_endpoint_failure_fails_its_shard_only(llm, tmp_path, mode, settings, match):
    prompts = tmp_path / "prompts" / "birds" / "llm"
    caches = tmp_path / "cache" / "llm" / "birds" / "llm"

    def run(shard: str, items, **kw):
        return llm_prompts_for_shard(write_items(tmp_path / f"items-{shard}.csv", items), str(prompts / f"{shard}.csv"),
                                     cfg(llm, concurrency=1, **kw), "bird", str(caches / f"{shard}.jsonl"))

    run("shard-000", ITEMS[:2])
    good = {name: Path(name).read_bytes() for name in map(str, [prompts / "shard-000.csv",
                                                                   caches / "shard-000.jsonl"])}
    llm.reset(mode="ok" if mode == "down" else mode)
    if mode == "down":
        settings = {**settings, "base_url": f"http://127.0.0.1:{unused_port()}/v1"}
    with pytest.raises(LLMError, match=match):
        run("shard-001", ITEMS[2:4], **settings)
    assert_no_output(prompts / "shard-001.csv")
    assert not (caches / "shard-001.jsonl").exists() or (caches / "shard-001.jsonl").read_text() == ""
    assert {name: Path(name).read_bytes() for name in good} == good


# === 7. NaN and inf =========================================================================

def test_unet_returning_nan_fails_the_shard(models, sd_shards, tmp_path, monkeypatch):
    good, out = sd_shards
    real_load = sd.load_model

    def load_diverging(*args, **kwargs):
        pipe = real_load(*args, **kwargs)
        forward = pipe.unet.forward

        def nan_forward(*a, **k):
            result = forward(*a, **k)
            sample = result[0] if isinstance(result, tuple) else result.sample
            return (torch.full_like(sample, float("nan")),)
        pipe.unet.forward = nan_forward
        return pipe

    monkeypatch.setattr(sd, "load_model", load_diverging)
    with pytest.raises(FloatingPointError, match=r"sd generation: 2 of 2 image\(s\) of a batch hold NaN or inf "
                                                 r"\(item item0 sample 0, item item0 sample 1\)"):
        run_sd(models, tmp_path, ["a photo of a bird"], out)
    assert_no_output(out)
    assert good.intact()


def _write_cache(path: Path, items: list[str], emb: np.ndarray) -> None:
    """A cache file as save_embeddings writes it, but without its checks (a damaged file)."""
    keys = {"key_item_id": np.array(items), "key_sample": np.zeros(len(items), np.int64),
            "key_image": np.array([f"{i}_00.png" for i in items])}
    np.savez(path, emb=emb.astype(np.float32), model=np.array("clip"), **keys)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_non_finite_embedding_in_a_clip_cache(tmp_path, bad):
    unit = np.eye(4, dtype=np.float32)[:2]
    text = tmp_path / "text.npz"
    save_embeddings(text, pd.DataFrame({"item_id": ["a", "b"], "prompt": ["p", "q"]}), unit, "clip")
    metrics = tmp_path / "metrics" / "birds" / "sd" / "default" / "clip"
    _write_cache(tmp_path / "good.npz", ["a", "b"], unit)
    similarity_shard(str(tmp_path / "good.npz"), None, str(text), str(metrics / "shard-000.csv"), "clip100", "clip")
    good = Good(metrics / "shard-000.csv", tmp_path / "kept" / "shard-000.csv")
    damaged = unit.copy()
    damaged[1, 2] = bad
    _write_cache(tmp_path / "bad.npz", ["a", "b"], damaged)
    out = metrics / "shard-001.csv"
    with pytest.raises(InputError, match=r"embedding cache .*bad\.npz \('emb'\): 1 of 2 embedding\(s\) hold NaN or "
                                         r"inf \(first: row 1, item_id b, sample 0, image b_00\.png\)"):
        similarity_shard(str(tmp_path / "bad.npz"), None, str(text), str(out), "clip100", "clip")
    assert_no_output(out)
    assert tree(metrics / "shard-000.csv") == good.before
    # the encoder side: a NaN embedding is never cached
    with pytest.raises(InputError, match=r"embeddings for .*new\.npz: 1 of 2 .* \(first: row 1, item_id b"):
        save_embeddings(tmp_path / "new.npz", pd.DataFrame({"item_id": ["a", "b"]}), damaged, "clip")
    assert_no_output(tmp_path / "new.npz")


@pytest.mark.parametrize("bad", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_non_finite_metric_value_fails_the_summary(tmp_path, bad):
    folder = tmp_path / "metrics" / "birds" / "sd" / "default" / "t_sim"
    folder.mkdir(parents=True)
    rows = {"item_id": ["a", "b"], "sample": [0, 0], "image": ["a_00.png", "b_00.png"], "metric": "t_sim",
            "scale": "clip100", "model": "clip"}
    pd.DataFrame({**rows, "value": [31.0, 29.0]}).to_csv(folder / "shard-000.csv", index=False)
    pd.DataFrame({**rows, "value": [30.0, bad]}).to_csv(folder / "shard-001.csv", index=False)
    summary = tmp_path / "tables" / "summary.csv"
    summarize_metric_files([folder / "shard-000.csv"], str(summary))  # an earlier, good summary
    before = tree(summary)
    with pytest.raises(InputError, match=r"metric file .*shard-001\.csv: 1 value\(s\) are not finite numbers "
                                         r"\(first: item b, sample 0, metric t_sim"):
        summarize_metric_files([folder / "shard-000.csv", folder / "shard-001.csv"], str(summary))
    assert tree(summary) == before and strays(summary.parent) == []


# === 8. CUDA out of memory ==================================================================

class OomPipe:
    """The tiny pipeline, but a call with more than `fits` images raises CUDA out-of-memory."""

    def __init__(self, pipe, fits: int):
        self._pipe, self.fits, self.calls = pipe, fits, []

    def __getattr__(self, name):
        return getattr(self._pipe, name)

    def __call__(self, **kwargs):
        n = len(kwargs["latents"])
        self.calls.append(n)
        if n > self.fits:
            raise torch.cuda.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {n} GiB")
        return self._pipe(**kwargs)


def _oom_pipe(monkeypatch, fits: int) -> list:
    calls = []
    real_load = sd.load_model

    def load(*args, **kwargs):
        pipe = OomPipe(real_load(*args, **kwargs), fits)
        pipe.calls = calls
        return pipe
    monkeypatch.setattr(sd, "load_model", load)
    return calls


def test_out_of_memory_halves_the_batch(models, tmp_path, monkeypatch, caplog):
    prompts = ["a photo of a red bird", "a small blue bird", "a green bird"]
    reference = run_sd(models, tmp_path, prompts, tmp_path / "batch1", batch_size=1)
    calls = _oom_pipe(monkeypatch, fits=1)
    with caplog.at_level(logging.WARNING, logger="ctrlbench.batching"):
        manifest = run_sd(models, tmp_path, prompts, tmp_path / "oom", batch_size=4)
    assert calls == [4, 2, 1, 1, 1, 1, 1, 1]  # 4 and 2 ran out of memory; 1 is kept for the last batch too
    assert "sd generation: CUDA out of memory with a batch of 4; retrying with a batch of 2" in caplog.text
    assert "sd generation: CUDA out of memory with a batch of 2; retrying with a batch of 1" in caplog.text
    assert manifest.equals(reference)
    for name in manifest["image"]:  # the same images as batches of one
        assert (tmp_path / "oom" / name).read_bytes() == (tmp_path / "batch1" / name).read_bytes()


def test_out_of_memory_at_batch_one_fails_the_shard(models, sd_shards, tmp_path, monkeypatch):
    good, out = sd_shards
    calls = _oom_pipe(monkeypatch, fits=0)
    with pytest.raises(torch.cuda.OutOfMemoryError, match=r"sd generation: CUDA out of memory with a batch of 1 "
                                                           r"\(after halving the batch\); use a smaller image size"):
        run_sd(models, tmp_path, ["a photo of a bird"], out)
    assert calls == [2, 1]
    assert_no_output(out)
    assert good.intact()


# === 9. a full disk =========================================================================

def test_full_disk_during_an_atomic_write(tmp_path, monkeypatch):
    target = tmp_path / "tables" / "summary.csv"
    io.write_csv(target, pd.DataFrame({"a": [1]}))  # the previous version
    before = target.read_bytes()

    def full(self, path, *args, **kwargs):
        Path(path).write_text("a\n1\n2")  # part of the table, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pd.DataFrame, "to_csv", full)
    with pytest.raises(OSError, match=rf"cannot write {re.escape(str(target))}: No space left on device") as info:
        io.write_csv(target, pd.DataFrame({"a": [1, 2, 3]}))
    assert info.value.errno == errno.ENOSPC
    assert target.read_bytes() == before and strays(target.parent) == []
    target.unlink()
    with pytest.raises(OSError, match=rf"cannot write {re.escape(str(target))}"):
        io.write_csv(target, pd.DataFrame({"a": [1, 2, 3]}))
    assert_no_output(target)


def test_full_disk_during_a_shard_job(models, sd_shards, tmp_path, monkeypatch):
    good, out = sd_shards
    real_save = Image.Image.save
    saved = []

    def save(self, fp, *args, **kwargs):
        saved.append(fp)
        if len(saved) == 2:  # the second image: half of it, then the disk is full
            Path(fp).write_bytes(b"\x89PNG\r\n")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(self, fp, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", save)
    with pytest.raises(OSError, match=rf"cannot write {re.escape(str(out))}: cannot write .*/\.shard-001\..*\.tmp/"
                                      r"item0_01\.png: No space left on device") as info:
        run_sd(models, tmp_path, ["a photo of a bird"], out)
    assert info.value.errno == errno.ENOSPC
    assert_no_output(out)
    assert good.intact()
