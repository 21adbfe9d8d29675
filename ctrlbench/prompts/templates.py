"""Template prompts (mmm2025): `a photo of {class}, a bird of this species with {a1}, ..., {aN}.`

Attributes are CUB's present attributes with certainty > 1, underscores turned into
spaces. The original code filtered with `"lack" not in attr`, which also dropped every
"black" attribute; we keep them (see docs/methods/mmm2025.md).
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
