import numpy as np
import pandas as pd
import pytest
import torch

from ctrlbench.errors import InputError
from ctrlbench.metrics.aesthetic import AESTHETIC_COLUMNS, aesthetic_shard
from ctrlbench.metrics.embeddings import save_embeddings
from ctrlbench.models.loaders import AestheticMLP


def _keys(n):
    return pd.DataFrame({"item_id": [f"it{i // 2}" for i in range(n)], "sample": [i % 2 for i in range(n)],
                         "image": [f"it{i // 2}_{i % 2:02d}.png" for i in range(n)]})


def _unit(rows, dim, seed=0):
    x = np.random.default_rng(seed).normal(size=(rows, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _head_config(tmp_path, state, key="aes"):
    path = tmp_path / f"{key}.pth"
    torch.save(state, path)
    return {"results_dir": str(tmp_path), "device": "cpu", "dtype": "float32", "hub_offline": True,
            "models": {key: {"kind": "aesthetic", "source": str(path)}}}


def _effective_affine(state):
    """The MLP has no activations: fold its linear layers into one map w @ x + b."""
    w, b = None, None
    for index in (0, 2, 4, 6, 7):
        weight = state[f"layers.{index}.weight"].double().numpy()
        bias = state[f"layers.{index}.bias"].double().numpy()
        w, b = (weight, bias) if w is None else (weight @ w, weight @ b + bias)
    return w.reshape(-1), b.item()


def test_hand_set_identity_chain(tmp_path):
    # Identity blocks pass the 4-d embedding through to the last layer: score = c @ x + 5.
    model = AestheticMLP(input_dim=4)
    with torch.no_grad():
        for index in (0, 2, 4, 6):
            layer = model.layers[index]
            layer.weight.zero_()
            layer.bias.zero_()
            layer.weight[:4, :4] = torch.eye(4)
        model.layers[7].weight.zero_()
        model.layers[7].weight[0, :4] = torch.tensor([1.0, 2.0, 3.0, 4.0])
        model.layers[7].bias.fill_(5.0)
    config = _head_config(tmp_path, model.state_dict())
    emb = np.array([[1, 0, 0, 0], [0, 0, 0, 1], [0.6, 0.8, 0, 0], [0.5, 0.5, 0.5, 0.5]], np.float32)
    save_embeddings(tmp_path / "c.npz", _keys(4), emb, "clip")
    out = aesthetic_shard(config, "aes", str(tmp_path / "c.npz"), str(tmp_path / "a.csv"), "clip")
    np.testing.assert_allclose(out["value"], [6.0, 9.0, 0.6 + 1.6 + 5, 5.0 + 5], rtol=0, atol=1e-5)
    written = pd.read_csv(tmp_path / "a.csv", dtype={"item_id": str})
    assert list(written.columns) == AESTHETIC_COLUMNS
    assert set(written["metric"]) == {"aesthetic"} and set(written["scale"]) == {"laion_v2"}
    assert set(written["model"]) == {"aes"}
    assert written[["item_id", "sample", "image"]].equals(_keys(4))


def test_random_weights_equal_folded_affine_map(tmp_path):
    torch.manual_seed(3)
    model = AestheticMLP(input_dim=8)
    state = model.state_dict()
    config = _head_config(tmp_path, state)
    emb = _unit(6, 8)
    save_embeddings(tmp_path / "c.npz", _keys(6), emb, "clip")
    out = aesthetic_shard(config, "aes", str(tmp_path / "c.npz"), str(tmp_path / "a.csv"), "clip")
    w, b = _effective_affine(state)
    np.testing.assert_allclose(out["value"], emb.astype(np.float64) @ w + b, rtol=1e-5, atol=1e-6)


def test_dim_mismatch_names_both_models(tmp_path):
    config = _head_config(tmp_path, AestheticMLP(input_dim=16).state_dict(), key="laion")
    save_embeddings(tmp_path / "c.npz", _keys(2), _unit(2, 8), "clip_b32")
    with pytest.raises(InputError, match=r"'laion' takes 16-d.*'clip_b32' holds 8-d"):
        aesthetic_shard(config, "laion", str(tmp_path / "c.npz"), str(tmp_path / "a.csv"), "clip_b32")
    assert not (tmp_path / "a.csv").exists()


def test_not_normalised_cache_is_an_error(tmp_path):
    config = _head_config(tmp_path, AestheticMLP(input_dim=8).state_dict())
    emb = _unit(3, 8)
    emb[1] *= 1.01
    save_embeddings(tmp_path / "c.npz", _keys(3), emb, "clip")
    with pytest.raises(InputError, match=r"not L2-normalised.*row 1 has norm 1.01"):
        aesthetic_shard(config, "aes", str(tmp_path / "c.npz"), str(tmp_path / "a.csv"), "clip")


def test_cache_of_another_clip_model_is_an_error(tmp_path):
    config = _head_config(tmp_path, AestheticMLP(input_dim=8).state_dict())
    save_embeddings(tmp_path / "c.npz", _keys(2), _unit(2, 8), "clip_b32")
    with pytest.raises(InputError, match="written with model 'clip_b32', not 'clip_l14'"):
        aesthetic_shard(config, "aes", str(tmp_path / "c.npz"), str(tmp_path / "a.csv"), "clip_l14")


def test_empty_cache_gives_empty_csv(tmp_path):
    # No model is loaded for an empty shard (the source does not even exist).
    config = {"results_dir": str(tmp_path), "device": "cpu", "dtype": "float32",
              "models": {"aes": {"kind": "aesthetic", "source": str(tmp_path / "missing.pth")}}}
    save_embeddings(tmp_path / "c.npz", _keys(0), np.zeros((0, 0), np.float32), "clip")
    out = aesthetic_shard(config, "aes", str(tmp_path / "c.npz"), str(tmp_path / "a.csv"), "clip")
    assert len(out) == 0
    assert (tmp_path / "a.csv").read_text().strip() == ",".join(AESTHETIC_COLUMNS)


def test_tiny_model_end_to_end(tiny_config, tmp_path):
    config = tiny_config("aes", {"aesthetic": "aesthetic"})
    emb = _unit(4, 32, seed=1)  # the tiny CLIP's embed_dim
    save_embeddings(tmp_path / "c.npz", _keys(4), emb, "clip")
    out = aesthetic_shard(config, "aesthetic", str(tmp_path / "c.npz"), str(tmp_path / "a.csv"), "clip")
    assert len(out) == 4 and np.isfinite(out["value"]).all()
    state = torch.load(f"{config['results_dir']}/models/tiny/aesthetic/aesthetic_mlp.pth", weights_only=True)
    w, b = _effective_affine(state)
    np.testing.assert_allclose(out["value"], emb.astype(np.float64) @ w + b, rtol=1e-5, atol=1e-6)
    aesthetic_shard(config, "aesthetic", str(tmp_path / "c.npz"), str(tmp_path / "b.csv"), "clip")
    assert (tmp_path / "a.csv").read_bytes() == (tmp_path / "b.csv").read_bytes()
