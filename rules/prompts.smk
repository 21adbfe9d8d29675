# Prompt generation, one job per (dataset, prompt set, shard).


rule template_prompts:
    input:
        items=shard_items,
    output:
        f"{RESULTS}/prompts/{{dataset}}/{{prompt_set}}/shard-{{shard}}.csv",
    params:
        prompt=lambda wc: CONFIG["prompts"][wc.prompt_set],
        domain=lambda wc: CONFIG["datasets"][wc.dataset]["domain"],
    log:
        f"{RESULTS}/logs/prompts/{{dataset}}/{{prompt_set}}/shard-{{shard}}.log",
    script:
        "../scripts/template_prompts.py"
