from ctrlbench.jobs import logged
from ctrlbench.metrics.faithfulness import faithfulness_shard

with logged(snakemake.log[0]):
    faithfulness_shard(snakemake.input.images, snakemake.input.inputs, snakemake.output[0],
                       snakemake.params.kernel, snakemake.params.sigma)
