from ctrlbench.bases.selection import select_shard
from ctrlbench.jobs import logged

i = snakemake.input
with logged(snakemake.log[0]):
    select_shard({m: i[f"dir_{m}"] for m in snakemake.params.candidates},
                 {m: i[f"emb_{m}"] for m in snakemake.params.candidates},
                 i.text, snakemake.output[0], snakemake.params.params)
