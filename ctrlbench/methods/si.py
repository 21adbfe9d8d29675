"""SI: Stable Diffusion inpainting, a baseline of MultiDiffusion's region IoU table
(docs/methods/si_bld.md).

One edit is one call of diffusers' StableDiffusionInpaintPipeline on a separate
inpainting model (e.g. runwayml/stable-diffusion-inpainting: a UNet with 9 input
channels, noisy latent + mask + masked-image latent) with:

  - the current image and the object's mask (white = repainted), strength 1 (the masked
    region starts from pure noise),
  - the region prompt as chunked 77-token embeddings (sd.encode_prompts on the inpainting
    model's own tokenizer and text encoder),
  - DDIM from the model's scheduler config, num_inference_steps, guidance_scale,
  - the generator passed in (the pipeline draws the VAE posterior sample of the masked
    image, then the initial noise, from it).

The pipeline's output is kept as it is: the inpainting model regenerates the whole image
through the VAE, so pixels outside the mask may change slightly; nothing is pasted back.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from PIL import Image

from ..batching import finite_pil
from ..errors import ConfigError
from . import region_editing

METHOD = "si"
INPAINT_KIND = "sd_inpaint"


def mask_image(mask: np.ndarray) -> Image.Image:
    """A bool mask [H, W] as the pipeline's mask image: white (255) = repaint."""
    return Image.fromarray(np.asarray(mask, dtype=bool).astype(np.uint8) * 255, mode="L")


@torch.inference_mode()
def si_edit(pipe, image: Image.Image, mask: np.ndarray, embeds: tuple[torch.Tensor, torch.Tensor],
            params: dict, generator: torch.Generator, label: str = "the edit") -> Image.Image:
    """Inpaint `image` inside `mask` (bool [H, W], the image's size) under `embeds` =
    (positive, negative) prompt embeddings. `pipe`: a StableDiffusionInpaintPipeline,
    whose scheduler is used as is (make_edit passes region_editing.with_ddim(pipe)).
    params: num_inference_steps, guidance_scale. An output holding NaN or inf raises
    FloatingPointError naming `label`."""
    width, height = image.size
    if np.shape(mask) != (height, width):
        raise ValueError(f"SI: mask is {np.shape(mask)[1]}x{np.shape(mask)[0]}, image is {width}x{height}")
    positive, negative = embeds
    pixels = pipe(prompt_embeds=positive, negative_prompt_embeds=negative, image=image.convert("RGB"),
                  mask_image=mask_image(mask), height=height, width=width, strength=1.0,
                  num_inference_steps=int(params["num_inference_steps"]),
                  guidance_scale=float(params["guidance_scale"]), generator=generator,
                  output_type="np").images
    return finite_pil(pipe.image_processor, pixels, [label], "si edit")[0]


def make_edit(inpaint_pipe, params: dict) -> region_editing.Edit:
    """The edit function of the shard driver: the inpainting pipeline with DDIM, each
    region prompt encoded once."""
    return region_editing.prompt_cached_edit(region_editing.with_ddim(inpaint_pipe), params, si_edit)


def run_shard(config: dict, sd_key: str, inputs_csv: str, out_dir: str, params: dict,
              inpaint_key: str | None = None, target_classes: str = "voc") -> pd.DataFrame:
    """One job: for every item and sample, the background prompt's SD image (model
    `sd_key`), then an SI edit of each mask (class order, region_editing) with the
    inpainting model `inpaint_key` (kind sd_inpaint; required). `target_classes`: the
    dataset's (regions.TARGET_CLASSES)."""
    if not inpaint_key:
        raise ConfigError("SI needs inpaint_key: the config key of a model of kind sd_inpaint "
                          "(methods.<name>.inpaint)")
    entry = config.get("models", {}).get(inpaint_key)
    if entry is None:
        raise ConfigError(f"SI inpaint model '{inpaint_key}' is not in the config's models")
    if entry.get("kind") != INPAINT_KIND:
        raise ConfigError(f"SI inpaint model '{inpaint_key}' has kind {entry.get('kind')!r}; "
                          f"SI needs kind {INPAINT_KIND}")
    return region_editing.run_shard(config, METHOD, sd_key, inputs_csv, out_dir, params,
                                    make_edit=lambda pipes, p: make_edit(pipes[inpaint_key], p),
                                    edit_keys=(inpaint_key,), target_classes=target_classes)
