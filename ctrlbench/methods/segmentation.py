"""A segmenter's class probabilities (differentiable) and its class vocabulary.

The vocabulary (models/vocabulary.py) says which class each output channel is: Pascal VOC
for torchvision's DeepLabV3 weights (COCO_WITH_VOC_LABELS_V1: channel k is VOC_CLASSES[k],
channel 0 the background; COCO_TO_VOC maps the 20 COCO category names with a VOC
counterpart to their channel), or the `classes` of a segmenter folder's json. The loader
puts it on the model as `class_names`.
"""

from __future__ import annotations

import functools

import torch
from torch.nn import functional as F

from ..errors import InputError

# Re-exported: the VOC constants lived here before the vocabulary had a module of its own.
from ..models.vocabulary import COCO_TO_VOC, NUM_VOC_CLASSES, VOC, VOC_CLASSES, ClassVocabulary  # noqa: F401

# ImageNet statistics: what torchvision's SemanticSegmentation weights transform normalises with.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def voc_index(name) -> int:
    """VOC channel of a VOC class name ("tvmonitor"), a COCO category name ("tv"), or an
    index (int or digit string, 0-20). Case and surrounding spaces are ignored.
    Raises KeyError naming the value when it is none of these."""
    return VOC.index(name)


def model_vocabulary(segmenter) -> ClassVocabulary:
    """The vocabulary of a loaded segmenter: its `class_names` (the loader sets them), Pascal
    VOC for a module without them (a torchvision segmentation model built elsewhere)."""
    names = getattr(segmenter, "class_names", None)
    return VOC if names is None else _vocabulary(tuple(names), type(segmenter).__name__)


@functools.lru_cache(maxsize=8)  # TCIG asks once per optimisation step
def _vocabulary(names: tuple[str, ...], model: str) -> ClassVocabulary:
    return VOC if names == VOC_CLASSES else ClassVocabulary(names, model)


def check_segmenter_classes(targets, vocabulary: ClassVocabulary | None, model_key: str, method: str) -> None:
    """InputError naming the class and the model when a target class is not a class of the
    segmenter's vocabulary (None: not known before the model loads, which then fails)."""
    if vocabulary is None:
        return
    for name in sorted(targets):
        if name not in vocabulary or vocabulary.index(name) == 0:
            raise InputError(f"{method}: target class {name!r} is not an object class of segmenter '{model_key}' "
                             f"({vocabulary.name}: {vocabulary.describe()}); the dataset's target_classes must "
                             f"name the segmenter's classes (docs/metrics.md)")


def normalize_imagenet(images: torch.Tensor) -> torch.Tensor:
    """[N, 3, H, W] in [0, 1] -> ImageNet-normalised (differentiable)."""
    mean = torch.tensor(IMAGENET_MEAN, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
    return (images - mean) / std


def segment_probs(deeplab, images: torch.Tensor) -> torch.Tensor:
    """Per-pixel class probabilities [N, C, H, W] (float32 softmax; channel k is class k of
    model_vocabulary(deeplab), C its size) of images [N, 3, H, W] in [0, 1].

    Normalises with ImageNet statistics as torchvision's weights transforms do (without
    their resize to 520: the model runs at the input size), casts to the model's dtype
    and device, and stays differentiable with respect to `images`. Call it under
    torch.no_grad() when no gradient is wanted.
    """
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"segment_probs expects images [N, 3, H, W], got {tuple(images.shape)}")
    param = next(deeplab.parameters())
    logits = deeplab(normalize_imagenet(images.float()).to(param.device, param.dtype))["out"].float()
    vocabulary = model_vocabulary(deeplab)
    if logits.shape[1] != len(vocabulary.names):  # a channel read as the wrong class would go unnoticed
        raise ValueError(f"the segmentation model gives {logits.shape[1]} classes, but its vocabulary "
                         f"({vocabulary.name}) has {len(vocabulary.names)}")
    if logits.shape[-2:] != images.shape[-2:]:  # torchvision already upsamples; other models may not
        logits = F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)
    return logits.softmax(dim=1)
