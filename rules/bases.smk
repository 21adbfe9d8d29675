# Base images besides generation: retrieval of real train images, and selection (AS).


rule gallery_embeddings:
    input:
        gallery=f"{RESULTS}/data/{{dataset}}/gallery.csv",
        model=lambda wc: model_inputs(CONFIG, wc.model),
    output:
        f"{RESULTS}/cache/gallery/{{dataset}}/{{model}}.npz",
    params:
        models=lambda wc: {wc.model: CONFIG["models"][wc.model]},
        runtime=runtime(),
    resources:
        gpu=1,
    conda:
        CONDA_ENV
    log:
        f"{RESULTS}/logs/gallery_embeddings/{{dataset}}/{{model}}.log",
    script:
        "../scripts/gallery_embeddings.py"


def retrieval_inputs(wildcards):
    after_items(wildcards.dataset)
    method = CONFIG["methods"][wildcards.method]
    inputs = {
        "prompts": prompts_shard(wildcards.dataset, method["prompts"], wildcards.shard),
        "shard_items": f"{RESULTS}/data/{wildcards.dataset}/shards/shard-{wildcards.shard}.csv",
        "gallery": f"{RESULTS}/data/{wildcards.dataset}/gallery.csv",
    }
    if PARAMSETS[wildcards.method][wildcards.paramset]["strategy"] == "text":
        inputs["gallery_emb"] = f"{RESULTS}/cache/gallery/{wildcards.dataset}/{method['model']}.npz"
    return inputs


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


def select_inputs(wildcards):
    method = CONFIG["methods"][wildcards.method]
    dirs = method_input_dirs(wildcards)
    embeddings = method_input_embeddings(wildcards)
    inputs = {f"dir_{name}": path for name, path in dirs.items()}
    inputs.update({f"emb_{name}": path for name, path in embeddings.items()})
    inputs["text"] = clip_prompts_cache(method["model"], wildcards.dataset, method["prompts"], wildcards.shard)
    return inputs


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
