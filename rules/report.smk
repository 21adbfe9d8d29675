# Aggregation of per-image metrics into tables (mean, std, bootstrap CI).


rule summary:
    input:
        all_metric_shards,
    output:
        summary_table(),
    conda:
        CONDA_ENV
    log:
        f"{RESULTS}/logs/summary.log",
    localrule: True
    script:
        "../scripts/summary.py"
