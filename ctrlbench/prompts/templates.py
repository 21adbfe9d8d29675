"""Prompt sets built from the items table, without a model.

* template (mmm2025): `a photo of {class}, a bird of this species with {a1}, ..., {aN}.`
  Attributes are CUB's present attributes with certainty > 1, underscores turned into
  spaces. The original code filtered with `"lack" not in attr`, which also dropped every
  "black" attribute; we keep them (see docs/methods/mmm2025.md).
* description (mmm2025): the item's own text, the authors' "original description": its
  captions (or its attribute words) joined into one text, as the authors' as.py joins the
  lines of an item's text file. In their main.py this text, not the generated prompt, is
  ControlNet's prompt, the base-selection text and the text t-SIM scores against.
* caption: one of the item's captions, every item column kept (stroke paintings, COCO).
"""

from __future__ import annotations

import json

import pandas as pd

from .. import io, shards
from ..errors import InputError


def format_attribute(name: str) -> str:
    return name.replace("_", " ")


def template_prompt(template: str, class_name: str, attributes: list[str], domain: str,
                    max_attributes: int = 0) -> str:
    if max_attributes:
        attributes = attributes[:max_attributes]
    text = ", ".join(format_attribute(a) for a in attributes)
    if not text:
        # Datasets without attributes (Flowers): drop the "with ..." clause entirely.
        template = template.replace(" with {attributes}", "").replace(", {attributes}", "")
    return template.format(**{"class": class_name, "domain": domain, "attributes": text})


def template_prompts_for_shard(items_csv: str, out_csv: str, prompt_cfg: dict, domain: str) -> pd.DataFrame:
    items = shards.read_shard(items_csv)
    rows = []
    for item in items.itertuples(index=False):
        if not str(item.class_name).strip():
            raise InputError(f"item {item.item_id}: empty class name, cannot build a template prompt")
        prompt = template_prompt(prompt_cfg["template"], item.class_name, json.loads(item.attributes or "[]"),
                                 domain, prompt_cfg.get("max_attributes", 0))
        rows.append({"item_id": item.item_id, "prompt": prompt, "class_name": item.class_name,
                     "image": item.image})
    frame = pd.DataFrame(rows, columns=["item_id", "prompt", "class_name", "image"])
    io.write_csv(out_csv, frame)
    return frame


def caption_prompts_for_shard(items_csv: str, out_csv: str, prompt_cfg: dict) -> pd.DataFrame:
    """The item's own caption as its prompt (stroke paintings, COCO). Every item column is
    kept, so methods that need more than the prompt (TCIG's COCO objects) read this file."""
    items = shards.read_shard(items_csv)
    index = prompt_cfg.get("caption_index", 0)
    prompts = []
    for item in items.itertuples(index=False):
        captions = json.loads(item.captions or "[]")
        if len(captions) <= index or not str(captions[index]).strip():
            raise InputError(f"item {item.item_id}: no caption #{index} to use as its prompt")
        prompts.append(str(captions[index]).strip())
    frame = items.assign(prompt=prompts)
    front = ["item_id", "prompt", "class_name", "image"]
    frame = frame[front + [c for c in frame.columns if c not in front]]
    io.write_csv(out_csv, frame)
    return frame


DESCRIPTION_SOURCES = ("captions", "attributes")
DESCRIPTION_DEFAULTS = {"source": "captions", "separator": ", ", "max_captions": 0}


def description_text(captions: list[str], attributes: list[str], source: str = "captions",
                     separator: str = ", ", max_captions: int = 0) -> str:
    """The item's description: its captions (the first max_captions, 0 = all) or its
    attribute words (formatted as the template prompts do), stripped and joined."""
    if source == "captions":
        parts = [str(c).strip() for c in captions]
        parts = parts[:max_captions] if max_captions else parts
    elif source == "attributes":
        parts = [format_attribute(a).strip() for a in attributes]
    else:
        raise InputError(f"description source must be one of {', '.join(DESCRIPTION_SOURCES)}, got {source!r}")
    return separator.join(part for part in parts if part)


def description_prompts_for_shard(items_csv: str, out_csv: str, prompt_cfg: dict) -> pd.DataFrame:
    """Each item's description (description_text) as its prompt. An item without the
    chosen text fails, naming the item: a description is never made up."""
    cfg = {**DESCRIPTION_DEFAULTS, **{k: v for k, v in prompt_cfg.items() if k in DESCRIPTION_DEFAULTS}}
    items = shards.read_shard(items_csv)
    rows = []
    for item in items.itertuples(index=False):
        text = description_text(json.loads(item.captions or "[]"), json.loads(item.attributes or "[]"),
                                cfg["source"], cfg["separator"], cfg["max_captions"])
        if not text.strip():
            other = "attributes" if cfg["source"] == "captions" else "captions"
            raise InputError(f"item {item.item_id}: no {cfg['source']} to build its description from "
                             f"(the dataset's {cfg['source']} are missing; add them or use source: {other})")
        rows.append({"item_id": item.item_id, "prompt": text, "class_name": item.class_name, "image": item.image})
    frame = pd.DataFrame(rows, columns=["item_id", "prompt", "class_name", "image"])
    io.write_csv(out_csv, frame)
    return frame
