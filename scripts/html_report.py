from ctrlbench.jobs import logged
from ctrlbench.report.html import write_site_report

i, p = snakemake.input, snakemake.params
claims = list(i.get("claims") or [])  # the claims table, when the config has a claims section
with logged(snakemake.log[0]):
    write_site_report(snakemake.output[0], summary_csv=i.summary, paper_tables=p.papers, plots_dir=i.plots,
                      grid_dirs=list(i.grids), title=p.title, config_files=p.config_files,
                      claims_csv=claims[0] if claims else None)
