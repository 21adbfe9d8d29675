from ctrlbench.data.toy import make_toy
from ctrlbench.jobs import logged

with logged(snakemake.log[0]):
    make_toy(snakemake.params.fmt, snakemake.output[0], **snakemake.params.options)
