"""Mask IoU of generated images (MultiDiffusion's and TCIG's region metric; docs/metrics.md).

The segmenter labels every pixel of a generated image with its most probable class
(argmax over its channels, background included): DeepLabV3 over the 21 Pascal VOC
classes, a segmenter folder over the `classes` of its json (the toy world's shapes). A
target mask is named by its class (the manifest's `masks`), which the segmenter's
vocabulary maps to its channel c (segmentation.model_vocabulary; VOC also knows COCO's
names). For each target mask of the image (one per class: objects of one class are
already united in the manifest, since a semantic segmenter cannot tell them apart):

    IoU_c = |pred == c  AND  mask_c| / |pred == c  OR  mask_c|

and the image's `iou` is the mean of IoU_c over its target classes. Over a set of images
the papers report mean +/- std (`summarize_iou`: sample std, ddof=1, `ctrlbench.stats`,
the same as the summary and paper tables).

A target mask is never empty (the methods refuse empty masks), so the union is never
empty; an empty mask raises instead of being given a made-up value. An image whose size
differs from its masks' is resized (PIL bicubic) to the mask size before segmenting, so
IoU is always counted on the target's own pixel grid.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from .. import io
from ..errors import InputError
from ..methods.regions import is_background, load_manifest_masks
from ..methods.segmentation import VOC, ClassVocabulary, check_segmenter_classes, model_vocabulary, segment_probs
from ..stats import mean_std
from .embeddings import open_rgb

log = logging.getLogger(__name__)

METRIC = "iou"
# The long per-image metric format every metric writes (metric "iou"), plus the object
# count and the IoU of each class.
COLUMNS = ["item_id", "sample", "image", "metric", "value", "scale", "model", "text_handling", "n_objects",
           "per_class"]
MANIFEST_COLUMNS = ("item_id", "sample", "image", "masks")


def predict_classes(deeplab, images: list[Image.Image]) -> np.ndarray:
    """int64 [N, H, W]: the segmenter's argmax channel (class of its vocabulary) per pixel
    of same-size images, segmented at their own size (segmentation.segment_probs, which
    checks the channel count against the vocabulary; no gradient)."""
    sizes = {image.size for image in images}
    if len(sizes) != 1:
        raise ValueError(f"predict_classes needs images of one size, got {sorted(sizes)}")
    batch = torch.stack([torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0)
                         for image in images]).permute(0, 3, 1, 2)
    with torch.no_grad():
        probs = segment_probs(deeplab, batch)
    return probs.argmax(dim=1).cpu().numpy()


def class_ious(prediction: np.ndarray, masks: dict[int, np.ndarray],
               vocabulary: ClassVocabulary = VOC) -> dict[int, float]:
    """{channel: IoU of (prediction == channel) with its mask} for one image.

    prediction: int [H, W] channel map; masks: {object channel of `vocabulary` (1 and up):
    bool [H, W]}, non-empty.
    """
    out = {}
    for index, mask in masks.items():
        if not 1 <= index < len(vocabulary.names):  # 0 is the background, not an object
            raise ValueError(f"target class index {index} is not a {vocabulary.name} object class "
                             f"(1-{len(vocabulary.names) - 1})")
        name = vocabulary.names[index]
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != prediction.shape:
            raise ValueError(f"mask of class {name} is {mask.shape}, the prediction {prediction.shape}")
        if not mask.any():
            # Never 0/0: an object without pixels is not an object (see the module docstring).
            raise ValueError(f"mask of class {name} is empty: IoU is undefined")
        predicted = prediction == index
        out[index] = float((predicted & mask).sum() / (predicted | mask).sum())
    return out


def iou_scores(deeplab, images: list[Image.Image], masks: list[dict], batch_size: int = 8) -> list[dict]:
    """Per image {"iou": mean over its classes, "n_objects": number of target classes,
    "per_class": {class name: IoU}} (the vocabulary's own names, in channel order), in
    input order.

    masks[i] is image i's {class: bool [H, W]} (all one size, at least one class), a class
    being a name or a channel index in the segmenter's vocabulary (model_vocabulary).
    Images of another size are resized (bicubic) to their masks' size; images of equal
    size go through the segmenter together, batch_size at a time.
    """
    if len(images) != len(masks):
        raise ValueError(f"iou_scores: {len(images)} images but {len(masks)} mask sets")
    if batch_size < 1:
        raise ValueError(f"iou_scores: batch_size must be >= 1, got {batch_size}")
    vocabulary = model_vocabulary(deeplab)
    masks = [_by_channel(targets, vocabulary, i) for i, targets in enumerate(masks)]
    sized: list[Image.Image] = []
    groups: dict[tuple[int, int], list[int]] = {}
    for i, (image, targets) in enumerate(zip(images, masks)):
        height, width = _target_size(targets, i)
        if image.size != (width, height):
            image = image.convert("RGB").resize((width, height), Image.BICUBIC)
        sized.append(image)
        groups.setdefault((height, width), []).append(i)
    results: list[dict | None] = [None] * len(images)
    for indices in groups.values():
        for start in range(0, len(indices), batch_size):
            chunk = indices[start:start + batch_size]
            predictions = predict_classes(deeplab, [sized[i] for i in chunk])
            for i, prediction in zip(chunk, predictions):
                ious = class_ious(prediction, masks[i], vocabulary)
                results[i] = {"iou": float(np.mean(list(ious.values()))), "n_objects": len(ious),
                              "per_class": {vocabulary.names[c]: value for c, value in sorted(ious.items())}}
    return results  # type: ignore[return-value]


def _by_channel(targets: dict, vocabulary: ClassVocabulary, where) -> dict[int, np.ndarray]:
    """One image's {class name or channel: mask} -> {channel: mask}."""
    out = {}
    for key, mask in targets.items():
        try:
            index = vocabulary.index(key)
        except KeyError as error:
            raise ValueError(f"image {where}: target class {key!r} is not a class of the segmenter: "
                             f"{error.args[0]}") from None
        if index in out:
            raise ValueError(f"image {where}: target class {vocabulary.names[index]} is given twice")
        out[index] = mask
    return out


def summarize_iou(values) -> tuple[float, float]:
    """(mean, std) over images as stats.mean_std gives them (std ddof=1, NaN under two
    values; (nan, nan) for none); non-finite values raise."""
    array = np.asarray(list(values), dtype=np.float64)
    if not np.isfinite(array).all():
        raise ValueError("summarize_iou: IoU values must be finite")
    return mean_std(array)


def run_shard(config: dict, deeplab_key: str, images_dir, out_csv, batch_size: int = 8,
              metric: str = "iou") -> pd.DataFrame:
    """IoU of every image of a method's shard; writes `out_csv` (COLUMNS) atomically, rows
    named `metric` (iou, or iou_held_out for the held-out segmenter: config.iou_metrics).

    `images_dir` holds manifest.csv with item_id, sample, image and masks (the JSON list
    of {class, path} that regions.save_item_masks writes; `voc_class` in older manifests);
    paths are relative to images_dir. Every mask is read and checked before the model is
    loaded; every target class is checked against the model's vocabulary before any image
    is scored (InputError naming the class and `deeplab_key`).
    """
    from ..config import resolve_device, resolve_dtype
    from ..models.loaders import load_model

    images_dir = Path(images_dir)
    manifest = io.read_manifest(images_dir, MANIFEST_COLUMNS, what="IoU: manifest")
    sizes, classes = [], set()
    for row in manifest.itertuples(index=False):
        masks = _read_masks(images_dir, row.item_id, row.masks)
        sizes.append(_target_size(masks, row.item_id))
        classes.update(masks)
    if manifest.empty:  # nothing to score: no reason to load the model
        frame = pd.DataFrame(columns=COLUMNS)
        io.write_csv(out_csv, frame)
        return frame
    device = resolve_device(config)
    deeplab = load_model(config, deeplab_key, device, resolve_dtype(config, device))
    deeplab.eval()
    check_segmenter_classes(classes, model_vocabulary(deeplab), deeplab_key, "IoU")
    # Rows of one mask size together, so each DeepLab batch holds one image size.
    order = sorted(range(len(manifest)), key=lambda i: sizes[i])
    scores: dict[int, dict] = {}
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        rows = [manifest.iloc[i] for i in chunk]
        images = [open_rgb(images_dir / row["image"]) for row in rows]
        targets = [_read_masks(images_dir, row["item_id"], row["masks"]) for row in rows]
        for i, score in zip(chunk, iou_scores(deeplab, images, targets, batch_size)):
            scores[i] = score
    records = []
    for i, row in enumerate(manifest.itertuples(index=False)):
        score = scores[i]
        records.append({"item_id": row.item_id, "sample": row.sample, "image": row.image, "metric": metric,
                        "value": score["iou"], "scale": "fraction", "model": deeplab_key, "text_handling": "",
                        "n_objects": score["n_objects"], "per_class": json.dumps(score["per_class"])})
    frame = pd.DataFrame(records, columns=COLUMNS)
    if len(frame):
        mean, std = summarize_iou(frame["value"])
        log.info("%s (%s) of %d images in %s: %.4f +/- %.4f", metric, deeplab_key, len(frame), images_dir, mean, std)
    io.write_csv(out_csv, frame)
    return frame


def _read_masks(images_dir: Path, item: str, masks_json: str) -> dict[str, np.ndarray]:
    """One manifest row's masks, checked: at least one, none empty, none background, one size."""
    try:
        masks = load_manifest_masks(images_dir, masks_json)
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise InputError(f"IoU: item {item} in {images_dir / 'manifest.csv'}: cannot read its masks: {error}") from None
    if not masks:
        raise InputError(f"IoU: item {item} in {images_dir / 'manifest.csv'} has no target mask")
    for name, mask in masks.items():
        if is_background(name):
            raise InputError(f"IoU: item {item}: a mask of the background class is not an object")
        if not mask.any():
            raise InputError(f"IoU: item {item}: mask of class {name} is empty")
    try:
        _target_size(masks, item)
    except ValueError as error:
        raise InputError(f"IoU: {error}") from None
    return masks


def _target_size(masks: dict, where) -> tuple[int, int]:
    """(height, width) shared by one image's masks."""
    if not masks:
        raise ValueError(f"image {where}: no target mask")
    shapes = {np.asarray(mask).shape for mask in masks.values()}
    if len(shapes) != 1:
        raise ValueError(f"image {where}: its masks differ in size: {sorted(shapes)}")
    shape = shapes.pop()
    if len(shape) != 2:
        raise ValueError(f"image {where}: masks must be 2-D [H, W], got {shape}")
    return shape

