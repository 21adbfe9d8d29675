"""Pascal VOC classes of torchvision's DeepLabV3 (COCO_WITH_VOC_LABELS_V1) and differentiable
class probabilities.

The segmentation models torchvision ships for DeepLabV3 are trained on the COCO subset
of the 20 Pascal VOC categories: output channel k is VOC_CLASSES[k], channel 0 the
background. COCO_TO_VOC maps the 20 COCO category names that have a VOC counterpart to
that channel; every other COCO category (truck, elephant, ...) has none.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

# torchvision.models.segmentation's _VOC_CATEGORIES, in output-channel order.
VOC_CLASSES = (
    "__background__", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
    "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)
NUM_VOC_CLASSES = len(VOC_CLASSES)

# COCO 2017 category name -> VOC channel.
COCO_TO_VOC = {
    "airplane": 1, "bicycle": 2, "bird": 3, "boat": 4, "bottle": 5, "bus": 6, "car": 7, "cat": 8,
    "chair": 9, "cow": 10, "dining table": 11, "dog": 12, "horse": 13, "motorcycle": 14, "person": 15,
    "potted plant": 16, "sheep": 17, "couch": 18, "train": 19, "tv": 20,
}

# ImageNet statistics: what torchvision's SemanticSegmentation weights transform normalises with.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_ALIASES = {"background": 0, "bg": 0}


def voc_index(name) -> int:
    """VOC channel of a VOC class name ("tvmonitor"), a COCO category name ("tv"), or an
    index (int or digit string, 0-20). Case and surrounding spaces are ignored.
    Raises KeyError naming the value when it is none of these."""
    if isinstance(name, bool):
        raise KeyError(f"{name!r} is not a VOC class")
    if isinstance(name, int) or (isinstance(name, str) and name.strip().isdigit()):
        index = int(name)
        if 0 <= index < NUM_VOC_CLASSES:
            return index
        raise KeyError(f"VOC class index {index} is out of range 0-{NUM_VOC_CLASSES - 1}")
    if isinstance(name, str):
        key = name.strip().lower()
        if key in VOC_CLASSES:
            return VOC_CLASSES.index(key)
        if key in COCO_TO_VOC:
            return COCO_TO_VOC[key]
        if key in _ALIASES:
            return _ALIASES[key]
    raise KeyError(f"{name!r} is neither a Pascal VOC class ({', '.join(VOC_CLASSES[1:])}) nor a COCO "
                   f"category with a VOC counterpart ({', '.join(COCO_TO_VOC)})")


def normalize_imagenet(images: torch.Tensor) -> torch.Tensor:
    """[N, 3, H, W] in [0, 1] -> ImageNet-normalised (differentiable)."""
    mean = torch.tensor(IMAGENET_MEAN, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
    return (images - mean) / std


def segment_probs(deeplab, images: torch.Tensor) -> torch.Tensor:
    """Per-pixel VOC class probabilities [N, 21, H, W] (float32 softmax) of images
    [N, 3, H, W] in [0, 1].

    Normalises with ImageNet statistics as torchvision's weights transforms do (without
    their resize to 520: the model runs at the input size), casts to the model's dtype
    and device, and stays differentiable with respect to `images`. Call it under
    torch.no_grad() when no gradient is wanted.
    """
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"segment_probs expects images [N, 3, H, W], got {tuple(images.shape)}")
    param = next(deeplab.parameters())
    logits = deeplab(normalize_imagenet(images.float()).to(param.device, param.dtype))["out"].float()
    if logits.shape[-2:] != images.shape[-2:]:  # torchvision already upsamples; other models may not
        logits = F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)
    return logits.softmax(dim=1)
