from ctrlbench.jobs import job_config, logged
from ctrlbench.metrics.clip_score import score_shard

p = snakemake.params
with logged(snakemake.log[0], threads=snakemake.threads):
    score_shard(job_config(p.runtime, p.models), p.metric, snakemake.input.images, snakemake.output[0])
