"""GradOP+ stroke-guided synthesis (Singh, Gould, Zheng: High-Fidelity Guided Image Synthesis
with Latent Diffusion Models, CVPR 2023), as its `gradop_plus_stroke2img` computes it.

The output should be a realistic image for the prompt whose "painting" (a Gaussian blur,
ctrlbench.metrics.faithfulness.painting_function) matches the user's stroke painting.
GradOP+ approximates that constrained optimisation inside one text-to-image DDIM pass:

  1. target y = the stroke painting in [0, 1] (never VAE-encoded);
  2. run the full text-conditioned DDIM loop from pure noise;
  3. right after the scheduler step at loop index i, for the K indices
     i0 = int(N * (1 - strength)), ..., i0 + K - 1 (only those < N - 1):
       a. z := the current latent; G steps of Adam(lr) on
          MSE(blur(clamp((vae.decode(z / scaling_factor) + 1) / 2, 0, 1)), y)
          (gradients through the VAE decoder only; the UNet runs under no_grad);
       b. re-noise: latent := scheduler.add_noise(z, fresh noise, timesteps[i + 1]);
  4. finish the remaining steps normally, then decode.

Everything is in `gradop()` below, top to bottom. More grad steps G (8-16) or iterations
K (2-5) make the output more faithful to the strokes, fewer make it closer to plain
text-to-image; K = 0 or G = 0 *is* plain text-to-image DDIM from the same noise.

Seeding: image k of a call has its own CPU generator seeded with its seed; it draws the
initial noise [1, 4, h/8, w/8], then each re-noise draw, then (eta > 0 only) DDIM's step
noise, in loop order -- the order of the original pipeline with one image per call, so
batching never changes an image. In a shard, sample s of every input uses seed + s; a
batch that runs out of CUDA memory is halved (sdedit.run_guided_shard), and an output
holding NaN or inf raises FloatingPointError and is never saved.

The optimisation always runs in float32, on a float32 copy of the VAE (grad_vae), also
when the pipeline is float16: fp16 gradients through the decoder underflow, and the
original ran everything in fp32. See docs/methods/gradop.md for memory and differences.
"""

from __future__ import annotations

import copy
import json
import logging
from typing import Sequence

import pandas as pd
import torch
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image

from ..batching import finite_pil
from ..metrics.faithfulness import gaussian_kernel1d, painting_function, to_unit_tensor
from .sd import batches, encode_prompts
from .sdedit import (MANIFEST_COLUMNS as SDEDIT_COLUMNS, _seed_list, ddim_scheduler, default_labels, fit_image,
                     guided_noise, run_guided_shard, stack_embeddings)

log = logging.getLogger(__name__)

GRADOP_DEFAULTS = {
    # GradOP+ (run.py defaults): SD v1.4, DDIM 50 steps, guidance 7.5, seed 0, 512x512.
    "num_inference_steps": 50,
    "guidance_scale": 7.5,
    "strength": 0.8,             # first optimised step: int(N * (1 - strength))
    "num_iterative_steps": 3,    # K: how many steps get an optimisation
    "grad_steps_per_iter": 12,   # G: Adam steps per optimisation
    "lr": 0.1,                   # Adam learning rate
    "blur_kernel": 35,           # painting function: Gaussian blur kernel (odd) ...
    "blur_sigma": 7.0,           # ... and sigma, in pixels of the output image
    "eta": 0.0,
    "seed": 0,                   # sample s of every input uses seed + s
    "height": 512,
    "width": 512,
    "samples_per_input": 1,
    "batch_size": 1,             # images per batch (UNet x2 with guidance; VAE gradients per batch)
    "negative_prompt": "",
    "memory_saver": "none",      # none | vae_slicing | vae_tiling | checkpointing
}

MEMORY_SAVERS = ("none", "vae_slicing", "vae_tiling", "checkpointing")
MANIFEST_COLUMNS = SDEDIT_COLUMNS + ["gradop_losses"]


def optimised_steps(num_inference_steps: int, strength: float, num_iterative_steps: int,
                    grad_steps_per_iter: int = 1) -> list[int]:
    """Loop indices after whose scheduler step GradOP+ optimises (empty: plain text-to-image).

    i0 = int(N * (1 - strength)) computed in floating point as the original did: with the
    defaults int(50 * (1 - 0.8)) = int(9.999999999999998) = 9, so [9, 10, 11].
    """
    if grad_steps_per_iter <= 0:
        return []
    start = min(int(num_inference_steps * (1 - strength)), num_inference_steps)
    return [i for i in range(start, start + num_iterative_steps) if i < num_inference_steps - 1]


def check_params(params: dict) -> None:
    """ValueError for GradOP+ parameters that cannot work."""
    if params["memory_saver"] not in MEMORY_SAVERS:
        raise ValueError(f"gradop memory_saver must be one of {', '.join(MEMORY_SAVERS)}, "
                         f"got {params['memory_saver']!r}")
    if not 0.0 <= float(params["strength"]) <= 1.0:
        raise ValueError(f"gradop strength must be in [0, 1], got {params['strength']}")
    for name in ("num_iterative_steps", "grad_steps_per_iter"):
        if int(params[name]) < 0:
            raise ValueError(f"gradop {name} must be >= 0, got {params[name]}")
    if not float(params["lr"]) > 0:
        raise ValueError(f"gradop lr must be positive, got {params['lr']}")
    gaussian_kernel1d(params["blur_kernel"], params["blur_sigma"])  # checks kernel and sigma


def make_grad_vae(vae, memory_saver: str = "none"):
    """The VAE the optimisation differentiates through: a frozen float32 copy (eval mode,
    requires_grad off) of `vae`, with the memory saver's decoder settings.

    checkpointing: diffusers' gradient checkpointing of the decoder (mid block and each
    up block keep only their input; the backward pass recomputes them one at a time).
    vae_tiling: decode in overlapping tiles of half the VAE's sample size (256 px for SD),
    each tile's blocks checkpointed too; the decoded image differs slightly from an
    untiled decode (tiles are blended; group norms see one tile).
    """
    if memory_saver not in MEMORY_SAVERS:
        raise ValueError(f"memory_saver must be one of {', '.join(MEMORY_SAVERS)}, got {memory_saver!r}")
    frozen = copy.deepcopy(vae)
    if frozen.dtype != torch.float32:
        frozen = frozen.to(torch.float32)
    frozen = frozen.eval().requires_grad_(False)
    if memory_saver in ("checkpointing", "vae_tiling"):
        frozen.enable_gradient_checkpointing()
    if memory_saver == "vae_tiling":
        frozen.enable_tiling()
        factor = 2 ** (len(frozen.config.block_out_channels) - 1)
        tile = max(factor, (int(frozen.config.sample_size) // 2) // factor * factor)
        frozen.tile_sample_min_size, frozen.tile_latent_min_size = tile, tile // factor
    return frozen


def gradop(pipe, stroke_images: Sequence[Image.Image], prompts: Sequence[str], params: dict,
           generator_seed: int | Sequence[int], *, loss_log: list | None = None,
           grad_vae=None, labels: Sequence[str] | None = None) -> list[Image.Image]:
    """GradOP+ for each (stroke painting, prompt): one output per input, in input order.

    `pipe`: a loaded StableDiffusionPipeline (its modules; the scheduler is DDIM, see
    sdedit.ddim_scheduler). `generator_seed`: one seed for every image or one per image.
    `loss_log`, if given, is extended with one entry per image: a list, per optimised
    step, of {"step": i, "timestep": re-noise timestep, "losses": [loss before each
    Adam step]}. `grad_vae`: a make_grad_vae(pipe.vae, params["memory_saver"]) to reuse.
    An output holding NaN or inf raises FloatingPointError naming it by `labels` (one per
    image; default "image <index> (seed <seed>)").
    """
    check_params(params)
    if len(stroke_images) != len(prompts):
        raise ValueError(f"{len(stroke_images)} stroke images for {len(prompts)} prompts")
    device, dtype = pipe.device, pipe.unet.dtype
    steps, guidance, eta = int(params["num_inference_steps"]), float(params["guidance_scale"]), float(params["eta"])
    grad_steps, lr = int(params["grad_steps_per_iter"]), float(params["lr"])
    kernel, sigma = int(params["blur_kernel"]), float(params["blur_sigma"])
    optimise_at = set(optimised_steps(steps, float(params["strength"]), int(params["num_iterative_steps"]),
                                      grad_steps))
    one_at_a_time = params["memory_saver"] in ("vae_slicing", "vae_tiling")
    seeds = _seed_list(generator_seed, len(prompts), params["seed"])
    labels = default_labels(labels, seeds)
    strokes = [fit_image(image, params["width"], params["height"]) for image in stroke_images]
    cache = encode_prompts(pipe, list(prompts), params["negative_prompt"], device)
    scheduler = ddim_scheduler(pipe)
    scale = pipe.vae.config.scaling_factor
    if optimise_at and grad_vae is None:
        grad_vae = make_grad_vae(pipe.vae, params["memory_saver"])
    outputs: list[Image.Image | None] = [None] * len(prompts)
    logs: list[list | None] = [None] * len(prompts)

    def key(k):
        return strokes[k].size, cache[prompts[k]][0].shape[1]

    for batch in batches(list(range(len(prompts))), key, params["batch_size"]):
        n = len(batch)
        (width, height), _ = key(batch[0])
        shape = (1, pipe.unet.config.in_channels, height // pipe.vae_scale_factor, width // pipe.vae_scale_factor)
        generators = [torch.Generator("cpu").manual_seed(seeds[k]) for k in batch]
        embeds = stack_embeddings(cache, [prompts[k] for k in batch], guidance)
        scheduler.set_timesteps(steps, device=device)
        timesteps = scheduler.timesteps
        batch_logs: list[list] = [[] for _ in batch]

        # 1. the optimisation target: the stroke paintings in [0, 1], float32
        target = torch.cat([to_unit_tensor(strokes[k], torch.float32) for k in batch]).to(device)

        # 2. pure noise, one draw per image from its own generator
        latents = torch.cat([randn_tensor(shape, generator=g, device=device, dtype=dtype) for g in generators])
        latents = latents * scheduler.init_noise_sigma

        for i, t in enumerate(timesteps):
            with torch.no_grad():
                noise_pred = guided_noise(pipe, scheduler.scale_model_input(latents, t), t, embeds, guidance)
                latents = scheduler.step(noise_pred, t, latents, eta=eta, generator=generators if eta > 0 else None,
                                         return_dict=False)[0]
            if i not in optimise_at:
                continue

            # 3a. G Adam steps on z so that the painted decode of z matches the strokes
            z = latents.detach().to(torch.float32).clone().requires_grad_(True)
            optimiser = torch.optim.Adam([z], lr=lr)
            losses: list[list[float]] = [[] for _ in batch]
            parts = [slice(j, j + 1) for j in range(n)] if one_at_a_time else [slice(0, n)]
            with torch.enable_grad():
                for _ in range(grad_steps):
                    grad = torch.zeros_like(z)
                    for part in parts:  # per-image losses: an image's gradient ignores its batch
                        decoded = grad_vae.decode(z[part] / scale, return_dict=False)[0]
                        image = torch.clamp((decoded + 1.0) / 2.0, min=0.0, max=1.0)
                        per_image = ((painting_function(image, kernel, sigma) - target[part]) ** 2).mean(dim=(1, 2, 3))
                        grad += torch.autograd.grad(per_image.sum(), z)[0]
                        for j, value in zip(range(n)[part], per_image.detach().cpu().tolist()):
                            losses[j].append(value)
                    optimiser.zero_grad(set_to_none=True)
                    z.grad = grad
                    optimiser.step()

            # 3b. re-noise the optimised latent to the next timestep, with fresh noise
            fresh = torch.cat([randn_tensor(shape, generator=g, device=device, dtype=torch.float32)
                               for g in generators])
            t_next = timesteps[i + 1]
            latents = scheduler.add_noise(z.detach(), fresh, t_next.repeat(n)).to(dtype)
            for j in range(n):
                batch_logs[j].append({"step": i, "timestep": int(t_next), "losses": losses[j]})

        # 4. the remaining steps ran in the loop above; decode
        with torch.no_grad():
            decoded = pipe.vae.decode(latents / scale, return_dict=False)[0]
        images = finite_pil(pipe.image_processor, decoded, [labels[k] for k in batch], "gradop")
        for j, (k, image) in enumerate(zip(batch, images)):
            outputs[k], logs[k] = image, batch_logs[j]
    if loss_log is not None:
        loss_log.extend(logs)
    return outputs


def loss_summary(entries: list[dict]) -> str:
    """Manifest form of one image's loss log: JSON [{step, timestep, first, last}, ...]."""
    return json.dumps([{"step": e["step"], "timestep": e["timestep"], "first": e["losses"][0],
                        "last": e["losses"][-1]} for e in entries if e["losses"]])


# --- one shard job ----------------------------------------------------------------------

def run_shard(config: dict, model_key: str, inputs_csv: str, out_dir: str, params: dict) -> pd.DataFrame:
    """One job: GradOP+ for every stroke painting of the shard, samples_per_input times
    (sdedit.run_guided_shard); the manifest's `gradop_losses` column holds each image's
    loss_summary."""
    check_params(params)

    def make_generate(pipe):
        grad_vae = make_grad_vae(pipe.vae, params["memory_saver"])

        def generate(strokes, prompts, seeds, labels):
            loss_log: list = []
            images = gradop(pipe, strokes, prompts, params, seeds, loss_log=loss_log, grad_vae=grad_vae,
                            labels=labels)
            return [(image, {"gradop_losses": loss_summary(entries)}) for image, entries in zip(images, loss_log)]
        return generate

    return run_guided_shard(config, model_key, inputs_csv, out_dir, params, "gradop", make_generate,
                            MANIFEST_COLUMNS, optimisation_dtype="float32")
