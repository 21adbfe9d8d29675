from ctrlbench.jobs import logged
from ctrlbench.report.plots import sweep_plots

with logged(snakemake.log[0]):
    sweep_plots(snakemake.input[0], snakemake.output[0])
