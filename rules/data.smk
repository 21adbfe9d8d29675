# Dataset preparation: toy datasets in the real formats, and the items table of every
# configured dataset, split into shards.


rule toy_data:
    output:
        directory(f"{RESULTS}/toy/{{fmt}}"),
    params:
        fmt=lambda wc: wc.fmt,
        options=lambda wc: {
            "seed": CONFIG["toy"]["seed"],
            "image_size": CONFIG["toy"]["image_size"],
            **CONFIG["toy"].get(wc.fmt, {}),
        },
    conda:
        CONDA_ENV
    log:
        f"{RESULTS}/logs/toy_data/{{fmt}}.log",
    script:
        "../scripts/make_toy_data.py"


# The toy world's datasets (ctrlbench/toyworld/formats.py), for datasets with root: toyworld.
rule toyworld_data:
    output:
        directory(f"{RESULTS}/toyworld/{{fmt}}"),
    wildcard_constraints:
        fmt="|".join(TOYWORLD_FORMATS),
    params:
        fmt=lambda wc: wc.fmt,
        options=lambda wc: {
            "seed": CONFIG["toyworld"]["seed"],
            "image_size": CONFIG["toyworld"]["image_size"],
            **CONFIG["toyworld"][wc.fmt],
        },
    conda:
        CONDA_ENV
    log:
        f"{RESULTS}/logs/toyworld_data/{{fmt}}.log",
    script:
        "../scripts/make_toyworld_data.py"


checkpoint items:
    input:
        dataset_inputs,
    output:
        table=f"{RESULTS}/data/{{dataset}}/items.csv",
        # How many items each filter step kept (COCO region subset); one row otherwise.
        counts=f"{RESULTS}/data/{{dataset}}/item_counts.csv",
    params:
        fmt=lambda wc: CONFIG["datasets"][wc.dataset]["format"],
        root=lambda wc: dataset_root(wc.dataset),
        split=lambda wc: CONFIG["datasets"][wc.dataset]["split"],
        max_items=lambda wc: CONFIG["datasets"][wc.dataset]["max_items"],
        region_filter=lambda wc: CONFIG["datasets"][wc.dataset].get("region_filter"),
        layout=lambda wc: CONFIG["datasets"][wc.dataset].get("layout"),  # flowers only; None = detect
        n_shards=N_SHARDS,
        shard_dir=lambda wc: f"{RESULTS}/data/{wc.dataset}/shards",
    conda:
        CONDA_ENV
    log:
        f"{RESULTS}/logs/items/{{dataset}}.log",
    script:
        "../scripts/prepare_items.py"


# The retrieval gallery of a dataset (mmm2025: the train split), one table per dataset.
rule gallery_items:
    input:
        dataset_inputs,
    output:
        f"{RESULTS}/data/{{dataset}}/gallery.csv",
    params:
        fmt=lambda wc: CONFIG["datasets"][wc.dataset]["format"],
        root=lambda wc: dataset_root(wc.dataset),
        split=lambda wc: CONFIG["datasets"][wc.dataset]["gallery_split"],
        layout=lambda wc: CONFIG["datasets"][wc.dataset].get("layout"),
    conda:
        CONDA_ENV
    log:
        f"{RESULTS}/logs/gallery/{{dataset}}.log",
    script:
        "../scripts/gallery_items.py"
