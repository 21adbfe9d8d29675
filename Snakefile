# ctrlbench: controlled text-to-image diffusion methods in one experiment DAG.
#   snakemake --cores 2                                  # the demo (config.yaml)
#   snakemake --cores 8 --configfile configs/<run>.yaml  # a real run
# All logic lives in the ctrlbench package; rules only wire files together.

from snakemake.utils import min_version

min_version("9.0")


# The demo config, unless --configfile names another. Snakemake would otherwise deep-merge
# the two, and a real run would inherit the demo's tiny models and sweeps.
if not workflow.overwrite_configfiles:

    configfile: "config.yaml"



include: "rules/common.smk"
include: "rules/models.smk"
include: "rules/data.smk"
include: "rules/prompts.smk"
include: "rules/bases.smk"
include: "rules/methods.smk"
include: "rules/evaluate.smk"
include: "rules/report.smk"


rule all:
    input:
        summary_table(),
        paper_tables(),
        html_report_file(),
    default_target: True
    localrule: True


onsuccess:
    print_results_location()


# Last, once every rule exists: spares Snakemake an inspect.signature per function call.
cache_function_signatures(workflow.rules)
