from ctrlbench.jobs import job_config, logged
from ctrlbench.methods.tcig import run_shard

p = snakemake.params
with logged(snakemake.log[0], threads=snakemake.threads):
    run_shard(job_config(p.runtime, p.models), p.sd_key, p.clip_key, p.segmenter_key, snakemake.input.prompts,
              snakemake.output[0], p.params, vqmodel_key=p.vqmodel_key, target_classes=p.target_classes)
