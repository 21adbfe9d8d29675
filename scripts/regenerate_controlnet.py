from ctrlbench.jobs import job_config, logged
from ctrlbench.methods.controlnet import run_shard

p, i = snakemake.params, snakemake.input
with logged(snakemake.log[0], threads=snakemake.threads):
    run_shard(job_config(p.runtime, p.models), p.sd_key, p.controlnet_key, i.base, i.prompts,
              snakemake.output[0], p.params)
