# Prompt generation, one job per (dataset, prompt set, shard).


rule template_prompts:
    input:
        shard=shard_items,
    output:
        prompts_shard("{dataset}", "{prompt_set}", "{shard}"),
    params:
        prompt=lambda wc: CONFIG["prompts"][wc.prompt_set],
        domain=lambda wc: CONFIG["datasets"][wc.dataset]["domain"],
    wildcard_constraints:
        prompt_set=kinds_regex("prompts", "template"),
    conda:
        CONDA_ENV
    log:
        f"{RESULTS}/logs/prompts/{{dataset}}/{{prompt_set}}/shard-{{shard}}.log",
    script:
        "../scripts/template_prompts.py"


# LLM prompts: answers are cached in results/cache/llm (outside the outputs), so a rerun
# or a retry after a failure never asks again for what it already has.
rule llm_prompts:
    input:
        shard=shard_items,
        model=lambda wc: model_inputs(CONFIG, *[CONFIG["prompts"][wc.prompt_set].get("model")]
                                      if CONFIG["prompts"][wc.prompt_set].get("backend") == "local" else []),
    output:
        prompts_shard("{dataset}", "{prompt_set}", "{shard}"),
    params:
        prompt=lambda wc: CONFIG["prompts"][wc.prompt_set],
        domain=lambda wc: CONFIG["datasets"][wc.dataset]["domain"],
        cache=lambda wc: f"{RESULTS}/cache/llm/{wc.dataset}/{wc.prompt_set}/shard-{wc.shard}.jsonl",
        models=lambda wc: {k: CONFIG["models"][k] for k in [CONFIG["prompts"][wc.prompt_set].get("model")] if k},
        runtime=runtime(),
    wildcard_constraints:
        prompt_set=kinds_regex("prompts", "llm"),
    resources:
        gpu=lambda wc: int(CONFIG["prompts"][wc.prompt_set].get("backend") == "local"),
    conda:
        CONDA_ENV
    log:
        f"{RESULTS}/logs/prompts/{{dataset}}/{{prompt_set}}/shard-{{shard}}.log",
    script:
        "../scripts/llm_prompts.py"


# The item's own description (its captions, or its attribute words, joined into one text):
# the text mmm2025's main.py gives ControlNet, base selection and t-SIM.
rule description_prompts:
    input:
        shard=shard_items,
    output:
        prompts_shard("{dataset}", "{prompt_set}", "{shard}"),
    params:
        prompt=lambda wc: CONFIG["prompts"][wc.prompt_set],
    wildcard_constraints:
        prompt_set=kinds_regex("prompts", "description"),
    conda:
        CONDA_ENV
    log:
        f"{RESULTS}/logs/prompts/{{dataset}}/{{prompt_set}}/shard-{{shard}}.log",
    script:
        "../scripts/description_prompts.py"


# The item's own caption as its prompt (stroke paintings, COCO); keeps every item column.
rule caption_prompts:
    input:
        shard=shard_items,
    output:
        prompts_shard("{dataset}", "{prompt_set}", "{shard}"),
    params:
        prompt=lambda wc: CONFIG["prompts"][wc.prompt_set],
    wildcard_constraints:
        prompt_set=kinds_regex("prompts", "caption"),
    conda:
        CONDA_ENV
    log:
        f"{RESULTS}/logs/prompts/{{dataset}}/{{prompt_set}}/shard-{{shard}}.log",
    script:
        "../scripts/caption_prompts.py"
