"""Batches that shrink on CUDA out-of-memory.

`OomBackoff` runs a batch through a function and, when the function raises
`torch.cuda.OutOfMemoryError`, halves the batch and runs the halves, down to a batch of
one. Each retry is logged as a warning. The smaller size is kept for the rest of the job,
so a shard does not run out of memory again on every batch. Running out of memory with
a batch of one raises `torch.cuda.OutOfMemoryError` again, with a message that names the
job, the batch size and what to try. Used by `ctrlbench.methods.sd.generate` (SD and
ParaDiffusion generation).
"""

from __future__ import annotations

import logging
from typing import Callable, Sequence

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
