"""Faithfulness of a generated image to its stroke painting (GradOP+, Singh et al. CVPR 2023).

GradOP+ models "painting" an image as a Gaussian blur (the paper's painting function: a
35x35 kernel with sigma 7 at 512x512) and asks that the painted output match the user's
stroke image. The same function measures how faithful an output is:

    faithfulness_mse = mean over pixels and RGB channels of (blur(output) - stroke)^2

with both images in [0, 1]. The stroke itself is not blurred: it is the target, as in the
GradOP+ optimisation. 0 means the blurred output is the stroke painting; lower is more
faithful. The blur (`gaussian_blur`) equals kornia's `gaussian_blur2d(x, (k, k), (s, s))`
with its default reflect border, which the original code used: a normalised Gaussian
sampled at integer offsets -k//2 .. k//2, applied separably.

If the stroke image's size differs from the output's, the stroke is resized to the
output's size (PIL bicubic, as the original resized strokes to 512x512) before comparing.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from PIL import Image

from .. import io
from ..errors import InputError
from .embeddings import open_rgb

METRIC = "faithfulness_mse"
METRIC_COLUMNS = ["item_id", "sample", "image", "metric", "value", "scale", "model", "text_handling"]


def gaussian_kernel1d(kernel: int, sigma: float, dtype=torch.float32, device=None) -> torch.Tensor:
    """Normalised 1-D Gaussian of odd length `kernel` (kornia's get_gaussian_kernel1d)."""
    if not isinstance(kernel, (int, np.integer)) or isinstance(kernel, bool) or kernel < 1 or kernel % 2 == 0:
        raise ValueError(f"blur kernel must be a positive odd integer, got {kernel!r}")
    if not sigma > 0:
        raise ValueError(f"blur sigma must be positive, got {sigma!r}")
    x = torch.arange(int(kernel), dtype=torch.float64) - int(kernel) // 2
    weights = torch.exp(-(x ** 2) / (2.0 * float(sigma) ** 2))
    return (weights / weights.sum()).to(dtype=dtype, device=device)


def gaussian_blur(images: torch.Tensor, kernel: int, sigma: float) -> torch.Tensor:
    """Blur a [B, C, H, W] batch with a (kernel x kernel, sigma) Gaussian, reflect border.

    Differentiable (GradOP+ backpropagates through it). The reflect border needs
    kernel // 2 < H and < W.
    """
    if images.ndim != 4:
        raise ValueError(f"gaussian_blur expects [B, C, H, W], got shape {tuple(images.shape)}")
    pad = int(kernel) // 2
    height, width = images.shape[-2:]
    if pad >= height or pad >= width:
        raise ValueError(f"blur kernel {kernel} is too large for a {width}x{height} image "
                         f"(the reflect border needs kernel // 2 < both sides); use a smaller blur_kernel")
    channels = images.shape[1]
    weights = gaussian_kernel1d(kernel, sigma, dtype=images.dtype, device=images.device)
    padded = F.pad(images, (pad, pad, pad, pad), mode="reflect")
    horizontal = weights.view(1, 1, 1, -1).expand(channels, 1, 1, -1)
    vertical = weights.view(1, 1, -1, 1).expand(channels, 1, -1, 1)
    return F.conv2d(F.conv2d(padded, horizontal, groups=channels), vertical, groups=channels)


def painting_function(images: torch.Tensor, kernel: int = 35, sigma: float = 7.0) -> torch.Tensor:
    """GradOP+'s painting function: the Gaussian blur of images in [0, 1]."""
    return gaussian_blur(images, kernel, sigma)


def to_unit_tensor(image: Image.Image, dtype=torch.float64) -> torch.Tensor:
    """PIL image -> [1, 3, H, W] RGB tensor in [0, 1]."""
    array = np.asarray(image.convert("RGB"), dtype=np.float64) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0).to(dtype)


def faithfulness_mse(image: Image.Image, stroke: Image.Image, kernel: int = 35, sigma: float = 7.0) -> float:
    """MSE between painting_function(image) and the stroke image, both in [0, 1].

    The stroke is resized (bicubic) to the image's size when the sizes differ.
    Computed in float64.
    """
    if stroke.size != image.size:
        stroke = stroke.convert("RGB").resize(image.size, Image.BICUBIC)
    painted = painting_function(to_unit_tensor(image), kernel, sigma)
    return float(((painted - to_unit_tensor(stroke)) ** 2).mean())


def faithfulness_shard(images_dir: str, inputs_csv: str, out_csv: str, kernel: int = 35,
                       sigma: float = 7.0) -> pd.DataFrame:
    """faithfulness_mse of every image of a method's shard, one row per image.

    `images_dir` holds the method's manifest.csv (item_id, sample, image); `inputs_csv`
    is the shard's inputs table, whose `image` column is each item's stroke painting.
    Writes `out_csv` with METRIC_COLUMNS (scale "mse", model and text_handling "").
    """
    images_dir = Path(images_dir)
    manifest_path = images_dir / "manifest.csv"
    if not manifest_path.is_file():
        raise InputError(f"faithfulness: {manifest_path} does not exist")
    if not Path(inputs_csv).is_file():
        raise InputError(f"faithfulness: inputs table {inputs_csv} does not exist")
    manifest = pd.read_csv(manifest_path, dtype={"item_id": str}, keep_default_na=False)
    io.check_manifest_paths(manifest, f"faithfulness: {manifest_path}")
    inputs = pd.read_csv(inputs_csv, dtype={"item_id": str}, keep_default_na=False)
    for frame, columns, where in ((manifest, ("item_id", "sample", "image"), manifest_path),
                                  (inputs, ("item_id", "image"), inputs_csv)):
        missing = [c for c in columns if c not in frame.columns]
        if missing:
            raise InputError(f"faithfulness: {where} lacks column(s) {', '.join(missing)}")
    strokes = inputs.drop_duplicates("item_id").set_index("item_id")["image"]
    unknown = sorted(set(manifest["item_id"]) - set(strokes.index))
    if unknown:
        raise InputError(f"faithfulness: item(s) {', '.join(unknown[:5])} of {manifest_path} "
                         f"have no stroke image in {inputs_csv}")
    rows, cache = [], {}
    for row in manifest.itertuples(index=False):
        if row.item_id not in cache:
            cache = {row.item_id: open_rgb(strokes[row.item_id])}  # manifests are in item order
        value = faithfulness_mse(open_rgb(images_dir / row.image), cache[row.item_id], kernel, sigma)
        rows.append({"item_id": row.item_id, "sample": row.sample, "image": row.image, "metric": METRIC,
                     "value": value, "scale": "mse", "model": "", "text_handling": ""})
    frame = pd.DataFrame(rows, columns=METRIC_COLUMNS)
    io.write_csv(out_csv, frame)
    return frame
