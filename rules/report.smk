# Aggregation of per-image metrics into tables (mean, best-of-N, std, bootstrap CI)
# and the comparison with the papers' numbers.


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


rule paper_table:
    input:
        summary_table(),
    output:
        paper_table("{paper}"),
    params:
        paper=lambda wc: wc.paper,
        rows=lambda wc: paper_rows(wc.paper),
        datasets=lambda wc: {name: entry["format"] for name, entry in CONFIG["datasets"].items()},
        scale=CLIP_EVAL["scale"],
    conda:
        CONDA_ENV
    log:
        f"{RESULTS}/logs/paper_table_{{paper}}.log",
    localrule: True
    script:
        "../scripts/paper_table.py"
