"""Base selection (AS), CLIP similarity metrics from the caches, summary and paper tables."""

import itertools

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from ctrlbench.bases.selection import best_candidates, select_shard
from ctrlbench.metrics.clip_score import scale_cosine, similarity_shard
from ctrlbench.metrics.embeddings import load_embeddings, open_rgb, save_embeddings
from ctrlbench.report.papers import MMM2025, mmm2025_table
from ctrlbench.report.tables import summarize, summarize_metric_files


def unit(rng, n, d=8):
    x = rng.normal(size=(n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_best_candidates_equals_brute_force():
    rng = np.random.default_rng(0)
    items = [f"i{k}" for k in range(20)]
    candidates = pd.DataFrame([{"item_id": i, "method": m, "sample": s}
                               for m in ("a", "b", "c") for i in items for s in range(2)])
    cand_emb = unit(rng, len(candidates))
    text_keys = pd.DataFrame({"item_id": items[::-1], "prompt": [f"p{i}" for i in items[::-1]]})
    text_emb = unit(rng, len(items))
    chosen = best_candidates(candidates, cand_emb, text_keys, text_emb).set_index("item_id")
    for k, item in enumerate(items):
        t = text_emb[items[::-1].index(item)]
        scores = [(float(cand_emb[r] @ t), r) for r in range(len(candidates)) if candidates.item_id[r] == item]
        best_score, best_row = max(scores, key=lambda x: (x[0], -x[1]))
        assert chosen.loc[item, "method"] == candidates.method[best_row]
        assert chosen.loc[item, "sample"] == candidates["sample"][best_row]
        assert chosen.loc[item, "selection_score"] == pytest.approx((best_score + 1) / 2)


def test_ties_go_to_the_first_candidate():
    candidates = pd.DataFrame({"item_id": ["x", "x"], "method": ["first", "second"], "sample": [0, 0]})
    emb = np.array([[1, 0], [1, 0]], np.float32)
    chosen = best_candidates(candidates, emb, pd.DataFrame({"item_id": ["x"]}), np.array([[1, 0]], np.float32))
    assert chosen["method"].tolist() == ["first"]


def _method_dir(tmp_path, name, items, samples, rng):
    folder = tmp_path / name
    folder.mkdir()
    rows = []
    for item, sample in itertools.product(items, range(samples)):
        image = f"{item}_{sample:02d}.png"
        Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(folder / image)
        rows.append({"item_id": item, "sample": sample, "image": image, "prompt": "p", "seed": 1,
                     "class_name": "c", "source_image": f"/real/{item}.jpg"})
    manifest = pd.DataFrame(rows)
    manifest.to_csv(folder / "manifest.csv", index=False)
    emb = unit(rng, len(manifest))
    save_embeddings(tmp_path / f"{name}.npz", manifest[["item_id", "sample", "image"]], emb, "clip")
    return folder, emb


def test_select_shard_copies_the_best_image_and_writes_manifest_last(tmp_path):
    rng = np.random.default_rng(1)
    items = ["a1", "b2", "c3"]
    dirs, embs = {}, {}
    for name, samples in (("sd_template", 2), ("retrieval", 1)):
        dirs[name], embs[name] = _method_dir(tmp_path, name, items, samples, rng)
    text_emb = unit(rng, 3)
    save_embeddings(tmp_path / "text.npz", pd.DataFrame({"item_id": items, "prompt": ["x", "y", "z"]}), text_emb, "clip")
    out = tmp_path / "as_all"
    manifest = select_shard({k: str(v) for k, v in dirs.items()},
                            {k: str(tmp_path / f"{k}.npz") for k in dirs}, str(tmp_path / "text.npz"), str(out), {})
    assert sorted(manifest["item_id"]) == items and (out / "manifest.csv").exists()
    for row in manifest.itertuples():
        source = dirs[row.selected_method] / row.selected_image
        assert (out / row.image).read_bytes() == source.read_bytes()  # copied unchanged
        k = items.index(row.item_id)
        all_scores = [(embs[m][r] @ text_emb[k]) for m in dirs for r in range(len(embs[m]))
                      if pd.read_csv(dirs[m] / "manifest.csv").item_id[r] == row.item_id]
        assert row.selection_score == pytest.approx((max(all_scores) + 1) / 2, abs=1e-6)


def test_selection_rejects_a_stale_embedding_cache(tmp_path):
    rng = np.random.default_rng(2)
    folder, _ = _method_dir(tmp_path, "m", ["a"], 2, rng)
    save_embeddings(tmp_path / "m.npz", pd.DataFrame({"item_id": ["a"], "sample": [0], "image": ["other.png"]}),
                    unit(rng, 1), "clip")
    save_embeddings(tmp_path / "t.npz", pd.DataFrame({"item_id": ["a"], "prompt": ["p"]}), unit(rng, 1), "clip")
    with pytest.raises(Exception, match="does not match"):
        select_shard({"m": str(folder)}, {"m": str(tmp_path / "m.npz")}, str(tmp_path / "t.npz"),
                     str(tmp_path / "out"), {})
    assert not (tmp_path / "out").exists()


def test_similarity_metrics_from_caches(tmp_path):
    rng = np.random.default_rng(3)
    keys = pd.DataFrame({"item_id": ["a", "a", "b"], "sample": [0, 1, 0], "image": ["a0", "a1", "b0"]})
    emb = unit(rng, 3)
    real, text = unit(rng, 2), unit(rng, 2)
    save_embeddings(tmp_path / "img.npz", keys, emb, "clip")
    save_embeddings(tmp_path / "real.npz", pd.DataFrame({"item_id": ["b", "a"], "image": ["rb", "ra"]}), real, "clip")
    save_embeddings(tmp_path / "text.npz", pd.DataFrame({"item_id": ["a", "b"], "prompt": ["pa", "pb"]}), text, "clip")
    frame = similarity_shard(str(tmp_path / "img.npz"), str(tmp_path / "real.npz"), str(tmp_path / "text.npz"),
                             str(tmp_path / "m.csv"), "cos01", "clip")
    t = frame[frame.metric == "t_sim"].value.to_numpy()
    i = frame[frame.metric == "i_sim"].value.to_numpy()
    np.testing.assert_allclose(t, 100 * (np.array([emb[0] @ text[0], emb[1] @ text[0], emb[2] @ text[1]]) + 1) / 2, rtol=1e-6)
    np.testing.assert_allclose(i, 100 * (np.array([emb[0] @ real[1], emb[1] @ real[1], emb[2] @ real[0]]) + 1) / 2, rtol=1e-6)
    assert (pd.read_csv(tmp_path / "m.csv").scale == "cos01").all()


def test_clip_scales_on_known_cosines():
    cos = np.array([-1.0, 0.0, 0.3, 1.0])
    np.testing.assert_allclose(scale_cosine(cos, "cos01"), [0, 50, 65, 100])
    np.testing.assert_allclose(scale_cosine(cos, "clip100"), [0, 0, 30, 100])
    np.testing.assert_allclose(scale_cosine(cos, "hessel"), [0, 0, 0.75, 2.5])
    with pytest.raises(ValueError, match="unknown CLIP score scale"):
        scale_cosine(cos, "percent")


def test_embeddings_cache_round_trip_and_image_conversion(tmp_path):
    keys = pd.DataFrame({"item_id": ["007", "x"], "sample": [0, 1], "image": ["a.png", "b.png"]})
    save_embeddings(tmp_path / "c.npz", keys, np.eye(2), "clip")
    back, emb = load_embeddings(tmp_path / "c.npz")
    assert back["item_id"].tolist() == ["007", "x"] and emb.dtype == np.float32
    for mode, array in (("L", np.zeros((4, 4), np.uint8)), ("RGBA", np.zeros((4, 4, 4), np.uint8)),
                        ("I;16", np.full((4, 4), 40000, np.uint16))):
        path = tmp_path / f"{mode.replace(';', '')}.png"
        Image.fromarray(array).save(path)
        assert Image.open(path).mode == mode
        assert open_rgb(path).mode == "RGB"
    Image.new("CMYK", (4, 4)).save(tmp_path / "cmyk.jpg")
    assert open_rgb(tmp_path / "cmyk.jpg").mode == "RGB"
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(Exception, match="broken.png"):
        open_rgb(tmp_path / "broken.png")


def _per_image():
    rows = []
    for item, values in (("a", [1.0, 3.0]), ("b", [2.0, 6.0])):
        for sample, value in enumerate(values):
            rows.append({"dataset": "cub", "method": "m", "paramset": "guidance_scale=5.0", "metric": "t_sim",
                         "scale": "cos01", "item_id": item, "sample": sample, "value": value})
    return pd.DataFrame(rows)


def test_summary_reports_mean_and_best_of_n():
    table = summarize(_per_image()).set_index("aggregate")
    assert table.loc["mean", "mean"] == pytest.approx(3.0) and table.loc["mean", "n"] == 4
    assert table.loc["best_of_n", "mean"] == pytest.approx(4.5) and table.loc["best_of_n", "n"] == 2
    assert table.loc["mean", "guidance_scale"] == "5.0"


def test_summary_best_of_n_is_over_samples_not_panorama_crops():
    crops = pd.DataFrame([{"dataset": "p", "method": "panorama", "paramset": "default", "metric": "t_sim",
                           "scale": "cos01", "item_id": "a", "sample": 0, "value": v} for v in (1.0, 5.0, 3.0)])
    table = summarize(crops)
    assert list(table["aggregate"]) == ["mean"]  # one sample: no best_of_n among its crops
    two = pd.concat([crops, crops.assign(sample=1, value=crops["value"] + 1)])
    best = summarize(two).set_index("aggregate").loc["best_of_n"]
    assert best["mean"] == pytest.approx(4.0) and best["n"] == 1  # the better sample's crop mean


def test_summary_takes_set_level_files_beside_per_image_ones(tmp_path):
    """FID/KID files (one value per run, no item_id) become aggregate "set" rows."""
    run = tmp_path / "metrics" / "cub" / "sd" / "guidance_scale=5.0"
    (run / "fid").mkdir(parents=True)
    (run / "clip").mkdir()
    pd.DataFrame([{"metric": "fid", "value": 12.5, "std": np.nan, "n_images": 8, "n_reference": 20,
                   "reference": "real", "scale": np.nan},
                  {"metric": "kid", "value": 0.01, "std": 0.002, "n_images": 8, "n_reference": 20,
                   "reference": "real", "scale": np.nan}]).to_csv(run / "fid" / "set.csv", index=False)
    _per_image().drop(columns=["dataset", "method", "paramset"]).to_csv(run / "clip" / "shard-000.csv", index=False)
    table = summarize_metric_files([str(run / "fid" / "set.csv"), str(run / "clip" / "shard-000.csv")],
                                   str(tmp_path / "summary.csv"))
    sets = table[table["aggregate"] == "set"].set_index("metric")
    assert sets.loc["fid", "mean"] == 12.5 and sets.loc["fid", "n"] == 8 and np.isnan(sets.loc["fid", "std"])
    assert sets.loc["kid", "std"] == 0.002 and np.isnan(sets.loc["kid", "ci95_low"])
    assert (sets["guidance_scale"] == "5.0").all() and (sets["method"] == "sd").all()
    assert set(table[table["aggregate"] != "set"]["metric"]) == {"t_sim"}
    assert list(table["metric"]) == sorted(table["metric"])  # rows of a run stay together, by metric


def test_paper_table_puts_ours_beside_the_paper(tmp_path):
    summary = summarize(_per_image().assign(method="sd_template", paramset="default"))
    summary.to_csv(tmp_path / "summary.csv", index=False)
    table = mmm2025_table(str(tmp_path / "summary.csv"), str(tmp_path / "paper.csv"),
                          {"template + SD": "sd_template/default", "retrieval": "retrieval/default"},
                          {"cub": "cub"}, "cos01")
    assert len(table) == len(MMM2025) * 2 * 2  # rows x (cub, flowers) x (t_sim, i_sim)
    row = table[(table.paper_row == "template + SD") & (table.dataset == "cub") & (table.metric == "t_sim")].iloc[0]
    assert row.paper == 60.72 and row.ours_mean == pytest.approx(3.0) and row.ours_best_of_n == pytest.approx(4.5)
    assert row.status == "ok"
    status = table.set_index(["paper_row", "dataset", "metric"])["status"]
    assert status[("retrieval", "cub", "t_sim")] == "not run"
    assert status[("AS-all", "cub", "t_sim")] == "not configured"
    assert status[("template + SD", "flowers", "t_sim")] == "not run"
    other = mmm2025_table(str(tmp_path / "summary.csv"), str(tmp_path / "p2.csv"),
                          {"template + SD": "sd_template/default"}, {"cub": "cub"}, "clip100")
    assert "other scale" in set(other.status)
    with pytest.raises(ValueError, match="unknown mmm2025 row"):
        mmm2025_table(str(tmp_path / "summary.csv"), str(tmp_path / "p3.csv"), {"nope": "x/default"}, {}, "cos01")
