from ctrlbench.jobs import job_config, logged
from ctrlbench.metrics import embeddings

p = snakemake.params
embed = {"images": embeddings.embed_method_images, "real": embeddings.embed_real_images,
         "prompts": embeddings.embed_prompts}[p.what]
# Only the prompt caches have a long_text variant (the text embeddings).
extra = {"long_text": tuple(p.long_text)} if p.what == "prompts" else {}
with logged(snakemake.log[0], threads=snakemake.threads):
    embed(job_config(p.runtime, p.models), snakemake.wildcards.model, snakemake.input.source,
          snakemake.output[0], p.batch_size, **extra)
