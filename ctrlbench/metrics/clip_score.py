"""CLIP similarity metrics from the embedding caches, with the scale named in every row.

  t_sim: CLIP text-image similarity of a generated image and its item's evaluation
         prompt (mmm2025's t-SIM; with scale clip100 it is torchmetrics' CLIPScore)
  i_sim: CLIP image-image similarity of a generated image and the item's real image
         (mmm2025's i-SIM)
Scales:
  cos01   = 100 * (cos + 1) / 2        mmm2025 (percent)
  clip100 = max(100 * cos, 0)          torchmetrics CLIPScore
  hessel  = 2.5 * max(cos, 0)          Hessel et al. CLIPScore
Texts longer than CLIP's 77 tokens are truncated (`text_handling: truncate`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .. import io
from ..errors import InputError
from .embeddings import load_embeddings

SCALES = {
    "cos01": lambda cos: 100.0 * (cos + 1.0) / 2.0,
    "clip100": lambda cos: np.maximum(100.0 * cos, 0.0),
    "hessel": lambda cos: 2.5 * np.maximum(cos, 0.0),
}

METRIC_COLUMNS = ["item_id", "sample", "image", "metric", "value", "scale", "model", "text_handling"]


def scale_cosine(cos, scale: str) -> np.ndarray:
    try:
        return SCALES[scale](np.asarray(cos, dtype=np.float64))
    except KeyError:
        raise ValueError(f"unknown CLIP score scale '{scale}' (known: {', '.join(SCALES)})") from None


def _rows_for(keys: pd.DataFrame, reference: pd.DataFrame, reference_emb: np.ndarray, what: str) -> np.ndarray:
    """Row index into `reference` for each generated image's item."""
    index = pd.Series(np.arange(len(reference)), index=reference["item_id"])
    missing = sorted(set(keys["item_id"]) - set(index.index))
    if missing:
        raise InputError(f"no {what} for item(s) {', '.join(missing[:5])}")
    return index.loc[keys["item_id"]].to_numpy()


def similarity_shard(images_npz: str, real_npz: str | None, text_npz: str, out_csv: str, scale: str,
                     model_key: str) -> pd.DataFrame:
    """t_sim (image vs evaluation prompt) and i_sim (image vs the item's real image) of
    every generated image; real_npz None (datasets without real images) gives t_sim only."""
    keys, emb = load_embeddings(images_npz)
    frames = []
    if len(keys):
        references = [("t_sim", text_npz, "evaluation prompt"), ("i_sim", real_npz, "real image")]
        for metric, npz, what in [r for r in references if r[1] is not None]:
            ref_keys, ref_emb = load_embeddings(npz)
            cos = (emb.astype(np.float64) * ref_emb[_rows_for(keys, ref_keys, ref_emb, what)]).sum(axis=1)
            frames.append(pd.DataFrame({
                "item_id": keys["item_id"], "sample": keys["sample"], "image": keys["image"],
                "metric": metric, "value": scale_cosine(cos, scale), "scale": scale, "model": model_key,
                "text_handling": "truncate" if metric == "t_sim" else ""}))
    frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=METRIC_COLUMNS)
    io.write_csv(out_csv, frame[METRIC_COLUMNS])
    return frame
