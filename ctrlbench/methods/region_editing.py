"""What the SI and BLD baselines of MultiDiffusion's region IoU table share (docs/methods/si_bld.md).

Both are editing methods, so each COCO item is made in two phases:

  1. the background: plain SD text-to-image of the background prompt
     (params["background_prompt"] with {prompt} = the item's caption), DDIM
     num_inference_steps, from a CPU generator seeded with seed + sample;
  2. the edits: each target mask in turn, in class order (regions.class_order: VOC-index
     order for VOC targets, by name for a dataset's own categories), is edited with its
     region prompt (params["region_prompt"] with {class} = the readable class name,
     regions.class_label) by the method's edit function; edit k works on the output of
     edit k - 1.

The generator of phase 1 is passed on to every edit, so the background is the same for
SI and BLD (it is the generator's first draw) and each edit draws fresh noise.

`run_shard` is the shared job driver: it reads and checks every mask before any model is
loaded, writes `<item>_<sample:02d>.png`, `backgrounds/<item>_<sample:02d>.png`, the masks
(regions.save_item_masks), params.json and manifest.csv last, all inside io.atomic_dir.
A background or edit holding NaN or inf raises FloatingPointError naming the method, the
item and the sample (and the region prompt of an edit); nothing of the shard is kept.
Every image is made on its own, so there is no batch to halve on CUDA out-of-memory.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch
from PIL import Image

from .. import io
from ..batching import finite_pil
from ..config import resolve_device, resolve_dtype
from ..errors import ConfigError, InputError
from ..models.loaders import load_model
from ..prompts.long_prompt import TEXT_HANDLING
from .regions import class_label, class_order, item_masks, read_inputs, save_item_masks
from .sd import encode_prompts
from .sdedit import ddim_scheduler

log = logging.getLogger(__name__)

MANIFEST_COLUMNS = ["item_id", "sample", "image", "prompt", "region_prompts", "seed", "class_name",
                    "source_image", "background", "masks"]
BACKGROUND_DIR = "backgrounds"

# edit(image, mask [H, W] bool, region prompt, generator) -> the edited image
Edit = Callable[[Image.Image, np.ndarray, str, torch.Generator], Image.Image]
# make_edit(loaded pipelines by model key, params) -> Edit; called once per job
MakeEdit = Callable[[dict, dict], Edit]


def prompt_cached_edit(pipe, params: dict, edit_with_embeds: Callable) -> Edit:
    """An Edit that encodes each region prompt once (chunked 77-token embeddings, with
    params["negative_prompt"]) and calls edit_with_embeds(pipe, image, mask, embeds,
    params, generator, label=...), the label naming the region prompt in NaN / inf errors."""
    cache: dict[str, tuple] = {}

    def edit(image: Image.Image, mask: np.ndarray, prompt: str, generator: torch.Generator) -> Image.Image:
        if prompt not in cache:
            cache.update(encode_prompts(pipe, [prompt], params["negative_prompt"], pipe.device))
        return edit_with_embeds(pipe, image, mask, cache[prompt], params, generator, label=f"region prompt {prompt!r}")

    return edit


# --- prompts and masks --------------------------------------------------------------------

def region_prompt(params: dict, name: str, target_classes: str = "voc") -> str:
    """The region prompt of target class `name`: params["region_prompt"] with {class}."""
    return params["region_prompt"].format(**{"class": class_label(name, target_classes)})


def background_prompt(params: dict, prompt: str) -> str:
    """The background prompt of an item: params["background_prompt"] with {prompt}."""
    return params["background_prompt"].format(prompt=prompt)


def check_templates(params: dict, method: str) -> None:
    """Fail before any work when a prompt template has a field other than its own."""
    for key, fields in (("region_prompt", {"class": "x"}), ("background_prompt", {"prompt": "x"})):
        try:
            params[key].format(**fields)
        except (KeyError, IndexError, ValueError) as exc:
            raise ConfigError(f"{method} params.{key} {params[key]!r} is not a valid template: only "
                              f"{{{next(iter(fields))}}} may be used ({type(exc).__name__}: {exc})") from None


def ordered_masks(masks: dict[str, np.ndarray], target_classes: str = "voc") -> list[tuple[str, np.ndarray]]:
    """(class name, mask) in class order (regions.class_order): the order of the edits."""
    return [(name, masks[name]) for name in class_order(masks, target_classes)]


# --- the two phases -------------------------------------------------------------------------

def with_ddim(pipe):
    """A pipeline of the same class sharing `pipe`'s modules, with DDIM built from the
    model's scheduler config (sdedit.ddim_scheduler); `pipe` itself is not changed."""
    components = {**pipe.components, "scheduler": ddim_scheduler(pipe)}
    if "safety_checker" in components:
        components["requires_safety_checker"] = False
    out = type(pipe)(**components)
    out.set_progress_bar_config(disable=True)
    return out


@torch.inference_mode()
def generate_background(pipe, prompt: str, params: dict, generator: torch.Generator) -> Image.Image:
    """Phase 1: SD text-to-image of `prompt` (chunked 77-token embeddings), initial noise
    drawn from `generator`. `pipe` is a StableDiffusionPipeline; its scheduler is used as
    is (run_shard passes with_ddim(pipe)). An image holding NaN or inf raises FloatingPointError."""
    positive, negative = encode_prompts(pipe, [prompt], params["negative_prompt"], pipe.device)[prompt]
    pixels = pipe(prompt_embeds=positive, negative_prompt_embeds=negative,
                  num_inference_steps=int(params["num_inference_steps"]),
                  guidance_scale=float(params["guidance_scale"]),
                  height=int(params["height"]), width=int(params["width"]),
                  generator=generator, output_type="np").images
    return finite_pil(pipe.image_processor, pixels, ["background"], "background generation")[0]


def edit_regions(background: Image.Image, masks: list[tuple[str, np.ndarray]], prompts: list[str],
                 edit: Edit, generator: torch.Generator) -> Image.Image:
    """Phase 2: apply `edit` to each (mask, prompt) in turn, each on the previous output."""
    image = background
    for (_, mask), prompt in zip(masks, prompts, strict=True):
        image = edit(image, mask, prompt, generator)
    return image


# --- one shard job ---------------------------------------------------------------------------

def run_shard(config: dict, method: str, sd_key: str, inputs_csv, out_dir, params: dict,
              make_edit: MakeEdit, edit_keys: tuple[str, ...] = (), target_classes: str = "voc") -> pd.DataFrame:
    """One job of an editing baseline (`method`: "si" or "bld").

    `sd_key` names the SD model of the backgrounds; `edit_keys` the other models the edits
    need. Every model is loaded once; `make_edit({key: pipeline}, params)` builds the edit
    function. `target_classes` names the items' classes (regions.TARGET_CLASSES: the
    dataset's setting). Writes the files listed in the module docstring; returns the manifest.
    """
    name = method.upper()
    inputs_csv = Path(inputs_csv)
    inputs = read_inputs(inputs_csv, name)
    height, width = int(params["height"]), int(params["width"])
    check_templates(params, name)
    # Every mask (and item id) is checked before a model is loaded: a bad one fails fast.
    for _, row in inputs.iterrows():
        _safe(row["item_id"], name)
        item_masks(row, inputs_csv.parent, height, width, name, target_classes)
    device = resolve_device(config)
    dtype = resolve_dtype(config, device)
    keys = list(dict.fromkeys((sd_key, *edit_keys)))
    n = int(params["samples_per_item"])
    with io.atomic_dir(out_dir) as tmp:
        records = []
        if len(inputs):
            pipes = {key: load_model(config, key, device=device, dtype=dtype) for key in keys}
            sd_pipe = with_ddim(pipes[sd_key])
            edit = make_edit(pipes, params)
            (tmp / BACKGROUND_DIR).mkdir()
            for done, (_, row) in enumerate(inputs.iterrows(), start=1):
                item = row["item_id"]
                masks = ordered_masks(item_masks(row, inputs_csv.parent, height, width, name, target_classes),
                                      target_classes)
                prompts = [region_prompt(params, class_name, target_classes) for class_name, _ in masks]
                prompt = background_prompt(params, row["prompt"])
                mask_files = save_item_masks(tmp, item, dict(masks))
                for sample in range(n):
                    seed = int(params["seed"]) + sample
                    stem = f"{_safe(item, name)}_{sample:02d}"
                    generator = torch.Generator("cpu").manual_seed(seed)
                    try:
                        background = generate_background(sd_pipe, prompt, params, generator)
                        final = edit_regions(background, masks, prompts, edit, generator)
                    except FloatingPointError as error:  # the edit functions do not know the item
                        raise FloatingPointError(f"{name} item {item} sample {sample}: {error}") from error
                    io.save_image(tmp / BACKGROUND_DIR / f"{stem}.png", background)
                    io.save_image(tmp / f"{stem}.png", final)
                    records.append({
                        "item_id": item, "sample": sample, "image": f"{stem}.png", "prompt": prompt,
                        "region_prompts": json.dumps(prompts), "seed": seed,
                        "class_name": row.get("class_name", ""), "source_image": row.get("image", ""),
                        "background": f"{BACKGROUND_DIR}/{stem}.png", "masks": mask_files})
                log.info("%s: %d/%d items done", name, done, len(inputs))
        manifest = pd.DataFrame(records, columns=MANIFEST_COLUMNS)
        io.write_json(tmp / "params.json", io.provenance(
            method=method, params=params, model={key: config["models"][key] for key in keys},
            device=device, dtype=str(dtype), text_handling=TEXT_HANDLING, scheduler="DDIMScheduler",
            target_classes=target_classes,
            torch_threads=torch.get_num_threads(), n_items=len(inputs)))
        io.write_csv(tmp / "manifest.csv", manifest)
    return manifest


def _safe(item_id: str, method: str) -> str:
    try:
        return io.safe_name(item_id)
    except ValueError as exc:
        raise InputError(f"{method} item {item_id!r}: {exc}") from None
