from ctrlbench.jobs import job_config, logged
from ctrlbench.prompts.llm import llm_prompts_for_shard

p = snakemake.params
with logged(snakemake.log[0], threads=snakemake.threads):
    llm_prompts_for_shard(snakemake.input.shard, snakemake.output[0], p.prompt, p.domain, p.cache,
                          job_config(p.runtime, p.models))
