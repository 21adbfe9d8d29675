"""LAION aesthetic score of generated images, from the CLIP image embedding cache.

Definition (pinned): the LAION improved aesthetic predictor
(`sac+logos+ava1-l14-linearMSE.pth`, an MLP 768-1024-128-64-16-1 with dropout and no
activations, i.e. one affine map) applied to the L2-normalised OpenAI CLIP ViT-L/14 image
embedding (open_clip `ViT-L-14-quickgelu`, pretrained `openai`). The head is
`models.loaders.AestheticMLP` (model kind `aesthetic`).

The job reads a method shard's CLIP image cache (`metrics/embeddings.py`,
`embed_method_images`), never the images: every image is encoded once and the CLIP
scores, base selection and this score share that embedding. The cache is L2-normalised
by contract; a cache that is not is an error (never silently re-normalised).

Scale `laion_v2`: the predictor's raw output, a rating on the AVA 1-10 scale (real
photos and SD images mostly score 4-7). It is not clipped. The tiny stand-in head has
random weights, so its values are meaningless numbers near 0.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .. import io
from ..config import resolve_device
from ..errors import InputError
from .embeddings import load_embeddings

METRIC = "aesthetic"
SCALE = "laion_v2"
AESTHETIC_COLUMNS = ["item_id", "sample", "image", "metric", "value", "scale", "model"]
NORM_TOLERANCE = 1e-3
BATCH = 4096


def cache_model(path) -> str | None:
    """The CLIP model key a cache file was written with (None for a cache without one)."""
    with np.load(path, allow_pickle=False) as data:
        return str(data["model"]) if "model" in data.files else None


def check_normalised(emb: np.ndarray, where: str) -> None:
    """Raise InputError unless every row of `emb` has L2 norm within NORM_TOLERANCE of 1."""
    norms = np.linalg.norm(np.asarray(emb, dtype=np.float64), axis=1)
    bad = np.flatnonzero(~(np.abs(norms - 1.0) <= NORM_TOLERANCE))  # NaN counts as bad
    if len(bad):
        raise InputError(f"{where}: {len(bad)} of {len(emb)} embeddings are not L2-normalised "
                         f"(e.g. row {bad[0]} has norm {norms[bad[0]]:.6g}); the CLIP image cache "
                         "must hold normalised embeddings: rebuild it with embeddings.embed_method_images")


def score_embeddings(head, emb: np.ndarray) -> np.ndarray:
    """float64 [N] scores of the aesthetic head on float32 embeddings [N, d]."""
    import torch

    device = next(head.parameters()).device
    out = []
    with torch.no_grad():
        for start in range(0, len(emb), BATCH):
            x = torch.from_numpy(np.ascontiguousarray(emb[start:start + BATCH], dtype=np.float32))
            out.append(head(x.to(device)).float().cpu().numpy().reshape(-1))
    return np.concatenate(out).astype(np.float64) if out else np.zeros(0, np.float64)


def aesthetic_shard(config: dict, model_key: str, clip_images_npz: str, out_csv: str,
                    clip_model_key: str) -> pd.DataFrame:
    """Aesthetic score of every image of a method shard's CLIP image cache.

    Writes `out_csv` (AESTHETIC_COLUMNS; metric "aesthetic", scale "laion_v2", model =
    `model_key`), one row per cache row; an empty cache gives an empty CSV with the
    columns. `clip_model_key` is the CLIP model the cache must have been written with.
    """
    keys, emb = load_embeddings(clip_images_npz)
    written_with = cache_model(clip_images_npz)
    if written_with is not None and written_with != clip_model_key:
        raise InputError(f"CLIP image cache {clip_images_npz} was written with model '{written_with}', "
                         f"not '{clip_model_key}' as the aesthetic job expects")
    if len(keys):
        emb = np.asarray(emb)
        if emb.ndim != 2 or len(emb) != len(keys):
            raise InputError(f"CLIP image cache {clip_images_npz}: embeddings of shape {emb.shape} "
                             f"for {len(keys)} images")
        from ..models.loaders import load_model

        head = load_model(config, model_key, device=resolve_device(config))
        if head.input_dim != emb.shape[1]:
            raise InputError(
                f"aesthetic model '{model_key}' takes {head.input_dim}-d CLIP embeddings but the cache "
                f"{clip_images_npz} of CLIP model '{clip_model_key}' holds {emb.shape[1]}-d ones; the "
                "LAION predictor needs CLIP ViT-L/14 (open_clip ViT-L-14-quickgelu, openai; 768-d)")
        check_normalised(emb, f"CLIP image cache {clip_images_npz}")
        frame = pd.DataFrame({"item_id": keys["item_id"], "sample": keys["sample"], "image": keys["image"],
                              "metric": METRIC, "value": score_embeddings(head, emb), "scale": SCALE,
                              "model": model_key})
    else:
        frame = pd.DataFrame(columns=AESTHETIC_COLUMNS)
    frame = frame[AESTHETIC_COLUMNS]
    io.write_csv(out_csv, frame)
    return frame
