from ctrlbench.jobs import logged
from ctrlbench.report.papers import mmm2025_table

p = snakemake.params
with logged(snakemake.log[0]):
    mmm2025_table(snakemake.input[0], snakemake.output[0], p.rows, p.datasets, p.scale)
