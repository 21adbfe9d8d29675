"""`snakemake --lint` finds nothing in the workflow but the one deliberate lint."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FAST_CONFIG = ROOT / "tests" / "configs" / "tiny.yaml"  # the fast config (tiny random models), as conftest
SNAKEMAKE = Path(sys.executable).parent / "snakemake"

# rules/common.smk extends PYTHONPATH on purpose (it is optional, so no `envvars:`).
DELIBERATE = {"Environment variable PYTHONPATH used but not asserted with envvars directive"}


@pytest.mark.parametrize("config", [ROOT / "config.yaml", FAST_CONFIG], ids=["demo", "fast"])
def test_snakemake_lint_reports_only_the_deliberate_pythonpath_lint(tmp_path, config):
    shutil.copy(config, tmp_path / "config.yaml")
    result = subprocess.run([str(SNAKEMAKE), "--snakefile", str(ROOT / "Snakefile"), "--directory", str(tmp_path),
                             "--lint"], capture_output=True, text=True, timeout=300)
    output = result.stdout + result.stderr
    lints = {re.sub(r" in line \d+\.?:$", "", line.strip()[2:]) for line in output.splitlines()
             if line.startswith("    * ")}
    assert DELIBERATE <= lints, output[-3000:]  # the check sees the lints at all
    assert lints == DELIBERATE, output[-3000:]
