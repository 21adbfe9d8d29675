from ctrlbench.bases.retrieval import retrieve_shard
from ctrlbench.jobs import job_config, logged

p, i = snakemake.params, snakemake.input
with logged(snakemake.log[0], threads=snakemake.threads):
    retrieve_shard(job_config(p.runtime, p.models), p.model_key, p.params, i.prompts, i.gallery,
                   i.get("gallery_emb"), snakemake.output[0], items_csv=i.shard_items, dataset=snakemake.wildcards.dataset)
