"""BLD: Blended Latent Diffusion (Avrahami, Fried, Lischinski, SIGGRAPH 2023), a baseline
of MultiDiffusion's region IoU table (docs/methods/si_bld.md).

One edit of `image` inside `mask` with a prompt, on a plain SD text-to-image model
(the paper's Algorithm 1, without the optional background-reconstruction optimisation):

  1. z_src = VAE posterior mean of the image, times the scaling factor (as the BLD code);
  2. m = the mask downsampled to the latent size with nearest neighbour (as the BLD code's
     PIL NEAREST resize; a mask too thin to survive it uses every latent cell it touches);
  3. z starts from pure noise; DDIM runs all num_inference_steps;
  4. after each step (CFG under the prompt) the latent is at the next timestep t';
     blend z = m * z + (1 - m) * noised(z_src, t'), noised = scheduler.add_noise with one
     fixed noise tensor; after the last step t' is 0 and the blend uses z_src itself;
  5. decode z. Outside the mask the final latent is exactly z_src; no pixels are pasted.

Noise: the initial latent, then the blending noise, drawn from the generator passed in.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import torch
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image

from ..batching import finite_pil
from . import region_editing
from .regions import resize_mask
from .sdedit import ddim_scheduler, guided_noise, stack_embeddings

log = logging.getLogger(__name__)

METHOD = "bld"


def latent_mask(mask: np.ndarray, height: int, width: int) -> torch.Tensor:
    """bool [1, 1, height, width]: `mask` (bool [H, W]) at the latent size.

    Nearest neighbour, like the BLD code. A non-empty mask that vanishes that way (thinner
    than a latent cell) takes every cell it touches instead, so the edit still happens
    (BLD's own answer to thin masks, progressive mask shrinking, starts from a dilated mask).
    An empty mask raises ValueError.
    """
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        raise ValueError("BLD: the mask is empty; there is nothing to edit")
    small = resize_mask(mask, height, width)
    if not small.any():
        log.warning("BLD: a %dx%d mask vanishes at the latent size %dx%d; using the cells it touches",
                    mask.shape[1], mask.shape[0], width, height)
        cells = torch.nn.functional.adaptive_max_pool2d(torch.from_numpy(mask)[None, None].float(),
                                                        (height, width))
        return cells > 0
    return torch.from_numpy(small)[None, None]


@torch.inference_mode()
def encode_source(pipe, image: Image.Image) -> torch.Tensor:
    """z_src [1, C, H/8, W/8]: the VAE posterior mean of `image`, times the scaling factor."""
    pixels = pipe.image_processor.preprocess(image.convert("RGB")).to(pipe.device, pipe.vae.dtype)
    return pipe.vae.encode(pixels).latent_dist.mean * pipe.vae.config.scaling_factor


@torch.inference_mode()
def bld_edit(pipe, image: Image.Image, mask: np.ndarray, embeds: tuple[torch.Tensor, torch.Tensor],
             params: dict, generator: torch.Generator, output_type: str = "pil", label: str = "the edit"):
    """One Blended Latent Diffusion edit (module docstring) of `image` inside `mask`
    (bool [H, W], the image's size) under `embeds` = (positive, negative) prompt embeddings.

    `pipe`: a StableDiffusionPipeline (its modules; DDIM is built from its scheduler config).
    params: num_inference_steps, guidance_scale. output_type "pil" -> PIL image, "latent"
    -> the final latent [1, C, h, w] before decoding. A decoded image holding NaN or inf
    raises FloatingPointError naming `label`.
    """
    width, height = image.size
    if np.shape(mask) != (height, width):
        raise ValueError(f"BLD: mask is {np.shape(mask)[1]}x{np.shape(mask)[0]}, image is {width}x{height}")
    device, dtype = pipe.device, pipe.unet.dtype
    steps, guidance = int(params["num_inference_steps"]), float(params["guidance_scale"])
    scheduler = ddim_scheduler(pipe)
    scheduler.set_timesteps(steps, device=device)

    # 1-2. the source latent and the latent-size mask
    z_src = encode_source(pipe, image).to(dtype)
    m = latent_mask(mask, z_src.shape[2], z_src.shape[3]).to(device=device, dtype=dtype)
    # 3. pure noise start; one fixed noise tensor for noising the source at every step
    z = randn_tensor(z_src.shape, generator=generator, device=device, dtype=dtype) * scheduler.init_noise_sigma
    noise = randn_tensor(z_src.shape, generator=generator, device=device, dtype=dtype)
    positive, negative = embeds
    context = stack_embeddings({"p": (positive.to(device), negative.to(device))}, ["p"], guidance)

    # 4. denoise, then blend the source back in outside the mask at the latent's new level
    stride = scheduler.config.num_train_timesteps // scheduler.num_inference_steps
    for t in scheduler.timesteps:
        eps = guided_noise(pipe, scheduler.scale_model_input(z, t), t, context, guidance)
        z = scheduler.step(eps, t, z, eta=0.0, return_dict=False)[0]
        t_next = int(t) - stride  # the timestep DDIM's step just moved z to
        if t_next >= 0:
            background = scheduler.add_noise(z_src, noise, torch.tensor([t_next], device=device))
        else:  # past the last timestep: z is (almost) clean, blend with the source itself
            background = z_src
        z = m * z + (1 - m) * background
    if output_type == "latent":
        return z
    # 5. decode
    decoded = pipe.vae.decode(z / pipe.vae.config.scaling_factor, return_dict=False)[0]
    return finite_pil(pipe.image_processor, decoded, [label], "bld edit")[0]


def make_edit(pipe, params: dict) -> region_editing.Edit:
    """The edit function of the shard driver: encodes each region prompt once (chunked
    77-token embeddings), then bld_edit."""
    return region_editing.prompt_cached_edit(pipe, params, bld_edit)


def run_shard(config: dict, sd_key: str, inputs_csv: str, out_dir: str, params: dict,
              inpaint_key: str | None = None, target_classes: str = "voc") -> pd.DataFrame:
    """One job: for every item and sample, the background prompt's SD image, then a BLD
    edit of each mask (class order, region_editing) on the same SD model. `inpaint_key` is
    not used (BLD needs no inpainting model); it is accepted so SI and BLD share a call.
    `target_classes`: the dataset's (regions.TARGET_CLASSES)."""
    if inpaint_key:
        log.info("BLD: inpaint_key %s is not used (BLD edits with the SD model %s)", inpaint_key, sd_key)
    return region_editing.run_shard(config, METHOD, sd_key, inputs_csv, out_dir, params,
                                    make_edit=lambda pipes, p: make_edit(pipes[sd_key], p),
                                    target_classes=target_classes)
