"""FID and KID of a set of generated images against a reference set (docs/metrics.md).

Three steps, each a file:
  1. feature caches, one per shard (`embed_method_images_fid`, `embed_real_images_fid`):
     the Inception pool3 features (or the tiny stand-in's) of every image, float32 as the
     extractor returns them, in the CLIP caches' layout (embeddings.save_embeddings):
     `emb` [N, d], `model`, key columns item_id, (sample,) image plus the per-row columns
     `antialias` and `feature_extractor` (how the row was computed), and `n_skipped`
     (rows of the items table without an image; 0 for a method's folder).
  2. reference statistics, once per dataset (`reference_stats`): the features of every
     shard of the reference set (the real images or another method's images), their mean
     and covariance, and torchmetrics' own accumulated FID state.
  3. scores (`fid_kid`): torchmetrics' FrechetInceptionDistance and KernelInceptionDistance
     fed the cached features through an identity feature module, in float64, one CSV row
     per metric with the implementation and every flag that changes the number.
"""

from __future__ import annotations

import warnings
from collections import defaultdict
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from .. import io
from ..config import resolve_device
from ..errors import InputError
from .embeddings import load_embeddings, open_rgb, save_embeddings

FID_COLUMNS = ["metric", "value", "std", "n_images", "n_reference", "reference", "scale", "implementation",
               "feature_extractor", "antialias", "dtype", "kid_subset_size", "kid_subsets", "note"]
DTYPE = torch.float64
KID_KERNEL = "polynomial kernel degree 3, gamma 1/d, coef 1"


# --- feature caches ------------------------------------------------------------------

def _load_extractor(config: dict, model_key: str, antialias: bool) -> nn.Module:
    from ..models.loaders import load_fid_extractor

    return load_fid_extractor(config, model_key, resolve_device(config), antialias=antialias)


def _uint8_chw(path) -> torch.Tensor:
    return torch.from_numpy(np.array(open_rgb(path), dtype=np.uint8)).permute(2, 0, 1)


@torch.no_grad()
def extract_features(model: nn.Module, paths: list, batch_size: int = 32) -> np.ndarray:
    """float32 [len(paths), model.num_features], one row per path in order.

    Each image goes to the extractor as uint8 [3, H, W] at its own size (the extractor
    resizes to its input size); the images of a batch are grouped by size.
    """
    device = next(model.parameters()).device
    out = np.zeros((len(paths), model.num_features), np.float32)
    for start in range(0, len(paths), batch_size):
        images = [_uint8_chw(path) for path in paths[start:start + batch_size]]
        by_size = defaultdict(list)
        for index, image in enumerate(images):
            by_size[tuple(image.shape)].append(index)
        for indices in by_size.values():
            features = model(torch.stack([images[i] for i in indices]).to(device))
            out[[start + i for i in indices]] = features.reshape(len(indices), -1).float().cpu().numpy()
    return out


def save_features(out_npz, keys: pd.DataFrame, features: np.ndarray, model_key: str, *, antialias: bool,
                  feature_extractor: str, n_skipped: int = 0) -> None:
    """Write an FID feature cache (float32 `emb`, one row per key row; see the module doc)."""
    keys = keys.reset_index(drop=True).assign(antialias=bool(antialias), feature_extractor=str(feature_extractor))
    save_embeddings(out_npz, keys, np.asarray(features, np.float32), model_key,
                    extra={"n_skipped": np.array(n_skipped)})


def _embed(out_npz, keys: pd.DataFrame, paths: list, config: dict, model_key: str, antialias: bool,
           batch_size: int, n_skipped: int) -> None:
    model = _load_extractor(config, model_key, antialias)
    save_features(out_npz, keys, extract_features(model, paths, batch_size), model_key, antialias=antialias,
                  feature_extractor=model.feature_extractor, n_skipped=n_skipped)


def embed_method_images_fid(config: dict, model_key: str, images_dir: str, out_npz: str,
                            batch_size: int = 32, antialias: bool = False) -> None:
    """FID features of every image of a method's shard folder, in manifest order."""
    manifest = io.read_manifest(images_dir, ["item_id", "sample", "image"], "image manifest")
    keys = manifest[["item_id", "sample", "image"]]
    _embed(out_npz, keys, [Path(images_dir) / name for name in keys["image"]], config, model_key,
                   antialias, batch_size, n_skipped=0)


def embed_real_images_fid(config: dict, model_key: str, items_csv: str, out_npz: str,
                          batch_size: int = 32, antialias: bool = False) -> None:
    """FID features of a dataset shard's real images. Rows without an image (image "")
    are skipped and counted in `n_skipped`; a prompt-only dataset gives an empty cache."""
    items = io.read_table(items_csv, ["item_id", "image"], "items table")
    has_image = items["image"].astype(str).str.strip() != ""
    keys = items.loc[has_image, ["item_id", "image"]]
    _embed(out_npz, keys, keys["image"].tolist(), config, model_key, antialias, batch_size,
                   n_skipped=int((~has_image).sum()))


# --- concatenating caches --------------------------------------------------------------

def _only(values, what: str, files) -> str | None:
    distinct = sorted({str(v) for v in values})
    if len(distinct) > 1:
        raise InputError(f"the FID feature caches {', '.join(map(str, files))} mix {what} {distinct}; "
                         f"rebuild them with one setting")
    return distinct[0] if distinct else None


def _read_caches(npzs: list) -> dict:
    """Concatenate shard caches: features (float32 [N, d]) and what produced them."""
    if not npzs:
        raise InputError("no FID feature caches given")
    features, models, rows, n_skipped = [], [], [], 0
    for path in map(str, npzs):
        keys, emb = load_embeddings(path)
        with np.load(path, allow_pickle=False) as data:
            models.append(str(data["model"]))
            if "n_skipped" not in data.files or emb.ndim != 2 or "antialias" not in keys:
                raise InputError(f"{path} is not an FID feature cache (embed_*_fid writes them)")
            n_skipped += int(data["n_skipped"])
        features.append(emb)
        rows.append(keys)
    dims = {f.shape[1] for f in features}
    if len(dims) > 1:
        raise InputError(f"the FID feature caches {', '.join(map(str, npzs))} have different feature "
                         f"sizes {sorted(dims)}")
    keys = pd.concat(rows, ignore_index=True)
    antialias = _only(keys["antialias"], "antialias flags", npzs)
    return {"features": np.concatenate(features), "model": _only(models, "models", npzs),
            "antialias": antialias, "feature_extractor": _only(keys["feature_extractor"], "extractors", npzs) or "",
            "n_skipped": n_skipped}


class CachedFeatures(nn.Module):
    """Identity feature module: torchmetrics' FID/KID get already extracted features
    [N, num_features] and compute in float64."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2 or x.shape[1] != self.num_features:
            raise ValueError(f"expected features [N, {self.num_features}], got {tuple(x.shape)}")
        return x.to(DTYPE)


def _fid_metric(num_features: int, device: str):
    from torchmetrics.image.fid import FrechetInceptionDistance

    # Its states are float64 already; the float64 features keep compute() from casting the
    # result down (it returns the features' dtype). set_dtype would also turn the counts float.
    return FrechetInceptionDistance(feature=CachedFeatures(num_features)).to(device)


_FID_REAL_STATE = ("real_features_sum", "real_features_cov_sum", "real_features_num_samples")


# --- reference statistics --------------------------------------------------------------

def reference_stats(feature_npzs: list[str], out_npz: str, reference: str) -> None:
    """Concatenate the feature caches of every shard of a reference set and write
    features (float32, as cached), mu / sigma (float64, numpy mean and covariance with
    ddof 1; NaN below 2 images), n, the reference name, model, feature_extractor,
    antialias ("True"/"False"; "" when there are no images), n_skipped, the shard files,
    and torchmetrics' FID state (real_features_sum, real_features_cov_sum,
    real_features_num_samples) accumulated by FrechetInceptionDistance.update itself,
    which fid_kid loads instead of re-reading the reference for every method."""
    cache = _read_caches(feature_npzs)
    features = cache["features"]
    n, d = features.shape
    wide = features.astype(np.float64)
    mu = wide.mean(axis=0) if n else np.full(d, np.nan)
    sigma = np.cov(wide, rowvar=False, ddof=1).reshape(d, d) if n >= 2 else np.full((d, d), np.nan)
    metric = _fid_metric(d, "cpu")
    if n:
        metric.update(torch.from_numpy(wide), real=True)
    state = {name: getattr(metric, name).cpu().numpy() for name in _FID_REAL_STATE}
    with io.atomic_path(out_npz) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, features=features, mu=mu, sigma=sigma, n=np.array(n, np.int64),
                     reference=np.array(reference), model=np.array(cache["model"] or ""),
                     feature_extractor=np.array(cache["feature_extractor"]),
                     antialias=np.array(cache["antialias"] or ""), n_skipped=np.array(cache["n_skipped"]),
                     shards=np.array([str(p) for p in feature_npzs]), **state)


def _load_reference(path) -> dict:
    try:
        with np.load(path, allow_pickle=False) as data:
            ref = {name: data[name] for name in data.files}
    except FileNotFoundError:
        raise InputError(f"FID reference statistics {path} do not exist") from None
    missing = {"features", "n", "reference", *_FID_REAL_STATE} - set(ref)
    if missing:
        raise InputError(f"{path} is not an FID reference file (reference_stats writes them): "
                         f"no {', '.join(sorted(missing))}")
    return {name: (value.item() if value.ndim == 0 else value) for name, value in ref.items()}


# --- scores ------------------------------------------------------------------------------

def _version() -> str:
    return f"torchmetrics {metadata.version('torchmetrics')}"


def fid_kid(reference_npz, image_npzs: list[str], out_csv, *, model_key: str, antialias: bool,
            kid_subset_size: int = 1000, kid_subsets: int = 100, seed: int = 0,
            device: str = "cpu", reference_name: str | None = None) -> pd.DataFrame:
    """FID and KID of the images in `image_npzs` (a method's shard caches) against the
    reference statistics `reference_npz`; writes and returns rows with FID_COLUMNS. Their
    `reference` is `reference_name`, or by default the name the reference file records
    (another dataset's real images record "real": the rule names them "real:<dataset>").

    FID: torchmetrics FrechetInceptionDistance whose real state is loaded from the
    reference file (computed there by the same metric's update) and whose fake state is
    updated with the images' features. KID: torchmetrics KernelInceptionDistance updated
    with both feature sets; its subset draws (torch.randperm) run under a forked torch RNG
    seeded with `seed`. The subset size is min(kid_subset_size, n_images, n_reference).
    Fewer than 2 images on either side: both values NaN, with a note.
    """
    ref = _load_reference(reference_npz)
    images = _read_caches(image_npzs)
    _check_same_features(ref, images, reference_npz, image_npzs, model_key, antialias)
    fake = images["features"]
    n_images, n_reference, d = len(fake), int(ref["n"]), fake.shape[1]
    version = _version()
    base = {"n_images": n_images, "n_reference": n_reference, "reference": reference_name or str(ref["reference"]),
            "scale": "",
            "feature_extractor": images["feature_extractor"] or str(ref.get("feature_extractor", "")),
            "antialias": bool(antialias), "dtype": str(DTYPE).removeprefix("torch.")}
    fid_row = dict(base, metric="fid", std=np.nan, implementation=f"{version} FrechetInceptionDistance",
                   kid_subset_size=pd.NA, kid_subsets=pd.NA)
    kid_row = dict(base, metric="kid", implementation=f"{version} KernelInceptionDistance ({KID_KERNEL})",
                   kid_subsets=kid_subsets)
    common = []
    if ref.get("n_skipped"):
        common.append(f"reference: {int(ref['n_skipped'])} items without an image skipped")
    if n_images < 2 or n_reference < 2:
        why = (f"needs at least 2 images on each side, got n_images={n_images}, "
               f"n_reference={n_reference}")
        fid_row.update(value=np.nan, note="; ".join([why, *common]))
        kid_row.update(value=np.nan, std=np.nan, kid_subset_size=pd.NA, note="; ".join([why, *common]))
    else:
        fid_notes = list(common)
        if min(n_images, n_reference) <= d:
            fid_notes.append(f"fewer images than feature dimensions ({min(n_images, n_reference)} <= {d}): "
                             f"singular covariance, FID biased upwards and noisy")
        fid_row.update(value=_fid(ref, fake, device), note="; ".join(fid_notes))
        subset = min(kid_subset_size, n_images, n_reference)
        kid_notes = list(common)
        if subset < kid_subset_size:
            kid_notes.append(f"kid_subset_size {kid_subset_size} > images available: used {subset} "
                             f"(n_images={n_images}, n_reference={n_reference})")
        if subset == n_images == n_reference:
            kid_notes.append("every subset is the whole of both sets: std is 0")
        mean, std = _kid(ref["features"], fake, subset, kid_subsets, seed, device)
        kid_row.update(value=mean, std=std, kid_subset_size=subset, note="; ".join(kid_notes))
    frame = pd.DataFrame([fid_row, kid_row], columns=FID_COLUMNS)
    for column in ("n_images", "n_reference", "kid_subset_size", "kid_subsets"):
        frame[column] = frame[column].astype("Int64")
    io.write_csv(out_csv, frame)
    return frame


def _check_same_features(ref: dict, images: dict, reference_npz, image_npzs, model_key: str, antialias: bool):
    """The reference and the images must come from the same extractor and resize as asked."""
    def fail(what):
        raise InputError(f"FID features do not match: {what}. Rebuild the stale cache(s)")

    for name, model in ((reference_npz, ref.get("model")), (", ".join(map(str, image_npzs)), images["model"])):
        if model and model != model_key:
            fail(f"{name} was computed with model '{model}', not '{model_key}'")
    for name, flag in ((reference_npz, ref.get("antialias")), (", ".join(map(str, image_npzs)), images["antialias"])):
        if flag and flag != str(bool(antialias)):
            fail(f"{name} was computed with antialias={flag}, not {bool(antialias)}")
    extractors = {e for e in (str(ref.get("feature_extractor") or ""), images["feature_extractor"]) if e}
    if len(extractors) > 1:
        fail(f"the reference {reference_npz} and the images use different extractors {sorted(extractors)}")
    if ref["features"].shape[1] != images["features"].shape[1]:
        fail(f"the reference {reference_npz} has {ref['features'].shape[1]} features per image, "
             f"the images {images['features'].shape[1]}")


def _fid(ref: dict, fake: np.ndarray, device: str) -> float:
    metric = _fid_metric(fake.shape[1], device)
    for name in _FID_REAL_STATE:
        current = getattr(metric, name)
        setattr(metric, name, torch.as_tensor(ref[name], dtype=current.dtype, device=current.device))
    metric.update(torch.from_numpy(fake.astype(np.float64)).to(device), real=False)
    return float(metric.compute())


def _kid(real: np.ndarray, fake: np.ndarray, subset_size: int, subsets: int, seed: int,
         device: str) -> tuple[float, float]:
    from torchmetrics.image.kid import KernelInceptionDistance

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Metric `Kernel Inception Distance` will save")
        metric = KernelInceptionDistance(feature=CachedFeatures(fake.shape[1]), subsets=subsets,
                                         subset_size=subset_size).to(device)
    metric.update(torch.from_numpy(real.astype(np.float64)).to(device), real=True)
    metric.update(torch.from_numpy(fake.astype(np.float64)).to(device), real=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        mean, std = metric.compute()
    return float(mean), float(std)


# --- reference implementation (tests, docs) ------------------------------------------------

def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """||mu1 - mu2||^2 + Tr(sigma1 + sigma2 - 2 sqrtm(sigma1 sigma2)) with numpy/scipy in
    float64, as pytorch-fid computes it (an eps ridge only if sqrtm is not finite; the
    imaginary part of sqrtm's result, rounding noise for covariance matrices, is dropped).
    The pipeline uses torchmetrics; this is the reference the tests compare it with."""
    from scipy import linalg

    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    covmean = linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        offset = np.eye(len(sigma1)) * 1e-6
        covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(np.real(covmean)))
