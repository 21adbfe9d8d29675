# Aggregation of per-image metrics into tables (mean, best-of-N, std, bootstrap CI)
# and the comparison with the papers' numbers.


rule summary:
    input:
        all_metric_shards,
    output:
        report(summary_table(), category="Tables"),
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
        report(paper_table("{paper}"), category="Tables"),
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


# The HTML report: sweep plots, one image grid per run, and one self-contained page.
HTML = CONFIG.get("report", {}).get("html", {})


rule sweep_plots:
    input:
        summary_table(),
    output:
        report(directory(f"{RESULTS}/report/plots"), patterns=["{name}.png"], category="Sweep plots"),
    conda:
        CONDA_ENV
    log:
        f"{RESULTS}/logs/report/sweep_plots.log",
    localrule: True
    script:
        "../scripts/sweep_plots.py"


rule image_grids:
    input:
        shards=grid_inputs,
        items_table=f"{RESULTS}/data/{{dataset}}/items.csv",
    output:
        directory(f"{RESULTS}/report/grids/{{dataset}}"),
    params:
        runs=grid_runs,
        max_items=HTML.get("grid_items", 4),
        max_samples=HTML.get("grid_samples", 4),
    conda:
        CONDA_ENV
    log:
        f"{RESULTS}/logs/report/grids_{{dataset}}.log",
    localrule: True
    script:
        "../scripts/image_grids.py"


# The toy world's claims (docs/toyworld.md): each paper's claim checked with the trained toy
# models, when the config has a `claims` section.
CLAIMS = CONFIG.get("claims") or {}


rule claims:
    output:
        f"{RESULTS}/tables/claims.csv",
    params:
        settings=CLAIMS,
        device=CONFIG["device"],
    threads: 2
    resources:
        gpu=1,
    conda:
        CONDA_ENV
    log:
        f"{RESULTS}/logs/claims.log",
    script:
        "../scripts/claims.py"


rule html_report:
    input:
        summary=summary_table(),
        claims=[f"{RESULTS}/tables/claims.csv"] if CLAIMS else [],
        papers=paper_tables(),
        plots=f"{RESULTS}/report/plots",
        grids=[f"{RESULTS}/report/grids/{dataset}" for dataset in run_datasets()],
    output:
        report(html_report_file(), category="Report"),
    params:
        papers=lambda wc: {paper: paper_table(paper) for paper in CONFIG.get("report", {}).get("papers", {})},
        title=HTML.get("title", "ctrlbench report"),
        config_files=[str(f) for f in workflow.configfiles],
    conda:
        CONDA_ENV
    log:
        f"{RESULTS}/logs/report/html.log",
    localrule: True
    script:
        "../scripts/html_report.py"
