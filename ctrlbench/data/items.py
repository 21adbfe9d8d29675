"""The items step: read a dataset, write its items table and its shard files."""

from __future__ import annotations

import logging

from .. import io, shards
from .readers import read_dataset

log = logging.getLogger(__name__)


def prepare_items(fmt: str, root: str, split: str, items_csv: str, shard_dir: str,
                  n_shards: int, max_items: int = 0) -> None:
    items = read_dataset(fmt, root, split)
    if max_items:
        # Deterministic subset: the first max_items ids, so it grows by appending.
        items = items.sort_values("item_id").head(max_items)
    changed = shards.write_shard_files(items, shard_dir, n_shards)
    log.info("%d items from %s (%s, split %s); rewrote shards %s", len(items), root, fmt, split, changed)
    io.write_csv(items_csv, items)  # written last: the checkpoint's only declared output


def prepare_gallery(fmt: str, root: str, split: str, gallery_csv: str) -> None:
    """The retrieval gallery (one table, not sharded: every query searches all of it)."""
    gallery = read_dataset(fmt, root, split)
    # Row order is the retrieval tie-break order: lowest dataset id first (CUB image_id).
    gallery = gallery.sort_values("image_id" if "image_id" in gallery else "item_id", kind="stable")
    log.info("%d gallery items from %s (%s, split %s)", len(gallery), root, fmt, split)
    io.write_csv(gallery_csv, gallery)
