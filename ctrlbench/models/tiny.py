"""Random-weight stand-ins of the real models, small enough for CPU tests.

`build_tiny(kind, out_dir, seed)` writes each stand-in in the same on-disk format as the
real model (diffusers folders, open_clip hub format, state dicts with the real key
names), so `loaders.load_model` reads both through one code path. Shapes follow the real
models where the rest of the code depends on them: SD's x8 VAE, 4 latent channels, the
real 49,408-token CLIP tokenizer and 77-token context, 21 DeepLab classes.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import torch
from torch import nn

from . import loaders
from .clip_tokenizer import MODEL_MAX_LENGTH, VOCAB_SIZE, build_clip_tokenizer

TINY_MARKER = loaders.TINY_MARKER

CROSS_ATTENTION_DIM = 32  # = the tiny text encoder's hidden size
OPEN_CLIP_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "patch_size": 16, "width": 64, "layers": 2, "head_width": 32},
    "text_cfg": {"context_length": MODEL_MAX_LENGTH, "vocab_size": VOCAB_SIZE, "width": 32,
                 "heads": 4, "layers": 2},
}
OPEN_CLIP_PREPROCESS = {  # OpenAI CLIP normalisation, as the real ViT-L-14 uses
    "mean": [0.48145466, 0.4578275, 0.40821073],
    "std": [0.26862954, 0.26130258, 0.27577711],
    "interpolation": "bicubic",
    "resize_mode": "shortest",
}
DEEPLAB_BUILDER = "deeplabv3_mobilenet_v3_large"
FID_FEATURES, FID_IMAGE_SIZE = 64, 32


# --- Stable Diffusion parts -----------------------------------------------------------

def tiny_unet(in_channels: int = 4):
    """SD 1.x UNet layout (cross-attention down blocks then a plain one, mirrored up)."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=8, in_channels=in_channels, out_channels=4,
        block_out_channels=(32, 64), layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=CROSS_ATTENTION_DIM, attention_head_dim=(2, 4), norm_num_groups=16,
    )


def tiny_vae():
    """Four encoder blocks = three downsamplings: the x8 latent scale of real SD."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, sample_size=64,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 16, 16, 16), layers_per_block=1, norm_num_groups=8,
    )


def tiny_text_encoder():
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(
        vocab_size=VOCAB_SIZE, max_position_embeddings=MODEL_MAX_LENGTH,
        hidden_size=CROSS_ATTENTION_DIM, intermediate_size=64, projection_dim=CROSS_ATTENTION_DIM,
        num_hidden_layers=2, num_attention_heads=4, hidden_act="quick_gelu",
    )
    return CLIPTextModel(config)


def sd_scheduler():
    """DDIM with Stable Diffusion 1.x's training noise schedule."""
    from diffusers import DDIMScheduler

    return DDIMScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
        beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False, steps_offset=1,
    )


def _save_pipeline(pipeline_cls, unet_in_channels: int, out: Path) -> None:
    # Build order (UNet, VAE, text encoder) is fixed so a seed always gives the same UNet
    # as the controlnet build, which starts from the same tiny UNet.
    unet = tiny_unet(unet_in_channels)
    vae, text_encoder = tiny_vae(), tiny_text_encoder()
    tokenizer = build_clip_tokenizer(out / "tokenizer")  # also leaves vocab.json/merges.txt
    pipe = pipeline_cls(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
        scheduler=sd_scheduler(), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(str(out), safe_serialization=True)


def _build_sd(out: Path) -> None:
    from diffusers import StableDiffusionPipeline

    _save_pipeline(StableDiffusionPipeline, 4, out)


def _build_sd_inpaint(out: Path) -> None:
    from diffusers import StableDiffusionInpaintPipeline

    # 9 input channels: noisy latent (4) + mask (1) + masked-image latent (4).
    _save_pipeline(StableDiffusionInpaintPipeline, 9, out)


def _build_controlnet(out: Path) -> None:
    from diffusers import ControlNetModel

    controlnet = ControlNetModel.from_unet(tiny_unet(), conditioning_embedding_out_channels=(8, 8, 16, 16))
    # A fresh ControlNet ignores its control image: the output convolutions are zero, and
    # PyTorch's default init shrinks the signal through the 8-conv conditioning embedding
    # until only biases remain. Variance-preserving (He) init, zero biases, makes the
    # control image change the UNet's output, as a trained ControlNet's does.
    for conv in [*controlnet.controlnet_cond_embedding.modules(), *controlnet.controlnet_down_blocks,
                 controlnet.controlnet_mid_block]:
        if isinstance(conv, nn.Conv2d):
            nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
            nn.init.zeros_(conv.bias)
    controlnet.save_pretrained(str(out), safe_serialization=True)


# --- evaluation models ----------------------------------------------------------------

def _build_open_clip(out: Path) -> None:
    from open_clip import CLIP
    from safetensors.torch import save_file

    model = CLIP(**OPEN_CLIP_CFG)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / "open_clip_model.safetensors"))
    hub_config = {"model_cfg": OPEN_CLIP_CFG, "preprocess_cfg": OPEN_CLIP_PREPROCESS}
    _write_json(out / loaders.OPEN_CLIP_CONFIG, hub_config)


def _build_deeplab(out: Path) -> None:
    from safetensors.torch import save_file

    model = loaders.build_deeplab(DEEPLAB_BUILDER, loaders.DEEPLAB_NUM_CLASSES)
    # torchvision's fan_out init makes depthwise convolutions shrink the signal block
    # after block: with random weights the output would not depend on the image at all.
    # fan_in keeps the variance, so segmentation losses and IoU react to the image.
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / "model.safetensors"))
    _write_json(out / loaders.DEEPLAB_JSON,
                {"builder": DEEPLAB_BUILDER, "num_classes": loaders.DEEPLAB_NUM_CLASSES})


def _build_vqmodel(out: Path) -> None:
    """The VQGAN f16 layout (five levels, attention at the lowest resolution, as the
    taming-transformers ImageNet VQGAN converted to diffusers), narrow and with 64 codes."""
    from diffusers import VQModel

    model = VQModel(
        in_channels=3, out_channels=3, block_out_channels=(8, 8, 16, 16, 16), layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 4 + ("AttnDownEncoderBlock2D",),
        up_block_types=("AttnUpDecoderBlock2D",) + ("UpDecoderBlock2D",) * 4,
        latent_channels=8, vq_embed_dim=8, num_vq_embeddings=64, norm_num_groups=8, sample_size=64)
    # diffusers draws the codebook from U(-1/64, 1/64); codes that far apart barely change the
    # decoded image. Unit-scale codes, like a trained codebook's, make stage 1 see its latent.
    nn.init.normal_(model.quantize.embedding.weight)
    model.save_pretrained(str(out), safe_serialization=True)


def _build_aesthetic(out: Path) -> None:
    model = loaders.AestheticMLP(input_dim=OPEN_CLIP_CFG["embed_dim"])
    torch.save(model.state_dict(), out / loaders.AESTHETIC_WEIGHTS)


def _build_fid(out: Path) -> None:
    from safetensors.torch import save_file

    model = loaders.TinyFidFeatures(FID_FEATURES, FID_IMAGE_SIZE)
    save_file(model.state_dict(), str(out / loaders.FID_WEIGHTS))
    _write_json(out / loaders.FID_JSON, {"arch": "tiny_conv", "num_features": FID_FEATURES,
                                         "image_size": FID_IMAGE_SIZE})


def _build_causal_lm(out: Path) -> None:
    from .llm import build_tiny_causal_lm

    build_tiny_causal_lm(out)


def _build_text_embedder(out: Path) -> None:
    from .text_embedder import build_tiny_text_embedder

    build_tiny_text_embedder(out)


def _build_paradiffusion(out: Path) -> None:
    from .paradiffusion import build_tiny_paradiffusion

    build_tiny_paradiffusion(out)


_BUILDERS = {
    "sd": _build_sd,
    "controlnet": _build_controlnet,
    "sd_inpaint": _build_sd_inpaint,
    "open_clip": _build_open_clip,
    "deeplabv3": _build_deeplab,
    "aesthetic": _build_aesthetic,
    "fid_inception": _build_fid,
    "causal_lm": _build_causal_lm,
    "text_embedder": _build_text_embedder,
    "paradiffusion": _build_paradiffusion,
    "vqmodel": _build_vqmodel,
}


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def build_tiny(kind: str, out_dir: str | Path, seed: int = 0) -> Path:
    """Build the tiny stand-in of `kind` into `out_dir` (replaced if present).

    Deterministic in `seed`. Built in a temporary sibling folder and renamed into place,
    so an interrupted build never leaves a folder that looks complete.
    """
    if kind not in _BUILDERS:
        raise ValueError(f"unknown model kind '{kind}' (kinds: {', '.join(_BUILDERS)})")
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the build is an ordinary results folder
    try:
        torch.manual_seed(seed)
        _BUILDERS[kind](tmp)
        _write_json(tmp / TINY_MARKER, {"kind": kind, "seed": seed, "note": "random weights"})
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
