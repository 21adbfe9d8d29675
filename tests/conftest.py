import copy
import os
from pathlib import Path

import pytest
import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def default_config():
    with open(ROOT / "config.yaml", encoding="utf-8") as fh:
        return copy.deepcopy(yaml.safe_load(fh))
