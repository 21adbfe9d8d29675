from ctrlbench.jobs import logged
from ctrlbench.metrics.clip_score import similarity_shard

i = snakemake.input
with logged(snakemake.log[0]):
    similarity_shard(i.images, i.get("real"), i.text, snakemake.output[0], snakemake.params.scale,
                     snakemake.params.model_key, tuple(snakemake.params.long_text))
