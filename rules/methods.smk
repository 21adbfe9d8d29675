# Generation by each method: one job per (dataset, method, parameter set, shard) that
# loads its models once and batches the whole shard. Outputs are shard folders holding
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
        models=method_models,
        runtime=runtime(),
    wildcard_constraints:
        method=kinds_regex("methods", "sd"),
    resources:
        gpu=1,
    conda:
        CONDA_ENV
    log:
        f"{RESULTS}/logs/generate/{{dataset}}/{{method}}/{{paramset}}/shard-{{shard}}.log",
    script:
        "../scripts/generate_sd.py"


rule regenerate_controlnet:
    input:
        base=lambda wc: next(iter(method_input_dirs(wc).values())),
        prompts=method_prompts,
        model=method_model_inputs,
    output:
        directory(images_dir("{dataset}", "{method}", "{paramset}", "{shard}")),
    params:
        params=paramset_params,
        sd_key=lambda wc: CONFIG["methods"][wc.method]["model"],
        controlnet_key=lambda wc: CONFIG["methods"][wc.method]["controlnet"],
        models=method_models,
        runtime=runtime(),
    wildcard_constraints:
        method=kinds_regex("methods", "controlnet"),
    resources:
        gpu=1,
    conda:
        CONDA_ENV
    log:
        f"{RESULTS}/logs/generate/{{dataset}}/{{method}}/{{paramset}}/shard-{{shard}}.log",
    script:
        "../scripts/regenerate_controlnet.py"


# Guided synthesis (GradOP+ paper): SDEdit and GradOP+ on stroke paintings. Their input
# is the prompts shard, whose `image` column is the item's painting.
rule guided_synthesis:
    input:
        prompts=method_prompts,
        model=method_model_inputs,
    output:
        directory(images_dir("{dataset}", "{method}", "{paramset}", "{shard}")),
    params:
        kind=lambda wc: CONFIG["methods"][wc.method]["kind"],
        params=paramset_params,
        model_key=lambda wc: CONFIG["methods"][wc.method]["model"],
        models=method_models,
        runtime=runtime(),
    wildcard_constraints:
        method="|".join(kinds_regex("methods", kind) for kind in ("sdedit", "gradop")),
    resources:
        gpu=1,
    conda:
        CONDA_ENV
    log:
        f"{RESULTS}/logs/generate/{{dataset}}/{{method}}/{{paramset}}/shard-{{shard}}.log",
    script:
        "../scripts/guided_synthesis.py"


# TCIG: stage 1 (decoder latent optimised for CLIP + segmentation masks), stage 2 img2img.
# Its input is a caption-prompts shard, which keeps the COCO objects of each item.
rule generate_tcig:
    input:
        prompts=method_prompts,
        model=method_model_inputs,
    output:
        directory(images_dir("{dataset}", "{method}", "{paramset}", "{shard}")),
    params:
        params=paramset_params,
        sd_key=lambda wc: CONFIG["methods"][wc.method]["model"],
        clip_key=lambda wc: CONFIG["methods"][wc.method]["clip"],
        segmenter_key=lambda wc: CONFIG["methods"][wc.method]["segmenter"],
        vqmodel_key=lambda wc: CONFIG["methods"][wc.method].get("vqmodel"),
        target_classes=lambda wc: cb_config.target_classes(CONFIG, wc.dataset),
        models=method_models,
        runtime=runtime(),
    wildcard_constraints:
        method=kinds_regex("methods", "tcig"),
    resources:
        gpu=1,
    conda:
        CONDA_ENV
    log:
        f"{RESULTS}/logs/generate/{{dataset}}/{{method}}/{{paramset}}/shard-{{shard}}.log",
    script:
        "../scripts/generate_tcig.py"


# MultiDiffusion panorama: one wide image per prompt, plus square crops that the metrics
# score (the manifest lists the crops).
rule generate_panorama:
    input:
        prompts=method_prompts,
        model=method_model_inputs,
    output:
        directory(images_dir("{dataset}", "{method}", "{paramset}", "{shard}")),
    params:
        params=paramset_params,
        model_key=lambda wc: CONFIG["methods"][wc.method]["model"],
        models=method_models,
        runtime=runtime(),
    wildcard_constraints:
        method=kinds_regex("methods", "multidiffusion_panorama"),
    resources:
        gpu=1,
    conda:
        CONDA_ENV
    log:
        f"{RESULTS}/logs/generate/{{dataset}}/{{method}}/{{paramset}}/shard-{{shard}}.log",
    script:
        "../scripts/generate_panorama.py"


# Region-based generation from COCO object masks: MultiDiffusion and the SI / BLD
# baselines of its IoU table. Input: the caption-prompts shard (COCO objects kept).
rule generate_regions:
    input:
        prompts=method_prompts,
        model=method_model_inputs,
    output:
        directory(images_dir("{dataset}", "{method}", "{paramset}", "{shard}")),
    params:
        kind=lambda wc: CONFIG["methods"][wc.method]["kind"],
        params=paramset_params,
        model_key=lambda wc: CONFIG["methods"][wc.method]["model"],
        inpaint_key=lambda wc: CONFIG["methods"][wc.method].get("inpaint"),
        target_classes=lambda wc: cb_config.target_classes(CONFIG, wc.dataset),
        models=method_models,
        runtime=runtime(),
    wildcard_constraints:
        method="|".join(kinds_regex("methods", kind) for kind in ("multidiffusion_regions", "si", "bld")),
    resources:
        gpu=1,
    conda:
        CONDA_ENV
    log:
        f"{RESULTS}/logs/generate/{{dataset}}/{{method}}/{{paramset}}/shard-{{shard}}.log",
    script:
        "../scripts/generate_regions.py"


# ParaDiffusion: Llama-2 + LoRA paragraph features into its UNet. The job encodes all its
# prompts first and frees the encoder before the UNet loads (docs/methods/paradiffusion.md).
rule generate_paradiffusion:
    input:
        prompts=method_prompts,
        model=method_model_inputs,
    output:
        directory(images_dir("{dataset}", "{method}", "{paramset}", "{shard}")),
    params:
        params=paramset_params,
        model_key=lambda wc: CONFIG["methods"][wc.method]["model"],
        models=method_models,
        runtime=runtime(),
    wildcard_constraints:
        method=kinds_regex("methods", "paradiffusion"),
    resources:
        gpu=1,
    conda:
        CONDA_ENV
    log:
        f"{RESULTS}/logs/generate/{{dataset}}/{{method}}/{{paramset}}/shard-{{shard}}.log",
    script:
        "../scripts/generate_paradiffusion.py"
