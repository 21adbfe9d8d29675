"""Aggregation of per-image metric CSVs into summary tables."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .. import io, paramsets
from ..errors import InputError
from ..stats import mean_std

SUMMARY_COLUMNS = ["dataset", "method", "paramset", "metric", "aggregate", "scale", "n", "mean", "std",
                   "ci95_low", "ci95_high"]
# aggregate "mean": over every image (all samples of all items); "best_of_n": the best
# sample of each item, averaged over items (mmm2025 reports both; the original code
# returned the last sample's score instead of either); "set": a set-level metric (FID,
# KID) with one value per run. std: the sample std (ddof=1, ctrlbench.stats) over the
# values aggregated; a set row copies its file's std (KID's over subsets).


def bootstrap_ci(values: np.ndarray, n_resamples: int = 1000, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap 95% interval of the mean (NaN for an empty sample)."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = rng.choice(values, size=(n_resamples, len(values)), replace=True).mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(low), float(high)


def run_of(path: str | Path) -> dict[str, str]:
    """dataset/method/paramset from .../metrics/<dataset>/<method>/<paramset>/<metric>/shard-N.csv."""
    parts = Path(path).parts
    if len(parts) < 6 or parts[-6] != "metrics":
        raise ValueError(f"{path}: not a metrics/<dataset>/<method>/<paramset>/<metric>/<shard>.csv path")
    return {"dataset": parts[-5], "method": parts[-4], "paramset": parts[-3]}


def load_metric_files(files) -> pd.DataFrame:
    """Per-image metric rows of every file (set-level files, without item_id, are skipped).

    A per-image value that is not a finite number (NaN, inf, empty, text) raises
    InputError naming the file, the item and the metric: it would make its run's mean
    NaN (or wrong) in the summary. Set-level NaN (FID / KID of fewer than 2 images) is
    a documented marking with a note, read by set_level_rows."""
    frames = []
    for path in files:
        frame = pd.read_csv(path, dtype={"item_id": str}, keep_default_na=False)
        if "item_id" not in frame:
            continue
        if "value" in frame:
            values = pd.to_numeric(frame["value"], errors="coerce").to_numpy(dtype=np.float64)
            bad = np.flatnonzero(~np.isfinite(values))
            if len(bad):
                row = frame.iloc[bad[0]]
                raise InputError(f"metric file {path}: {len(bad)} value(s) are not finite numbers (first: item "
                                 f"{row['item_id']}, sample {row.get('sample', '?')}, metric {row.get('metric', '?')}, "
                                 f"value {row['value']!r}); rerun the job that wrote it")
        for key, value in run_of(path).items():
            frame[key] = value
        frames.append(frame)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def set_level_rows(files) -> list[dict]:
    """Summary rows (aggregate "set") of set-level metric files such as fid/set.csv: one
    value per run (FID, KID), its std where it has one (KID over subsets), n = images."""
    rows = []
    for path in files:
        frame = pd.read_csv(path)
        if "item_id" in frame:
            continue
        for record in frame.to_dict("records"):
            keys = {**run_of(path), "metric": record["metric"],
                    "scale": "" if pd.isna(record.get("scale")) else record["scale"]}
            rows.append({**keys, "aggregate": "set", "n": int(record["n_images"]), "mean": record["value"],
                         "std": record.get("std", float("nan")), "ci95_low": float("nan"),
                         "ci95_high": float("nan"), **paramsets.parse_name(keys["paramset"])})
    return rows


LOWER_IS_BETTER = {"faithfulness_mse"}  # best_of_n takes the minimum of these


def _row(keys: dict, aggregate: str, values: np.ndarray) -> dict:
    low, high = bootstrap_ci(values)
    mean, std = mean_std(values)  # std: ddof=1, the one definition (ctrlbench.stats)
    return {**keys, "aggregate": aggregate, "n": len(values), "mean": mean, "std": std, "ci95_low": low,
            "ci95_high": high, **paramsets.parse_name(keys["paramset"])}


def summarize(per_image: pd.DataFrame, set_rows: list[dict] = ()) -> pd.DataFrame:
    rows = list(set_rows)
    if len(per_image):
        per_image = per_image.assign(value=pd.to_numeric(per_image["value"]))
        for (dataset, method, paramset, metric, scale), group in per_image.groupby(
                ["dataset", "method", "paramset", "metric", "scale"], sort=True):
            keys = {"dataset": dataset, "method": method, "paramset": paramset, "metric": metric, "scale": scale}
            rows.append(_row(keys, "mean", group["value"].to_numpy()))
            if "sample" in group:
                # One value per (item, sample) first: a panorama's crops share a sample and
                # are averaged, so best_of_n picks among samples, never among crops.
                per_sample = group.groupby(["item_id", "sample"])["value"].mean().groupby(level=0)
                if per_sample.size().max() > 1:
                    best = per_sample.min() if metric in LOWER_IS_BETTER else per_sample.max()
                    rows.append(_row(keys, "best_of_n", best.to_numpy()))
    table = pd.DataFrame(rows)
    if len(table):
        table = table.sort_values(["dataset", "method", "paramset", "metric"], kind="stable", ignore_index=True)
    extra = sorted(set(table.columns) - set(SUMMARY_COLUMNS)) if len(table) else []
    return table.reindex(columns=SUMMARY_COLUMNS + extra)


def summarize_metric_files(files, out_csv: str) -> pd.DataFrame:
    files = list(files)
    table = summarize(load_metric_files(files), set_level_rows(files))
    io.write_csv(out_csv, table)
    return table
