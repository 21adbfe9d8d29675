from ctrlbench.jobs import logged
from ctrlbench.report.grids import make_grids

p = snakemake.params
with logged(snakemake.log[0]):
    make_grids(p.runs, snakemake.input.items_table, snakemake.output[0], max_items=p.max_items,
               max_samples=p.max_samples)
