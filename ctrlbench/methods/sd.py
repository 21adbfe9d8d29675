"""Stable Diffusion text-to-image (the mmm2025 base generation and the plain-SD baseline).

Each prompt gets `images_per_prompt` images from one generator seeded with `seed`, as
the original code did (generator = manual_seed(42), num_images_per_prompt = 5); the
initial noise is drawn per prompt, so an item's images do not depend on which other
items share its batch. Prompt embeddings are computed once per distinct prompt, in
77-token chunks so long prompts are not truncated (ctrlbench.prompts.long_prompt); a batch
only holds prompts with the same number of chunks, so a short prompt's images are the
same whichever long prompts the shard also holds.

A batch that runs out of CUDA memory is halved and retried (ctrlbench.batching.OomBackoff).
Images holding NaN or inf (a diverged UNet, fp16 overflow) raise FloatingPointError
naming the items; they are never saved as black or garbage images. An empty prompt raises
InputError before the model is loaded.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
import torch
from diffusers.utils.torch_utils import randn_tensor

from .. import io
from ..batching import OomBackoff, finite_pil
from ..config import resolve_device, resolve_dtype
from ..errors import InputError
from ..models.loaders import load_model
from ..prompts.long_prompt import TEXT_HANDLINGS, encode_long_prompts

log = logging.getLogger(__name__)

MANIFEST_COLUMNS = ["item_id", "sample", "image", "prompt", "seed", "class_name", "source_image"]


def initial_latents(pipe, n: int, height: int, width: int, seed: int, dtype) -> torch.Tensor:
    """The noise diffusers draws for one prompt with generator=manual_seed(seed) on CPU."""
    shape = (n, pipe.unet.config.in_channels, height // pipe.vae_scale_factor, width // pipe.vae_scale_factor)
    generator = torch.Generator("cpu").manual_seed(seed)
    return randn_tensor(shape, generator=generator, device=torch.device("cpu"), dtype=dtype)


@torch.inference_mode()
def encode_prompts(pipe, prompts: list[str], negative_prompt: str, device, handling: str = "chunked") -> dict[str, tuple]:
    """{prompt: (positive, negative) embeddings}, each distinct prompt encoded once.

    With handling "chunked" both are [1, 77 * k, D] with k the chunk count of the longer of
    prompt and negative prompt; a prompt of <= 75 tokens gives exactly diffusers'
    `encode_prompt` embeddings. "truncate" and "authors": see prompts.long_prompt.
    """
    cache = {}
    for prompt in dict.fromkeys(prompts):
        cache[prompt] = encode_long_prompts(pipe.tokenizer, pipe.text_encoder, [prompt],
                                            [negative_prompt or ""], device, handling)
    return cache


def batches(jobs: list, key, size: int) -> list[list]:
    """Consecutive batches of at most `size` jobs, each batch holding one `key(job)` value
    (embedding length, image size): groups in order of first appearance, jobs in order."""
    groups: dict = {}
    for job in jobs:
        groups.setdefault(key(job), []).append(job)
    return [group[i:i + size] for group in groups.values() for i in range(0, len(group), size)]


@torch.inference_mode()
def generate(pipe, prompts: pd.DataFrame, params: dict, out_dir: Path, embeds: dict | None = None) -> pd.DataFrame:
    """Generate every prompt's images in batches; return the manifest rows.

    `embeds` ({prompt: (positive, negative)}, each [1, L, D]) replaces the pipeline's own
    CLIP encoding: ParaDiffusion passes its Llama features here.
    """
    device, dtype = pipe.device, pipe.unet.dtype
    n, height, width = params["images_per_prompt"], params["height"], params["width"]
    if embeds is None:
        embeds = encode_prompts(pipe, prompts["prompt"].tolist(), params["negative_prompt"], device,
                                params.get("text_handling", "chunked"))
    jobs = []  # one entry per image: (position, prompt row, sample index, its initial noise)
    for row in prompts.itertuples(index=False):
        latents = initial_latents(pipe, n, height, width, params["seed"], dtype)
        first = len(jobs)
        jobs.extend((first + sample, row, sample, latents[sample]) for sample in range(n))

    def run(batch: list) -> list:
        positive = torch.cat([embeds[row.prompt][0] for _, row, _, _ in batch])
        negative = torch.cat([embeds[row.prompt][1] for _, row, _, _ in batch])
        # "np", then the same conversion diffusers' "pil" does, so NaN / inf is seen first.
        pixels = pipe(
            prompt_embeds=positive, negative_prompt_embeds=negative,
            latents=torch.stack([lat for _, _, _, lat in batch]).to(device),
            num_inference_steps=params["num_inference_steps"], guidance_scale=params["guidance_scale"],
            height=height, width=width, output_type="np",
        ).images
        return finite_pil(pipe.image_processor, pixels, [f"item {row.item_id} sample {sample}"
                                                         for _, row, sample, _ in batch], "sd generation")

    records = [None] * len(jobs)
    done = 0
    backoff = OomBackoff("sd generation")
    for batch in batches(jobs, lambda job: embeds[job[1].prompt][0].shape[1], params["batch_size"]):
        images = backoff.run(batch, run)
        for (position, row, sample, _), image in zip(batch, images):
            name = f"{io.safe_name(row.item_id)}_{sample:02d}.png"
            io.save_image(out_dir / name, image)
            records[position] = {"item_id": row.item_id, "sample": sample, "image": name, "prompt": row.prompt,
                                 "seed": params["seed"], "class_name": row.class_name, "source_image": row.image}
        done += len(batch)
        log.info("generated %d/%d images", done, len(jobs))
    return pd.DataFrame(records, columns=MANIFEST_COLUMNS)


def check_prompts(prompts: pd.DataFrame, prompts_csv) -> None:
    """A prompts table needs item_id and prompt, and no prompt may be empty."""
    missing = [c for c in ("item_id", "prompt") if c not in prompts.columns]
    if missing:
        raise InputError(f"prompts table {prompts_csv} lacks column(s) {', '.join(missing)}")
    for row in prompts.itertuples(index=False):
        if not str(row.prompt).strip():
            raise InputError(f"prompts table {prompts_csv}: item {row.item_id} has an empty prompt")


def run_shard(config: dict, model_key: str, prompts_csv: str, out_dir: str, params: dict) -> pd.DataFrame:
    """One job: load the model once, generate the shard, write params.json and the manifest last."""
    prompts = pd.read_csv(prompts_csv, dtype={"item_id": str}, keep_default_na=False)
    check_prompts(prompts, prompts_csv)
    device = resolve_device(config)
    dtype = resolve_dtype(config, device)
    with io.atomic_dir(out_dir) as tmp:
        if len(prompts):
            pipe = load_model(config, model_key, device=device, dtype=dtype)
            manifest = generate(pipe, prompts, params, tmp)
        else:
            manifest = pd.DataFrame(columns=MANIFEST_COLUMNS)
        io.write_json(tmp / "params.json", io.provenance(
            method="sd", params=params, model={model_key: config["models"][model_key]},
            device=device, dtype=str(dtype), text_handling=TEXT_HANDLINGS[params["text_handling"]],
            torch_threads=torch.get_num_threads(), n_items=len(prompts)))
        io.write_csv(tmp / "manifest.csv", manifest)
    return manifest
