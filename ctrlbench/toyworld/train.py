"""Train the toy world's models from scratch on the CPU (docs/toyworld.md).

    python -m ctrlbench.toyworld.train --out ctrlbench/toyworld/weights   # all, about an hour
    python -m ctrlbench.toyworld.train --out /tmp/w --only vae --steps 20  # a quick check

Each model is trained on scenes drawn on the fly from `scenes.scene_for(TRAIN_SEED, i)`
(the claims use other seeds: held-out scenes), saved in its library's own format with
fp16 weights (the loaders upcast them), and recorded in `manifest.json` beside it: files
and sha256, settings, steps, final losses, time, command. Loss histories go to
`<model>/history.csv`. Everything is seeded; on the CPU a run repeats exactly for a given
torch version and thread count.

Models (each a model kind the workflow already loads from a local folder):
  vae        diffusers AutoencoderKL, x4 (64 px -> 16x16x4 latents)
  sd         a StableDiffusionPipeline folder: that VAE, a CLIPTextModel and a
             UNet2DConditionModel trained together on the VAE latents, 10% of the captions
             dropped (so classifier-free guidance works), DDIM scheduler
  clip       open_clip CLIP (hub folder format), trained contrastively on scene/caption pairs
  segmenter  ToyFCN (models/toy_fcn.py), background + one class per shape
  controlnet diffusers ControlNetModel on the toy SD's UNet (copied from its encoder),
             conditioned on Canny maps of the scenes, the SD frozen (issue 20)
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import math
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from . import scenes

TRAIN_SEED = 0
IMAGE_SIZE = 64
SEGMENTER_CLASSES = ("background", *scenes.SHAPES)
CROSS_ATTENTION_DIM = 64

SETTINGS = {  # per model: steps, batch size, learning rate; the defaults of a full training
    "vae": {"steps": 1200, "batch_size": 32, "lr": 1e-3, "kl_weight": 1e-6},
    "sd": {"steps": 2800, "batch_size": 64, "lr": 3e-4, "caption_dropout": 0.1, "ema": 0.999,
           "n_latents": 40000, "warmup": 100, "resume": False},
    "clip": {"steps": 1500, "batch_size": 128, "lr": 5e-4, "warmup": 100},
    "segmenter": {"steps": 1200, "batch_size": 32, "lr": 2e-3, "vae_fraction": 0.5},
    "controlnet": {"steps": 2000, "batch_size": 32, "lr": 5e-4, "caption_dropout": 0.5, "n_latents": 12000,
                   "warmup": 50},
}
ORDER = ("vae", "sd", "clip", "segmenter", "controlnet")
# The Canny map the ControlNet learns from: the workflow's own (methods/controlnet.py
# canny_map, on the RGB array) with ControlNet's default thresholds.
CANNY_THRESHOLDS = (100, 200)


# --- data ---------------------------------------------------------------------------------

def images_tensor(images) -> torch.Tensor:
    """PIL images -> float [N, 3, H, W] in [-1, 1]."""
    array = np.stack([np.asarray(image, dtype=np.float32) for image in images]) / 127.5 - 1.0
    return torch.from_numpy(array).permute(0, 3, 1, 2).contiguous()


def scene_batch(start: int, n: int, seed: int = TRAIN_SEED, size: int = IMAGE_SIZE):
    """Scenes start..start+n-1 of the world `seed`: (scenes, images in [-1, 1], captions)."""
    batch = [scenes.scene_for(seed, start + k) for k in range(n)]
    return batch, images_tensor([scenes.render(s, size) for s in batch]), [s.caption() for s in batch]


def class_maps(batch, size: int = IMAGE_SIZE) -> torch.Tensor:
    """int64 [N, H, W]: 0 background, 1 + shape index where an object is."""
    maps = np.zeros((len(batch), size, size), np.int64)
    for k, scene in enumerate(batch):
        for obj, mask in zip(scene.objects, scenes.instance_masks(scene, size)):
            maps[k][mask] = 1 + scenes.SHAPES.index(obj.shape)
    return torch.from_numpy(maps)


def _lr(step: int, total: int, lr: float, warmup: int = 0) -> float:
    """Linear warm-up, then cosine decay to a tenth."""
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


class History:
    """Losses per step, written as CSV; `final` is the mean of the last 50 steps."""

    def __init__(self):
        self.rows: list[dict] = []

    def add(self, step: int, **losses: float) -> None:
        self.rows.append({"step": step, **{k: float(v) for k, v in losses.items()}})

    def final(self) -> dict:
        tail = self.rows[-50:]
        return {k: float(np.mean([r[k] for r in tail])) for k in tail[0] if k != "step"} if tail else {}

    def write(self, path: Path) -> None:
        import pandas as pd

        pd.DataFrame(self.rows).to_csv(path, index=False)


def _log(name: str, step: int, total: int, start: float, **losses) -> None:
    if step % 50 == 0 or step == total - 1:
        text = " ".join(f"{k} {v:.4f}" for k, v in losses.items())
        print(f"[{name}] step {step + 1}/{total} {text} ({time.time() - start:.0f} s)", flush=True)


# --- models ---------------------------------------------------------------------------------

def new_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, sample_size=IMAGE_SIZE,
                         down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
                         block_out_channels=(16, 32, 64), layers_per_block=1, norm_num_groups=8)


def new_text_encoder():
    from transformers import CLIPTextConfig, CLIPTextModel

    from ..models.clip_tokenizer import MODEL_MAX_LENGTH, VOCAB_SIZE

    return CLIPTextModel(CLIPTextConfig(
        vocab_size=VOCAB_SIZE, max_position_embeddings=MODEL_MAX_LENGTH, hidden_size=CROSS_ATTENTION_DIM,
        intermediate_size=4 * CROSS_ATTENTION_DIM, projection_dim=CROSS_ATTENTION_DIM, num_hidden_layers=3,
        num_attention_heads=4, hidden_act="quick_gelu"))


def new_unet():
    from diffusers import UNet2DConditionModel

    # Cross-attention at 8x8 and 4x4 only: three times faster on the CPU than at 16x16 too,
    # and a latent cell there still spans 8 px, finer than the smallest object.
    return UNet2DConditionModel(
        sample_size=IMAGE_SIZE // 4, in_channels=4, out_channels=4, block_out_channels=(32, 64, 128), layers_per_block=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=CROSS_ATTENTION_DIM, attention_head_dim=8, norm_num_groups=16)


OPEN_CLIP_CFG = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": IMAGE_SIZE, "patch_size": 8, "width": 96, "layers": 4, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 4, "layers": 3},
}


# --- training -------------------------------------------------------------------------------

def train_vae(out: Path, steps: int, batch_size: int, lr: float, kl_weight: float, seed: int = 0) -> dict:
    torch.manual_seed(seed)
    vae = new_vae().train()
    optimizer = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    history, start = History(), time.time()
    generator = torch.Generator().manual_seed(seed)
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = _lr(step, steps, lr)
        _, images, _ = scene_batch(step * batch_size, batch_size)
        posterior = vae.encode(images).latent_dist
        recon = vae.decode(posterior.sample(generator)).sample
        l1 = (recon - images).abs().mean()
        kl = posterior.kl().mean()
        loss = l1 + kl_weight * kl
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        history.add(step, loss=loss.item(), l1=l1.item(), kl=kl.item())
        _log("vae", step, steps, start, l1=l1.item(), kl=kl.item())
    vae.eval()
    # SD's convention: latents times scaling_factor have unit variance.
    with torch.no_grad():
        _, images, _ = scene_batch(10 ** 7, 512)
        std = float(vae.encode(images).latent_dist.mean.std())
    vae.register_to_config(scaling_factor=1.0 / std)
    vae.to(torch.float16).save_pretrained(out, safe_serialization=True)
    return {"history": history, "extra": {"scaling_factor": 1.0 / std}}


def encode_latents(vae, n: int, batch_size: int = 256, seed: int = 0) -> torch.Tensor:
    """Scaled latent samples of training scenes 0..n-1 (computed once for the UNet)."""
    generator = torch.Generator().manual_seed(seed)
    out = []
    with torch.no_grad():
        for start in range(0, n, batch_size):
            _, images, _ = scene_batch(start, min(batch_size, n - start))
            out.append(vae.encode(images).latent_dist.sample(generator) * vae.config.scaling_factor)
    return torch.cat(out)


def _load_toy_vae(vae_dir: Path | None, needed_by: str):
    """The trained toy VAE that `needed_by` builds on, or a clear error when it is not trained yet."""
    from diffusers import AutoencoderKL

    if vae_dir is None or not (Path(vae_dir) / "config.json").is_file():
        raise FileNotFoundError(f"toyworld.train {needed_by}: no trained toy VAE in {vae_dir}; train it first "
                                f"(python -m ctrlbench.toyworld.train --only vae --out <same folder>)")
    return AutoencoderKL.from_pretrained(vae_dir, torch_dtype=torch.float32).eval().requires_grad_(False)


def noised_batch(rng: np.random.Generator, latents: torch.Tensor, captions: list[str], tokenizer, batch_size: int,
                 caption_dropout: float, alphas: torch.Tensor):
    """One denoising-training batch: random items, their captions (each dropped to "" with
    probability caption_dropout) as token ids, and their latents noised at random timesteps
    of SD's schedule (alphas = alphas_cumprod). Returns (index, ids, noise, t, noisy)."""
    index = torch.from_numpy(rng.integers(0, len(latents), batch_size))
    texts = ["" if rng.random() < caption_dropout else captions[i] for i in index.tolist()]
    ids = tokenizer(texts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids
    x0 = latents[index]
    noise = torch.randn_like(x0)
    t = torch.from_numpy(rng.integers(0, len(alphas), batch_size))
    a = alphas[t].view(-1, 1, 1, 1)
    return index, ids, noise, t, a.sqrt() * x0 + (1 - a).sqrt() * noise


def train_sd(out: Path, vae_dir: Path, steps: int, batch_size: int, lr: float, caption_dropout: float,
             ema: float, n_latents: int, warmup: int, resume: bool = False, seed: int = 0) -> dict:
    """resume: continue from the pipeline already in `out` (its EMA weights, a fresh
    optimiser and schedule, new noise draws) instead of starting from scratch."""
    from diffusers import StableDiffusionPipeline

    from ..models.clip_tokenizer import build_clip_tokenizer
    from ..models.tiny import sd_scheduler

    torch.manual_seed(seed)
    vae = _load_toy_vae(vae_dir, "sd")
    import tempfile

    with tempfile.TemporaryDirectory() as folder:  # the pipeline saves it again in its own folder
        tokenizer = build_clip_tokenizer(folder)
    if resume:
        from diffusers import UNet2DConditionModel
        from transformers import CLIPTextModel

        unet = UNet2DConditionModel.from_pretrained(out, subfolder="unet", torch_dtype=torch.float32).train()
        text_encoder = CLIPTextModel.from_pretrained(out, subfolder="text_encoder", torch_dtype=torch.float32).train()
        seed += 1  # other noise and batches than the first run
    else:
        text_encoder, unet = new_text_encoder().train(), new_unet().train()
    scheduler = sd_scheduler()
    start = time.time()
    latents = encode_latents(vae, n_latents, seed=seed)
    captions = [scenes.scene_for(TRAIN_SEED, i).caption() for i in range(n_latents)]
    print(f"[sd] encoded {n_latents} latents in {time.time() - start:.0f} s", flush=True)
    params = list(unet.parameters()) + list(text_encoder.parameters())
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    ema_models = [copy.deepcopy(m).requires_grad_(False) for m in (unet, text_encoder)]
    alphas = scheduler.alphas_cumprod
    rng = np.random.default_rng(seed)
    history = History()
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = _lr(step, steps, lr, warmup)
        _, ids, noise, t, noisy = noised_batch(rng, latents, captions, tokenizer, batch_size, caption_dropout, alphas)
        prediction = unet(noisy, t, text_encoder(ids)[0]).sample
        loss = F.mse_loss(prediction, noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        with torch.no_grad():
            for model, shadow in zip((unet, text_encoder), ema_models):
                for p, s in zip(model.parameters(), shadow.parameters()):
                    s.lerp_(p, 1 - ema)
        history.add(step, loss=loss.item())
        _log("sd", step, steps, start, loss=loss.item())
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=ema_models[1].eval(), tokenizer=tokenizer,
                                   unet=ema_models[0].eval(), scheduler=scheduler, safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.to(torch.float16).save_pretrained(out, safe_serialization=True)
    return {"history": history, "extra": {"n_latents": n_latents}}


def canny_tensor(images) -> torch.Tensor:
    """(n, 3, H, W) Canny maps in [0, 1] of PIL images, as the ControlNet pipeline feeds them."""
    from ..methods.controlnet import canny_map

    maps = [np.asarray(canny_map(image, *CANNY_THRESHOLDS, on="rgb")) for image in images]
    return torch.from_numpy(np.stack(maps)).permute(0, 3, 1, 2).float() / 255.0


def train_controlnet(out: Path, sd_dir: Path, steps: int, batch_size: int, lr: float, caption_dropout: float,
                     n_latents: int, warmup: int, seed: int = 0) -> dict:
    """A canny ControlNet for the toy SD: initialised from its UNet's encoder
    (ControlNetModel.from_unet, zero convolutions), the SD frozen, epsilon MSE on the same
    noise schedule; half the captions dropped, as ControlNet's training drops 50%, so the edges
    alone must carry the layout."""
    from diffusers import ControlNetModel, StableDiffusionPipeline

    if not (Path(sd_dir) / "model_index.json").is_file():
        raise FileNotFoundError(f"toyworld.train controlnet: no trained toy SD in {sd_dir}; train it first "
                                f"(python -m ctrlbench.toyworld.train --only vae sd --out <same folder>)")
    torch.manual_seed(seed)
    pipe = StableDiffusionPipeline.from_pretrained(sd_dir, torch_dtype=torch.float32, safety_checker=None)
    unet = pipe.unet.eval().requires_grad_(False)
    text_encoder = pipe.text_encoder.eval().requires_grad_(False)
    # Canny maps are at 64 px and the latents at 16x16: a x4 conditioning embedding (two
    # stride-2 convolutions), not SD's x8 one.
    controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(16, 32, 64)).train()
    start = time.time()
    latents, cond, captions = [], [], []
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for first in range(0, n_latents, 256):
            batch = [scenes.scene_for(TRAIN_SEED + 3, i) for i in range(first, min(first + 256, n_latents))]
            images = [scenes.render(scene, IMAGE_SIZE) for scene in batch]
            latents.append(pipe.vae.encode(images_tensor(images)).latent_dist.sample(generator)
                           * pipe.vae.config.scaling_factor)
            cond.append(canny_tensor(images))
            captions += [scene.caption() for scene in batch]
    latents, cond = torch.cat(latents), torch.cat(cond)
    print(f"[controlnet] encoded {n_latents} scenes in {time.time() - start:.0f} s", flush=True)
    optimizer = torch.optim.AdamW(controlnet.parameters(), lr=lr, weight_decay=0.0)
    alphas = pipe.scheduler.alphas_cumprod
    rng = np.random.default_rng(seed)
    history = History()
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = _lr(step, steps, lr, warmup)
        index, ids, noise, t, noisy = noised_batch(rng, latents, captions, pipe.tokenizer, batch_size,
                                                   caption_dropout, alphas)
        with torch.no_grad():
            text = text_encoder(ids)[0]
        down, mid = controlnet(noisy, t, text, controlnet_cond=cond[index], return_dict=False)
        prediction = unet(noisy, t, text, down_block_additional_residuals=down,
                          mid_block_additional_residual=mid).sample
        loss = F.mse_loss(prediction, noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(controlnet.parameters(), 1.0)
        optimizer.step()
        history.add(step, loss=loss.item())
        _log("controlnet", step, steps, start, loss=loss.item())
    controlnet.eval().to(torch.float16).save_pretrained(out, safe_serialization=True)
    return {"history": history, "extra": {"n_latents": n_latents, "canny_thresholds": list(CANNY_THRESHOLDS)}}


def _clip_tokenize(captions: list[str]) -> torch.Tensor:
    import open_clip

    return open_clip.tokenize(captions, context_length=OPEN_CLIP_CFG["text_cfg"]["context_length"])


def train_clip(out: Path, steps: int, batch_size: int, lr: float, warmup: int, seed: int = 0) -> dict:
    from open_clip import CLIP
    from safetensors.torch import save_file

    from ..models import loaders
    from ..models.tiny import OPEN_CLIP_PREPROCESS

    torch.manual_seed(seed)
    model = CLIP(**OPEN_CLIP_CFG).train()
    mean = torch.tensor(OPEN_CLIP_PREPROCESS["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(OPEN_CLIP_PREPROCESS["std"]).view(1, 3, 1, 1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.1)
    history, start = History(), time.time()
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = _lr(step, steps, lr, warmup)
        _, images, captions = scene_batch(step * batch_size, batch_size, seed=TRAIN_SEED + 1)
        pixels = ((images + 1) / 2 - mean) / std
        image_emb = F.normalize(model.encode_image(pixels), dim=-1)
        text_emb = F.normalize(model.encode_text(_clip_tokenize(captions)), dim=-1)
        logits = model.logit_scale.exp().clamp(max=100) * image_emb @ text_emb.T
        # Captions repeat (same objects, same background): a duplicate is not a negative.
        same = torch.tensor([[a == b for b in captions] for a in captions], dtype=torch.float32)
        targets = same / same.sum(1, keepdim=True)
        loss = 0.5 * (torch.sum(-targets * logits.log_softmax(1), 1).mean()
                      + torch.sum(-targets.T * logits.T.log_softmax(1), 1).mean())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        accuracy = (logits.argmax(1) == torch.arange(len(captions))).float().mean()
        history.add(step, loss=loss.item(), accuracy=accuracy.item())
        _log("clip", step, steps, start, loss=loss.item(), accuracy=accuracy.item())
    state = {k: v.to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    out.mkdir(parents=True, exist_ok=True)
    save_file(state, str(out / "open_clip_model.safetensors"))
    (out / loaders.OPEN_CLIP_CONFIG).write_text(json.dumps(
        {"model_cfg": OPEN_CLIP_CFG, "preprocess_cfg": OPEN_CLIP_PREPROCESS}, indent=1))
    return {"history": history, "extra": {}}


def augment_for_segmenter(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Generated images are softer and noisier than renders: blur some, add noise, shift colours."""
    n = images.shape[0]
    blurred = F.avg_pool2d(F.pad(images, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    pick = (torch.rand(n, 1, 1, 1, generator=generator) < 0.5).float()
    images = pick * blurred + (1 - pick) * images
    images = images + 0.05 * torch.randn(images.shape, generator=generator) * torch.rand(n, 1, 1, 1, generator=generator)
    images = images + 0.1 * (torch.rand(n, 3, 1, 1, generator=generator) - 0.5)
    return images.clamp(-1, 1)


def train_segmenter(out: Path, steps: int, batch_size: int, lr: float, vae_fraction: float = 0.0,
                    vae_dir: Path | None = None, seed: int = 0) -> dict:
    """vae_fraction: the share of each batch passed through the toy VAE first (encode,
    decode), so the segmenter judges shapes as the VAE, and so every generated image,
    renders them (rounded corners, soft edges)."""
    from safetensors.torch import save_file

    from ..methods.segmentation import normalize_imagenet
    from ..models import loaders
    from ..models.toy_fcn import ToyFCN

    torch.manual_seed(seed)
    model = ToyFCN(len(SEGMENTER_CLASSES)).train()
    vae = None
    if vae_fraction > 0:
        vae = _load_toy_vae(vae_dir, "segmenter (vae_fraction > 0)")
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    generator = torch.Generator().manual_seed(seed)
    history, start = History(), time.time()
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = _lr(step, steps, lr)
        batch, images, _ = scene_batch(step * batch_size, batch_size, seed=TRAIN_SEED + 2)
        if vae is not None:
            k = int(round(vae_fraction * batch_size))
            with torch.no_grad():
                images[:k] = vae.decode(vae.encode(images[:k]).latent_dist.mean).sample.clamp(-1, 1)
        images = augment_for_segmenter(images, generator)
        logits = model(normalize_imagenet((images + 1) / 2))["out"]
        target = class_maps(batch)
        loss = F.cross_entropy(logits, target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        accuracy = (logits.argmax(1) == target)[target > 0].float().mean()
        history.add(step, loss=loss.item(), object_pixel_accuracy=accuracy.item())
        _log("segmenter", step, steps, start, loss=loss.item(), accuracy=accuracy.item())
    model.eval()
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: (v.to(torch.float16) if v.is_floating_point() else v).contiguous()
               for k, v in model.state_dict().items()}, str(out / "model.safetensors"))
    (out / loaders.DEEPLAB_JSON).write_text(json.dumps(
        {"builder": "toy_fcn", "num_classes": len(SEGMENTER_CLASSES), "classes": list(SEGMENTER_CLASSES)}, indent=1))
    return {"history": history, "extra": {"classes": list(SEGMENTER_CLASSES)}}


# --- the command --------------------------------------------------------------------------

def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def train(name: str, out_root: Path, settings: dict, seed: int = 0) -> dict:
    out = out_root / name
    start = time.time()
    if name == "vae":
        result = train_vae(out, seed=seed, **settings)
    elif name == "sd":
        result = train_sd(out, out_root / "vae", seed=seed, **settings)
    elif name == "clip":
        result = train_clip(out, seed=seed, **settings)
    elif name == "segmenter":
        result = train_segmenter(out, vae_dir=out_root / "vae", seed=seed, **settings)
    elif name == "controlnet":
        result = train_controlnet(out, out_root / "sd", seed=seed, **settings)
    else:
        raise ValueError(f"unknown toy model {name!r} (models: {', '.join(ORDER)})")
    result["history"].write(out / "history.csv")
    files = sorted(p for p in out.rglob("*") if p.is_file())
    return {"settings": settings, "seed": seed, "seconds": round(time.time() - start, 1),
            "final": result["history"].final(), **result["extra"],
            "files": {str(p.relative_to(out)): {"sha256": sha256(p), "bytes": p.stat().st_size} for p in files}}


def plot_losses(weights: Path, out: Path) -> Path:
    """One panel per trained model: its loss per step (and a running mean), from the
    `<model>/history.csv` files in `weights`; written as a PNG (docs/toyworld_losses.png)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    names = [name for name in ORDER if (weights / name / "history.csv").exists()]
    if not names:
        raise FileNotFoundError(f"no <model>/history.csv in {weights}: train the toy models first")
    figure, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 2.6), squeeze=False)
    for axis, name in zip(axes[0], names):
        history = pd.read_csv(weights / name / "history.csv")
        axis.plot(history["step"], history["loss"], lw=0.4, alpha=0.4, color="tab:blue")
        axis.plot(history["step"], history["loss"].rolling(50, min_periods=1).mean(), lw=1.2, color="tab:blue")
        axis.set_yscale("log")
        axis.set_title(name)
        axis.set_xlabel("step")
    axes[0][0].set_ylabel("training loss")
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=110)
    plt.close(figure)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="folder of the models (one subfolder each) and manifest.json")
    parser.add_argument("--only", nargs="+", choices=ORDER, default=list(ORDER))
    parser.add_argument("--steps", type=int, help="override every model's step count (quick checks)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--plot", type=Path, metavar="PNG",
                        help="only draw the loss curves of the models in --out into PNG (no training)")
    parser.add_argument("--resume-sd", action="store_true",
                        help="continue training the SD pipeline already in --out (--steps more steps)")
    args = parser.parse_args(argv)
    out_root = Path(args.out)
    if args.plot:
        print(plot_losses(out_root, args.plot))
        return
    out_root.mkdir(parents=True, exist_ok=True)
    manifest_path = out_root / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {"models": {}}
    for name in [m for m in ORDER if m in args.only]:
        settings = dict(SETTINGS[name])
        if name == "sd" and args.resume_sd:
            settings["resume"] = True
            settings["warmup"] = 20
        if args.steps:
            settings["steps"] = args.steps
            if name in ("sd", "controlnet"):
                settings["n_latents"] = min(settings["n_latents"], args.steps * settings["batch_size"])
        if name == "sd" and args.resume_sd and (out_root / "sd" / "history.csv").exists():
            import pandas as pd

            previous = pd.read_csv(out_root / "sd" / "history.csv")
        else:
            previous = None
        earlier = manifest["models"].get(name) if previous is not None else None
        entry = train(name, out_root, settings, args.seed)
        if previous is not None:  # one history over both runs, steps numbered on
            history = pd.read_csv(out_root / "sd" / "history.csv")
            history["step"] += len(previous)
            pd.concat([previous, history]).to_csv(out_root / "sd" / "history.csv", index=False)
            entry["files"]["history.csv"] = {"sha256": sha256(out_root / "sd" / "history.csv"),
                                             "bytes": (out_root / "sd" / "history.csv").stat().st_size}
            entry["resumed_from"] = {k: earlier[k] for k in ("settings", "seconds", "final") if k in earlier}
        manifest["models"][name] = {**entry, "torch": torch.__version__, "threads": torch.get_num_threads(),
                                    "command": shlex.join([sys.executable, "-m", "ctrlbench.toyworld.train",
                                                           *(argv if argv is not None else sys.argv[1:])])}
        manifest_path.write_text(json.dumps(manifest, indent=1) + "\n")  # after each model: nothing lost
        print(f"[{name}] done in {entry['seconds']:.0f} s: {entry['final']}", flush=True)


if __name__ == "__main__":
    main()
