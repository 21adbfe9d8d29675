"""The demo config (config.yaml: the toy world with the trained models), cut to one method and
one claim so that it runs in about a minute: the DAG goes end to end in a temp dir and the
report opens with the Claims table. (The whole demo takes about 8 minutes: README.)"""

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
SNAKEMAKE = Path(sys.executable).parent / "snakemake"

pytestmark = pytest.mark.slow


def test_cut_demo_runs_end_to_end_with_the_claims_table_first(tmp_path):
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    config["datasets"] = {"strokes": config["datasets"]["strokes"]}
    config["methods"] = {"sd_strokes": config["methods"]["sd_strokes"]}
    config["evaluation"] = {"clip": config["evaluation"]["clip"]}
    config["claims"] = {"n_items": 8, "which": ["1"]}
    config["report"]["papers"] = {}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    (tmp_path / "ctrlbench").symlink_to(ROOT / "ctrlbench")  # the config names the weights relative to the clone
    result = subprocess.run([str(SNAKEMAKE), "--snakefile", str(ROOT / "Snakefile"), "--directory", str(tmp_path),
                             "--cores", "2"], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    claims = pd.read_csv(tmp_path / "results" / "tables" / "claims.csv")
    assert list(claims["claim"]) == ["1a", "1b"] and (claims["n"] == 8).all()
    page = (tmp_path / "results" / "report" / "index.html").read_text()
    assert page.index('id="claims"') < page.index('id="summary"')
    assert "mean nothing" not in page and "miniature world" in page
    summary = pd.read_csv(tmp_path / "results" / "tables" / "summary.csv")
    assert set(summary["method"]) == {"sd_strokes"} and "t_sim" in set(summary["metric"])
