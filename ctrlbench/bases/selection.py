"""Base selection (mmm2025 "AS"): per item, the candidate base image with the highest
CLIP text-image similarity `(cos+1)/2` to the item's prompt.

AS(l+t) takes the candidates of the template-SD and LLM-SD bases, AS-all adds the
retrieved real image. Candidates come as shard folders of other methods, together
with their CLIP embedding caches (ctrlbench.metrics.embeddings): every candidate image
was encoded once, not once per query as in the original code.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from .. import io
from ..errors import InputError
from ..metrics.embeddings import load_embeddings

MANIFEST_COLUMNS = ["item_id", "sample", "image", "prompt", "seed", "class_name", "source_image",
                    "selected_method", "selected_sample", "selected_image", "selection_score"]


def best_candidates(candidates: pd.DataFrame, cand_emb: np.ndarray, text_keys: pd.DataFrame,
                    text_emb: np.ndarray) -> pd.DataFrame:
    """For each item, the candidate row with the highest (cos+1)/2 to the item's text.

    Ties go to the first candidate in `candidates` order (method order of the config,
    then sample). Returns the chosen candidate rows with a `selection_score` column.
    """
    text_row = pd.Series(np.arange(len(text_keys)), index=text_keys["item_id"])
    missing = sorted(set(candidates["item_id"]) - set(text_row.index))
    if missing:
        raise InputError(f"no selection prompt for item(s) {', '.join(missing[:5])}")
    cos = (cand_emb.astype(np.float64) * text_emb[text_row.loc[candidates["item_id"]].to_numpy()]).sum(axis=1)
    scored = candidates.assign(selection_score=(cos + 1.0) / 2.0, order=np.arange(len(candidates)))
    best = scored.sort_values(["item_id", "selection_score", "order"], ascending=[True, False, True])
    return best.groupby("item_id", sort=True).head(1).drop(columns="order").reset_index(drop=True)


def select_shard(candidate_dirs: dict[str, str], candidate_npzs: dict[str, str], text_npz: str,
                 out_dir: str, params: dict) -> pd.DataFrame:
    """Write the chosen base image of every item of the shard (copied, bytes unchanged)."""
    frames, embs = [], []
    for method, folder in candidate_dirs.items():
        manifest = io.read_manifest(folder, what="candidate manifest")
        keys, emb = load_embeddings(candidate_npzs[method])
        if list(keys["image"]) != list(manifest["image"]):
            raise InputError(f"embedding cache {candidate_npzs[method]} does not match {folder}/manifest.csv: "
                             "rerun its clip_image_embeddings job")
        frames.append(manifest.assign(method=method, folder=folder))
        if len(manifest):
            embs.append(emb)
    candidates = pd.concat(frames, ignore_index=True)
    text_keys, text_emb = load_embeddings(text_npz)
    with io.atomic_dir(out_dir) as tmp:
        if len(candidates):
            chosen = best_candidates(candidates, np.concatenate(embs), text_keys, text_emb)
            prompts = dict(zip(text_keys["item_id"], text_keys["prompt"]))
            rows = []
            for row in chosen.itertuples(index=False):
                name = f"{io.safe_name(row.item_id)}_00{Path(row.image).suffix}"
                shutil.copyfile(Path(row.folder) / row.image, tmp / name)
                rows.append({"item_id": row.item_id, "sample": 0, "image": name, "prompt": prompts[row.item_id],
                             "seed": row.seed, "class_name": row.class_name, "source_image": row.source_image,
                             "selected_method": row.method, "selected_sample": row.sample,
                             "selected_image": row.image, "selection_score": row.selection_score})
            manifest = pd.DataFrame(rows, columns=MANIFEST_COLUMNS)
        else:
            manifest = pd.DataFrame(columns=MANIFEST_COLUMNS)
        io.write_json(tmp / "params.json", io.provenance(
            method="select", params=params, candidates=list(candidate_dirs), score="clip (cos+1)/2"))
        io.write_csv(tmp / "manifest.csv", manifest)
    return manifest
