"""CLIP text-image score, with its scale named in every result.

Three scales are in use in the papers we reproduce:
  cos01   = 100 * (cos + 1) / 2        mmm2025's t-SIM (percent)
  clip100 = max(100 * cos, 0)          torchmetrics CLIPScore
  hessel  = 2.5 * max(cos, 0)          Hessel et al. CLIPScore
Texts longer than the CLIP context (77 tokens) are truncated by the tokenizer; the
result records `text_handling: truncate`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from .. import io
from ..config import resolve_device

SCALES = {
    "cos01": lambda cos: 100.0 * (cos + 1.0) / 2.0,
    "clip100": lambda cos: np.maximum(100.0 * cos, 0.0),
    "hessel": lambda cos: 2.5 * np.maximum(cos, 0.0),
}


def scale_cosine(cos: np.ndarray, scale: str) -> np.ndarray:
    try:
        return SCALES[scale](np.asarray(cos, dtype=np.float64))
    except KeyError:
        raise ValueError(f"unknown CLIP score scale '{scale}' (known: {', '.join(SCALES)})") from None


@torch.inference_mode()
def clip_cosines(clip, images: list, texts: list[str], batch_size: int = 32) -> np.ndarray:
    """Cosine similarity of each image with its own text (pairs, not all-vs-all)."""
    cosines = []
    for start in range(0, len(images), batch_size):
        image_emb = clip.encode_images(images[start:start + batch_size])
        text_emb = clip.encode_texts(texts[start:start + batch_size])
        cosines.append((image_emb * text_emb).sum(-1).double().cpu().numpy())
    return np.concatenate(cosines) if cosines else np.zeros(0)


def score_shard(config: dict, metric_cfg: dict, images_dir: str, out_csv: str) -> pd.DataFrame:
    from ..models.loaders import load_model

    manifest = pd.read_csv(Path(images_dir) / "manifest.csv", dtype={"item_id": str}, keep_default_na=False)
    scale = metric_cfg.get("scale", "cos01")
    model_key = metric_cfg["model"]
    if len(manifest):
        clip = load_model(config, model_key, device=resolve_device(config))
        images = [Image.open(Path(images_dir) / name).convert("RGB") for name in manifest["image"]]
        cos = clip_cosines(clip, images, manifest["prompt"].tolist(), metric_cfg.get("batch_size", 32))
    else:
        cos = np.zeros(0)
    frame = pd.DataFrame({
        "item_id": manifest["item_id"], "sample": manifest["sample"], "image": manifest["image"],
        "metric": "clip_score", "value": scale_cosine(cos, scale), "scale": scale,
        "model": model_key, "text_handling": "truncate",
    })
    io.write_csv(out_csv, frame)
    return frame
