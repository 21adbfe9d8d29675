from ctrlbench.jobs import logged
from ctrlbench.metrics.fid import fid_kid

p = snakemake.params
with logged(snakemake.log[0]):
    fid_kid(snakemake.input.reference, list(snakemake.input.images), snakemake.output[0], model_key=p.model_key,
            antialias=p.antialias, kid_subset_size=p.kid_subset_size, kid_subsets=p.kid_subsets,
            reference_name=p.reference_name)
