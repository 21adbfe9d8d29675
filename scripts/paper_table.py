from ctrlbench.jobs import logged
from ctrlbench.report.papers import paper_table

p = snakemake.params
with logged(snakemake.log[0]):
    paper_table(p.paper, snakemake.input[0], snakemake.output[0], p.rows, p.datasets, p.scale)
