# Per-image metrics, one CSV per shard; aggregated by rules/report.smk.


rule clip_score:
    input:
        images=shard_images,
        model=lambda wc: model_inputs(CONFIG, CONFIG["evaluation"]["clip_score"]["model"]),
    output:
        f"{RESULTS}/metrics/{{dataset}}/{{method}}/{{paramset}}/clip_score/shard-{{shard}}.csv",
    params:
        metric=CONFIG["evaluation"].get("clip_score", {}),
        models={k: CONFIG["models"][k] for k in [CONFIG["evaluation"]["clip_score"]["model"]]},
        runtime={k: CONFIG[k] for k in ("results_dir", "device", "dtype", "hub_offline")},
    resources:
        gpu=1,
    conda:
        CONDA_ENV
    log:
        f"{RESULTS}/logs/clip_score/{{dataset}}/{{method}}/{{paramset}}/shard-{{shard}}.log",
    script:
        "../scripts/clip_score.py"
