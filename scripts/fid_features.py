from ctrlbench.jobs import job_config, logged
from ctrlbench.metrics import fid

p = snakemake.params
embed = {"images": fid.embed_method_images_fid, "real": fid.embed_real_images_fid}[p.what]
with logged(snakemake.log[0], threads=snakemake.threads):
    embed(job_config(p.runtime, p.models), snakemake.wildcards.model, snakemake.input.source,
          snakemake.output[0], p.batch_size, antialias=p.antialias)
