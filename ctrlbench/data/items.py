"""The items step: read a dataset, write its items table and its shard files."""

from __future__ import annotations

import logging

from .. import io, shards
from ..errors import ConfigError
from .readers import read_dataset

log = logging.getLogger(__name__)


def prepare_items(fmt: str, root: str, split: str, items_csv: str, shard_dir: str,
                  n_shards: int, max_items: int = 0, region_filter: dict | None = None,
                  counts_csv: str | None = None, layout: str | None = None) -> None:
    """Write the shard files, then `counts_csv` (if given), then `items_csv`.

    layout (Flowers only): the on-disk layout, read_dataset's `layout`.

    region_filter (COCO only): keyword arguments of coco_regions.filter_region_subset
    ({} = its defaults); None = every item. counts_csv records how many items each step
    kept (coco_regions.COUNT_COLUMNS): the filter's steps and the other small_masks
    reading's total, or one row "all" without a filter, plus a "max_items" row after the
    applied steps when max_items is set.
    """
    from .coco_regions import counts_frame, filter_region_subset, region_filter_arguments

    if region_filter is not None and fmt != "coco":
        raise ConfigError(f"region_filter applies to COCO datasets only (format 'coco'), not format {fmt!r}")
    arguments = region_filter_arguments(region_filter) if region_filter is not None else None  # fail before reading
    items = read_dataset(fmt, root, split, layout)
    if arguments is not None:
        items, counts = filter_region_subset(items, **arguments)
    else:
        counts = counts_frame([("all", "all items", len(items), 0)])
    if max_items:
        # Deterministic subset: the first max_items ids, so it grows by appending.
        before = len(items)
        items = items.sort_values("item_id").head(max_items)
        # After the applied steps, before the other reading's total (which ignores max_items).
        rows = list(counts.itertuples(index=False, name=None))
        applied = [row for row in rows if row[-1]]
        counts = counts_frame([*applied, ("max_items", f"first {max_items} item ids (max_items)", len(items),
                                          before - len(items)), *[row for row in rows if not row[-1]]])
    changed = shards.write_shard_files(items, shard_dir, n_shards)
    log.info("%d items from %s (%s, split %s); rewrote shards %s", len(items), root, fmt, split, changed)
    if arguments is not None:
        log.info("region filter %s:\n%s", arguments, counts.to_string(index=False))
    if counts_csv:
        io.write_csv(counts_csv, counts)
    io.write_csv(items_csv, items)  # written last: the checkpoint's only declared output


def prepare_gallery(fmt: str, root: str, split: str, gallery_csv: str, layout: str | None = None) -> None:
    """The retrieval gallery (one table, not sharded: every query searches all of it)."""
    gallery = read_dataset(fmt, root, split, layout)
    # Row order is the retrieval tie-break order: lowest dataset id first (CUB image_id).
    gallery = gallery.sort_values("image_id" if "image_id" in gallery else "item_id", kind="stable")
    log.info("%d gallery items from %s (%s, split %s)", len(gallery), root, fmt, split)
    io.write_csv(gallery_csv, gallery)
