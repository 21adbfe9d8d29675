"""Long texts in the CLIP text-image score: truncate vs chunked (ctrlbench.metrics.long_text)."""

import dataclasses
import math

import numpy as np
import pandas as pd
import pytest

from ctrlbench.errors import InputError
from ctrlbench.metrics import embeddings
from ctrlbench.metrics.clip_score import METRIC_COLUMNS, similarity_shard
from ctrlbench.metrics.embeddings import embed_prompts, load_embeddings, save_embeddings
from ctrlbench.metrics.long_text import (chunk_ids, content_ids, count_tokens, encode_chunk_rows,
                                         encode_chunked)
from ctrlbench.models.loaders import load_model

SHORT = "a small red bird with a black beak"
LONG = " ".join(f"a small bird number {k} with red wings" for k in range(20))  # ~150 tokens
OTHER_TAIL = LONG[:-40] + " and a huge blue whale swimming in the sea"


@pytest.fixture(scope="module")
def config(tiny_config):
    return tiny_config("long_text_clip", {"clip": "open_clip"})


@pytest.fixture(scope="module")
def clip(config):
    return load_model(config, "clip")


def test_long_text_is_split_into_75_token_chunks(clip):
    tok = clip.tokenizer
    ids = tok.encode(LONG)
    assert len(ids) > 2 * 75  # three chunks
    chunks = chunk_ids(tok, LONG)
    assert len(chunks) == math.ceil(len(ids) / 75) == count_tokens(tok, LONG)[1]
    assert count_tokens(tok, LONG)[0] == len(ids) and content_ids(tok, LONG) == ids
    contents = []
    for row in chunks:
        assert len(row) == 77 and row[0] == tok.sot_token_id
        end = row.index(tok.eot_token_id)
        assert set(row[end + 1:]) <= {0}
        contents += row[1:end]
    assert contents == ids
    # The first chunk is exactly open_clip's own (truncating) tokenisation.
    assert chunks[0] == tok([LONG])[0].tolist()
    assert chunk_ids(tok, "") == [[tok.sot_token_id, tok.eot_token_id] + [0] * 75]
    assert count_tokens(tok, "") == (0, 1)


def test_short_text_chunked_equals_truncate(clip):
    assert count_tokens(clip.tokenizer, SHORT)[1] == 1
    texts = [SHORT, "", LONG]  # a long text in the same batch must not change the others
    chunked = encode_chunked(clip, texts, batch_size=2)
    truncated = clip.encode_texts(texts).numpy()
    np.testing.assert_allclose(chunked[:2], truncated[:2], atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(chunked, axis=1), 1, atol=1e-6)


def test_truncate_ignores_the_tail_and_chunked_does_not(clip):
    tok = clip.tokenizer
    assert tok.encode(LONG)[:75] == tok.encode(OTHER_TAIL)[:75] and LONG != OTHER_TAIL
    truncated = clip.encode_texts([LONG, OTHER_TAIL]).numpy()
    np.testing.assert_allclose(truncated[0], truncated[1], atol=1e-6)
    chunked = encode_chunked(clip, [LONG, OTHER_TAIL])
    assert np.abs(chunked[0] - chunked[1]).max() > 1e-3


def test_chunked_embedding_is_the_token_weighted_mean(clip):
    tok = clip.tokenizer
    text = " ".join(["red bird"] * 50)  # 100 tokens: 75 + 25
    assert count_tokens(tok, text) == (100, 2)
    first, second = encode_chunk_rows(clip, chunk_ids(tok, text)).astype(np.float64)
    mean = 75 * first + 25 * second
    np.testing.assert_allclose(encode_chunked(clip, [text])[0], mean / np.linalg.norm(mean), atol=1e-6)


def _prompts_csv(tmp_path, texts):
    path = tmp_path / "prompts.csv"
    pd.DataFrame({"item_id": [f"i{k}" for k in range(len(texts))], "prompt": texts}).to_csv(path, index=False)
    return str(path)


def test_similarity_shard_labels_both_variants(config, clip, tmp_path):
    texts = [SHORT, LONG]
    embed_prompts(config, "clip", _prompts_csv(tmp_path, texts), str(tmp_path / "text.npz"),
                  batch_size=2, long_text=("truncate", "chunked"))
    keys, emb = load_embeddings(tmp_path / "text.npz")
    _, emb_chunked = load_embeddings(tmp_path / "text.npz", "emb_chunked")
    n_long = len(clip.tokenizer.encode(LONG))
    assert keys["n_tokens"].tolist() == [len(clip.tokenizer.encode(SHORT)), n_long]
    assert keys["n_chunks"].tolist() == [1, math.ceil(n_long / 75)]
    np.testing.assert_allclose(emb, clip.encode_texts(texts).numpy(), atol=1e-6)  # emb is unchanged

    rng = np.random.default_rng(0)
    images = rng.normal(size=(3, emb.shape[1]))
    images = (images / np.linalg.norm(images, axis=1, keepdims=True)).astype(np.float32)
    image_keys = pd.DataFrame({"item_id": ["i1", "i0", "i1"], "sample": [0, 0, 1], "image": ["a", "b", "c"]})
    save_embeddings(tmp_path / "img.npz", image_keys, images, "clip")
    save_embeddings(tmp_path / "real.npz", pd.DataFrame({"item_id": ["i0", "i1"], "image": ["r0", "r1"]}),
                    images[:2], "clip")
    frame = similarity_shard(str(tmp_path / "img.npz"), str(tmp_path / "real.npz"), str(tmp_path / "text.npz"),
                             str(tmp_path / "m.csv"), "hessel", "clip", long_text=("truncate", "chunked"))
    saved = pd.read_csv(tmp_path / "m.csv", dtype={"item_id": str})
    assert list(saved.columns) == METRIC_COLUMNS and len(frame) == 9
    rows = [1, 0, 1]  # text row of each image
    for metric, handling, text_emb in (("t_sim", "truncate", emb), ("t_sim_chunked", "chunked", emb_chunked)):
        got = saved[saved.metric == metric]
        assert (got.text_handling == handling).all() and (got.scale == "hessel").all()
        cos = (images.astype(np.float64) * text_emb[rows]).sum(axis=1)
        np.testing.assert_allclose(got.value, 2.5 * np.maximum(cos, 0), rtol=1e-6)
        assert got.text_tokens.tolist() == [n_long, len(clip.tokenizer.encode(SHORT)), n_long]
        assert got.text_chunks.tolist() == [math.ceil(n_long / 75), 1, math.ceil(n_long / 75)]
    i_sim = saved[saved.metric == "i_sim"]
    assert len(i_sim) == 3 and i_sim.text_tokens.isna().all() and i_sim.text_chunks.isna().all()
    # The default (truncate only) gives t_sim and i_sim, as before.
    default = similarity_shard(str(tmp_path / "img.npz"), None, str(tmp_path / "text.npz"),
                               str(tmp_path / "d.csv"), "hessel", "clip")
    assert set(default.metric) == {"t_sim"}


def test_chunked_without_chunked_cache_names_the_file(config, tmp_path):
    embed_prompts(config, "clip", _prompts_csv(tmp_path, [SHORT]), str(tmp_path / "text.npz"))
    _, emb = load_embeddings(tmp_path / "text.npz")
    save_embeddings(tmp_path / "img.npz", pd.DataFrame({"item_id": ["i0"], "sample": [0], "image": ["a"]}),
                    emb, "clip")
    with pytest.raises(InputError, match=r"text\.npz.*emb_chunked.*chunked"):
        similarity_shard(str(tmp_path / "img.npz"), None, str(tmp_path / "text.npz"), str(tmp_path / "m.csv"),
                         "cos01", "clip", long_text=("truncate", "chunked"))
    assert not (tmp_path / "m.csv").exists()
    with pytest.raises(ValueError, match="long_text"):
        similarity_shard(str(tmp_path / "img.npz"), None, str(tmp_path / "text.npz"), str(tmp_path / "m.csv"),
                         "cos01", "clip", long_text=("first77",))


def test_tokenizer_that_is_not_clip_bpe_refuses_to_chunk(config, clip, tmp_path, monkeypatch):
    from open_clip.tokenizer import HFTokenizer

    from ctrlbench.models.clip_tokenizer import build_clip_tokenizer

    build_clip_tokenizer(tmp_path / "tok")
    hf_clip = dataclasses.replace(clip, tokenizer=HFTokenizer(str(tmp_path / "tok")))
    with pytest.raises(InputError, match="HFTokenizer.*cannot be chunked"):
        encode_chunked(hf_clip, [SHORT])
    monkeypatch.setattr(embeddings, "_load_clip", lambda config, key: hf_clip)
    prompts = _prompts_csv(tmp_path, [SHORT, LONG])
    with pytest.raises(InputError, match="HFTokenizer"):
        embed_prompts(config, "clip", prompts, str(tmp_path / "c.npz"), long_text=("chunked",))
    # Truncate alone still works; the token counts are unknown (NaN) for such a tokenizer.
    embed_prompts(config, "clip", prompts, str(tmp_path / "t.npz"))
    keys, emb = load_embeddings(tmp_path / "t.npz")
    assert emb.shape[0] == 2 and keys["n_tokens"].isna().all() and keys["n_chunks"].isna().all()
