"""Stable sharding of items.

An item's shard is sha1(item_id) mod n_shards: it depends on nothing but the item id,
so adding items changes only the shards they fall in.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd

from . import io


def shard_of(item_id: str, n_shards: int) -> int:
    if n_shards < 1:
        raise ValueError(f"n_shards must be >= 1, got {n_shards}")
    digest = hashlib.sha1(str(item_id).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % n_shards


def assign_shards(items: pd.DataFrame, n_shards: int) -> pd.Series:
    return items["item_id"].map(lambda item_id: shard_of(item_id, n_shards))


def shard_path(shard_dir: str | Path, shard: int) -> Path:
    return Path(shard_dir) / f"shard-{shard:03d}.csv"


def write_shard_files(items: pd.DataFrame, shard_dir: str | Path, n_shards: int) -> list[int]:
    """Write one CSV per shard, rewriting only shards whose content changed.

    Unchanged shard files keep their modification time, so Snakemake reruns only the
    jobs of shards that gained, lost or changed items. Returns the rewritten shards.
    """
    shard_dir = Path(shard_dir)
    shard_dir.mkdir(parents=True, exist_ok=True)
    shard_ids = assign_shards(items, n_shards)
    changed = []
    for shard in range(n_shards):
        part = items[shard_ids == shard].sort_values("item_id")
        text = part.to_csv(index=False)
        path = shard_path(shard_dir, shard)
        if path.exists() and path.read_text(encoding="utf-8") == text:
            continue
        io.write_text(path, text)
        changed.append(shard)
    # Files of shards beyond n_shards (n_shards was lowered) are stale: remove them.
    for stale in shard_dir.glob("shard-*.csv"):
        if int(stale.stem.split("-")[1]) >= n_shards:
            stale.unlink()
    return changed


def read_shard(path: str | Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype={"item_id": str}, keep_default_na=False)
