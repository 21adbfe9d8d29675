import importlib

from ctrlbench.jobs import job_config, logged

p = snakemake.params
method = importlib.import_module(f"ctrlbench.methods.{p.kind}")  # sdedit | gradop
with logged(snakemake.log[0], threads=snakemake.threads):
    method.run_shard(job_config(p.runtime, p.models), p.model_key, snakemake.input.prompts,
                     snakemake.output[0], p.params)
