from ctrlbench.bases.retrieval import embed_gallery
from ctrlbench.jobs import job_config, logged

p = snakemake.params
with logged(snakemake.log[0], threads=snakemake.threads):
    embed_gallery(job_config(p.runtime, p.models), snakemake.wildcards.model, snakemake.input.gallery,
                  snakemake.output[0])
