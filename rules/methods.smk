# Generation by each method: one job per (dataset, method, parameter set, shard) that
# loads its model once and batches the whole shard. Outputs are shard folders holding
# the images, params.json and manifest.csv (written last).


rule generate_sd:
    input:
        prompts=method_prompts,
        model=method_model_inputs,
    output:
        directory(images_dir("{dataset}", "{method}", "{paramset}", "{shard}")),
    params:
        params=paramset_params,
        model_key=lambda wc: CONFIG["methods"][wc.method]["model"],
        models=lambda wc: {k: CONFIG["models"][k] for k in [CONFIG["methods"][wc.method]["model"]]},
        runtime=lambda wc: {k: CONFIG[k] for k in ("results_dir", "device", "dtype", "hub_offline")},
    wildcard_constraints:
        method=methods_of_kind("sd"),
    resources:
        gpu=1,
    conda:
        CONDA_ENV
    log:
        f"{RESULTS}/logs/generate/{{dataset}}/{{method}}/{{paramset}}/shard-{{shard}}.log",
    script:
        "../scripts/generate_sd.py"
