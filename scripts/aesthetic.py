from ctrlbench.jobs import job_config, logged
from ctrlbench.metrics.aesthetic import aesthetic_shard

p = snakemake.params
with logged(snakemake.log[0], threads=snakemake.threads):
    aesthetic_shard(job_config(p.runtime, p.models), p.model_key, snakemake.input.embeddings,
                    snakemake.output[0], p.clip_key)
