"""The machine and versions a benchmark ran on, recorded with every result."""

from __future__ import annotations

import os
import platform
import sys
import time
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def machine_info() -> dict:
    sys.path.insert(0, str(ROOT))
    from ctrlbench.io import git_commit

    def version(name):
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else None
    return {"date": time.strftime("%Y-%m-%d %H:%M:%S %z"), "cpu_count": os.cpu_count(), "cpu_model": cpu,
            "load_average_at_start": os.getloadavg(), "platform": platform.platform(),
            "python": platform.python_version(), "torch": version("torch"), "diffusers": version("diffusers"),
            "snakemake": version("snakemake"), "git_commit": git_commit(ROOT)}
