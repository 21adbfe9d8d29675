# CLIP embedding caches (each image and prompt encoded once, shared by base selection
# and every CLIP metric) and per-image metrics, one CSV per shard.

rule clip_image_embeddings:
    input:
        source=shard_images,
        model=wildcard_model_inputs,
    output:
        clip_images_cache("{model}", "{dataset}", "{method}", "{paramset}", "{shard}"),
    params:
        what="images",
        models=wildcard_model_entry,
        runtime=runtime(),
        batch_size=CLIP_EVAL["batch_size"],
    resources:
        gpu=1,
    conda:
        CONDA_ENV
    log:
        f"{RESULTS}/logs/clip_embeddings/{{model}}/{{dataset}}/images/{{method}}/{{paramset}}/shard-{{shard}}.log",
    script:
        "../scripts/clip_embeddings.py"


rule clip_real_embeddings:
    input:
        source=shard_items,
        model=wildcard_model_inputs,
    output:
        clip_real_cache("{model}", "{dataset}", "{shard}"),
    params:
        what="real",
        models=wildcard_model_entry,
        runtime=runtime(),
        batch_size=CLIP_EVAL["batch_size"],
    resources:
        gpu=1,
    conda:
        CONDA_ENV
    log:
        f"{RESULTS}/logs/clip_embeddings/{{model}}/{{dataset}}/real/shard-{{shard}}.log",
    script:
        "../scripts/clip_embeddings.py"


rule clip_prompt_embeddings:
    input:
        source=prompt_set_shard,
        model=wildcard_model_inputs,
    output:
        clip_prompts_cache("{model}", "{dataset}", "{prompt_set}", "{shard}"),
    params:
        what="prompts",
        models=wildcard_model_entry,
        runtime=runtime(),
        batch_size=CLIP_EVAL["batch_size"],
        # A param, so a changed long_text rebuilds the cache. Caches of other CLIP models
        # (base selection) only need the truncated `emb`.
        long_text=lambda wc: CLIP_EVAL["long_text"] if wc.model in CLIP_SCORERS.values() else ["truncate"],
    resources:
        gpu=1,
    conda:
        CONDA_ENV
    log:
        f"{RESULTS}/logs/clip_embeddings/{{model}}/{{dataset}}/prompts/{{prompt_set}}/shard-{{shard}}.log",
    script:
        "../scripts/clip_embeddings.py"


# t_sim / i_sim by evaluation.clip.model (metric folder "clip"), and the same by the
# held-out CLIP evaluation.clip.held_out, when set (folder "clip_held_out", metrics
# t_sim_held_out, ...).
rule clip_similarity:
    input:
        unpack(clip_similarity_inputs),
    output:
        f"{RESULTS}/metrics/{{dataset}}/{{method}}/{{paramset}}/{{scorer}}/shard-{{shard}}.csv",
    params:
        scale=CLIP_EVAL["scale"],
        model_key=lambda wc: CLIP_SCORERS[wc.scorer],
        long_text=CLIP_EVAL["long_text"],
        suffix=lambda wc: CLIP_SCORER_SUFFIX[wc.scorer],
    wildcard_constraints:
        scorer="|".join(CLIP_SCORERS),
    conda:
        CONDA_ENV
    log:
        f"{RESULTS}/logs/clip_similarity/{{scorer}}/{{dataset}}/{{method}}/{{paramset}}/shard-{{shard}}.log",
    script:
        "../scripts/clip_similarity.py"


# Faithfulness to the strokes (GradOP+): MSE between the blurred output and the painting.
rule faithfulness:
    input:
        images=shard_images,
        inputs=method_prompts,
    output:
        f"{RESULTS}/metrics/{{dataset}}/{{method}}/{{paramset}}/faithfulness/shard-{{shard}}.csv",
    params:
        # The same painting function for every method, so SDEdit and GradOP+ compare.
        kernel=CONFIG["evaluation"].get("faithfulness", {}).get("blur_kernel", 35),
        sigma=CONFIG["evaluation"].get("faithfulness", {}).get("blur_sigma", 7.0),
    wildcard_constraints:
        method="|".join(kinds_regex("methods", kind) for kind in ("sdedit", "gradop")),
    conda:
        CONDA_ENV
    log:
        f"{RESULTS}/logs/faithfulness/{{dataset}}/{{method}}/{{paramset}}/shard-{{shard}}.log",
    script:
        "../scripts/faithfulness.py"


# Mask alignment of the region methods: segmenter IoU of each target class, per image. One
# metric per segmenter: iou (evaluation.iou.model) and iou_held_out (evaluation.iou.held_out).
rule iou:
    input:
        images=shard_images,
        model=lambda wc: model_input_files(IOU_METRICS[wc.iou_metric]),
    output:
        f"{RESULTS}/metrics/{{dataset}}/{{method}}/{{paramset}}/{{iou_metric}}/shard-{{shard}}.csv",
    params:
        model_key=lambda wc: IOU_METRICS[wc.iou_metric],
        models=lambda wc: model_entries(IOU_METRICS[wc.iou_metric]),
        runtime=runtime(),
        batch_size=IOU_EVAL.get("batch_size"),
    wildcard_constraints:
        method="|".join(kinds_regex("methods", kind) for kind in cb_config.REGION_KINDS),
        iou_metric="|".join(IOU_METRICS) or "(?!)",
    resources:
        gpu=1,
    conda:
        CONDA_ENV
    log:
        f"{RESULTS}/logs/{{iou_metric}}/{{dataset}}/{{method}}/{{paramset}}/shard-{{shard}}.log",
    script:
        "../scripts/iou.py"


# FID / KID (set-level): Inception features of every image, computed once per shard;
# reference statistics once per dataset (the real images, or a reference method's images
# such as single-view SD for panoramas), shared by every method and parameter set.


rule fid_image_features:
    input:
        source=shard_images,
        model=wildcard_model_inputs,
    output:
        fid_images_cache("{model}", "{dataset}", "{method}", "{paramset}", "{shard}"),
    params:
        what="images",
        models=wildcard_model_entry,
        runtime=runtime(),
        batch_size=FID_EVAL.get("batch_size"),
        antialias=FID_EVAL.get("antialias"),
    resources:
        gpu=1,
    conda:
        CONDA_ENV
    log:
        f"{RESULTS}/logs/fid_features/{{model}}/{{dataset}}/images/{{method}}/{{paramset}}/shard-{{shard}}.log",
    script:
        "../scripts/fid_features.py"


rule fid_real_features:
    input:
        source=shard_items,
        model=wildcard_model_inputs,
    output:
        fid_real_cache("{model}", "{dataset}", "{shard}"),
    params:
        what="real",
        models=wildcard_model_entry,
        runtime=runtime(),
        batch_size=FID_EVAL.get("batch_size"),
        antialias=FID_EVAL.get("antialias"),
    resources:
        gpu=1,
    conda:
        CONDA_ENV
    log:
        f"{RESULTS}/logs/fid_features/{{model}}/{{dataset}}/real/shard-{{shard}}.log",
    script:
        "../scripts/fid_features.py"


rule fid_reference:
    input:
        fid_reference_shards,
    output:
        f"{RESULTS}/cache/fid/{{model}}/{{dataset}}/reference/{{reference}}.npz",
    params:
        reference=lambda wc: wc.reference.replace("@", "/"),
    wildcard_constraints:
        reference=r"real|[A-Za-z][A-Za-z0-9_]*@[^/]+",
    conda:
        CONDA_ENV
    log:
        f"{RESULTS}/logs/fid_reference/{{model}}/{{dataset}}/{{reference}}.log",
    script:
        "../scripts/fid_reference.py"


rule fid_kid:
    input:
        reference=lambda wc: fid_reference_file(wc.dataset),
        images=lambda wc: [fid_images_cache(FID_EVAL["model"], wc.dataset, wc.method, wc.paramset, shard)
                           for shard in SHARDS],
    output:
        f"{RESULTS}/metrics/{{dataset}}/{{method}}/{{paramset}}/fid/set.csv",
    params:
        model_key=FID_EVAL.get("model"),
        # The name the rows record: "real:<dataset>" when another dataset's photos are the reference.
        reference_name=lambda wc: fid_reference_name(wc.dataset).replace("@", "/"),
        antialias=FID_EVAL.get("antialias"),
        kid_subset_size=FID_EVAL.get("kid_subset_size"),
        kid_subsets=FID_EVAL.get("kid_subsets"),
    conda:
        CONDA_ENV
    log:
        f"{RESULTS}/logs/fid_kid/{{dataset}}/{{method}}/{{paramset}}.log",
    script:
        "../scripts/fid_kid.py"


# LAION aesthetic score from the CLIP image-embedding cache (no image is read again).
rule aesthetic:
    input:
        embeddings=clip_images_cache(AESTHETIC_EVAL.get("clip", "off"), "{dataset}", "{method}", "{paramset}",
                                     "{shard}"),
        model=model_input_files(AESTHETIC_EVAL.get("model")),
    output:
        f"{RESULTS}/metrics/{{dataset}}/{{method}}/{{paramset}}/aesthetic/shard-{{shard}}.csv",
    params:
        model_key=AESTHETIC_EVAL.get("model"),
        clip_key=AESTHETIC_EVAL.get("clip"),
        models=model_entries(AESTHETIC_EVAL.get("model")),
        runtime=runtime(),
    conda:
        CONDA_ENV
    log:
        f"{RESULTS}/logs/aesthetic/{{dataset}}/{{method}}/{{paramset}}/shard-{{shard}}.log",
    script:
        "../scripts/aesthetic.py"
