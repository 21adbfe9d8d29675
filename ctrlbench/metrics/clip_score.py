"""CLIP similarity metrics from the embedding caches, with the scale named in every row.

  t_sim: CLIP text-image similarity of a generated image and its item's evaluation
         prompt (mmm2025's t-SIM; with scale clip100 it is torchmetrics' CLIPScore);
         the text is truncated to CLIP's first 75 tokens (text_handling "truncate")
  t_sim_chunked: the same with the text embedded in 77-token chunks, so a long text
         counts in full (text_handling "chunked"; metrics/long_text.py)
  i_sim: CLIP image-image similarity of a generated image and the item's real image
         (mmm2025's i-SIM)
  t_sim_held_out, i_sim_held_out, ...: the same from a second CLIP
         (evaluation.clip.held_out), one that chose no base image (mmm2025's base
         selection picks by CLIP text-image score, so its own CLIP favours its choices)
Scales:
  cos01   = 100 * (cos + 1) / 2        mmm2025 (percent)
  clip100 = max(100 * cos, 0)          torchmetrics CLIPScore
  hessel  = 2.5 * max(cos, 0)          Hessel et al. CLIPScore
Which text metrics a shard gets follows `long_text` (evaluation.clip.long_text). Text
rows also give text_tokens (CLIP content tokens of the text) and text_chunks (77-token
chunks it needs); i_sim rows leave them empty.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .. import io
from ..errors import InputError
from .embeddings import load_embeddings
from .long_text import CACHE_ARRAYS, METRIC_NAMES, check_long_text

SCALES = {
    "cos01": lambda cos: 100.0 * (cos + 1.0) / 2.0,
    "clip100": lambda cos: np.maximum(100.0 * cos, 0.0),
    "hessel": lambda cos: 2.5 * np.maximum(cos, 0.0),
}

METRIC_COLUMNS = ["item_id", "sample", "image", "metric", "value", "scale", "model", "text_handling",
                  "text_tokens", "text_chunks"]


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


def _text_reference(text_npz: str, variant: str):
    try:
        return load_embeddings(text_npz, CACHE_ARRAYS[variant])
    except InputError as error:
        raise InputError(f"{error}: long_text '{variant}' was requested but the prompt cache was "
                         f"built without it; rebuild {text_npz} with the current config") from None


HELD_OUT_SUFFIX = "_held_out"


def similarity_shard(images_npz: str, real_npz: str | None, text_npz: str, out_csv: str, scale: str,
                     model_key: str, long_text=("truncate",), suffix: str = "") -> pd.DataFrame:
    """One text metric per long_text variant (t_sim, t_sim_chunked: image vs evaluation
    prompt) and i_sim (image vs the item's real image) of every generated image;
    real_npz None (datasets without real images) gives text metrics only. `suffix` is
    appended to every metric name (HELD_OUT_SUFFIX for the held-out scorer)."""
    keys, emb = load_embeddings(images_npz)
    frames = []
    if len(keys):
        references = [(METRIC_NAMES[v], v, *_text_reference(text_npz, v), "evaluation prompt")
                      for v in check_long_text(long_text)]
        if real_npz is not None:
            references.append(("i_sim", "", *load_embeddings(real_npz), "real image"))
        for metric, text_handling, ref_keys, ref_emb, what in references:
            rows = _rows_for(keys, ref_keys, ref_emb, what)
            cos = (emb.astype(np.float64) * ref_emb[rows]).sum(axis=1)
            frame = pd.DataFrame({
                "item_id": keys["item_id"], "sample": keys["sample"], "image": keys["image"],
                "metric": metric + suffix, "value": scale_cosine(cos, scale), "scale": scale, "model": model_key,
                "text_handling": text_handling})
            for column, key in (("text_tokens", "n_tokens"), ("text_chunks", "n_chunks")):
                # Empty for i_sim and for prompt caches written before the counts existed.
                counts = ref_keys[key].to_numpy()[rows] if text_handling and key in ref_keys else np.nan
                frame[column] = pd.Series(counts, index=frame.index, dtype="Float64").astype("Int64")
            frames.append(frame)
    frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=METRIC_COLUMNS)
    io.write_csv(out_csv, frame[METRIC_COLUMNS])
    return frame
