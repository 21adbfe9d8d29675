from ctrlbench.jobs import logged
from ctrlbench.toyworld.formats import make_toyworld

with logged(snakemake.log[0]):
    make_toyworld(snakemake.params.fmt, snakemake.output[0], **snakemake.params.options)
