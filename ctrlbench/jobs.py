"""Glue for Snakemake `script:` entry points: logging and the per-job config.

Jobs receive only the config parts they use (through `params:`, so that Snakemake's
params trigger sees every parameter): `runtime` (results_dir, device, dtype,
hub_offline) and `models` (the entries of the models the job loads).
"""

from __future__ import annotations

import contextlib
import logging
import sys
import traceback
from pathlib import Path


def job_config(runtime: dict, models: dict) -> dict:
    return {**dict(runtime), "models": dict(models)}


@contextlib.contextmanager
def logged(log_path: str | None, threads: int | None = None):
    """Send logging, stdout and stderr of the job to its log file, and report
    ctrlbench errors as one clear line there and on the console.

    `threads` (the rule's) also fixes torch's thread count: CPU results differ in the
    last bits between thread counts, and byte-identical reruns need the same count."""
    if threads:
        import torch

        torch.set_num_threads(int(threads))
    if not log_path:
        yield
        return
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w", encoding="utf-8") as log_file:
        handler = logging.StreamHandler(log_file)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root = logging.getLogger()
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        old_out, old_err = sys.stdout, sys.stderr
        sys.stdout = sys.stderr = log_file
        try:
            yield
        except Exception as error:
            traceback.print_exc(file=log_file)
            sys.stdout, sys.stderr = old_out, old_err
            print(f"ctrlbench error: {error} (log: {log_path})", file=sys.stderr)
            raise
        finally:
            sys.stdout, sys.stderr = old_out, old_err
            root.removeHandler(handler)
