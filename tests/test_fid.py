"""FID / KID: torchmetrics against numpy/scipy and hand computations, the feature caches
on the tiny extractor, reference statistics reused, and the recorded flags."""

import numpy as np
import pandas as pd
import pytest
from conftest import fake_inception_weights
import torch
from PIL import Image

from ctrlbench.errors import ConfigError, InputError
from ctrlbench.metrics.embeddings import load_embeddings
from ctrlbench.metrics.fid import (
    FID_COLUMNS, embed_method_images_fid, embed_real_images_fid, fid_kid, frechet_distance,
    reference_stats, save_features,
)
from ctrlbench.models.loaders import load_fid_extractor, load_model

pytestmark = pytest.mark.filterwarnings("ignore:Metric `Kernel Inception Distance` will save")


# --- helpers ----------------------------------------------------------------------------

def write_cache(path, features, antialias=False, model="fid", extractor="test (d)", n_skipped=0):
    keys = pd.DataFrame({"item_id": [f"i{k}" for k in range(len(features))], "sample": 0,
                         "image": [f"i{k}.png" for k in range(len(features))]})
    save_features(path, keys, features, model, antialias=antialias, feature_extractor=extractor,
                  n_skipped=n_skipped)
    return str(path)


def scores(tmp_path, real, fake, name="run", shards=1, **kwargs):
    """fid_kid of `fake` against `real` via caches (split into `shards`) and a reference file."""
    real_npzs = [write_cache(tmp_path / f"{name}-real-{k}.npz", part)
                 for k, part in enumerate(np.array_split(real, shards))]
    fake_npzs = [write_cache(tmp_path / f"{name}-fake-{k}.npz", part)
                 for k, part in enumerate(np.array_split(fake, shards))]
    reference_stats(real_npzs, tmp_path / f"{name}-ref.npz", "real")
    kwargs = {"model_key": "fid", "antialias": False, **kwargs}
    frame = fid_kid(tmp_path / f"{name}-ref.npz", fake_npzs, tmp_path / f"{name}.csv", **kwargs)
    return frame.set_index("metric")


def stats(x):
    x = np.asarray(x, np.float64)
    return x.mean(axis=0), np.cov(x, rowvar=False)


def dyadic(rng, n, d, scale=1.0):
    """float32-exact features (multiples of 1/8), so the caches store them without rounding."""
    return (rng.integers(-16, 17, size=(n, d)) / 8 * scale).astype(np.float32)


def hand_kid(x, y):
    """Unbiased polynomial-kernel MMD^2 (degree 3, gamma 1/d, coef 1), as Binkowski et al.'s
    'unbiased' estimator: k_xx and k_yy without their diagonals, all of k_xy."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    m, d = x.shape

    def kernel(a, b):
        return (a @ b.T / d + 1) ** 3

    kxx, kyy, kxy = kernel(x, x), kernel(y, y), kernel(x, y)
    off = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
    return off - 2 * kxy.sum() / m**2


def save_png(path, size, seed):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)


def image_folder(folder, sizes, seed=0):
    """A method's shard folder: images of the given (w, h) sizes and a manifest in a
    non-sorted order."""
    folder.mkdir(parents=True)
    rows = []
    for k, size in enumerate(sizes):
        name = f"img{k}.png"
        save_png(folder / name, size, seed + k)
        rows.append({"item_id": f"item{(7 * k) % len(sizes)}", "sample": k % 2, "image": name})
    pd.DataFrame(rows).to_csv(folder / "manifest.csv", index=False)
    return pd.DataFrame(rows)


# --- FID against numpy / scipy -------------------------------------------------------------

@pytest.mark.parametrize("n_real, n_fake, d", [(50, 60, 8), (300, 200, 32), (40, 40, 3),
                                               (10, 12, 64), (5, 5, 32)])
def test_torchmetrics_fid_equals_scipy_frechet_distance(tmp_path, n_real, n_fake, d):
    rng = np.random.default_rng(n_real + d)
    real = rng.normal(size=(n_real, d)).astype(np.float32)
    fake = (rng.normal(size=(n_fake, d)) @ rng.normal(size=(d, d)) * 0.5 + 0.3).astype(np.float32)
    frame = scores(tmp_path, real, fake, kid_subset_size=4, kid_subsets=3)
    expected = frechet_distance(*stats(real), *stats(fake))
    # n <= d (last two cases): the covariances are singular (rank n - 1). torchmetrics takes
    # sqrt of the eigenvalues of sigma1 @ sigma2 (real part), scipy sqrtm of the product
    # (tiny imaginary parts dropped); both agree to ~1e-8 relative and the value is finite,
    # but it is a biased estimate, which the row's note says.
    assert frame.loc["fid", "value"] == pytest.approx(expected, rel=1e-6)
    assert np.isfinite(frame.loc["fid", "value"])
    assert ("singular covariance" in frame.loc["fid", "note"]) == (min(n_real, n_fake) <= d)


def test_identical_sets_give_zero_fid(tmp_path):
    features = np.random.default_rng(1).normal(size=(80, 16)).astype(np.float32)
    frame = scores(tmp_path, features, features.copy(), kid_subset_size=80, kid_subsets=1)
    trace = np.trace(stats(features)[1])
    assert abs(frame.loc["fid", "value"]) < 1e-9 * trace
    # KID keeps k(x, x) in the cross term, so a set against itself is slightly negative, not 0.
    assert frame.loc["kid", "value"] == pytest.approx(hand_kid(features, features), rel=1e-10)
    assert -0.5 < frame.loc["kid", "value"] < 0


def test_shifted_means_give_squared_shift(tmp_path):
    rng = np.random.default_rng(2)
    real = dyadic(rng, 64, 12)
    shift = (rng.integers(-8, 9, size=12) / 4).astype(np.float32)
    frame = scores(tmp_path, real, real + shift)  # same covariance, exactly in float32
    assert frame.loc["fid", "value"] == pytest.approx(float(shift.astype(np.float64) @ shift), rel=1e-9)


# --- KID -------------------------------------------------------------------------------

def test_kid_equals_hand_unbiased_poly_mmd(tmp_path):
    rng = np.random.default_rng(3)
    real = rng.normal(size=(30, 10)).astype(np.float32)
    fake = (rng.normal(size=(30, 10)) * 1.5 + 0.4).astype(np.float32)
    frame = scores(tmp_path, real, fake, kid_subset_size=30, kid_subsets=1)
    kid = frame.loc["kid"]
    assert kid["value"] == pytest.approx(hand_kid(real, fake), rel=1e-10)
    assert kid["std"] == 0 and kid["kid_subset_size"] == 30 and kid["kid_subsets"] == 1
    assert "whole of both sets" in kid["note"]
    # A configured subset larger than the sets is cut to the sample count and said so.
    frame = scores(tmp_path, real, fake, name="big", kid_subset_size=1000, kid_subsets=2)
    kid = frame.loc["kid"]
    assert kid["kid_subset_size"] == 30 and kid["kid_subsets"] == 2
    assert "kid_subset_size 1000 > images available: used 30" in kid["note"]
    assert kid["value"] == pytest.approx(hand_kid(real, fake), rel=1e-10)  # any order of the whole sets


def test_kid_subsets_are_seeded(tmp_path):
    rng = np.random.default_rng(4)
    real = rng.normal(size=(40, 6)).astype(np.float32)
    fake = rng.normal(size=(25, 6)).astype(np.float32) + 0.3
    torch.manual_seed(123)
    a = scores(tmp_path, real, fake, name="a", kid_subset_size=10, kid_subsets=5, seed=7)
    torch.manual_seed(456)  # the global RNG does not matter ...
    b = scores(tmp_path, real, fake, name="b", kid_subset_size=10, kid_subsets=5, seed=7)
    c = scores(tmp_path, real, fake, name="c", kid_subset_size=10, kid_subsets=5, seed=8)
    assert a.loc["kid", "value"] == b.loc["kid", "value"] and a.loc["kid", "std"] == b.loc["kid", "std"]
    assert a.loc["kid", "value"] != c.loc["kid", "value"]  # ... the seed does
    assert a.loc["kid", "std"] > 0 and a.loc["kid", "note"] == ""
    # ... and the global RNG is left as it was.
    torch.manual_seed(9)
    expected = torch.rand(1)
    torch.manual_seed(9)
    scores(tmp_path, real, fake, name="d", kid_subset_size=10, kid_subsets=5, seed=7)
    assert torch.equal(torch.rand(1), expected)


@pytest.mark.parametrize("n_real, n_fake", [(10, 1), (1, 10), (10, 0)])
def test_fewer_than_two_images_give_nan_with_a_note(tmp_path, n_real, n_fake):
    rng = np.random.default_rng(5)
    frame = scores(tmp_path, rng.normal(size=(n_real, 4)).astype(np.float32),
                   rng.normal(size=(n_fake, 4)).astype(np.float32))
    for metric in ("fid", "kid"):
        row = frame.loc[metric]
        assert np.isnan(row["value"])
        assert f"at least 2 images on each side, got n_images={n_fake}, n_reference={n_real}" in row["note"]
    assert np.isnan(frame.loc["kid", "std"]) and pd.isna(frame.loc["kid", "kid_subset_size"])


# --- output rows -------------------------------------------------------------------------

def test_rows_record_implementation_and_flags(tmp_path):
    rng = np.random.default_rng(6)
    frame = scores(tmp_path, rng.normal(size=(20, 5)).astype(np.float32),
                   rng.normal(size=(20, 5)).astype(np.float32), kid_subset_size=8, kid_subsets=4)
    written = pd.read_csv(tmp_path / "run.csv", keep_default_na=False)
    assert list(written.columns) == FID_COLUMNS == list(frame.reset_index().columns)
    assert list(written["metric"]) == ["fid", "kid"]
    fid, kid = written.iloc[0], written.iloc[1]
    assert fid["implementation"].startswith("torchmetrics ") and fid["implementation"].endswith(
        "FrechetInceptionDistance")
    assert "KernelInceptionDistance (polynomial kernel degree 3, gamma 1/d, coef 1)" in kid["implementation"]
    for row in (fid, kid):
        assert row["dtype"] == "float64" and str(row["antialias"]) == "False" and row["scale"] == ""
        assert row["reference"] == "real" and row["feature_extractor"] == "test (d)"
        assert row["n_images"] == 20 and row["n_reference"] == 20
    assert fid["std"] == "" and fid["kid_subset_size"] == "" and fid["kid_subsets"] == ""
    assert kid["kid_subset_size"] == "8" and kid["kid_subsets"] == "4" and float(kid["std"]) > 0


def test_another_datasets_photos_are_named_as_the_reference(tmp_path):
    """GradOP+'s paintings are scored against another dataset's photos ("real:photos"): the
    shared reference file records "real", the rows the name the rule passes."""
    rng = np.random.default_rng(7)
    real, fake = rng.normal(size=(12, 4)).astype(np.float32), rng.normal(size=(12, 4)).astype(np.float32)
    default = scores(tmp_path, real, fake, name="own")
    named = scores(tmp_path, real, fake, name="photos", reference_name="real:photos")
    assert set(default["reference"]) == {"real"} and set(named["reference"]) == {"real:photos"}
    assert named["value"].tolist() == default["value"].tolist()  # the name changes, not the numbers


def test_another_datasets_photos_in_the_dag(tmp_path, default_config):
    """reference real:coco for the strokes: their FID reads COCO's real reference statistics,
    built by COCO's own reference job (the label real:coco: the test above)."""
    from conftest import dry_run

    default_config["evaluation"]["fid"]["reference"]["strokes"] = "real:coco"
    default_config["results_dir"] = str(tmp_path / "results")
    out = dry_run(tmp_path, default_config, [f"{tmp_path}/results/metrics/strokes/sdedit/strength=0.6/fid/set.csv"])
    assert out.returncode == 0, out.stderr[-3000:]
    fid_kid_job = out.stdout.split("rule fid_kid:")[1].split("rule ")[0]
    assert "results/cache/fid/fid/coco/reference/real.npz" in fid_kid_job
    assert "wildcards: model=fid, dataset=coco, reference=real" in out.stdout


def test_reference_must_match_the_images(tmp_path):
    rng = np.random.default_rng(7)
    real = write_cache(tmp_path / "real.npz", rng.normal(size=(10, 4)), antialias=True)
    fake = write_cache(tmp_path / "fake.npz", rng.normal(size=(10, 4)), antialias=True)
    other = write_cache(tmp_path / "other.npz", rng.normal(size=(10, 4)), antialias=False)
    reference_stats([real], tmp_path / "ref.npz", "real")
    with pytest.raises(InputError, match="antialias=True, not False"):
        fid_kid(tmp_path / "ref.npz", [fake], tmp_path / "out.csv", model_key="fid", antialias=False)
    with pytest.raises(InputError, match="model 'fid', not 'fid2'"):
        fid_kid(tmp_path / "ref.npz", [fake], tmp_path / "out.csv", model_key="fid2", antialias=True)
    with pytest.raises(InputError, match="mix antialias flags"):
        fid_kid(tmp_path / "ref.npz", [fake, other], tmp_path / "out.csv", model_key="fid", antialias=True)
    wide = write_cache(tmp_path / "wide.npz", rng.normal(size=(10, 6)), antialias=True)
    with pytest.raises(InputError, match="different feature sizes"):
        reference_stats([real, wide], tmp_path / "ref2.npz", "real")
    assert not (tmp_path / "out.csv").exists() and not (tmp_path / "ref2.npz").exists()


# --- feature caches on the tiny extractor ---------------------------------------------------

@pytest.fixture(scope="module")
def fid_config(tiny_config):
    return tiny_config("fid", {"fid": "fid_inception"})


def test_method_cache_keeps_manifest_order_and_mixed_sizes(fid_config, tmp_path):
    sizes = [(64, 64), (48, 80), (128, 128), (64, 64), (40, 40)]
    manifest = image_folder(tmp_path / "shard", sizes)
    out = tmp_path / "cache" / "shard-0.npz"
    embed_method_images_fid(fid_config, "fid", str(tmp_path / "shard"), str(out), batch_size=2)
    keys, features = load_embeddings(out)
    assert features.shape == (5, 64) and features.dtype == np.float32
    assert list(keys["item_id"]) == list(manifest["item_id"])
    assert list(keys["image"]) == list(manifest["image"]) and list(keys["sample"]) == list(manifest["sample"])
    assert keys["antialias"].tolist() == [False] * 5 and set(keys["feature_extractor"]) == {"tiny_conv (64)"}
    # Same features as one image at a time through the extractor (grouping by size is invisible).
    model = load_fid_extractor(fid_config, "fid", antialias=False)
    for row, name in enumerate(manifest["image"]):
        image = torch.from_numpy(np.array(Image.open(tmp_path / "shard" / name).convert("RGB")))
        with torch.no_grad():
            direct = model(image.permute(2, 0, 1)[None]).numpy()[0]
        np.testing.assert_allclose(features[row], direct, rtol=1e-5, atol=1e-6)


def test_antialias_changes_downscaled_features_and_is_recorded(fid_config, tmp_path):
    image_folder(tmp_path / "shard", [(128, 128), (96, 96)])
    embed_method_images_fid(fid_config, "fid", str(tmp_path / "shard"), str(tmp_path / "tf.npz"), antialias=False)
    embed_method_images_fid(fid_config, "fid", str(tmp_path / "shard"), str(tmp_path / "aa.npz"), antialias=True)
    keys_tf, tf = load_embeddings(tmp_path / "tf.npz")
    keys_aa, aa = load_embeddings(tmp_path / "aa.npz")
    assert keys_tf["antialias"].tolist() == [False, False] and keys_aa["antialias"].tolist() == [True, True]
    assert np.abs(tf - aa).max() > 1e-3  # noise downscaled 4x: aliasing vs low-pass filtering
    assert load_fid_extractor(fid_config, "fid", antialias=True).use_antialias is True
    assert load_fid_extractor(fid_config, "fid", antialias=False).use_antialias is False


def test_real_cache_skips_rows_without_image(fid_config, tmp_path):
    for k in range(3):
        save_png(tmp_path / f"real{k}.png", (50 + 10 * k, 60), 10 + k)
    items = pd.DataFrame({"item_id": ["a", "b", "c", "d"],
                          "image": [str(tmp_path / "real0.png"), "", str(tmp_path / "real2.png"),
                                    str(tmp_path / "real1.png")]})
    items.to_csv(tmp_path / "items.csv", index=False)
    embed_real_images_fid(fid_config, "fid", str(tmp_path / "items.csv"), str(tmp_path / "real.npz"))
    keys, features = load_embeddings(tmp_path / "real.npz")
    assert list(keys["item_id"]) == ["a", "c", "d"] and features.shape == (3, 64)
    with np.load(tmp_path / "real.npz") as data:
        assert int(data["n_skipped"]) == 1
    # A prompt-only shard: an empty cache with the feature size, every row counted.
    pd.DataFrame({"item_id": ["x", "y"], "image": ["", ""]}).to_csv(tmp_path / "none.csv", index=False)
    embed_real_images_fid(fid_config, "fid", str(tmp_path / "none.csv"), str(tmp_path / "none.npz"))
    keys, features = load_embeddings(tmp_path / "none.npz")
    assert len(keys) == 0 and features.shape == (0, 64)
    reference_stats([str(tmp_path / "real.npz"), str(tmp_path / "none.npz")], tmp_path / "ref.npz", "real")
    with np.load(tmp_path / "ref.npz") as ref:
        assert int(ref["n"]) == 3 and int(ref["n_skipped"]) == 3 and str(ref["antialias"]) == "False"
    image_folder(tmp_path / "shard", [(64, 64)] * 3)
    embed_method_images_fid(fid_config, "fid", str(tmp_path / "shard"), str(tmp_path / "m.npz"))
    frame = fid_kid(tmp_path / "ref.npz", [str(tmp_path / "m.npz")], tmp_path / "out.csv",
                    model_key="fid", antialias=False)
    assert "reference: 3 items without an image skipped" in frame.loc[0, "note"]


def test_reference_stats_are_reused_with_the_same_numbers(fid_config, tmp_path):
    """fid_kid reading a reference file built once == torchmetrics recomputed from the features."""
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance

    from ctrlbench.metrics.fid import CachedFeatures

    real_npzs, fake_npzs = [], []
    for shard in range(2):
        folder = tmp_path / f"real{shard}"
        image_folder(folder, [(64, 64), (72, 56), (32, 32), (64, 64)], seed=100 + 10 * shard)
        real_npzs.append(str(tmp_path / f"real{shard}.npz"))
        embed_method_images_fid(fid_config, "fid", str(folder), real_npzs[-1])
        folder = tmp_path / f"fake{shard}"
        image_folder(folder, [(48, 48), (64, 64), (80, 80)], seed=200 + 10 * shard)
        fake_npzs.append(str(tmp_path / f"fake{shard}.npz"))
        embed_method_images_fid(fid_config, "fid", str(folder), fake_npzs[-1])
    reference_stats(real_npzs, tmp_path / "ref.npz", "sd_panorama/default")
    frame = fid_kid(tmp_path / "ref.npz", fake_npzs, tmp_path / "out.csv", model_key="fid", antialias=False,
                    kid_subset_size=4, kid_subsets=10, seed=3).set_index("metric")

    real = np.concatenate([load_embeddings(p)[1] for p in real_npzs]).astype(np.float64)
    fake = np.concatenate([load_embeddings(p)[1] for p in fake_npzs]).astype(np.float64)
    with np.load(tmp_path / "ref.npz") as ref:
        np.testing.assert_array_equal(ref["features"], real.astype(np.float32))
        np.testing.assert_allclose(ref["mu"], real.mean(0), rtol=1e-12)
        np.testing.assert_allclose(ref["sigma"], np.cov(real, rowvar=False), rtol=1e-9, atol=1e-15)
        assert int(ref["n"]) == 8 and str(ref["reference"]) == "sd_panorama/default"
        assert str(ref["feature_extractor"]) == "tiny_conv (64)"
    fid = FrechetInceptionDistance(feature=CachedFeatures(64))
    kid = KernelInceptionDistance(feature=CachedFeatures(64), subset_size=4, subsets=10)
    for metric in (fid, kid):
        metric.update(torch.from_numpy(real), real=True)
        metric.update(torch.from_numpy(fake), real=False)
    torch.manual_seed(3)
    kid_mean, kid_std = kid.compute()
    assert frame.loc["fid", "value"] == pytest.approx(float(fid.compute()), rel=1e-12)
    assert frame.loc["kid", "value"] == pytest.approx(float(kid_mean), rel=1e-12)
    assert frame.loc["kid", "std"] == pytest.approx(float(kid_std), rel=1e-12)
    assert frame.loc["fid", "value"] == pytest.approx(frechet_distance(*stats(real), *stats(fake)), rel=1e-6)
    assert frame.loc["fid", "reference"] == "sd_panorama/default"
    assert frame.loc["fid", "n_images"] == 6 and frame.loc["fid", "n_reference"] == 8
    assert frame.loc["fid", "feature_extractor"] == "tiny_conv (64)"


def test_corrupt_image_names_the_file_and_writes_nothing(fid_config, tmp_path):
    image_folder(tmp_path / "shard", [(64, 64), (64, 64), (64, 64)])
    (tmp_path / "shard" / "img1.png").write_bytes(b"not a png at all")
    out = tmp_path / "cache" / "shard-0.npz"
    with pytest.raises(InputError, match=r"img1\.png cannot be read"):
        embed_method_images_fid(fid_config, "fid", str(tmp_path / "shard"), str(out))
    assert not out.exists() and not (out.parent.exists() and any(out.parent.iterdir()))
    (tmp_path / "shard" / "img1.png").unlink()
    with pytest.raises(InputError, match=r"img1\.png does not exist"):
        embed_method_images_fid(fid_config, "fid", str(tmp_path / "shard"), str(out))
    assert not out.exists()


def test_clip_image_embeddings_as_fid_features(tiny_config, tmp_path):
    """An open_clip model as FID extractor (the toy world's toy FID): the cache holds the
    CLIP's own normalised image embeddings, labelled as not Inception FID, and FID runs on them."""
    config = tiny_config("clipfid", {"clip": "open_clip"})
    manifest = image_folder(tmp_path / "shard", [(64, 64), (48, 80), (64, 64)])
    out = tmp_path / "shard-0.npz"
    embed_method_images_fid(config, "clip", str(tmp_path / "shard"), str(out), batch_size=2)
    keys, features = load_embeddings(out)
    clip = load_model(config, "clip")
    direct = clip.encode_images([Image.open(tmp_path / "shard" / name) for name in manifest["image"]]).numpy()
    assert features.shape == (3, clip.embed_dim)
    np.testing.assert_allclose(features, direct, atol=1e-5)
    assert set(keys["feature_extractor"]) == {f"open_clip image embeddings ({clip.embed_dim}) [tiny]; "
                                              "FD of CLIP features, not Inception FID"}
    reference_stats([str(out)], tmp_path / "ref.npz", "real")
    frame = fid_kid(tmp_path / "ref.npz", [str(out)], tmp_path / "fid.csv", model_key="clip", antialias=False)
    fid = frame.set_index("metric").loc["fid"]
    assert fid["value"] == pytest.approx(0.0, abs=1e-4) and "not Inception FID" in fid["feature_extractor"]


def test_load_fid_extractor_needs_an_fid_model(tmp_path):
    config = {"results_dir": str(tmp_path), "models": {"a": {"kind": "aesthetic", "source": "x.pth"}}}
    with pytest.raises(ConfigError, match="not fid_inception"):
        load_fid_extractor(config, "a", antialias=False)


def test_real_inception_takes_the_antialias_choice(tmp_path, monkeypatch):
    """The real route (random weights in torch-fidelity's layout stand in for the 92 MB file):
    the same flag reaches torchmetrics' NoTrainInceptionV3, and its label names the file."""
    from torchmetrics.image.fid import NoTrainInceptionV3

    path = fake_inception_weights(tmp_path, monkeypatch)
    config = {"results_dir": str(tmp_path), "hub_offline": True,
              "models": {"fid": {"kind": "fid_inception", "source": str(path)}}}
    image = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (1, 3, 600, 600), dtype=np.uint8))
    outputs = {}
    for flag in (False, True):
        model = load_fid_extractor(config, "fid", antialias=flag)
        assert isinstance(model, NoTrainInceptionV3) and model.use_antialias is flag
        assert model.feature_extractor == "inception-v3-compat pool3 (2048) [weights-inception-2015-12-05-6726825d.pth]"
        with torch.no_grad():
            outputs[flag] = model(image)
    assert outputs[False].shape == (1, 2048) and not torch.allclose(outputs[False], outputs[True])
