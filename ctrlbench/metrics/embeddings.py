"""CLIP embedding caches: every image and text is encoded once and reused.

Three kinds of cache file (.npz, written atomically), one per shard:
  images of a method's shard folder   keys item_id, sample, image
  real images of a dataset shard      keys item_id, image
  prompts of a prompt-set shard       keys item_id, prompt
Each holds `emb` (float32, L2-normalised, one row per key row) and the model key.
Base selection (mmm2025 "AS") and the t-SIM / i-SIM metrics all read these files,
so no image is encoded twice (the original re-encoded every candidate per query).
A prompt cache also has the key columns n_tokens / n_chunks (CLIP content tokens and
77-token chunks of each prompt; NaN for a tokenizer that is not CLIP BPE) and, when
long_text includes "chunked", the array `emb_chunked` (see metrics/long_text.py).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from .. import io
from ..config import resolve_device
from ..errors import InputError
from .long_text import check_long_text, count_tokens, encode_chunked, is_clip_bpe


def _load_clip(config: dict, model_key: str):
    from ..models.loaders import load_model

    return load_model(config, model_key, device=resolve_device(config))


def open_rgb(path: str | Path) -> Image.Image:
    """Open an image as RGB, naming the file on failure.

    Grayscale (L), palette (P), CMYK and 16-bit grayscale (I;16, or I as 16-bit PNGs may
    open) are converted; 16-bit values are mapped 0..65535 -> 0..255 (value / 257,
    rounded), so an image's brightness does not depend on its maximum. Images with
    transparency (RGBA, LA, PA, P with a transparent colour) are composited over white:
    the colour under a transparent pixel is arbitrary and must not be seen."""
    try:
        with Image.open(path) as image:
            image.load()
            if image.mode in ("I;16", "I;16B", "I;16L", "I"):
                array = np.clip(np.asarray(image, dtype=np.float64), 0, 65535)
                image = Image.fromarray(np.round(array / 257.0).astype(np.uint8))
            if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
                rgba = image.convert("RGBA")
                return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
            return image.convert("RGB")
    except FileNotFoundError:
        raise InputError(f"image {path} does not exist") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        # SyntaxError: some of PIL's decoders report a broken file so
        raise InputError(f"image {path} cannot be read: {error}") from None


def check_finite(emb: np.ndarray, keys: pd.DataFrame, where: str) -> None:
    """InputError naming `where` and the first row's keys when `emb` holds NaN or inf:
    a non-finite embedding would turn every score computed from it into NaN."""
    emb = np.asarray(emb)
    if emb.size == 0 or not np.issubdtype(emb.dtype, np.floating):
        return
    bad = np.flatnonzero(~np.isfinite(emb.reshape(len(emb), -1)).all(axis=1))
    if len(bad):
        first = bad[0]
        shown = [f"{c} {keys[c].iloc[first]}" for c in ("item_id", "sample", "image")
                 if c in keys.columns and first < len(keys)]
        raise InputError(f"{where}: {len(bad)} of {len(emb)} embedding(s) hold NaN or inf (first: row "
                         f"{', '.join([str(first), *shown])}); the encoder diverged or the file is damaged: "
                         "rebuild it")


def save_embeddings(path, keys: pd.DataFrame, emb: np.ndarray, model_key: str,
                    extra: dict[str, np.ndarray] | None = None) -> None:
    """`extra`: further named float32 arrays (e.g. emb_chunked), one row per key row.
    Embeddings holding NaN or inf are refused (InputError), nothing is written."""
    check_finite(emb, keys, f"embeddings for {path}")
    for name, value in (extra or {}).items():
        if np.ndim(value) == 2:
            check_finite(value, keys, f"embeddings '{name}' for {path}")
    # Strings as fixed-width unicode, not objects: the cache loads with allow_pickle=False.
    arrays = {f"key_{column}": (keys[column].to_numpy() if pd.api.types.is_numeric_dtype(keys[column])
                                else keys[column].astype(str).to_numpy(dtype=str)) for column in keys.columns}
    with io.atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, emb=np.asarray(emb, dtype=np.float32), model=np.array(model_key), **arrays,
                     **{name: np.asarray(value, dtype=np.float32) for name, value in (extra or {}).items()})


def load_embeddings(path, name: str = "emb") -> tuple[pd.DataFrame, np.ndarray]:
    """(keys table, embeddings) of a cache file; `name` picks another array (e.g. emb_chunked).
    Embeddings holding NaN or inf raise InputError naming the file and the row."""
    with np.load(path, allow_pickle=False) as data:
        if name not in data.files:
            raise InputError(f"embedding cache {path} has no '{name}' array")
        keys = pd.DataFrame({column[4:]: data[column] for column in data.files if column.startswith("key_")})
        emb = data[name]
    if "item_id" in keys:
        keys["item_id"] = keys["item_id"].astype(str)
    check_finite(emb, keys, f"embedding cache {path} ('{name}')")
    return keys, emb


def _encode_images(clip, paths: list, batch_size: int) -> np.ndarray:
    chunks = []
    for start in range(0, len(paths), batch_size):
        images = [open_rgb(p) for p in paths[start:start + batch_size]]
        chunks.append(clip.encode_images(images).float().cpu().numpy())
    return np.concatenate(chunks) if chunks else np.zeros((0, 0), np.float32)


def embed_method_images(config: dict, model_key: str, images_dir: str, out_npz: str, batch_size: int = 32):
    manifest = io.read_manifest(images_dir, ["item_id", "sample", "image"], "image manifest")
    keys = manifest[["item_id", "sample", "image"]].copy()
    emb = (_encode_images(_load_clip(config, model_key), [Path(images_dir) / n for n in keys["image"]], batch_size)
           if len(keys) else np.zeros((0, 0), np.float32))
    save_embeddings(out_npz, keys, emb, model_key)


def embed_real_images(config: dict, model_key: str, items_csv: str, out_npz: str, batch_size: int = 32):
    items = pd.read_csv(items_csv, dtype={"item_id": str}, keep_default_na=False)
    keys = items[["item_id", "image"]].copy()
    emb = (_encode_images(_load_clip(config, model_key), keys["image"].tolist(), batch_size)
           if len(keys) else np.zeros((0, 0), np.float32))
    save_embeddings(out_npz, keys, emb, model_key)


def embed_prompts(config: dict, model_key: str, prompts_csv: str, out_npz: str, batch_size: int = 32,
                  long_text=("truncate",)):
    """`emb`: open_clip's truncating encoding (first 75 tokens; base selection reads it too),
    always written; `emb_chunked` only when long_text includes "chunked" (metrics/long_text.py)."""
    long_text = check_long_text(long_text)
    prompts = pd.read_csv(prompts_csv, dtype={"item_id": str}, keep_default_na=False)
    keys = prompts[["item_id", "prompt"]].copy()
    texts = keys["prompt"].tolist()
    extra = {}
    if len(keys):
        clip = _load_clip(config, model_key)
        emb = clip.encode_texts(texts, batch_size).float().cpu().numpy()
        if "chunked" in long_text:
            extra["emb_chunked"] = encode_chunked(clip, texts, batch_size)
        # Lengths for the metric rows; a tokenizer that is not CLIP BPE cannot count them.
        counts = ([count_tokens(clip.tokenizer, text) for text in texts] if is_clip_bpe(clip.tokenizer)
                  else [(np.nan, np.nan)] * len(texts))
        keys["n_tokens"] = [n_tokens for n_tokens, _ in counts]
        keys["n_chunks"] = [n_chunks for _, n_chunks in counts]
    else:
        emb = np.zeros((0, 0), np.float32)
        keys["n_tokens"], keys["n_chunks"] = np.zeros(0, np.int64), np.zeros(0, np.int64)
        if "chunked" in long_text:
            extra["emb_chunked"] = emb
    save_embeddings(out_npz, keys, emb, model_key, extra)
