"""CLIP embedding caches: every image and text is encoded once and reused.

Three kinds of cache file (.npz, written atomically), one per shard:
  images of a method's shard folder   keys item_id, sample, image
  real images of a dataset shard      keys item_id, image
  prompts of a prompt-set shard       keys item_id, prompt
Each holds `emb` (float32, L2-normalised, one row per key row) and the model key.
Base selection (mmm2025 "AS") and the t-SIM / i-SIM metrics all read these files,
so no image is encoded twice (the original re-encoded every candidate per query).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from .. import io
from ..config import resolve_device
from ..errors import InputError


def _load_clip(config: dict, model_key: str):
    from ..models.loaders import load_model

    return load_model(config, model_key, device=resolve_device(config))


def open_rgb(path: str | Path) -> Image.Image:
    """Open an image as RGB (grayscale, RGBA, CMYK, 16-bit are converted), naming the file on failure."""
    try:
        with Image.open(path) as image:
            image.load()
            if image.mode in ("I;16", "I;16B", "I;16L", "I"):
                array = np.asarray(image, dtype=np.float64)
                image = Image.fromarray((array / max(array.max(), 1) * 255).astype(np.uint8))
            return image.convert("RGB")
    except FileNotFoundError:
        raise InputError(f"image {path} does not exist") from None
    except (OSError, ValueError) as error:
        raise InputError(f"image {path} cannot be read: {error}") from None


def save_embeddings(path, keys: pd.DataFrame, emb: np.ndarray, model_key: str) -> None:
    # Strings as fixed-width unicode, not objects: the cache loads with allow_pickle=False.
    arrays = {f"key_{column}": (keys[column].to_numpy() if pd.api.types.is_numeric_dtype(keys[column])
                                else keys[column].astype(str).to_numpy(dtype=str)) for column in keys.columns}
    with io.atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, emb=np.asarray(emb, dtype=np.float32), model=np.array(model_key), **arrays)


def load_embeddings(path) -> tuple[pd.DataFrame, np.ndarray]:
    """(keys table, embeddings) of a cache file."""
    with np.load(path, allow_pickle=False) as data:
        keys = pd.DataFrame({name[4:]: data[name] for name in data.files if name.startswith("key_")})
        emb = data["emb"]
    if "item_id" in keys:
        keys["item_id"] = keys["item_id"].astype(str)
    return keys, emb


def _encode_images(clip, paths: list, batch_size: int) -> np.ndarray:
    chunks = []
    for start in range(0, len(paths), batch_size):
        images = [open_rgb(p) for p in paths[start:start + batch_size]]
        chunks.append(clip.encode_images(images).float().cpu().numpy())
    return np.concatenate(chunks) if chunks else np.zeros((0, 0), np.float32)


def embed_method_images(config: dict, model_key: str, images_dir: str, out_npz: str, batch_size: int = 32):
    manifest = pd.read_csv(Path(images_dir) / "manifest.csv", dtype={"item_id": str}, keep_default_na=False)
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


def embed_prompts(config: dict, model_key: str, prompts_csv: str, out_npz: str, batch_size: int = 32):
    """Prompts longer than CLIP's 77 tokens are truncated by the CLIP tokenizer."""
    prompts = pd.read_csv(prompts_csv, dtype={"item_id": str}, keep_default_na=False)
    keys = prompts[["item_id", "prompt"]].copy()
    if len(keys):
        clip = _load_clip(config, model_key)
        emb = np.concatenate([clip.encode_texts(keys["prompt"].iloc[s:s + batch_size].tolist()).float().cpu().numpy()
                              for s in range(0, len(keys), batch_size)])
    else:
        emb = np.zeros((0, 0), np.float32)
    save_embeddings(out_npz, keys, emb, model_key)
