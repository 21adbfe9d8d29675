from ctrlbench.jobs import job_config, logged

p = snakemake.params
with logged(snakemake.log[0], threads=snakemake.threads):
    config = job_config(p.runtime, p.models)
    if p.kind == "multidiffusion_regions":
        from ctrlbench.methods.multidiffusion import run_regions_shard

        run_regions_shard(config, p.model_key, snakemake.input.prompts, snakemake.output[0], p.params,
                          target_classes=p.target_classes)
    elif p.kind == "si":
        from ctrlbench.methods.si import run_shard

        run_shard(config, p.model_key, snakemake.input.prompts, snakemake.output[0], p.params,
                  inpaint_key=p.inpaint_key, target_classes=p.target_classes)
    else:
        from ctrlbench.methods.bld import run_shard

        run_shard(config, p.model_key, snakemake.input.prompts, snakemake.output[0], p.params,
                  target_classes=p.target_classes)
