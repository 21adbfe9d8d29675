from ctrlbench.jobs import logged
from ctrlbench.models.tiny import build_tiny

with logged(snakemake.log[0]):
    build_tiny(snakemake.params.kind, snakemake.output[0], seed=snakemake.params.seed)
