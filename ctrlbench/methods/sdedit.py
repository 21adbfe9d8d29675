"""SDEdit (Meng et al. 2022) on stroke paintings: the baseline of GradOP+ (Singh et al. 2023).

Standard Stable Diffusion img2img, as diffusers' StableDiffusionImg2ImgPipeline and the
GradOP repository's `sdedit_img2img` compute it:

  1. the painting is resized to (width, height) (PIL bicubic, only if needed), scaled to
     [-1, 1] and VAE-encoded; the latent is a sample of the posterior, times the VAE's
     scaling factor;
  2. DDIM timesteps are set for `num_inference_steps`; denoising starts at index
     t_start = num_inference_steps - int(num_inference_steps * strength), so strength 1
     starts from (almost) pure noise and strength 0 returns the encoded painting;
  3. the latent is noised to timesteps[t_start] with scheduler.add_noise;
  4. the remaining timesteps run with classifier-free guidance; the result is decoded.

Seeding: image k of a call uses its own CPU generator seeded with seeds[k] (default
params["seed"]), drawn in diffusers' order (posterior sample, then the noise), so every
image equals `StableDiffusionImg2ImgPipeline(...)(prompt, image, strength=...,
generator=torch.Generator().manual_seed(seed))` on the same model. In a shard, sample s
of every input uses seed + s: sample 0 is what the original `run.py --seed <seed>` gives.
So a batch that runs out of CUDA memory can be halved (run_guided_shard) without changing
an image; an output holding NaN or inf raises FloatingPointError and is never saved.
The scheduler is DDIM built from the model folder's scheduler config with
clip_sample=False, set_alpha_to_one=False, steps_offset=1 (GradOP's pipeline forces DDIM).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import pandas as pd
import torch
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image

from .. import io
from ..batching import OomBackoff, finite_pil
from ..config import resolve_device, resolve_dtype
from ..errors import InputError
from ..metrics.embeddings import open_rgb
from ..models.loaders import load_model
from ..prompts.long_prompt import TEXT_HANDLING
from .sd import batches, encode_prompts

log = logging.getLogger(__name__)

SDEDIT_DEFAULTS = {
    # GradOP+'s SDEdit baseline: SD v1.4, DDIM 50 steps, guidance 7.5, strength 0.8, seed 0.
    "num_inference_steps": 50,
    "guidance_scale": 7.5,
    "strength": 0.8,             # the original CLI never passed it: always 0.8 there
    "eta": 0.0,
    "seed": 0,                   # sample s of every input uses seed + s
    "height": 512,
    "width": 512,
    "samples_per_input": 1,
    "batch_size": 4,             # images per UNet call (x2 with guidance)
    "negative_prompt": "",
}

MANIFEST_COLUMNS = ["item_id", "sample", "image", "prompt", "seed", "class_name", "source_image"]
INPUT_COLUMNS = ["item_id", "prompt", "image"]


def ddim_scheduler(pipe):
    """GradOP's scheduler: DDIM from the model's scheduler config (betas, spacing) with
    clip_sample off, set_alpha_to_one off and steps_offset 1, as its pipeline forced."""
    from diffusers import DDIMScheduler

    return DDIMScheduler.from_config(pipe.scheduler.config, clip_sample=False, set_alpha_to_one=False,
                                     steps_offset=1)


def start_index(num_inference_steps: int, strength: float) -> int:
    """Index of the first denoising timestep for `strength` (diffusers' get_timesteps)."""
    if not 0.0 <= float(strength) <= 1.0:
        raise ValueError(f"strength must be in [0, 1], got {strength}")
    init_timestep = min(int(num_inference_steps * strength), num_inference_steps)
    return max(num_inference_steps - init_timestep, 0)


def fit_image(image: Image.Image, width: int, height: int) -> Image.Image:
    """RGB image at (width, height); resized with PIL bicubic only when the size differs."""
    image = image.convert("RGB")
    return image if image.size == (width, height) else image.resize((width, height), Image.BICUBIC)


def _seed_list(seeds, n: int, default: int) -> list[int]:
    if seeds is None:
        return [int(default)] * n
    if isinstance(seeds, int):
        return [seeds] * n
    seeds = [int(s) for s in seeds]
    if len(seeds) != n:
        raise ValueError(f"{len(seeds)} seeds for {n} images")
    return seeds


def default_labels(labels: Sequence[str] | None, seeds: list[int]) -> list[str]:
    """How errors name the images of a call: `labels`, else "image <index> (seed <seed>)"."""
    if labels is None:
        return [f"image {k} (seed {seed})" for k, seed in enumerate(seeds)]
    if len(labels) != len(seeds):
        raise ValueError(f"{len(labels)} labels for {len(seeds)} images")
    return list(labels)


def guided_noise(pipe, latents, t, embeds, guidance_scale: float):
    """The UNet's noise prediction with classifier-free guidance (as the diffusers pipelines)."""
    cfg = guidance_scale > 1.0
    model_input = torch.cat([latents] * 2) if cfg else latents
    noise = pipe.unet(model_input, t, encoder_hidden_states=embeds, return_dict=False)[0]
    if cfg:
        uncond, text = noise.chunk(2)
        noise = uncond + guidance_scale * (text - uncond)
    return noise


def stack_embeddings(cache: dict, prompts: Sequence[str], guidance_scale: float):
    """[negative; positive] embeddings of a batch (positive only without guidance)."""
    positive = torch.cat([cache[p][0] for p in prompts])
    if guidance_scale <= 1.0:
        return positive
    return torch.cat([torch.cat([cache[p][1] for p in prompts]), positive])


@torch.no_grad()
def sdedit(pipe, images: Sequence[Image.Image], prompts: Sequence[str], params: dict,
           seeds: int | Sequence[int] | None = None, labels: Sequence[str] | None = None) -> list[Image.Image]:
    """SDEdit img2img of each (image, prompt); one output per input, in input order.

    `pipe` is a loaded StableDiffusionPipeline (its modules are used, its scheduler is not).
    `seeds`: one per image, or one for all (default params["seed"]). Images are batched
    by params["batch_size"] (only images of one size and prompt chunk count share a batch).
    An output holding NaN or inf raises FloatingPointError naming it by `labels` (one per
    image; default "image <index> (seed <seed>)").
    """
    if len(images) != len(prompts):
        raise ValueError(f"{len(images)} images for {len(prompts)} prompts")
    device, dtype = pipe.device, pipe.unet.dtype
    steps, guidance = int(params["num_inference_steps"]), float(params["guidance_scale"])
    eta = float(params["eta"])
    seeds = _seed_list(seeds, len(images), params["seed"])
    labels = default_labels(labels, seeds)
    t_start = start_index(steps, params["strength"])
    images = [fit_image(image, params["width"], params["height"]) for image in images]
    cache = encode_prompts(pipe, list(prompts), params["negative_prompt"], device)
    scheduler = ddim_scheduler(pipe)
    scale = pipe.vae.config.scaling_factor
    out: list[Image.Image | None] = [None] * len(images)

    def key(k):
        return images[k].size, cache[prompts[k]][0].shape[1]

    for batch in batches(list(range(len(images))), key, params["batch_size"]):
        scheduler.set_timesteps(steps, device=device)
        timesteps = scheduler.timesteps[t_start:]
        generators = [torch.Generator("cpu").manual_seed(seeds[k]) for k in batch]
        # 1. encode each painting; its posterior sample and noise come from its own generator
        init, noise = [], []
        for k, generator in zip(batch, generators):
            pixels = pipe.image_processor.preprocess(images[k]).to(device=device, dtype=dtype)
            posterior = pipe.vae.encode(pixels).latent_dist
            init.append(scale * posterior.sample(generator))
            noise.append(randn_tensor(init[-1].shape, generator=generator, device=device, dtype=dtype))
        init, noise = torch.cat(init), torch.cat(noise)
        embeds = stack_embeddings(cache, [prompts[k] for k in batch], guidance)
        if len(timesteps) == 0:  # strength 0: nothing to denoise
            latents = init
        else:
            # 2-3. noise the painting's latent to the first timestep kept by `strength`
            latents = scheduler.add_noise(init, noise, timesteps[:1].repeat(len(batch)))
            # 4. denoise the remaining steps
            for t in timesteps:
                latents = scheduler.step(guided_noise(pipe, scheduler.scale_model_input(latents, t), t, embeds,
                                                      guidance), t, latents, eta=eta,
                                         generator=generators if eta > 0 else None, return_dict=False)[0]
        decoded = pipe.vae.decode(latents / scale, return_dict=False)[0]
        for k, image in zip(batch, finite_pil(pipe.image_processor, decoded, [labels[k] for k in batch], "sdedit")):
            out[k] = image
    return out


# --- one shard job ----------------------------------------------------------------------

def read_inputs(inputs_csv) -> pd.DataFrame:
    """A shard's inputs table: item_id, prompt, image (the stroke painting's path); class_name optional."""
    path = Path(inputs_csv)
    inputs = io.read_table(path, INPUT_COLUMNS, "inputs table")
    if "class_name" not in inputs.columns:
        inputs["class_name"] = ""
    duplicated = sorted(set(inputs["item_id"][inputs["item_id"].duplicated()]))
    if duplicated:
        raise InputError(f"inputs table {path}: item id(s) {', '.join(duplicated[:5])} appear more than once")
    for row in inputs.itertuples(index=False):
        try:
            io.safe_name(row.item_id)
        except ValueError as error:
            raise InputError(f"inputs table {path}: {error}") from None
        if not str(row.prompt).strip():
            raise InputError(f"inputs table {path}: item {row.item_id} has an empty prompt")
    return inputs


def shard_jobs(inputs: pd.DataFrame, params: dict) -> list[tuple[int, int]]:
    """(input row, sample) for samples_per_input samples of every input, in item order."""
    return [(i, sample) for i in range(len(inputs)) for sample in range(int(params["samples_per_input"]))]


def record(row, sample: int, name: str, seed: int) -> dict:
    return {"item_id": row.item_id, "sample": sample, "image": name, "prompt": row.prompt, "seed": seed,
            "class_name": row.class_name, "source_image": row.image}


def run_guided_shard(config: dict, model_key: str, inputs_csv: str, out_dir: str, params: dict, method: str,
                     make_generate, columns: list[str], **provenance) -> pd.DataFrame:
    """The job skeleton SDEdit and GradOP+ share: load the model once, fit every stroke
    painting to the output size, run `samples_per_input` samples in batches of
    `batch_size`, and write `<item_id>_<sample:02d>.png`, params.json and manifest.csv
    (last) atomically.

    make_generate(pipe) -> generate(strokes, prompts, seeds, labels) -> [(image, extra
    manifest fields)]; `provenance` adds method-specific fields to params.json. A batch that
    runs out of CUDA memory is halved and retried (ctrlbench.batching.OomBackoff, named
    `method`); each image's noise comes from its own seed, so the images stay the same.
    """
    inputs = read_inputs(inputs_csv)
    device = resolve_device(config)
    dtype = resolve_dtype(config, device)
    with io.atomic_dir(out_dir) as tmp:
        jobs = shard_jobs(inputs, params)
        records = []
        if jobs:
            pipe = load_model(config, model_key, device=device, dtype=dtype)
            generate = make_generate(pipe)
            strokes = [fit_image(open_rgb(path), params["width"], params["height"]) for path in inputs["image"]]
            size = max(1, int(params["batch_size"]))
            backoff = OomBackoff(method)

            def run(part: list) -> list:
                return generate([strokes[i] for i, _ in part], [inputs.prompt.iloc[i] for i, _ in part],
                                [int(params["seed"]) + sample for _, sample in part],
                                [f"item {inputs.item_id.iloc[i]} sample {sample}" for i, sample in part])

            for start in range(0, len(jobs), size):
                chunk = jobs[start:start + size]
                for (i, sample), (image, extra) in zip(chunk, backoff.run(chunk, run)):
                    row = inputs.iloc[i]
                    name = f"{row.item_id}_{sample:02d}.png"
                    io.save_image(tmp / name, image)
                    records.append({**record(row, sample, name, int(params["seed"]) + sample), **extra})
                log.info("%s: %d/%d images", method, start + len(chunk), len(jobs))
        manifest = pd.DataFrame(records, columns=columns)
        io.write_json(tmp / "params.json", io.provenance(
            method=method, params=params, model={model_key: config["models"][model_key]},
            device=device, dtype=str(dtype), **provenance, text_handling=TEXT_HANDLING,
            scheduler="DDIMScheduler", torch_threads=torch.get_num_threads(), n_items=len(inputs)))
        io.write_csv(tmp / "manifest.csv", manifest)
    return manifest


def run_shard(config: dict, model_key: str, inputs_csv: str, out_dir: str, params: dict) -> pd.DataFrame:
    """One job: SDEdit every stroke painting of the shard, samples_per_input times
    (run_guided_shard)."""
    def make_generate(pipe):
        def generate(strokes, prompts, seeds, labels):
            return [(image, {}) for image in sdedit(pipe, strokes, prompts, params, seeds=seeds, labels=labels)]
        return generate

    return run_guided_shard(config, model_key, inputs_csv, out_dir, params, "sdedit", make_generate,
                            MANIFEST_COLUMNS)
