from ctrlbench.jobs import logged
from ctrlbench.toyworld.claims import write_claims

p = snakemake.params
with logged(snakemake.log[0], threads=snakemake.threads):
    write_claims(snakemake.output[0], weights=p.settings["weights"], n=p.settings["n_items"],
                 which=tuple(p.settings["which"]), device=p.device)
