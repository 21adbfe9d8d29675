"""Tiny stand-ins, the offline CLIP tokenizer and load_model (ctrlbench.models)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import open_clip
import pytest
from conftest import fake_inception_weights
import torch
from PIL import Image
from safetensors.torch import load_file

from ctrlbench.errors import ModelNotFoundError
from ctrlbench.models import loaders
from ctrlbench.models.clip_tokenizer import VOCAB_SIZE, build_clip_tokenizer
from ctrlbench.models.loaders import AestheticMLP, ClipModel, load_model
from ctrlbench.models.registry import MODEL_KINDS, SEGMENTER_ARCHS
from ctrlbench.models.tiny import OPEN_CLIP_CFG, TINY_MARKER, build_tiny

KEYS = {"sd": "sd", "controlnet": "controlnet", "sd_inpaint": "sd_inpaint", "clip": "open_clip",
        "deeplab": "deeplabv3", "aesthetic": "aesthetic", "fid": "fid_inception",
        "llm": "causal_lm", "minilm_tiny": "text_embedder", "para": "paradiffusion", "vqgan": "vqmodel"}
SENTENCES = [
    "a photo of a cat",
    "A Red-winged Blackbird, perched on a branch!!",
    "hello   world's 123 café, naïve   don't 😀",
    "a photo of Laysan Albatross, a bird of this species with white underparts and a hooked bill.",
]


@pytest.fixture(scope="session")
def tiny_config(tmp_path_factory):
    """Every tiny kind built once, where the tiny_model rule puts them."""
    results = tmp_path_factory.mktemp("results")
    config = {"results_dir": str(results), "hub_offline": True,
              "models": {key: {"kind": kind, "source": "tiny"} for key, kind in KEYS.items()}}
    for key, kind in KEYS.items():
        build_tiny(kind, results / "models" / "tiny" / key, seed=0)
    return config


@pytest.fixture(scope="session")
def sd(tiny_config):
    return load_model(tiny_config, "sd")


def tiny_path(config, key):
    return os.path.join(config["results_dir"], "models", "tiny", key)


def weights(folder):
    """Every tensor of every weights file under a build folder, by file and key."""
    tensors = {}
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            rel = os.path.relpath(path, folder)
            if name.endswith(".safetensors"):
                state = load_file(path)
            elif name.endswith(".pth"):
                state = torch.load(path, weights_only=True)
            else:
                continue
            tensors.update({f"{rel}:{k}": v for k, v in state.items()})
    return tensors


def rgb_images(n, size=64, seed=0):
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(n)]


# --- tokenizer --------------------------------------------------------------------------

def test_clip_tokenizer_matches_open_clip(tmp_path):
    tokenizer = build_clip_tokenizer(tmp_path / "tok")
    assert len(tokenizer) == VOCAB_SIZE == 49408
    assert tokenizer.model_max_length == 77
    assert tokenizer.pad_token == "<|endoftext|>"
    assert {"vocab.json", "merges.txt", "tokenizer.json"} <= set(os.listdir(tmp_path / "tok"))
    ours = tokenizer(SENTENCES, padding="max_length", max_length=77, truncation=True).input_ids
    theirs = open_clip.tokenize(SENTENCES).tolist()
    for a, b in zip(ours, theirs):
        n = b.index(49407) + 1  # open_clip pads with 0, transformers with <|endoftext|>
        assert a[:n] == b[:n]
        assert len(a) == 77 and a[0] == 49406
    # and the tokenizer saved inside the tiny SD pipeline is the same one
    from transformers import CLIPTokenizer
    reloaded = CLIPTokenizer.from_pretrained(str(tmp_path / "tok"))
    assert reloaded(SENTENCES[1]).input_ids == tokenizer(SENTENCES[1]).input_ids


# --- builds -----------------------------------------------------------------------------

def test_build_writes_marker_and_every_kind_is_covered(tiny_config):
    assert set(KEYS.values()) == set(MODEL_KINDS)
    import json
    for key, kind in KEYS.items():
        folder = tiny_path(tiny_config, key)
        with open(os.path.join(folder, TINY_MARKER)) as fh:
            assert json.load(fh) == {"kind": kind, "seed": 0, "note": "random weights"}
    # the temporary sibling folders are gone after the rename
    assert sorted(os.listdir(os.path.dirname(folder))) == sorted(KEYS)


@pytest.mark.parametrize("kind", ["sd", "controlnet", "open_clip", "deeplabv3", "aesthetic", "fid_inception",
                                  "paradiffusion", "vqmodel"])
def test_build_is_deterministic(tiny_config, tmp_path, kind):
    key = next(k for k, v in KEYS.items() if v == kind)
    again = weights(build_tiny(kind, tmp_path / "again", seed=0))
    first = weights(tiny_path(tiny_config, key))
    assert again.keys() == first.keys() and len(first) > 0
    assert all(torch.equal(first[k], again[k]) for k in first)
    other = weights(build_tiny(kind, tmp_path / "other", seed=1))
    assert any(not torch.equal(first[k], other[k]) for k in first)


def test_build_replaces_existing_folder(tmp_path):
    out = tmp_path / "aesthetic"
    build_tiny("aesthetic", out, seed=0)
    (out / "stale.txt").write_text("old")
    build_tiny("aesthetic", out, seed=0)
    assert not (out / "stale.txt").exists()
    with pytest.raises(ValueError, match="unknown model kind"):
        build_tiny("nope", tmp_path / "nope")


# --- diffusion models -------------------------------------------------------------------

def test_sd_generates_64px_images(sd):
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    assert isinstance(sd, StableDiffusionPipeline)
    assert isinstance(sd.scheduler, DDIMScheduler) and sd.safety_checker is None
    assert sd.vae_scale_factor == 8 and sd.unet.config.sample_size == 8
    assert sd.tokenizer("a bird").input_ids == open_clip.tokenize(["a bird"])[0, :4].tolist()
    prompts = ["a photo of a bird", "a red flower"]
    out = sd(prompts, num_inference_steps=2, height=64, width=64,
             generator=torch.Generator().manual_seed(0))
    assert len(out.images) == 2 and all(im.size == (64, 64) for im in out.images)
    pixels = np.asarray(out.images[0])
    assert pixels.std() > 0  # a real decode, not a blank image
    assert not np.array_equal(pixels, np.asarray(out.images[1]))
    again = sd(prompts, num_inference_steps=2, height=64, width=64,
               generator=torch.Generator().manual_seed(0))
    np.testing.assert_array_equal(np.asarray(again.images[0]), pixels)


def test_controlnet_conditions_the_unet(tiny_config, sd):
    from diffusers import ControlNetModel, StableDiffusionControlNetPipeline

    controlnet = load_model(tiny_config, "controlnet")
    assert isinstance(controlnet, ControlNetModel) and not controlnet.training
    ids = sd.tokenizer(["a bird"] * 2, padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        text = sd.text_encoder(ids)[0]
        latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
        outputs = []
        for value in (0.0, 1.0):
            cond = torch.full((2, 3, 64, 64), value)
            down, mid = controlnet(latents, 10, encoder_hidden_states=text, controlnet_cond=cond,
                                   return_dict=False)
            outputs.append(sd.unet(latents, 10, encoder_hidden_states=text,
                                   down_block_additional_residuals=down,
                                   mid_block_additional_residual=mid).sample)
    assert outputs[0].shape == (2, 4, 8, 8)
    # the control image matters (a fresh ControlNet's zero convolutions would give 0 here)
    assert (outputs[0] - outputs[1]).abs().mean() > 0.01
    pipe = StableDiffusionControlNetPipeline(**sd.components, controlnet=controlnet)
    pipe.set_progress_bar_config(disable=True)
    image = pipe("a bird", image=Image.new("RGB", (64, 64), "white"), num_inference_steps=2,
                 height=64, width=64).images[0]
    assert image.size == (64, 64)


def test_sd_inpaint_runs(tiny_config):
    from diffusers import StableDiffusionInpaintPipeline

    pipe = load_model(tiny_config, "sd_inpaint")
    assert isinstance(pipe, StableDiffusionInpaintPipeline) and pipe.unet.config.in_channels == 9
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    out = pipe("a bird", image=rgb_images(1)[0], mask_image=mask, num_inference_steps=2,
               height=64, width=64, generator=torch.Generator().manual_seed(0))
    assert out.images[0].size == (64, 64)


# --- evaluation models ------------------------------------------------------------------

def test_open_clip_encodes_normalised_batches(tiny_config):
    clip = load_model(tiny_config, "clip")
    assert isinstance(clip, ClipModel) and clip.embed_dim == OPEN_CLIP_CFG["embed_dim"]
    images = rgb_images(5, size=80)
    feats = clip.encode_images(images, batch_size=2)
    texts = clip.encode_texts(SENTENCES)
    assert feats.shape == (5, 32) and texts.shape == (4, 32) and feats.dtype == torch.float32
    assert torch.allclose(feats.norm(dim=-1), torch.ones(5), atol=1e-5)
    assert torch.allclose(texts.norm(dim=-1), torch.ones(4), atol=1e-5)
    assert torch.allclose(clip.encode_images(images), feats, atol=1e-5)  # batching-invariant
    assert not torch.allclose(texts[0], texts[1])
    assert clip.encode_texts([]).shape == (0, 32)


def test_open_clip_loads_a_checkpoint_file_with_arch(tiny_config, tmp_path):
    import json

    # A registered architecture + a weights file: the route a real "ViT-L-14 + file" takes.
    (tmp_path / "TinyCLIP-ctrlbench.json").write_text(json.dumps(OPEN_CLIP_CFG))
    open_clip.add_model_config(tmp_path / "TinyCLIP-ctrlbench.json")
    checkpoint = os.path.join(tiny_path(tiny_config, "clip"), "open_clip_model.safetensors")
    config = {**tiny_config, "models": {"c": {"kind": "open_clip", "source": checkpoint,
                                              "arch": "TinyCLIP-ctrlbench"}}}
    from_file = load_model(config, "c").encode_texts(SENTENCES[:2])
    from_dir = load_model(tiny_config, "clip").encode_texts(SENTENCES[:2])
    assert torch.allclose(from_file, from_dir, atol=1e-6)


def test_deeplab_segments(tiny_config):
    model = load_model(tiny_config, "deeplab")
    assert not model.training and model.aux_classifier is None
    with torch.no_grad():
        out = model(torch.rand(2, 3, 64, 48))
    assert set(out) == {"out"} and out["out"].shape == (2, 21, 64, 48)


def test_tiny_deeplab_output_depends_on_the_image(tiny_config):
    """With torchvision's own init the random tiny DeepLab ignored its input (depthwise
    convolutions shrank the signal), which made segmentation losses and IoU meaningless."""
    model = load_model(tiny_config, "deeplab")
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = model(images)["out"]
    assert (out[0] - out[1]).abs().mean() > 0.05 * out.abs().mean()
    assert len(out.argmax(1).unique()) > 1


def test_deeplab_real_weights_file_and_tag(tmp_path, monkeypatch):
    """A torchvision-style .pth with the auxiliary head loads by path and by weights tag."""
    from torchvision import models

    arch = "deeplabv3_mobilenet_v3_large"
    released = models.get_model(arch, weights=None, weights_backbone=None, num_classes=21,
                                aux_loss=True).state_dict()
    url = models.get_model_weights(arch).COCO_WITH_VOC_LABELS_V1.url
    hub = tmp_path / "hub"
    (hub / "checkpoints").mkdir(parents=True)
    file = hub / "checkpoints" / os.path.basename(url)
    torch.save(released, file)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))
    for source in (str(file), "COCO_WITH_VOC_LABELS_V1"):
        config = {"results_dir": str(tmp_path), "models": {"d": {"kind": "deeplabv3", "source": source,
                                                                 "arch": arch}}}
        model = load_model(config, "d")
        assert torch.equal(model.classifier[4].weight, released["classifier.4.weight"])
    file.unlink()
    with pytest.raises(ModelNotFoundError, match="hub_offline"):
        load_model(config, "d")


@pytest.mark.parametrize("arch", SEGMENTER_ARCHS)
def test_every_segmenter_arch_has_voc_weights_and_builds(arch):
    """Each `arch` a deeplabv3 entry may name (a held-out IoU scorer beside TCIG's guide) has
    COCO_WITH_VOC_LABELS_V1 weights in VOC order and builds with a 21-class head."""
    from torchvision import models

    from ctrlbench.methods.segmentation import VOC_CLASSES

    weights = models.get_model_weights(arch).COCO_WITH_VOC_LABELS_V1
    assert weights.meta["categories"] == list(VOC_CLASSES)
    with torch.device("meta"):  # shapes only, no memory
        model = loaders.build_deeplab(arch, loaders.DEEPLAB_NUM_CLASSES)
    head = [m for m in model.classifier.modules() if isinstance(m, torch.nn.Conv2d)][-1]
    assert head.out_channels == 21 and model.aux_classifier is None


def test_aesthetic_mlp_has_the_laion_layout(tiny_config):
    model = load_model(tiny_config, "aesthetic")
    assert isinstance(model, AestheticMLP) and not model.training
    keys = {k for k in torch.load(os.path.join(tiny_path(tiny_config, "aesthetic"), "aesthetic_mlp.pth"),
                                  weights_only=True)}
    assert keys == {f"layers.{i}.{p}" for i in (0, 2, 4, 6, 7) for p in ("weight", "bias")}
    clip = load_model(tiny_config, "clip")
    scores = model(clip.encode_images(rgb_images(3)))
    assert scores.shape == (3, 1) and torch.isfinite(scores).all()


def test_aesthetic_loads_the_real_file_format(tmp_path):
    real = AestheticMLP(input_dim=768)
    path = tmp_path / "sac+logos+ava1-l14-linearMSE.pth"
    torch.save(real.state_dict(), path)
    config = {"results_dir": str(tmp_path), "models": {"a": {"kind": "aesthetic", "source": str(path)}}}
    model = load_model(config, "a")
    assert model.input_dim == 768
    x = torch.nn.functional.normalize(torch.randn(2, 768), dim=-1)
    assert torch.allclose(model(x), real.eval()(x))


@pytest.mark.filterwarnings("ignore:Metric `Kernel Inception Distance` will save")
def test_fid_features_work_in_torchmetrics(tiny_config):
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance

    feature = load_model(tiny_config, "fid")
    gen = torch.Generator().manual_seed(0)
    real = torch.randint(0, 256, (6, 3, 64, 64), dtype=torch.uint8, generator=gen)
    fake = torch.randint(0, 256, (6, 3, 48, 48), dtype=torch.uint8, generator=gen)
    assert feature(real).shape == (6, 64)
    fid = FrechetInceptionDistance(feature=feature)
    kid = KernelInceptionDistance(feature=feature, subset_size=3)
    for metric in (fid, kid):
        metric.update(real, real=True)
        metric.update(fake, real=False)
    assert torch.isfinite(fid.compute())
    assert all(torch.isfinite(v) for v in kid.compute())
    fid_same = FrechetInceptionDistance(feature=feature)
    fid_same.update(real, real=True)
    fid_same.update(real, real=False)
    assert fid_same.compute() < fid.compute()


def test_fid_loads_torch_fidelity_weights_file(tmp_path, monkeypatch):
    """The real route: a torch-fidelity Inception .pth -> torchmetrics' NoTrainInceptionV3.
    Random weights stand in for the 92 MB download."""
    from torchmetrics.image.fid import FrechetInceptionDistance, NoTrainInceptionV3

    path = fake_inception_weights(tmp_path, monkeypatch)
    state = torch.load(path, weights_only=True)
    config = config_with(tmp_path, kind="fid_inception", source=str(path))
    model = load_model(config, "mymodel")
    assert isinstance(model, NoTrainInceptionV3) and model.num_features == 2048
    assert torch.equal(model.fc.weight, state["fc.weight"])
    fid = FrechetInceptionDistance(feature=model)
    gen = torch.Generator().manual_seed(0)
    fid.update(torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8, generator=gen), real=True)
    fid.update(torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8, generator=gen), real=False)
    assert torch.isfinite(fid.compute())


# --- missing models ---------------------------------------------------------------------

def config_with(tmp_path, **entry):
    return {"results_dir": str(tmp_path), "hub_offline": True, "models": {"mymodel": entry}}


@pytest.mark.parametrize("kind, source", [("sd", "runwayml/stable-diffusion-v1-5"),
                                          ("controlnet", "runwayml/stable-diffusion-v1-5"),
                                          ("sd_inpaint", "runwayml/stable-diffusion-v1-5"),
                                          ("vqmodel", loaders.VQGAN_HUB_ID)])
def test_uncached_hub_id_offline_raises(tmp_path, monkeypatch, kind, source):
    monkeypatch.setattr(loaders, "_hub_cached", lambda *a, **k: None)  # whatever this machine caches
    config = config_with(tmp_path, kind=kind, source=source)
    with pytest.raises(ModelNotFoundError) as err:
        load_model(config, "mymodel")
    message = str(err.value)
    for part in ("'mymodel'", kind, source, f"hf download {source}", "models.mymodel.source", "hub_offline: false"):
        assert part in message


def test_uncached_open_clip_tag_offline_raises(tmp_path, monkeypatch):
    monkeypatch.setattr(loaders, "_hub_cached", lambda *a, **k: None)
    config = config_with(tmp_path, kind="open_clip", source="openai", arch="ViT-L-14")
    with pytest.raises(ModelNotFoundError, match=r"'mymodel'.*timm/vit_large_patch14_clip_224\.openai"):
        load_model(config, "mymodel")
    config = config_with(tmp_path, kind="open_clip", source="no_such_tag", arch="ViT-L-14")
    with pytest.raises(ModelNotFoundError, match="laion2b_s32b_b82k"):  # lists the known tags
        load_model(config, "mymodel")


@pytest.mark.parametrize("kind, source, hint", [
    ("sd", "/nonexistent/stable-diffusion-v1-5", "model_index.json"),
    ("open_clip", "/nonexistent/open_clip_model.safetensors", "open_clip"),
    ("deeplabv3", "/nonexistent/deeplabv3_resnet50_coco-cd0a2569.pth", "DeepLabV3"),
    ("aesthetic", "/nonexistent/sac+logos+ava1-l14-linearMSE.pth", "improved-aesthetic-predictor"),
    ("aesthetic", "christophschuhmann/improved-aesthetic-predictor", "improved-aesthetic-predictor"),
    ("fid_inception", "./weights-inception-2015-12-05-6726825d.pth",
     "torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth"),
])
def test_missing_local_model_raises(tmp_path, kind, source, hint):
    with pytest.raises(ModelNotFoundError) as err:
        load_model(config_with(tmp_path, kind=kind, source=source), "mymodel")
    assert "'mymodel'" in str(err.value) and source in str(err.value) and hint in str(err.value)


def test_local_folder_that_is_not_a_model_raises(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFoundError, match="no model_index.json"):
        load_model(config_with(tmp_path, kind="sd", source=str(tmp_path / "empty")), "mymodel")
    # a VQGAN checkpoint folder of taming-transformers (not converted) is named as such
    with pytest.raises(ModelNotFoundError, match="no config.json; it is not a diffusers VQModel folder"):
        load_model(config_with(tmp_path, kind="vqmodel", source=str(tmp_path / "empty")), "mymodel")


def test_tiny_vqmodel_has_the_vqgan_f16_layout(tiny_config):
    from diffusers import VQModel

    model = load_model(tiny_config, "vqgan")
    assert isinstance(model, VQModel) and not model.training
    assert not any(p.requires_grad for p in model.parameters())
    assert 2 ** (len(model.config.block_out_channels) - 1) == 16  # x16, as vqgan_imagenet_f16_16384
    assert model.config.down_block_types[-1] == "AttnDownEncoderBlock2D"
    codes = model.quantize.embedding.weight
    assert codes.std() > 0.5  # unit-scale codes: distinct codes decode to distinct images
    latent = codes[torch.arange(16) % codes.shape[0]].T.reshape(1, -1, 4, 4)
    assert model.decode(latent).sample.shape == (1, 3, 64, 64)


def test_missing_tiny_build_raises_and_never_falls_back(tmp_path):
    config = config_with(tmp_path, kind="sd", source="tiny")
    with pytest.raises(ModelNotFoundError) as err:
        load_model(config, "mymodel")
    expected = os.path.join(str(tmp_path), "models", "tiny", "mymodel")
    assert "tiny_model rule" in str(err.value) and f"snakemake {expected}" in str(err.value)


def test_tiny_build_of_another_kind_raises(tmp_path):
    build_tiny("aesthetic", tmp_path / "models" / "tiny" / "mymodel")
    with pytest.raises(ModelNotFoundError, match="built for kind aesthetic, not fid_inception"):
        load_model(config_with(tmp_path, kind="fid_inception", source="tiny"), "mymodel")
