import pytest

from ctrlbench import config as cb_config
from ctrlbench.errors import ConfigError


def test_default_config_is_valid_and_defaults_are_filled(default_config):
    config = cb_config.validate(default_config)
    assert config["datasets"]["cub"]["max_items"] == 0  # schema default filled in
    assert config["hub_offline"] is True
    sets = cb_config.method_paramsets(config, "sd")
    assert sorted(sets) == ["guidance_scale=5.0", "guidance_scale=7.5"]
    assert sets["guidance_scale=5.0"]["guidance_scale"] == 5.0
    assert sets["guidance_scale=5.0"]["num_inference_steps"] == default_config["methods"]["sd"]["params"]["num_inference_steps"]


@pytest.mark.parametrize("mutate, fragment", [
    (lambda c: c.update(n_shard=3), "n_shard"),                                   # typo'd top-level key
    (lambda c: c.update(n_shards=0), "n_shards"),                                 # out of range
    (lambda c: c.update(n_shards="two"), "n_shards"),                             # wrong type
    (lambda c: c.update(device="gpu"), "device"),
    (lambda c: c.update(dtype="fp16"), "dtype"),
    (lambda c: c["datasets"]["cub"].update(format="imagenet"), "datasets.cub.format"),
    (lambda c: c["datasets"]["cub"].update(splt="test"), "splt"),
    (lambda c: c["models"]["sd"].update(kind="sdxl"), "models.sd.kind"),
    (lambda c: c["methods"]["sd"].update(model="sd2"), "unknown model 'sd2'"),
    (lambda c: c["methods"]["sd"].update(datasets=["imagenet"]), "unknown dataset 'imagenet'"),
    (lambda c: c["methods"]["sd"].update(prompts="llm"), "unknown prompt set 'llm'"),
    (lambda c: c["methods"]["sd"]["params"].update(num_steps=3), "num_steps"),
    (lambda c: c["methods"]["sd"]["params"].update(num_inference_steps="4"), "num_inference_steps"),
    (lambda c: c["methods"]["sd"]["params"].update(num_inference_steps=True), "num_inference_steps"),
    (lambda c: c["methods"]["sd"].update(sweep={"strength": [0.5]}), "strength"),
    (lambda c: c["methods"]["sd"].update(sweep={"guidance_scale": []}), "guidance_scale"),
    (lambda c: c["methods"]["sd"].update(sweep={"num_inference_steps": [2.5]}), "num_inference_steps"),
    (lambda c: c["methods"]["sd"].update(kind="dalle"), "methods.sd.kind"),
    (lambda c: c["evaluation"]["clip_score"].update(scale="percent"), "evaluation.clip_score.scale"),
    (lambda c: c["evaluation"]["clip_score"].update(model="nope"), "unknown model 'nope'"),
])
def test_bad_config_names_the_key(default_config, mutate, fragment):
    mutate(default_config)
    with pytest.raises(ConfigError) as info:
        cb_config.validate(default_config)
    assert fragment in str(info.value)


def test_load_reports_missing_and_invalid_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        cb_config.load(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("n_shards: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        cb_config.load(bad)


def test_ints_are_accepted_for_float_params(default_config):
    default_config["methods"]["sd"]["params"]["guidance_scale"] = 7
    default_config["methods"]["sd"]["sweep"] = {"guidance_scale": [3, 7.5]}
    config = cb_config.validate(default_config)
    sets = cb_config.method_paramsets(config, "sd")
    assert sorted(sets) == ["guidance_scale=3.0", "guidance_scale=7.5"]
    assert isinstance(sets["guidance_scale=3.0"]["guidance_scale"], float)


def test_device_and_dtype_resolution_on_cpu():
    import torch

    assert cb_config.resolve_device({"device": "cpu"}) == "cpu"
    assert cb_config.resolve_dtype({"dtype": "auto"}, "cpu") == torch.float32
    assert cb_config.resolve_dtype({"dtype": "auto"}, "cuda") == torch.float16
    assert cb_config.resolve_dtype({"dtype": "bfloat16"}, "cuda") == torch.bfloat16
    if not torch.cuda.is_available():
        assert cb_config.resolve_device({"device": "auto"}) == "cpu"
        with pytest.raises(ConfigError, match="no CUDA device"):
            cb_config.resolve_device({"device": "cuda:0"})
