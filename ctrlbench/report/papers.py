"""The papers' reported numbers, and tables that put ours beside them.

mmm2025 ("Enhancing Visual Details"): t-SIM / i-SIM in percent, CLIP ViT-L/14,
(cos+1)/2. Base-image rows and the regeneration table as published; the
regeneration table reports its base rows again with different values (it scores
another set of images), so they are separate rows here.

multidiffusion: the region-based IoU table (DeepLabv3 on the COCO region subset,
per-image mean IoU over the objects, mean +/- std over images), which TCIG's paper
repeats with its own row. ours_std is the summary's std: the sample std over images
(ddof=1, ctrlbench.stats); the papers do not say which std they report.

paradiffusion: the paper compares ParaDiffusion with its baselines by human votes only,
so its table has no paper numbers (NaN): it puts our CLIP scores of ParaDiffusion and
the chunked-prompt SD baseline on ParaPrompts side by side, truncated and chunked text.
"""

from __future__ import annotations

import math

# mmm2025: row -> {dataset format: (t_sim, i_sim)}
MMM2025 = {
    "template + SD": {"cub": (60.72, 66.35), "flowers": (60.65, 68.87)},
    "llama2 + SD": {"cub": (60.65, 66.45), "flowers": (60.63, 70.11)},
    "AS(l+t) + SD": {"cub": (60.89, 66.95), "flowers": (60.75, 69.81)},
    "retrieval": {"cub": (60.77, 68.21), "flowers": (61.20, 73.38)},
    "AS-all": {"cub": (60.96, 67.39), "flowers": (61.00, 71.48)},
    "template SD (regeneration table)": {"cub": (63.09, 76.12), "flowers": (62.01, 75.58)},
    "template SD + ControlNet": {"cub": (63.71, 77.13), "flowers": (62.35, 77.92)},
    "llama2 SD (regeneration table)": {"cub": (62.75, 75.53), "flowers": (61.78, 77.49)},
    "llama2 SD + ControlNet": {"cub": (63.61, 76.84), "flowers": (62.22, 78.53)},
    "retrieval (regeneration table)": {"cub": (59.98, 73.27), "flowers": (62.59, 79.03)},
    "retrieval + ControlNet": {"cub": (62.84, 75.82), "flowers": (62.57, 77.09)},
}
PAPER_SCALE = "cos01"

# multidiffusion: row -> (IoU mean, IoU std) on the COCO region subset.
MULTIDIFFUSION_IOU = {
    "SI": (0.16, 0.10),
    "BLD": (0.17, 0.11),
    "MultiDiffusion": (0.26, 0.12),
    "TCIG": (0.30, 0.26),
}

# paradiffusion: rows without paper numbers (human votes only), on ParaPrompts.
PARADIFFUSION_ROWS = ("ParaDiffusion", "SD (chunked long prompt)")
PARADIFFUSION_METRICS = ("t_sim", "t_sim_chunked")

# paper -> row -> [(dataset format, metric, paper mean, paper std)]
PAPERS = {
    "mmm2025": {row: [(fmt, metric, value, math.nan)
                      for fmt, values in numbers.items() for metric, value in zip(("t_sim", "i_sim"), values)]
                for row, numbers in MMM2025.items()},
    "multidiffusion": {row: [("coco", "iou", mean, std)] for row, (mean, std) in MULTIDIFFUSION_IOU.items()},
    "paradiffusion": {row: [("paraprompts", metric, math.nan, math.nan) for metric in PARADIFFUSION_METRICS]
                      for row in PARADIFFUSION_ROWS},
}
# The CLIP scale a paper's numbers use; ours must match for the numbers to compare.
PAPER_CLIP_SCALE = {"mmm2025": PAPER_SCALE}

COLUMNS = ["paper_row", "dataset", "metric", "paper", "paper_std", "ours_mean", "ours_std", "ours_best_of_n",
           "ours_n_images", "ours_method", "status"]


def paper_table(paper: str, summary_csv: str, out_csv: str, rows: dict[str, str], datasets: dict[str, str],
                scale: str):
    """`rows`: paper row -> our "method/paramset"; `datasets`: our dataset name -> format.

    Every paper row appears once per dataset of the paper's format (or once under the
    format's name when no such dataset is configured). status says "ok", "not
    configured" (no method mapped to the row), "not run" (no results for it) or "other
    scale" (our CLIP scale differs from the paper's, so the numbers do not compare)."""
    import pandas as pd

    from .. import io

    if paper not in PAPERS:
        raise ValueError(f"unknown paper '{paper}'; known: {list(PAPERS)}")
    unknown = sorted(set(rows) - set(PAPERS[paper]))
    if unknown:
        raise ValueError(f"report.papers.{paper}: unknown {paper} row(s) {unknown}; known: {list(PAPERS[paper])}")
    summary = pd.read_csv(summary_csv)
    out = []
    for row, numbers in PAPERS[paper].items():
        for fmt, metric, value, std in numbers:
            for dataset in [name for name, f in datasets.items() if f == fmt] or [fmt]:
                record = {"paper_row": row, "dataset": dataset, "metric": metric, "paper": value,
                          "paper_std": std, "ours_method": rows.get(row, "")}
                record.update(_ours(summary, rows.get(row), dataset, metric))
                paper_scale = PAPER_CLIP_SCALE.get(paper)
                if record["status"] == "ok" and paper_scale and metric in ("t_sim", "i_sim") and scale != paper_scale:
                    record["status"] = "other scale"
                out.append(record)
    table = pd.DataFrame(out, columns=COLUMNS)
    io.write_csv(out_csv, table)
    return table


def mmm2025_table(summary_csv: str, out_csv: str, rows: dict[str, str], datasets: dict[str, str], scale: str):
    return paper_table("mmm2025", summary_csv, out_csv, rows, datasets, scale)


def _ours(summary, ref: str | None, dataset: str, metric: str) -> dict:
    empty = {"ours_mean": math.nan, "ours_std": math.nan, "ours_best_of_n": math.nan, "ours_n_images": 0}
    if not ref:
        return {**empty, "status": "not configured"}
    method, paramset = ref.split("/", 1)
    found = summary[(summary["method"] == method) & (summary["paramset"].astype(str) == paramset)
                    & (summary["dataset"] == dataset) & (summary["metric"] == metric)]
    mean = found[found["aggregate"] == "mean"]
    if mean.empty or not mean["n"].iloc[0]:
        return {**empty, "status": "not run"}
    best = found[found["aggregate"] == "best_of_n"]
    return {"ours_mean": float(mean["mean"].iloc[0]), "ours_std": float(mean["std"].iloc[0]),
            "ours_best_of_n": float(best["mean"].iloc[0]) if len(best) else float(mean["mean"].iloc[0]),
            "ours_n_images": int(mean["n"].iloc[0]), "status": "ok"}
