"""A small fully convolutional segmenter with torchvision's segmentation interface
(`model(images)["out"]` = logits [N, classes, H, W]), the toy world's stand-in for
DeepLabV3 (docs/toyworld.md). Built by name ("toy_fcn") through loaders.build_deeplab."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def _block(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                         nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class ToyFCN(nn.Module):
    """Three resolutions (x1, x1/2, x1/4) down and back up with skips: a U-Net in miniature,
    enough receptive field for a 64 px scene and exact object borders."""

    def __init__(self, num_classes: int, width: int = 24):
        super().__init__()
        self.enc1, self.enc2, self.enc3 = _block(3, width), _block(width, 2 * width, 2), _block(2 * width, 4 * width, 2)
        self.dec2, self.dec1 = _block(6 * width, 2 * width), _block(3 * width, width)
        self.head = nn.Conv2d(width, num_classes, 1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        e1 = self.enc1(x)
        e2 = self.enc2(e1)
        e3 = self.enc3(e2)
        d2 = self.dec2(torch.cat([F.interpolate(e3, size=e2.shape[-2:], mode="bilinear", align_corners=False), e2], 1))
        d1 = self.dec1(torch.cat([F.interpolate(d2, size=e1.shape[-2:], mode="bilinear", align_corners=False), e1], 1))
        return {"out": self.head(d1)}
