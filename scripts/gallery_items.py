from ctrlbench.data.items import prepare_gallery
from ctrlbench.jobs import logged

p = snakemake.params
with logged(snakemake.log[0]):
    prepare_gallery(p.fmt, p.root, p.split, snakemake.output[0], p.layout)
