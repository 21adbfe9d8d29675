import copy
import os
from pathlib import Path

import pytest
import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

ROOT = Path(__file__).resolve().parent.parent
# The suite's fast config: every method and dataset kind with tiny random-weight models
# (the numbers mean nothing). The demo, config.yaml, runs on the trained toy world.
FAST_CONFIG = ROOT / "tests" / "configs" / "tiny.yaml"
DEMO_CONFIG = ROOT / "config.yaml"


@pytest.fixture
def default_config():
    with open(FAST_CONFIG, encoding="utf-8") as fh:
        return copy.deepcopy(yaml.safe_load(fh))


@pytest.fixture(scope="session")
def tiny_config(tmp_path_factory):
    """tiny_config(name, {model key: kind}) -> a CPU fp32 job config whose models are tiny
    random-weight builds under a fresh results dir (the layout the tiny_model rule writes)."""
    from ctrlbench.models.tiny import build_tiny

    def make(name: str, kinds: dict) -> dict:
        results = tmp_path_factory.mktemp(name)
        for key, kind in kinds.items():
            build_tiny(kind, results / "models" / "tiny" / key)
        return {"results_dir": str(results), "hub_offline": True, "device": "cpu", "dtype": "float32",
                "models": {key: {"kind": kind, "source": "tiny"} for key, kind in kinds.items()}}

    return make


def fake_inception_weights(tmp_path, monkeypatch):
    """A .pth in torch-fidelity's Inception layout with random weights (standing in for
    the 92 MB download): built once without loading any weights."""
    import io

    import torch
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
    from torchmetrics.image.fid import NoTrainInceptionV3

    with monkeypatch.context() as patch:
        patch.setattr(FeatureExtractorInceptionV3, "load_state_dict", lambda self, *a, **k: None)
        empty = io.BytesIO()
        torch.save({}, empty)
        empty.seek(0)
        state = NoTrainInceptionV3("inception-v3-compat", ["2048"], empty).state_dict()
    path = tmp_path / "weights-inception-2015-12-05-6726825d.pth"
    torch.save(state, path)
    return path


def dry_run(workdir, config: dict, targets: list[str]):
    """`snakemake -n` of `targets` with `config` (written to <workdir>/c.yaml): the
    CompletedProcess (its stdout lists every planned job with its wildcards and inputs)."""
    import subprocess
    import sys

    (Path(workdir) / "c.yaml").write_text(yaml.safe_dump(config))
    return subprocess.run([sys.executable, "-m", "snakemake", "-n", "--cores", "1", "--snakefile",
                           str(ROOT / "Snakefile"), "--configfile", str(Path(workdir) / "c.yaml"),
                           "--directory", str(workdir), *targets], capture_output=True, text=True)
