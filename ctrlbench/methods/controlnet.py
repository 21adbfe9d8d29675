"""ControlNet (canny) regeneration of base images (mmm2025).

Every base image (another method's shard: SD images, retrieved or selected real images;
the first `base_samples` of each item, 0 = all) is resized so its long side is
~`long_side` (both sides multiples of 64, as ControlNet's annotator resizes by default),
turned into a Canny edge map (on the RGB array by default, as ControlNet's CannyDetector),
and `samples_per_input` new images are drawn from SD v1.5 + the canny ControlNet with
DDIM, the prompt `prompt_template.format(class=..., prompt=...)` and the negative prompt
`negative_prompt`.

Seeding follows sd.py: each input's initial noise is what diffusers draws for one call with
`generator=torch.Generator("cpu").manual_seed(seed)` and `num_images_per_prompt=
samples_per_input`, so an input's images equal that single diffusers call and do not depend
on batching. Batches run across inputs, holding only inputs of the same size and the same
prompt length (text_handling: "chunked" 77-token chunks, never truncated, by default;
"truncate" = the first 75 tokens, as ControlNet's own CLIP encoder does). A batch
that runs out of CUDA memory is halved and retried (ctrlbench.batching.OomBackoff); images
holding NaN or inf raise FloatingPointError naming the item and are never saved.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Iterator, Sequence

import cv2
import numpy as np
import pandas as pd
import torch
from PIL import Image

from .. import io
from ..batching import OomBackoff, finite_pil
from ..config import resolve_device, resolve_dtype
from ..errors import InputError
from ..metrics.embeddings import open_rgb
from ..models.loaders import load_model
from ..prompts.long_prompt import TEXT_HANDLINGS
from .sd import batches, encode_prompts, initial_latents

log = logging.getLogger(__name__)

MANIFEST_COLUMNS = ["item_id", "sample", "image", "prompt", "seed", "class_name", "source_image",
                    "base_image", "base_sample", "canny"]
BASE_COLUMNS = ["item_id", "sample", "image"]
PROMPT_COLUMNS = ["item_id", "prompt", "class_name", "image"]
CANNY_DIR = "canny"
MULTIPLE = 64


# --- control images -------------------------------------------------------------------
# Two preprocessings, chosen by the parameters control_resize and canny_input:
#   annotator + rgb (default, the mmm2025 authors' canny.py): ControlNet's own gradio
#     preprocessing, resize_image(HWC3(img), int(min(w, h) / max(w, h) * long_side)) with
#     np.round to multiples of 64, then CannyDetector, i.e. cv2.Canny on the RGB array
#     (OpenCV takes the strongest gradient over the three channels);
#   long_side + gray (ours before issue 18): the long side scaled to long_side, rounded
#     half up, Canny on a grayscale copy (edges between colours of equal luminance vanish).

CONTROL_RESIZES = ("annotator", "long_side")
CANNY_INPUTS = ("rgb", "gray")


def control_size(width: int, height: int, long_side: int) -> tuple[int, int]:
    """(w, h) with the long side scaled to ~long_side, both rounded to multiples of 64 (>= 64)."""
    if width <= 0 or height <= 0 or long_side <= 0:
        raise ValueError(f"control_size needs positive sizes, got {width}x{height}, long side {long_side}")
    scale = long_side / max(width, height)

    def snap(side: float) -> int:  # round half up
        return max(MULTIPLE, int(math.floor(side * scale / MULTIPLE + 0.5)) * MULTIPLE)

    return snap(width), snap(height)


def annotator_size(width: int, height: int, long_side: int) -> tuple[int, int]:
    """(w, h) as ControlNet's resize_image gives them for the resolution the authors' canny.py
    passes: the short side is scaled to int(min / max * long_side) and each side is rounded to
    a multiple of 64 with np.round (half to even). A side that would round to 0 is kept at 64
    (ControlNet would fail on it)."""
    if width <= 0 or height <= 0 or long_side <= 0:
        raise ValueError(f"annotator_size needs positive sizes, got {width}x{height}, long side {long_side}")
    resolution = int(min(width, height) / max(width, height) * long_side)
    k = float(resolution) / min(width, height)
    return tuple(max(MULTIPLE, int(np.round(side * k / 64.0)) * MULTIPLE) for side in (width, height))


def resize_for_control(image: Image.Image, long_side: int, mode: str = "annotator") -> Image.Image:
    """RGB image resized to annotator_size or control_size: Lanczos when enlarging, area when
    shrinking (as ControlNet's resize_image)."""
    rgb = np.asarray(image.convert("RGB"))
    height, width = rgb.shape[:2]
    if mode == "annotator":
        size = annotator_size(width, height, long_side)
        enlarge = int(min(width, height) / max(width, height) * long_side) > min(width, height)  # k > 1
    elif mode == "long_side":
        size = control_size(width, height, long_side)
        enlarge = size[0] * size[1] > width * height
    else:
        raise ValueError(f"control_resize must be one of {', '.join(CONTROL_RESIZES)}, got {mode!r}")
    if size == (width, height):
        return Image.fromarray(rgb)
    resized = cv2.resize(rgb, size, interpolation=cv2.INTER_LANCZOS4 if enlarge else cv2.INTER_AREA)
    return Image.fromarray(resized)


def canny_map(image: Image.Image, low: int, high: int, on: str = "rgb") -> Image.Image:
    """cv2.Canny edges of the uint8 RGB array (on="rgb", ControlNet's CannyDetector) or of its
    grayscale copy (on="gray"), as a 3-channel (white on black) RGB image."""
    rgb = np.asarray(image.convert("RGB"))
    if on == "gray":
        edges = cv2.Canny(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), low, high)
    elif on == "rgb":
        edges = cv2.Canny(np.ascontiguousarray(rgb), low, high)
    else:
        raise ValueError(f"canny_input must be one of {', '.join(CANNY_INPUTS)}, got {on!r}")
    return Image.fromarray(np.repeat(edges[:, :, None], 3, axis=2))


def control_image(base: Image.Image, params: dict) -> Image.Image:
    """The ControlNet input of a base image: resized (control_resize, long_side), then Canny."""
    resized = resize_for_control(base, params["long_side"], params["control_resize"])
    return canny_map(resized, params["low_threshold"], params["high_threshold"], params["canny_input"])


def regeneration_prompt(template: str, class_name: str, prompt: str) -> str:
    """`template` with {class} and {prompt} filled in."""
    try:
        return template.format(**{"class": class_name, "prompt": prompt})
    except (KeyError, IndexError, ValueError) as exc:
        raise InputError(f"controlnet prompt_template {template!r}: only {{class}} and {{prompt}} "
                         f"can be filled in ({exc!r})") from exc


# --- generation -----------------------------------------------------------------------

def build_pipeline(sd_pipe, controlnet):
    """A StableDiffusionControlNetPipeline sharing `sd_pipe`'s modules (no copy), with a
    DDIMScheduler made from the SD folder's scheduler config."""
    from diffusers import DDIMScheduler, StableDiffusionControlNetPipeline

    components = {k: v for k, v in sd_pipe.components.items() if k in (
        "vae", "text_encoder", "tokenizer", "unet", "feature_extractor", "image_encoder")}
    pipe = StableDiffusionControlNetPipeline(
        **components, controlnet=controlnet, scheduler=DDIMScheduler.from_config(sd_pipe.scheduler.config),
        safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@torch.inference_mode()
def iter_regenerate(pipe, control_images: Sequence[Image.Image], prompts: Sequence[str],
                    params: dict, labels: Sequence[str] | None = None) -> Iterator[tuple[int, int, Image.Image]]:
    """Yield (input index, sample, image) for samples_per_input images of every input.

    `control_images` are the ready ControlNet inputs (see control_image); the output has
    each control image's size. Order: by batch (inputs grouped by size and prompt length).
    `labels` name the inputs in errors (default "input <index>"): images holding NaN or
    inf raise FloatingPointError; a batch that runs out of CUDA memory is halved (OomBackoff).
    """
    if len(control_images) != len(prompts):
        raise ValueError(f"{len(control_images)} control images for {len(prompts)} prompts")
    labels = list(labels) if labels is not None else [f"input {i}" for i in range(len(prompts))]
    device, dtype = pipe.device, pipe.unet.dtype
    n, seed, eta = params["samples_per_input"], params["seed"], float(params["eta"])
    embeds = encode_prompts(pipe, list(prompts), params["negative_prompt"], device, params["text_handling"])
    jobs = [(i, sample) for i in range(len(prompts)) for sample in range(n)]

    def key(job):
        i = job[0]
        return control_images[i].size, embeds[prompts[i]][0].shape[1]

    def run(batch: list) -> list:  # batch: (input index, sample, initial noise) of one key
        (width, height), _ = key(batch[0])
        # eta > 0: DDIM's step noise from one generator per image (seed + 1 + sample), so it
        # too is independent of batching; eta = 0 (the default) draws no step noise.
        generator = [torch.Generator("cpu").manual_seed(seed + 1 + s) for _, s, _ in batch] if eta > 0 else None
        pixels = pipe(
            prompt_embeds=torch.cat([embeds[prompts[i]][0] for i, _, _ in batch]),
            negative_prompt_embeds=torch.cat([embeds[prompts[i]][1] for i, _, _ in batch]),
            image=[control_images[i] for i, _, _ in batch],
            latents=torch.stack([noise for _, _, noise in batch]).to(device), generator=generator, eta=eta,
            num_inference_steps=params["num_inference_steps"], guidance_scale=params["guidance_scale"],
            controlnet_conditioning_scale=float(params["controlnet_conditioning_scale"]),
            height=height, width=width, output_type="np",
        ).images
        return finite_pil(pipe.image_processor, pixels, [f"{labels[i]} sample {s}" for i, s, _ in batch],
                          "controlnet regeneration")

    latents: dict[int, torch.Tensor] = {}  # per input, dropped once its last sample is batched
    backoff = OomBackoff("controlnet regeneration")
    done = 0
    for batch in batches(jobs, key, params["batch_size"]):
        (width, height), _ = key(batch[0])
        noisy = []
        for i, sample in batch:
            if i not in latents:
                latents[i] = initial_latents(pipe, n, height, width, seed, dtype)
            noisy.append((i, sample, latents[i][sample]))
            if sample == n - 1:
                del latents[i]
        for (i, sample, _), image in zip(noisy, backoff.run(noisy, run)):
            yield i, sample, image
        done += len(batch)
        log.info("regenerated %d/%d images", done, len(jobs))


def regenerate(pipe, base_images: list[Image.Image], prompts: list[str], params: dict) -> list[list[Image.Image]]:
    """samples_per_input images per base image: [input][sample] -> PIL image.

    `pipe` is a StableDiffusionControlNetPipeline (build_pipeline); `prompts` are the final
    regeneration prompts, one per base image. Each base image goes through control_image.
    """
    controls = [control_image(base, params) for base in base_images]
    out = [[None] * params["samples_per_input"] for _ in base_images]
    for i, sample, image in iter_regenerate(pipe, controls, prompts, params):
        out[i][sample] = image
    return out


# --- one shard job --------------------------------------------------------------------

def select_inputs(base: pd.DataFrame, prompts: pd.DataFrame, params: dict, base_dir: Path,
                  where: str = "base manifest") -> pd.DataFrame:
    """The first `base_samples` base images of each item (in base manifest order; 0 = every
    one, as the authors' main.py regenerates every base) joined with the item's prompt row;
    adds the regeneration prompt and the base image path."""
    if base.duplicated(["item_id", "sample"]).any():
        dup = base[base.duplicated(["item_id", "sample"])].iloc[0]
        raise InputError(f"{where}: item {dup.item_id} sample {dup['sample']} is listed twice")
    item_order = {item: i for i, item in enumerate(dict.fromkeys(base["item_id"]))}
    chosen = (base.assign(_item=base["item_id"].map(item_order))
              .sort_values(["_item", "sample"], kind="stable")
              .groupby("item_id", sort=False).head(params["base_samples"] or len(base)))
    by_item = prompts.drop_duplicates("item_id").set_index("item_id")
    unknown = sorted(set(chosen["item_id"]) - set(by_item.index))
    if unknown:
        raise InputError(f"{where}: item(s) {', '.join(unknown[:5])} have no row in the prompts table")
    extra = sorted(set(by_item.index) - set(chosen["item_id"]))
    if extra:
        log.warning("%d item(s) of the prompts table have no base image (e.g. %s): skipped",
                    len(extra), ", ".join(extra[:5]))
    rows = []
    for row in chosen.itertuples(index=False):
        item = by_item.loc[row.item_id]
        path = base_dir / row.image
        if not path.is_file():
            raise InputError(f"base image {path} (item {row.item_id}, sample {row.sample}) listed in "
                             f"{where} does not exist")
        rows.append({"item_id": row.item_id, "base_sample": int(row.sample), "base_image": row.image,
                     "base_path": path, "class_name": item["class_name"], "source_image": item["image"],
                     "prompt": regeneration_prompt(params["prompt_template"], str(item["class_name"]),
                                                   str(item["prompt"]))})
    return pd.DataFrame(rows, columns=["item_id", "base_sample", "base_image", "base_path", "class_name",
                                       "source_image", "prompt"])


def run_shard(config: dict, sd_key: str, controlnet_key: str, base_dir: str, prompts_csv: str,
              out_dir: str, params: dict) -> pd.DataFrame:
    """One job: regenerate every selected base image of the shard.

    Writes into out_dir (atomically): `<item>_b<base sample>_<sample:02d>.png`, the canny
    maps `canny/<item>_b<base sample>.png`, params.json, and manifest.csv last.
    """
    base_dir = Path(base_dir)
    base = io.read_manifest(base_dir, BASE_COLUMNS, "base manifest")
    prompts = io.read_table(prompts_csv, PROMPT_COLUMNS, "prompts table")
    inputs = select_inputs(base, prompts, params, base_dir, where=str(base_dir / "manifest.csv"))
    device = resolve_device(config)
    dtype = resolve_dtype(config, device)
    with io.atomic_dir(out_dir) as tmp:
        records = []
        if len(inputs):
            sd_pipe = load_model(config, sd_key, device=device, dtype=dtype)
            controlnet = load_model(config, controlnet_key, device=device, dtype=dtype)
            pipe = build_pipeline(sd_pipe, controlnet)
            (tmp / CANNY_DIR).mkdir()
            controls, stems = [], []
            for row in inputs.itertuples(index=False):
                stem = f"{io.safe_name(row.item_id)}_b{row.base_sample}"
                control = control_image(open_rgb(row.base_path), params)  # names a broken file
                io.save_image(tmp / CANNY_DIR / f"{stem}.png", control)
                controls.append(control)
                stems.append(stem)
            n = params["samples_per_input"]
            records = [None] * (len(inputs) * n)
            labels = [f"item {row.item_id} (base {row.base_image})" for row in inputs.itertuples(index=False)]
            for i, sample, image in iter_regenerate(pipe, controls, inputs["prompt"].tolist(), params, labels):
                row = inputs.iloc[i]
                name = f"{stems[i]}_{sample:02d}.png"
                io.save_image(tmp / name, image)
                records[i * n + sample] = {
                    "item_id": row.item_id, "sample": sample, "image": name, "prompt": row.prompt,
                    "seed": params["seed"], "class_name": row.class_name, "source_image": row.source_image,
                    "base_image": row.base_image, "base_sample": row.base_sample,
                    "canny": f"{CANNY_DIR}/{stems[i]}.png"}
        manifest = pd.DataFrame(records, columns=MANIFEST_COLUMNS)
        io.write_json(tmp / "params.json", io.provenance(
            method="controlnet", params=params,
            model={sd_key: config["models"][sd_key], controlnet_key: config["models"][controlnet_key]},
            device=device, dtype=str(dtype), text_handling=TEXT_HANDLINGS[params["text_handling"]], base_dir=str(base_dir),
            scheduler="DDIMScheduler", torch_threads=torch.get_num_threads(),
            n_items=int(inputs["item_id"].nunique()), n_inputs=len(inputs)))
        io.write_csv(tmp / "manifest.csv", manifest)
    return manifest
