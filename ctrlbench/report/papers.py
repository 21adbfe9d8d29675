"""The papers' reported numbers, and tables that put ours beside them.

mmm2025 ("Enhancing Visual Details"): t-SIM / i-SIM in percent, CLIP ViT-L/14,
(cos+1)/2. The base-image table (Table 1) and the regeneration table as published; the
regeneration table reports its base rows again with different values (it scores
another set of images), so they are separate rows here. In the authors' main.py every
scored image is a ControlNet regeneration, so the configs map Table 1's rows to the
regenerations of each base (docs/fidelity.md). Extra rows without paper numbers: the AS
choices before regeneration, and, as reference rows only, the README's Tables 2 and 3
("zero shot", "few shot"), whose settings the public material does not define.

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
    # ours only: the AS choices as chosen, before ControlNet (the paper reports no such row)
    "AS(l+t) + SD (chosen base, not regenerated)": {"cub": (math.nan, math.nan), "flowers": (math.nan, math.nan)},
    "AS-all (chosen base, not regenerated)": {"cub": (math.nan, math.nan), "flowers": (math.nan, math.nan)},
}
# The authors' README, Tables 2 ("zero shot") and 3 ("few shot"): (t_sim, i_sim) per format.
MMM2025_REFERENCE_TABLES = {
    "Table 2 (zero shot)": {
        "template + SD": {"cub": (60.80, 67.17), "flowers": (60.52, 69.02)},
        "llama2 + SD": {"cub": (60.85, 67.19), "flowers": (60.74, 71.17)},
        "AS(l+t) + SD": {"cub": (60.93, 68.17), "flowers": (60.81, 71.48)},
        "retrieval": {"cub": (60.68, 67.46), "flowers": (61.50, 73.68)},
        "AS-all": {"cub": (60.95, 68.64), "flowers": (61.14, 73.20)},
    },
    "Table 3 (few shot)": {
        "template + SD": {"cub": (60.18, 65.19), "flowers": (60.44, 68.73)},
        "llama2 + SD": {"cub": (60.11, 65.43), "flowers": (60.46, 69.13)},
        "AS(l+t) + SD": {"cub": (60.40, 66.39), "flowers": (60.45, 70.41)},
        "retrieval": {"cub": (60.36, 68.30), "flowers": (61.15, 72.95)},
        "AS-all": {"cub": (60.50, 68.29), "flowers": (60.81, 72.65)},
    },
}
NOT_REPRODUCIBLE = "setting not reproducible from the public material"
MMM2025.update({f"{table}: {row}": numbers for table, rows in MMM2025_REFERENCE_TABLES.items()
                for row, numbers in rows.items()})
# Rows only a reader can place: paper row -> note (written in the table's note column).
ROW_NOTES = {
    **{row: "Table 1; the authors' main.py scores the ControlNet regenerations of the base"
       for row in ("template + SD", "llama2 + SD", "AS(l+t) + SD", "retrieval", "AS-all")},
    "AS(l+t) + SD (chosen base, not regenerated)": "ours only: the AS choice itself (no paper number)",
    "AS-all (chosen base, not regenerated)": "ours only: the AS choice itself (no paper number)",
    **{f"{table}: {row}": f"reference row: {NOT_REPRODUCIBLE}"
       for table, rows in MMM2025_REFERENCE_TABLES.items() for row in rows},
}
# Rows that can only be shown, not run: unmapped, their status says why.
REFERENCE_ONLY_ROWS = {f"{table}: {row}" for table, rows in MMM2025_REFERENCE_TABLES.items() for row in rows}
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
           "ours_n_images", "ours_method", "status", "note"]
HELD_OUT_SUFFIX = "_held_out"  # metrics of a held-out scorer, shown below their own
# What scored a held-out line: the second segmenter for IoU, else the second CLIP.
HELD_OUT_NOTES = {"iou": "held-out segmenter (evaluation.iou.held_out)"}
HELD_OUT_CLIP_NOTE = "held-out CLIP (evaluation.clip.held_out)"


def paper_table(paper: str, summary_csv: str, out_csv: str, rows: dict, datasets: dict[str, str],
                scale: str):
    """`rows`: paper row -> our "method/paramset", or {dataset: "method/paramset"} for a row
    our methods do differently per dataset; `datasets`: our dataset name -> format.

    Every paper row appears once per dataset of the paper's format (or once under the
    format's name when no such dataset is configured). status says "ok", "not
    configured" (no method mapped to the row), "not reproducible" (a reference row whose
    setting the public material does not define, unmapped), "not run" (no results for
    it) or "other scale" (our CLIP scale differs from the paper's, so the numbers do not
    compare). A t_sim / i_sim / iou line is followed by its held-out scorer's line
    (t_sim_held_out, iou_held_out: no paper number) when the summary has one for that run."""
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
                ref = rows.get(row)
                ref = ref.get(dataset) if isinstance(ref, dict) else ref
                record = {"paper_row": row, "dataset": dataset, "metric": metric, "paper": value,
                          "paper_std": std, "ours_method": ref or "", "note": ROW_NOTES.get(row, "")}
                record.update(_ours(summary, ref, dataset, metric))
                if record["status"] == "not configured" and row in REFERENCE_ONLY_ROWS:
                    record["status"] = "not reproducible"
                paper_scale = PAPER_CLIP_SCALE.get(paper)
                if record["status"] == "ok" and paper_scale and metric in ("t_sim", "i_sim") and scale != paper_scale:
                    record["status"] = "other scale"
                out.append(record)
                held_out = _ours(summary, ref, dataset, metric + HELD_OUT_SUFFIX)
                if held_out["status"] == "ok":
                    out.append({**record, **held_out, "metric": metric + HELD_OUT_SUFFIX, "paper": math.nan,
                                "paper_std": math.nan, "note": f"{HELD_OUT_NOTES.get(metric, HELD_OUT_CLIP_NOTE)}: "
                                                               "no paper number"})
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
