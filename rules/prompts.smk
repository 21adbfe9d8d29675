# Prompt generation, one job per (dataset, prompt set, shard).


rule template_prompts:
    input:
        shard=shard_items,
    output:
        f"{RESULTS}/prompts/{{dataset}}/{{prompt_set}}/shard-{{shard}}.csv",
    params:
        prompt=lambda wc: CONFIG["prompts"][wc.prompt_set],
        domain=lambda wc: CONFIG["datasets"][wc.dataset]["domain"],
    conda:
        CONDA_ENV
    log:
        f"{RESULTS}/logs/prompts/{{dataset}}/{{prompt_set}}/shard-{{shard}}.log",
    script:
        "../scripts/template_prompts.py"
