from ctrlbench.jobs import job_config, logged
from ctrlbench.metrics.iou import run_shard

p = snakemake.params
with logged(snakemake.log[0], threads=snakemake.threads):
    run_shard(job_config(p.runtime, p.models), p.model_key, snakemake.input.images, snakemake.output[0],
              batch_size=p.batch_size, metric=snakemake.wildcards.iou_metric)
