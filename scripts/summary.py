from ctrlbench.jobs import logged
from ctrlbench.report.tables import summarize_metric_files

with logged(snakemake.log[0]):
    summarize_metric_files(snakemake.input, snakemake.output[0])
