# Base images besides generation: retrieval of real train images, and selection (AS).


rule gallery_embeddings:
    input:
        gallery=f"{RESULTS}/data/{{dataset}}/gallery.csv",
        model=wildcard_model_inputs,
    output:
        f"{RESULTS}/cache/gallery/{{dataset}}/{{model}}.npz",
    params:
        models=wildcard_model_entry,
        runtime=runtime(),
    resources:
        gpu=1,
    conda:
        CONDA_ENV
    log:
        f"{RESULTS}/logs/gallery_embeddings/{{dataset}}/{{model}}.log",
    script:
        "../scripts/gallery_embeddings.py"


rule retrieve:
    input:
        unpack(retrieval_inputs),
    output:
        directory(images_dir("{dataset}", "{method}", "{paramset}", "{shard}")),
    params:
        params=paramset_params,
        model_key=lambda wc: CONFIG["methods"][wc.method]["model"],
        models=method_models,
        runtime=runtime(),
    wildcard_constraints:
        method=kinds_regex("methods", "retrieval"),
    resources:
        gpu=1,
    conda:
        CONDA_ENV
    log:
        f"{RESULTS}/logs/retrieve/{{dataset}}/{{method}}/{{paramset}}/shard-{{shard}}.log",
    script:
        "../scripts/retrieve.py"


rule select_bases:
    input:
        unpack(select_inputs),
    output:
        directory(images_dir("{dataset}", "{method}", "{paramset}", "{shard}")),
    params:
        params=paramset_params,
        candidates=lambda wc: [m for m, _ in cb_config.method_inputs(CONFIG, wc.method)],
    wildcard_constraints:
        method=kinds_regex("methods", "select"),
    conda:
        CONDA_ENV
    log:
        f"{RESULTS}/logs/select/{{dataset}}/{{method}}/{{paramset}}/shard-{{shard}}.log",
    script:
        "../scripts/select_bases.py"
