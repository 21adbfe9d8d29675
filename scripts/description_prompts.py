from ctrlbench.jobs import logged
from ctrlbench.prompts.templates import description_prompts_for_shard

with logged(snakemake.log[0]):
    description_prompts_for_shard(snakemake.input.shard, snakemake.output[0], snakemake.params.prompt)
