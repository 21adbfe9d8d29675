"""ParaDiffusion (ctrlbench.models.paradiffusion, ctrlbench.methods.paradiffusion) on the
tiny stand-in: weights layout, Llama + LoRA features, the features inside the UNet, and
whole shards against a hand-built diffusers pipeline."""

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from ctrlbench.config import ConfigError, validate
from ctrlbench.errors import ModelNotFoundError
from ctrlbench.methods import paradiffusion as method
from ctrlbench.methods.registry import PARADIFFUSION_DEFAULTS
from ctrlbench.models import paradiffusion as weights_mod
from ctrlbench.models.loaders import load_model

PARAGRAPH = ("A quiet harbour town at dusk, with small fishing boats tied along a stone pier. "
             "Warm light falls from the windows of the houses on the hill, and a lighthouse "
             "stands at the end of the breakwater while gulls circle above the calm water.")
PARAMS = {**PARADIFFUSION_DEFAULTS, "num_inference_steps": 3, "height": 64, "width": 64, "images_per_prompt": 2,
          "batch_size": 2, "max_text_tokens": 64, "text_encoder_dtype": "float32"}


@pytest.fixture(scope="module")
def config(tiny_config):
    return tiny_config("paradiffusion", {"para": "paradiffusion"})


@pytest.fixture(scope="module")
def weights(config):
    return load_model(config, "para")


def manual_features(root: Path, texts, max_length, lora=True):
    """Llama (+ LoRA) features built straight from the folders with transformers/peft."""
    from peft import PeftModel
    from transformers import AutoTokenizer, LlamaModel

    tokenizer = AutoTokenizer.from_pretrained(root / weights_mod.LLAMA)
    tokenizer.pad_token = tokenizer.eos_token
    model = LlamaModel.from_pretrained(root / weights_mod.LLAMA)
    if lora:
        model = PeftModel.from_pretrained(model, root / weights_mod.LORA)
    batch = tokenizer(list(texts), padding="max_length", max_length=max_length, truncation=True,
                      return_tensors="pt")
    with torch.no_grad():
        return model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).last_hidden_state


def write_prompts(path, prompts):
    pd.DataFrame({"item_id": [f"p{i}" for i in range(len(prompts))], "prompt": prompts,
                  "class_name": "Landscape", "image": ""}).to_csv(path, index=False)
    return str(path)


def images_of(manifest, out):
    return {(r.item_id, r.sample): np.asarray(Image.open(out / r.image)) for r in manifest.itertuples()}


# --- weights layout and missing weights ------------------------------------------------------

def test_tiny_build_has_the_release_layout(weights):
    assert sorted(p.name for p in weights.root.iterdir() if p.is_dir()) == sorted(weights_mod.LAYOUT)
    unet = json.loads((weights.root / "unet" / "config.json").read_text())
    llama = json.loads((weights.root / "Llama-2-7b-hf" / "config.json").read_text())
    assert unet["cross_attention_dim"] == llama["hidden_size"] == weights_mod.TINY_HIDDEN_SIZE
    assert json.loads((weights.root / "sdxl-vae-fp16-fix" / "config.json").read_text())["scaling_factor"] == 0.13025
    assert json.loads((weights.root / "scheduler" / "scheduler_config.json").read_text())["_class_name"] \
        == "DPMSolverMultistepScheduler"
    assert json.loads((weights.root / "text_encoder_lora" / "adapter_config.json").read_text())["peft_type"] == "LORA"


def test_missing_folders_are_all_named_with_where_to_get_them(weights, tmp_path):
    broken = tmp_path / "weights"
    shutil.copytree(weights.root, broken)
    shutil.rmtree(broken / "unet")
    shutil.rmtree(broken / "Llama-2-7b-hf")
    (broken / "scheduler" / "scheduler_config.json").unlink()
    with pytest.raises(ModelNotFoundError) as error:
        weights_mod.locate_weights(broken, "para")
    message = str(error.value)
    assert "lacks 3 of the 5" in message
    assert "unet/ (missing)" in message and "Llama-2-7b-hf/ (missing)" in message
    assert "scheduler/ (no scheduler_config.json)" in message
    assert "meta-llama/Llama-2-7b-hf" in message and "weijiawu/ParaDiffusion" in message
    assert "sdxl-vae-fp16-fix/" not in message.split("lacks")[1]  # present parts are not listed


def test_missing_weights_through_the_config(tmp_path):
    config = {"results_dir": str(tmp_path), "hub_offline": True,
              "models": {"para": {"kind": "paradiffusion", "source": str(tmp_path / "nowhere")}}}
    with pytest.raises(ModelNotFoundError, match="nowhere does not exist"):
        load_model(config, "para")
    config["models"]["para"]["source"] = "weijiawu/ParaDiffusion"  # not a local folder
    with pytest.raises(ModelNotFoundError, match="set models.para.source to the local ParaDiffusion weights"):
        load_model(config, "para")
    (tmp_path / "empty").mkdir()
    config["models"]["para"]["source"] = str(tmp_path / "empty")
    with pytest.raises(ModelNotFoundError, match="lacks 5 of the 5"):
        load_model(config, "para")


# --- text encoder --------------------------------------------------------------------------

def test_features_are_the_lora_llama_final_hidden_states(weights):
    encoder = weights_mod.load_text_encoder(weights, "cpu", torch.float32, "device", max_length=64)
    features = encoder.encode([PARAGRAPH, "a red boat"])
    assert features.shape == (2, 64, weights_mod.TINY_HIDDEN_SIZE)
    assert encoder.tokenizer.pad_token == encoder.tokenizer.eos_token
    torch.testing.assert_close(features, manual_features(weights.root, [PARAGRAPH, "a red boat"], 64))
    base = manual_features(weights.root, [PARAGRAPH, "a red boat"], 64, lora=False)
    assert (features - base).abs().max() > 1e-3  # the adapter changes the text features


def test_padding_and_truncation_follow_max_length(weights):
    short = weights_mod.load_text_encoder(weights, "cpu", torch.float32, "device", max_length=16)
    long = weights_mod.load_text_encoder(weights, "cpu", torch.float32, "device", max_length=64)
    n = short.count_tokens("a red boat")
    assert n < 16 and short.count_tokens(PARAGRAPH) > 16
    # Causal Llama + attention mask: the text positions do not depend on how much padding follows.
    torch.testing.assert_close(short.encode(["a red boat"])[:, :n], long.encode(["a red boat"])[:, :n])
    # Truncation: the first 16 positions of a long paragraph are those of its 16-token cut.
    torch.testing.assert_close(short.encode([PARAGRAPH]), long.encode([PARAGRAPH])[:, :16])


@pytest.mark.parametrize("placement", ["cpu", "offload", "device_map"])
def test_placements_give_the_same_features(weights, placement):
    reference = weights_mod.load_text_encoder(weights, "cpu", torch.float32, "device", 32).encode([PARAGRAPH])
    placed = weights_mod.load_text_encoder(weights, "cpu", torch.float32, placement, 32)
    torch.testing.assert_close(placed.encode([PARAGRAPH]), reference)


def test_unknown_placement(weights):
    with pytest.raises(ValueError, match="text_encoder_placement 'gpu'"):
        weights_mod.load_text_encoder(weights, "cpu", torch.float32, "gpu")


def test_encoder_dtype_rules():
    assert method.encoder_dtype({"text_encoder_dtype": "auto", "text_encoder_placement": "device"},
                                torch.float16) == torch.float16
    assert method.encoder_dtype({"text_encoder_dtype": "auto", "text_encoder_placement": "cpu"},
                                torch.float16) == torch.float32
    assert method.encoder_dtype({"text_encoder_dtype": "bfloat16", "text_encoder_placement": "offload"},
                                torch.float16) == torch.bfloat16


# --- the features inside the UNet and whole shards ----------------------------------------------

def test_llm_features_reach_the_unet(config, weights, tmp_path):
    """Every UNet call gets [negative; prompt] features of shape [2B, max_len, hidden] unchanged."""
    seen = []
    real_load = method.load_denoiser

    def spying_denoiser(*args, **kwargs):
        pipe = real_load(*args, **kwargs)
        pipe.unet.register_forward_pre_hook(
            lambda module, args, kwargs: seen.append(kwargs["encoder_hidden_states"].clone()), with_kwargs=True)
        return pipe

    method.load_denoiser, saved = spying_denoiser, method.load_denoiser
    try:
        method.run_shard(config, "para", write_prompts(tmp_path / "p.csv", [PARAGRAPH]), str(tmp_path / "out"),
                         {**PARAMS, "images_per_prompt": 1})
    finally:
        method.load_denoiser = saved
    assert len(seen) == PARAMS["num_inference_steps"]
    expected = manual_features(weights.root, ["", PARAGRAPH], PARAMS["max_text_tokens"])
    for hidden in seen:
        assert hidden.shape == (2, PARAMS["max_text_tokens"], weights_mod.TINY_HIDDEN_SIZE)
        torch.testing.assert_close(hidden, expected)


def test_shard_equals_a_hand_built_diffusers_pipeline(config, weights, tmp_path):
    from diffusers import AutoencoderKL, DPMSolverMultistepScheduler, StableDiffusionPipeline, UNet2DConditionModel

    prompts = [PARAGRAPH, "a red boat on a calm lake"]
    manifest = method.run_shard(config, "para", write_prompts(tmp_path / "p.csv", prompts), str(tmp_path / "out"),
                                PARAMS)
    root = weights.root
    pipe = StableDiffusionPipeline(
        vae=AutoencoderKL.from_pretrained(root / "sdxl-vae-fp16-fix"), text_encoder=None, tokenizer=None,
        unet=UNet2DConditionModel.from_pretrained(root / "unet"),
        scheduler=DPMSolverMultistepScheduler.from_pretrained(root / "scheduler"),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    features = manual_features(root, ["", *prompts], PARAMS["max_text_tokens"])
    ours = images_of(manifest, tmp_path / "out")
    for i, prompt in enumerate(prompts):
        images = pipe(prompt_embeds=features[i + 1:i + 2], negative_prompt_embeds=features[:1],
                      num_images_per_prompt=2, generator=torch.Generator().manual_seed(PARAMS["seed"]),
                      num_inference_steps=3, guidance_scale=PARAMS["guidance_scale"], height=64, width=64).images
        for sample, image in enumerate(images):
            diff = np.abs(ours[(f"p{i}", sample)].astype(int) - np.asarray(image).astype(int)).max()
            assert diff <= 1, (prompt, sample, diff)


def test_shard_outputs_and_truncation_record(config, tmp_path):
    prompts = [PARAGRAPH, "a red boat"]
    out = tmp_path / "out"
    manifest = method.run_shard(config, "para", write_prompts(tmp_path / "p.csv", prompts), str(out),
                                {**PARAMS, "max_text_tokens": 16})
    assert list(manifest.columns) == method.sd.MANIFEST_COLUMNS
    assert len(manifest) == 4 and (out / "manifest.csv").is_file()
    assert all(Image.open(out / name).size == (64, 64) for name in manifest["image"])
    record = json.loads((out / "params.json").read_text())
    assert record["method"] == "paradiffusion" and record["text_handling"] == "llama-truncate"
    tokens = record["text_tokens"]
    assert tokens["max_text_tokens"] == 16 and tokens["n_prompts_truncated"] == 1
    assert list(tokens["truncated_items"]) == ["p0"] and tokens["truncated_items"]["p0"] > 16
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]  # no temp folder left


def test_a_prompt_gives_the_same_images_alone_or_in_a_shard(config, tmp_path):
    alone = method.run_shard(config, "para", write_prompts(tmp_path / "a.csv", [PARAGRAPH]), str(tmp_path / "a"),
                             PARAMS)
    shared = method.run_shard(config, "para", write_prompts(tmp_path / "b.csv", [PARAGRAPH, "a red boat", "fog"]),
                              str(tmp_path / "b"), {**PARAMS, "batch_size": 3})
    first = images_of(alone, tmp_path / "a")
    second = images_of(shared, tmp_path / "b")
    for sample in range(2):
        assert np.abs(first[("p0", sample)].astype(int) - second[("p0", sample)].astype(int)).max() <= 1


def test_empty_shard_writes_an_empty_manifest(config, tmp_path):
    manifest = method.run_shard(config, "para", write_prompts(tmp_path / "p.csv", []), str(tmp_path / "out"), PARAMS)
    assert manifest.empty and (tmp_path / "out" / "params.json").is_file()


def test_missing_weights_leave_no_output(tmp_path):
    config = {"results_dir": str(tmp_path), "hub_offline": True, "device": "cpu", "dtype": "float32",
              "models": {"para": {"kind": "paradiffusion", "source": str(tmp_path / "weights")}}}
    (tmp_path / "weights").mkdir()
    with pytest.raises(ModelNotFoundError):
        method.run_shard(config, "para", write_prompts(tmp_path / "p.csv", [PARAGRAPH]), str(tmp_path / "out"),
                         PARAMS)
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


# --- config ----------------------------------------------------------------------------------

def test_config_rejects_bad_encoder_settings(default_config):
    config = default_config
    config["models"]["para"] = {"kind": "paradiffusion", "source": "tiny"}
    config["methods"]["para"] = {"kind": "paradiffusion", "model": "para", "datasets": ["landscapes"],
                                 "prompts": "caption", "params": {"text_encoder_placement": "gpu"}}
    with pytest.raises(ConfigError, match="text_encoder_placement: 'gpu' is not one of device, cpu"):
        validate(config)
    config["methods"]["para"]["params"] = {}
    config["methods"]["para"]["sweep"] = {"text_encoder_dtype": ["float16", "int8"]}
    with pytest.raises(ConfigError, match="text_encoder_dtype: 'int8'"):
        validate(config)
    config["methods"]["para"]["model"] = "sd"
    config["methods"]["para"].pop("sweep")
    with pytest.raises(ConfigError, match="model 'sd' is of kind sd, expected paradiffusion"):
        validate(config)


def test_the_sd_baseline_reads_every_toy_paragraph_in_several_chunks(tmp_path):
    """SD on the paragraphs is the chunked-prompt baseline: no toy paragraph fits in 77 tokens."""
    from ctrlbench.data.readers import read_dataset
    from ctrlbench.data.toy import make_toy_paraprompts
    from ctrlbench.models.clip_tokenizer import build_clip_tokenizer
    from ctrlbench.prompts.long_prompt import n_chunks

    make_toy_paraprompts(tmp_path / "para", n_prompts=8)
    tokenizer = build_clip_tokenizer(tmp_path / "tokenizer")
    paragraphs = [json.loads(c)[0] for c in read_dataset("paraprompts", tmp_path / "para")["captions"]]
    assert len(paragraphs) == 8 and all(n_chunks(tokenizer, text) >= 2 for text in paragraphs)
