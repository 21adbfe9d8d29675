from ctrlbench.jobs import logged
from ctrlbench.metrics.clip_score import similarity_shard

i, p = snakemake.input, snakemake.params
with logged(snakemake.log[0]):
    similarity_shard(i.images, i.get("real"), i.text, snakemake.output[0], p.scale,
                     p.model_key, tuple(p.long_text), p.suffix)
