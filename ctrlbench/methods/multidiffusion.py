"""MultiDiffusion (Bar-Tal et al. 2023): panoramas and region-based generation (docs/methods/multidiffusion.md).

One denoising step of MultiDiffusion runs Stable Diffusion on several "views" of a
shared latent and fuses the results: every latent pixel becomes the (mask-weighted)
average of the view results that cover it.

* Panorama: the views are window_size x window_size latent windows every `stride`
  latent pixels; all views use the one prompt. Equal to diffusers'
  StableDiffusionPanoramaPipeline, except that a last window flush with the right
  (bottom) edge is added when the windows would leave the last columns (rows) uncovered.
* Regions: one prompt per foreground mask plus a background prompt on the rest. Every
  prompt denoises the shared latent (window by window); the results are averaged with
  the masks as weights. During the first bootstrap steps each foreground prompt sees a
  random constant-colour image outside its mask, which makes it fill its own mask
  instead of spreading its object over the whole image.

The scheduler is DDIM (sdedit.ddim_scheduler: the model's noise schedule, clip_sample
off), built per call: the pipeline's own scheduler is never used or changed. DDIM's step
keeps no state between calls, so one scheduler serves every view (diffusers saves and
restores a scheduler state per view batch, which makes no difference for DDIM).

A panorama's windows are denoised `view_batch_size` at a time; a window batch that runs
out of CUDA memory is halved and retried (ctrlbench.batching.OomBackoff), which changes
no window's result (no noise is drawn per window). Region-based generation makes one
image per call, all its prompts in one UNet call per window: there is no batch size to
halve. An image holding NaN or inf raises FloatingPointError naming the item and sample;
it is never saved.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image
from torch.nn import functional as F

from .. import io
from ..batching import OomBackoff, finite_pil
from ..config import resolve_device, resolve_dtype
from ..errors import InputError
from ..models.loaders import load_model
from ..prompts.long_prompt import TEXT_HANDLING
from . import regions as region_inputs
from .sd import batches, encode_prompts, initial_latents
from .sdedit import ddim_scheduler, guided_noise, stack_embeddings

log = logging.getLogger(__name__)

METHOD = "MultiDiffusion"
PANORAMA_DIR = "panoramas"
PANORAMA_COLUMNS = ["item_id", "sample", "crop", "image", "panorama", "prompt", "seed", "class_name",
                    "source_image"]
REGIONS_COLUMNS = ["item_id", "sample", "image", "prompt", "region_prompts", "seed", "class_name",
                   "source_image", "masks"]

View = tuple[int, int, int, int]  # (h_start, h_end, w_start, w_end) in latent pixels


# --- views and crops ------------------------------------------------------------------------

def _starts(size: int, window: int, stride: int) -> list[int]:
    """Window starts along one axis: every `stride`, plus one flush with the end when the
    strided windows would leave the last pixels uncovered; one window when size <= window."""
    if size <= window:
        return [0]
    starts = list(range(0, size - window + 1, stride))
    if starts[-1] + window < size:  # diffusers stops here and leaves the tail at zero
        starts.append(size - window)
    return starts


def get_views(height: int, width: int, window_size: int = 64, stride: int = 8,
              vae_scale_factor: int = 8) -> list[View]:
    """The latent windows of an image of height x width pixels, row by row.

    Same arguments and order as diffusers' StableDiffusionPanoramaPipeline.get_views, and
    the same views whenever (latent size - window) is a multiple of the stride; otherwise
    one more window flush with the edge. Ends are clipped to the latent size (a dimension
    smaller than the window is one window covering all of it).
    """
    height, width, window_size, stride = int(height), int(width), int(window_size), int(stride)
    if height <= 0 or width <= 0 or height % vae_scale_factor or width % vae_scale_factor:
        raise ValueError(f"height and width must be positive multiples of {vae_scale_factor}, got {height}x{width}")
    if window_size < 1:
        raise ValueError(f"window_size must be >= 1 latent pixel, got {window_size}")
    if stride < 1:
        raise ValueError(f"stride must be >= 1 latent pixel, got {stride}")
    h, w = height // vae_scale_factor, width // vae_scale_factor
    return [(top, min(top + window_size, h), left, min(left + window_size, w))
            for top in _starts(h, window_size, stride) for left in _starts(w, window_size, stride)]


def crop_boxes(width: int, height: int, crop_size: int = 0) -> list[tuple[int, int, int, int]]:
    """PIL boxes (left, top, right, bottom) of the square metric crops of a panorama.

    crop_size 0 = the panorama height. Crops are side by side from the left; when the
    width is not a multiple of the crop size the last crop is aligned to the right edge
    (it overlaps its neighbour). A crop smaller than the height is centred vertically.
    """
    size = int(crop_size) or int(height)
    if size < 1 or size > min(width, height):
        raise ValueError(f"crop_size {crop_size} does not fit a {width}x{height} panorama "
                         f"(need 1..{min(width, height)}, or 0 for the height)")
    top = (height - size) // 2
    lefts = list(range(0, width - size + 1, size))
    if lefts[-1] + size < width:
        lefts.append(width - size)
    return [(left, top, left + size, top + size) for left in lefts]


def panorama_crops(image: Image.Image, crop_size: int = 0) -> list[Image.Image]:
    """The square crops of crop_boxes, left to right."""
    return [image.crop(box) for box in crop_boxes(image.width, image.height, crop_size)]


# --- shared pieces ------------------------------------------------------------------------

def _embeddings(pipe, prompts: list[str], negative_prompt: str, cache: dict | None) -> dict:
    """{prompt: (positive, negative)} from `cache` (sd.encode_prompts), encoding what it lacks."""
    cache = dict(cache or {})
    missing = [p for p in prompts if p not in cache]
    if missing:
        cache.update(encode_prompts(pipe, missing, negative_prompt, pipe.device))
    return cache


@torch.no_grad()
def _decode(pipe, latents: torch.Tensor, label: str, what: str, vae_tiling: bool = False) -> Image.Image:
    """The VAE decoding of diffusers' pipelines; tiling (if asked) only for this call.
    A decoding holding NaN or inf raises FloatingPointError naming `what` and `label`."""
    tile = vae_tiling and not getattr(pipe.vae, "use_tiling", False)
    if tile:
        pipe.vae.enable_tiling()
    try:
        image = pipe.vae.decode(latents / pipe.vae.config.scaling_factor, return_dict=False)[0]
    finally:
        if tile:
            pipe.vae.disable_tiling()
    return finite_pil(pipe.image_processor, image, [label], what)[0]


def _steps(params: dict) -> int:
    steps = int(params["num_inference_steps"])
    if steps < 1:
        raise ValueError(f"num_inference_steps must be >= 1, got {steps}")
    return steps


# --- panorama -------------------------------------------------------------------------------

@torch.no_grad()
def fuse(value: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """The MultiDiffusion step: every latent pixel is the mean of the window (or region)
    results covering it; value holds their sum, count how many cover it."""
    return torch.where(count > 0, value / count, value)


def panorama(pipe, prompt: str, params: dict, seed: int | None = None, output_type: str = "pil",
             embeds: dict | None = None, callback: Callable | None = None, label: str | None = None,
             backoff: OomBackoff | None = None):
    """A MultiDiffusion panorama of `prompt` (params: MULTIDIFFUSION_PANORAMA_DEFAULTS).

    `pipe`: a StableDiffusionPipeline (its modules are used, not its scheduler). Initial
    noise from torch.Generator("cpu").manual_seed(seed) (default params["seed"]), as
    diffusers draws it. `embeds`: an sd.encode_prompts cache (else the prompt is encoded
    here). `callback(i, t, latents)` runs after every step. Returns a PIL image, or the
    final latents [1, C, h, w] with output_type="latent". `label` names the image in a
    NaN / inf error (default "image (seed <seed>)"); `backoff` (a job's OomBackoff, else a
    new one) halves view batches that run out of CUDA memory.
    """
    height, width = int(params["height"]), int(params["width"])
    views = get_views(height, width, params["window_size"], params["stride"], pipe.vae_scale_factor)
    steps, guidance = _steps(params), float(params["guidance_scale"])
    view_batch = max(1, int(params.get("view_batch_size", 1)))
    backoff = backoff or OomBackoff("multidiffusion panorama")
    seed = int(params["seed"] if seed is None else seed)
    device, dtype = pipe.device, pipe.unet.dtype
    positive, negative = _embeddings(pipe, [prompt], params.get("negative_prompt", ""), embeds)[prompt]
    cfg = guidance > 1.0
    # Per window [negative, positive]; latents are repeat_interleave'd to match (diffusers' layout).
    pair = torch.cat([negative, positive]) if cfg else positive

    scheduler = ddim_scheduler(pipe)
    scheduler.set_timesteps(steps, device=device)
    latents = initial_latents(pipe, 1, height, width, seed, dtype).to(device) * scheduler.init_noise_sigma
    value, count = torch.zeros_like(latents), torch.zeros_like(latents)
    for i, t in enumerate(scheduler.timesteps):
        value.zero_()
        count.zero_()

        def denoise(chunk: list[View]) -> list[torch.Tensor]:  # the windows' step results, in order
            x = torch.cat([latents[:, :, h0:h1, w0:w1] for h0, h1, w0, w1 in chunk])
            model_input = scheduler.scale_model_input(x.repeat_interleave(2, dim=0) if cfg else x, t)
            noise = pipe.unet(model_input, t, encoder_hidden_states=torch.cat([pair] * len(chunk))).sample
            if cfg:
                uncond, text = noise[::2], noise[1::2]
                noise = uncond + guidance * (text - uncond)
            return list(scheduler.step(noise, t, x).prev_sample.chunk(len(chunk)))

        for start in range(0, len(views), view_batch):
            chunk = views[start:start + view_batch]
            for (h0, h1, w0, w1), view in zip(chunk, backoff.run(chunk, denoise)):
                value[:, :, h0:h1, w0:w1] += view
                count[:, :, h0:h1, w0:w1] += 1
        latents = fuse(value, count)
        if callback is not None:
            callback(i, t, latents)
    if output_type == "latent":
        return latents
    return _decode(pipe, latents, label or f"image (seed {seed})", "multidiffusion panorama",
                   bool(params.get("vae_tiling", False)))


# --- regions --------------------------------------------------------------------------------

def binarise_masks(masks, height: int, width: int) -> torch.Tensor:
    """Foreground masks [K, H, W] (bool, 0/1 or 0/255) -> float 0/1 [K, H, W] (>= 0.5 is
    foreground), checked: K >= 1, size height x width, no empty mask."""
    array = masks.detach().cpu() if isinstance(masks, torch.Tensor) else torch.from_numpy(np.asarray(masks))
    if array.dim() != 3:
        raise ValueError(f"masks must be [K, height, width] (one per region prompt), got shape {tuple(array.shape)}")
    if array.shape[0] == 0:
        raise ValueError("region-based MultiDiffusion needs at least one foreground mask, got none")
    if tuple(array.shape[1:]) != (height, width):
        raise ValueError(f"masks are {array.shape[2]}x{array.shape[1]} (width x height), expected the image "
                         f"size {width}x{height}")
    binary = (array.float() >= 0.5).float()
    for k, mask in enumerate(binary):
        if not mask.any():
            raise ValueError(f"foreground mask {k} is empty")
    return binary


def latent_masks(binary: torch.Tensor, factor: int) -> torch.Tensor:
    """Binary masks [K, H, W] -> [K, 1, H / factor, W / factor], nearest (as the public code)."""
    size = (binary.shape[-2] // factor, binary.shape[-1] // factor)
    return F.interpolate(binary[:, None].float(), size=size, mode="nearest")


def region_masks(masks, height: int, width: int, factor: int = 8) -> torch.Tensor:
    """Checked foreground masks at the latent size [K, 1, h, w]; a mask that vanishes at
    the latent size (nothing >= one latent pixel's nearest sample) raises ValueError."""
    small = latent_masks(binarise_masks(masks, height, width), factor)
    for k, mask in enumerate(small):
        if not mask.any():
            raise ValueError(f"foreground mask {k} is empty at the latent size {width // factor}x{height // factor} "
                             f"(its region is too thin for the x{factor} latent)")
    return small


def bootstrap_step_count(params: dict) -> int:
    """How many first steps bootstrap: bootstrap_steps when >= 0 (at most all steps), else
    bootstrap_fraction x num_inference_steps rounded half up (paper: 20% -> 10 of 50)."""
    steps = _steps(params)
    fixed = int(params.get("bootstrap_steps", -1))
    if fixed >= 0:
        return min(fixed, steps)
    fraction = float(params["bootstrap_fraction"])
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"bootstrap_fraction must be in [0, 1], got {fraction}")
    return int(fraction * steps + 0.5)


def constant_backgrounds(pipe, n: int, height: int, width: int, generator: torch.Generator) -> torch.Tensor:
    """n random constant-colour RGB images of height x width pixels, VAE-encoded [n, C, h, w]:
    colours uniform in [0, 1] and a posterior *sample* (the public code samples), both
    from `generator`, times the VAE scaling factor."""
    if n < 1:
        raise ValueError(f"n_backgrounds must be >= 1 when bootstrapping, got {n}")
    colours = torch.rand(n, 3, generator=generator)
    scale = pipe.vae.config.scaling_factor
    out = []
    for colour in colours:  # one at a time: 20 full-window images at once would be a memory spike
        pixels = (colour * 2 - 1).view(1, 3, 1, 1).expand(1, 3, height, width)
        posterior = pipe.vae.encode(pixels.to(pipe.device, pipe.vae.dtype)).latent_dist
        out.append(posterior.sample(generator) * scale)
    return torch.cat(out).to(pipe.unet.dtype)


@torch.no_grad()
def regions(pipe, masks, prompts: list[str], background_prompt: str, params: dict, seed: int | None = None,
            output_type: str = "pil", embeds: dict | None = None, callback: Callable | None = None,
            label: str | None = None):
    """Region-based MultiDiffusion (params: MULTIDIFFUSION_REGIONS_DEFAULTS).

    masks: [K, height, width] foreground masks (>= 0.5 is inside), one per entry of
    `prompts`; the background prompt covers clamp(1 - sum of the masks, 0). Overlapping
    masks are allowed: there the prompts' results are averaged. A seeded
    torch.Generator("cpu") (seed, default params["seed"]) draws, in order, the initial
    latent (as diffusers' SD pipeline does), the background colours and their VAE samples,
    and each bootstrap step's background choice. `callback(i, t, latents, bootstrapped)`
    runs after every step. Returns a PIL image or, with output_type="latent", the latents.
    `label` names the image in a NaN / inf error (default "image (seed <seed>)").
    """
    height, width = int(params["height"]), int(params["width"])
    factor = pipe.vae_scale_factor
    views = get_views(height, width, params["window_size"], params["stride"], factor)
    fg = region_masks(masks, height, width, factor)
    if len(prompts) != len(fg):
        raise ValueError(f"{len(fg)} foreground masks for {len(prompts)} region prompts")
    steps, guidance = _steps(params), float(params["guidance_scale"])
    n_boot = bootstrap_step_count(params)
    seed = int(params["seed"] if seed is None else seed)
    device, dtype = pipe.device, pipe.unet.dtype

    # Prompt 0 is the background, then one per foreground mask (the public code's order).
    all_prompts = [background_prompt, *prompts]
    cache = _embeddings(pipe, all_prompts, params.get("negative_prompt", ""), embeds)
    background = (1 - fg.sum(dim=0, keepdim=True)).clamp(min=0)
    weights = torch.cat([background, fg]).to(device, dtype)                      # [P, 1, h, w]
    # One UNet call per group of prompts with the same embedding length (chunk count).
    groups = batches(list(range(len(all_prompts))), lambda p: cache[all_prompts[p]][0].shape[1], len(all_prompts))
    group_embeds = [stack_embeddings(cache, [all_prompts[p] for p in g], guidance) for g in groups]

    scheduler = ddim_scheduler(pipe)
    scheduler.set_timesteps(steps, device=device)
    generator = torch.Generator("cpu").manual_seed(seed)
    shape = (1, pipe.unet.config.in_channels, height // factor, width // factor)
    # The first draw: the noise diffusers' SD pipeline draws with this generator (sd.initial_latents).
    latents = randn_tensor(shape, generator=generator, device=torch.device("cpu"), dtype=dtype)
    latents = latents.to(device) * scheduler.init_noise_sigma
    noise = latents.clone()  # bootstrap backgrounds are noised with the initial noise (public code)
    if n_boot > 0:
        h0, h1, w0, w1 = views[0]  # every view has the same size
        backdrops = constant_backgrounds(pipe, int(params["n_backgrounds"]), (h1 - h0) * factor,
                                         (w1 - w0) * factor, generator)
    value, count = torch.zeros_like(latents), torch.zeros_like(latents)
    for i, t in enumerate(scheduler.timesteps):
        value.zero_()
        count.zero_()
        bootstrap = i < n_boot
        for h0, h1, w0, w1 in views:
            m = weights[:, :, h0:h1, w0:w1]
            x = latents[:, :, h0:h1, w0:w1].repeat(len(all_prompts), 1, 1, 1)
            if bootstrap:
                # Foreground prompts see a random constant colour outside their mask.
                choice = torch.randint(0, len(backdrops), (len(fg),), generator=generator)
                backdrop = scheduler.add_noise(backdrops[choice.to(backdrops.device)],
                                               noise[:, :, h0:h1, w0:w1], t)
                x[1:] = x[1:] * m[1:] + backdrop * (1 - m[1:])
            x_in = scheduler.scale_model_input(x, t)
            noise_pred = torch.empty_like(x)
            for group, group_embed in zip(groups, group_embeds):
                noise_pred[group] = guided_noise(pipe, x_in[group], t, group_embed, guidance)
            denoised = scheduler.step(noise_pred, t, x).prev_sample
            value[:, :, h0:h1, w0:w1] += (denoised * m).sum(dim=0, keepdim=True)
            count[:, :, h0:h1, w0:w1] += m.sum(dim=0, keepdim=True)
        # Mask-weighted mean of the prompts' results (pixels no mask covers keep `value`).
        latents = fuse(value, count)
        if callback is not None:
            callback(i, t, latents, bootstrap)
    if output_type == "latent":
        return latents
    return _decode(pipe, latents, label or f"image (seed {seed})", "multidiffusion regions")


# --- shard jobs -----------------------------------------------------------------------------

def read_prompts(prompts_csv) -> pd.DataFrame:
    """A panorama shard's prompt table: item_id, prompt; class_name and image optional."""
    path = Path(prompts_csv)
    prompts = io.read_table(path, ["item_id", "prompt"], f"{METHOD} prompts table")
    for column in ("class_name", "image"):
        if column not in prompts.columns:
            prompts[column] = ""
    duplicated = prompts["item_id"][prompts["item_id"].duplicated()]
    if len(duplicated):
        raise InputError(f"{METHOD} prompts table {path}: item {duplicated.iloc[0]} is listed twice")
    for item in prompts["item_id"]:
        try:
            io.safe_name(item)
        except ValueError as error:
            raise InputError(f"{METHOD} prompts table {path}: {error}") from None
    return prompts


def _record_params(tmp: Path, kind: str, config: dict, sd_key: str, params: dict, device, dtype, n: int,
                   **extra) -> None:
    io.write_json(tmp / "params.json", io.provenance(
        method=kind, params=params, model={sd_key: config["models"][sd_key]}, device=device, dtype=str(dtype),
        text_handling=TEXT_HANDLING, scheduler="DDIMScheduler", torch_threads=torch.get_num_threads(),
        n_items=n, **extra))


def run_panorama_shard(config: dict, sd_key: str, prompts_csv: str, out_dir: str, params: dict) -> pd.DataFrame:
    """One job: samples_per_prompt panoramas of every prompt, and their square crops.

    Writes `panoramas/<item>_<sample:02d>.png`, the crops `<item>_<sample:02d>_c<j:02d>.png`,
    params.json and manifest.csv (one row per crop) last, atomically. Sample k uses seed + k.
    """
    prompts = read_prompts(prompts_csv)
    height, width = int(params["height"]), int(params["width"])
    get_views(height, width, params["window_size"], params["stride"])  # bad sizes fail before the model loads
    crop_boxes(width, height, params["crop_size"])
    device = resolve_device(config)
    dtype = resolve_dtype(config, device)
    n = int(params["samples_per_prompt"])
    with io.atomic_dir(out_dir) as tmp:
        records = []
        if len(prompts):
            pipe = load_model(config, sd_key, device=device, dtype=dtype)
            cache = encode_prompts(pipe, prompts["prompt"].tolist(), params["negative_prompt"], pipe.device)
            backoff = OomBackoff("multidiffusion panorama")  # a halved view batch stays halved for the job
            (tmp / PANORAMA_DIR).mkdir()
            for k, row in enumerate(prompts.itertuples(index=False)):
                for sample in range(n):
                    seed = int(params["seed"]) + sample
                    stem = f"{io.safe_name(row.item_id)}_{sample:02d}"
                    image = panorama(pipe, row.prompt, params, seed, embeds=cache,
                                     label=f"item {row.item_id} sample {sample}", backoff=backoff)
                    io.save_image(tmp / PANORAMA_DIR / f"{stem}.png", image)
                    for j, crop in enumerate(panorama_crops(image, params["crop_size"])):
                        io.save_image(tmp / f"{stem}_c{j:02d}.png", crop)
                        records.append({"item_id": row.item_id, "sample": sample, "crop": j,
                                        "image": f"{stem}_c{j:02d}.png", "panorama": f"{PANORAMA_DIR}/{stem}.png",
                                        "prompt": row.prompt, "seed": seed, "class_name": row.class_name,
                                        "source_image": row.image})
                log.info("MultiDiffusion panorama: %d/%d prompts done", k + 1, len(prompts))
        manifest = pd.DataFrame(records, columns=PANORAMA_COLUMNS)
        _record_params(tmp, "multidiffusion_panorama", config, sd_key, params, device, dtype, len(prompts))
        io.write_csv(tmp / "manifest.csv", manifest)
    return manifest


def item_regions(row, base_dir: Path, params: dict, factor: int = 8,
                 target_classes: str = "voc") -> tuple[dict[str, np.ndarray], list[str], str]:
    """({class name: bool mask} in class order (regions.class_order), region prompts,
    background prompt) of one input row; `target_classes` names the classes (regions).

    A class whose mask vanishes at the latent size raises InputError for explicit masks;
    for COCO items it is dropped with a warning (as regions.item_masks drops classes that
    vanish at the image size), and an item left with none raises.
    """
    height, width = int(params["height"]), int(params["width"])
    masks = region_inputs.item_masks(row, base_dir, height, width, METHOD, target_classes)
    explicit = "masks" in row.index and str(row["masks"]).strip() != ""
    kept = {}
    for name in region_inputs.class_order(masks, target_classes):
        if latent_masks(torch.from_numpy(masks[name]).float()[None], factor).any():
            kept[name] = masks[name]
            continue
        message = (f"{METHOD} item {row['item_id']}: mask of class {region_inputs.class_label(name, target_classes)} "
                   f"is empty at the latent size {width // factor}x{height // factor}")
        if explicit:
            raise InputError(message)
        log.warning("%s: class dropped", message)
    if not kept:
        raise InputError(f"{METHOD} item {row['item_id']}: every mask is empty at the latent size")
    region_prompts = [params["region_prompt"].format(**{"class": region_inputs.class_label(name, target_classes)})
                      for name in kept]
    return kept, region_prompts, params["background_prompt"].format(prompt=row["prompt"])


def run_regions_shard(config: dict, sd_key: str, inputs_csv: str, out_dir: str, params: dict,
                      target_classes: str = "voc") -> pd.DataFrame:
    """One job: region-based MultiDiffusion for every input row (regions.read_inputs) and sample.

    Writes `<item>_<sample:02d>.png`, the masks used `masks/<item>_<class>.png` (at the
    image size), params.json and manifest.csv last, atomically. Sample k uses seed + k.
    `target_classes` names the items' classes (regions.TARGET_CLASSES: the dataset's setting).
    """
    inputs_csv = Path(inputs_csv)
    inputs = region_inputs.read_inputs(inputs_csv, METHOD)
    height, width = int(params["height"]), int(params["width"])
    get_views(height, width, params["window_size"], params["stride"])
    bootstrap_step_count(params)
    for _, row in inputs.iterrows():  # every item and mask checked before the model loads
        try:
            io.safe_name(row["item_id"])
        except ValueError as error:
            raise InputError(f"{METHOD} inputs table {inputs_csv}: {error}") from None
        item_regions(row, inputs_csv.parent, params, target_classes=target_classes)
    device = resolve_device(config)
    dtype = resolve_dtype(config, device)
    n = int(params["samples_per_item"])
    with io.atomic_dir(out_dir) as tmp:
        records = []
        if len(inputs):
            pipe = load_model(config, sd_key, device=device, dtype=dtype)
            cache: dict = {}
            for k, (_, row) in enumerate(inputs.iterrows()):
                masks, region_prompts, background = item_regions(row, inputs_csv.parent, params,
                                                                 pipe.vae_scale_factor, target_classes)
                cache = _embeddings(pipe, [background, *region_prompts], params["negative_prompt"], cache)
                mask_files = region_inputs.save_item_masks(tmp, row["item_id"], masks)
                stack = np.stack(list(masks.values()))
                for sample in range(n):
                    seed = int(params["seed"]) + sample
                    name = f"{io.safe_name(row['item_id'])}_{sample:02d}.png"
                    image = regions(pipe, stack, region_prompts, background, params, seed, embeds=cache,
                                    label=f"item {row['item_id']} sample {sample}")
                    io.save_image(tmp / name, image)
                    records.append({"item_id": row["item_id"], "sample": sample, "image": name,
                                    "prompt": background, "region_prompts": json.dumps(region_prompts),
                                    "seed": seed, "class_name": row.get("class_name", ""),
                                    "source_image": row.get("image", ""), "masks": mask_files})
                log.info("MultiDiffusion regions: %d/%d items done", k + 1, len(inputs))
        manifest = pd.DataFrame(records, columns=REGIONS_COLUMNS)
        _record_params(tmp, "multidiffusion_regions", config, sd_key, params, device, dtype, len(inputs),
                       target_classes=target_classes)
        io.write_csv(tmp / "manifest.csv", manifest)
    return manifest
