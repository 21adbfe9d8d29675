"""Guards for batches of generated images: CUDA out-of-memory backoff and the NaN/inf check.

`OomBackoff` runs a batch through a function and, when the function raises
`torch.cuda.OutOfMemoryError`, halves the batch and runs the halves, down to a batch of
one. Each retry is logged as a warning. The smaller size is kept for the rest of the job,
so a shard does not run out of memory again on every batch. Running out of memory with
a batch of one raises `torch.cuda.OutOfMemoryError` again, with a message that names the
job, the batch size and what to try. Used where a method denoises several images (or
views) in one call: `sd.generate` (SD and ParaDiffusion generation), ControlNet
regeneration (`controlnet.iter_regenerate`), SDEdit and GradOP+ shards
(`sdedit.run_guided_shard`) and MultiDiffusion panoramas (`view_batch_size` windows per
UNet call). Each of them fixes an image's noise independently of its batch, so a halved
batch gives the images of a run with the smaller batch size. TCIG, MultiDiffusion
regions, SI and BLD make one image per call and have no batch to halve.

`check_finite_images` raises FloatingPointError when decoded images hold NaN or inf (a
diverged UNet, fp16 overflow), naming the job and the images; `finite_pil` checks, then
makes the PIL images, so such an image is never saved. Every generation method checks
its images this way before it makes PIL images: SD, ParaDiffusion, ControlNet, SDEdit,
GradOP+, TCIG (both stages), MultiDiffusion (panorama and regions), SI, BLD and the SI /
BLD backgrounds.
"""

from __future__ import annotations

import logging
from typing import Callable, Sequence

import numpy as np
import torch

log = logging.getLogger(__name__)


class OomBackoff:
    """Run batches through `fn`, halving them on CUDA out-of-memory (see the module doc).

    `what` names the job in log lines and errors (e.g. "sd generation").
    `limit` is the largest batch known to fit, None until a batch has run out of memory.
    """

    def __init__(self, what: str):
        self.what = what
        self.limit: int | None = None

    def run(self, batch: Sequence, fn: Callable[[Sequence], list]) -> list:
        """fn(part) for consecutive parts of `batch`, each at most `limit` long; the
        results of all parts, in order. `fn` must return one result per element."""
        results: list = []
        start = 0
        while start < len(batch):
            size = min(len(batch) - start, self.limit or len(batch))
            part = batch[start:start + size]
            try:
                out = fn(part)
            except torch.cuda.OutOfMemoryError as error:
                if size <= 1:
                    raise torch.cuda.OutOfMemoryError(
                        f"{self.what}: CUDA out of memory with a batch of 1 (after halving the batch); "
                        f"use a smaller image size, dtype float16, or a GPU with more memory. "
                        f"Original error: {error}") from error
                self.limit = max(1, size // 2)
                log.warning("%s: CUDA out of memory with a batch of %d; retrying with a batch of %d",
                            self.what, size, self.limit)
                torch.cuda.empty_cache()
                continue
            results.extend(out)
            start += size
        return results


def check_finite_images(pixels, labels: Sequence[str], what: str) -> None:
    """Raise FloatingPointError when an image of a batch holds NaN or inf.

    `pixels`: the batch, [N, ...] floats, a numpy array (a pipeline's output_type="np",
    [N, H, W, C]) or a tensor (a VAE decoding, [N, C, H, W]); `labels`: one per image, as
    errors name it (e.g. "item 12 sample 0"); `what`: the job (e.g. "sd generation").
    """
    if isinstance(pixels, torch.Tensor):
        finite = torch.isfinite(pixels.detach().reshape(len(pixels), -1)).all(dim=1).cpu().numpy()
    else:
        finite = np.isfinite(np.asarray(pixels).reshape(len(pixels), -1)).all(axis=1)
    bad = [labels[i] for i in np.flatnonzero(~finite)]
    if bad:
        raise FloatingPointError(f"{what}: {len(bad)} of {len(labels)} image(s) of a batch hold NaN or inf "
                                 f"({', '.join(bad[:5])}): the denoising diverged (with float16, try dtype: float32)")


def finite_pil(image_processor, images, labels: Sequence[str], what: str) -> list:
    """PIL images of a batch, after check_finite_images: `images` is a pipeline's
    output_type="np" array [N, H, W, C] in [0, 1] (converted as output_type="pil" would)
    or a VAE decoding [N, C, H, W] in [-1, 1] (image_processor.postprocess to "pil")."""
    check_finite_images(images, labels, what)
    if isinstance(images, torch.Tensor):
        return image_processor.postprocess(images, output_type="pil")
    return image_processor.numpy_to_pil(images)
