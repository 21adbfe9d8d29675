# Aggregation of per-image metrics into tables (mean, std, bootstrap CI).


def all_metric_shards(wildcards):
    return [
        f"{RESULTS}/metrics/{dataset}/{method}/{paramset}/clip_score/shard-{shard}.csv"
        for dataset, method, paramset in method_runs()
        for shard in SHARDS
    ]


rule summary:
    input:
        all_metric_shards,
    output:
        summary_table(),
    params:
        results_dir=RESULTS,
    log:
        f"{RESULTS}/logs/summary.log",
    localrule: True
    script:
        "../scripts/summary.py"
