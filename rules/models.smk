# Tiny random-weight stand-ins of the real models, built locally so the demo and the
# tests run without downloads. Real models are named by id/path in the config and are
# loaded (and checked) by the jobs that use them.


rule tiny_model:
    output:
        directory(f"{RESULTS}/models/tiny/{{model}}"),
    params:
        kind=lambda wc: CONFIG["models"][wc.model]["kind"],
        seed=0,
    conda:
        CONDA_ENV
    log:
        f"{RESULTS}/logs/tiny_model/{{model}}.log",
    script:
        "../scripts/build_tiny_model.py"
