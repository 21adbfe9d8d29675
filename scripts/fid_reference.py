from ctrlbench.jobs import logged
from ctrlbench.metrics.fid import reference_stats

with logged(snakemake.log[0]):
    reference_stats(list(snakemake.input), snakemake.output[0], snakemake.params.reference)
