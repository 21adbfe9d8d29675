# Helpers shared by every rules file: config validation, paths and input functions.
# Keep this cheap: every SLURM job re-imports the Snakefile (no torch, no big files).

import sys
from pathlib import Path

import os

# The ctrlbench package beside the Snakefile, for this process and for every job's
# script (jobs may run in a conda env or on another node without it installed).
# Lint "PYTHONPATH used but not asserted with envvars": deliberate, PYTHONPATH is
# optional here and extended, not required.
sys.path.insert(0, workflow.basedir)
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (workflow.basedir, os.environ.get("PYTHONPATH")) if p)

from snakemake.exceptions import WorkflowError

from ctrlbench import config as cb_config
from ctrlbench.errors import ConfigError
from ctrlbench.models.registry import model_entry, model_inputs, model_source
from ctrlbench.data.layout import dataset_index_files
from ctrlbench.toyworld import DATASET_FORMATS as TOYWORLD_FORMATS

try:
    CONFIG = cb_config.validate(config)
except ConfigError as error:
    raise WorkflowError(str(error)) from None

RESULTS = CONFIG["results_dir"]
CONDA_ENV = "../envs/ctrlbench.yaml"  # used with --sdm conda (clusters); relative to rules/
N_SHARDS = CONFIG["n_shards"]
SHARDS = [f"{i:03d}" for i in range(N_SHARDS)]
# Every parameter set of every method, resolved once: {method: {paramset: params}}.
PARAMSETS = {name: cb_config.method_paramsets(CONFIG, name) for name in CONFIG["methods"]}
# The Snakemake inputs of every model (its tiny build, or nothing for a real model), once.
MODEL_INPUTS = {key: model_inputs(CONFIG, key) for key in CONFIG["models"]}


wildcard_constraints:
    dataset=r"[A-Za-z][A-Za-z0-9_]*",
    method=r"[A-Za-z][A-Za-z0-9_]*",
    prompt_set=r"[A-Za-z][A-Za-z0-9_]*",
    model=r"[A-Za-z][A-Za-z0-9_]*",
    fmt=r"cub|flowers|coco|strokes|prompts|paraprompts",
    paper=r"mmm2025|multidiffusion|paradiffusion",
    paramset=r"[^/]+",
    shard=r"\d{3}",


GENERATED_ROOTS = ("toy", "toyworld")  # roots built by a rule: toy_data, toyworld_data


def dataset_root(dataset):
    entry = CONFIG["datasets"][dataset]
    if entry["root"] in GENERATED_ROOTS:
        return f"{RESULTS}/{entry['root']}/{entry['format']}"
    return entry["root"]


def dataset_inputs(wildcards):
    """The toy or toy-world build for generated datasets; the index files of a real
    dataset (so that Snakemake notices when they change). Missing real files are reported
    by the reader."""
    entry = CONFIG["datasets"][wildcards.dataset]
    if entry["root"] in GENERATED_ROOTS:
        return [dataset_root(wildcards.dataset)]
    return dataset_index_files(entry["format"], entry["root"], entry.get("layout"))


def after_items(dataset):
    """Defer the calling job until the dataset's `items` checkpoint is done.

    Every input function of a per-shard job calls this, not only the first step's:
    Snakemake then re-evaluates the whole per-shard chain once the checkpoint has run.
    Without it, a job planned before the checkpoint ran (when every shard looked
    changed) keeps its "input updated by another job" reason even when its shard
    turned out unchanged. A dataset whose checkpoint is done stays done for the rest of
    the run, so it is asked only once (this runs for almost every one of 20,000 jobs)."""
    if dataset not in _ITEMS_DONE:
        checkpoints.items.get(dataset=dataset)
        _ITEMS_DONE.add(dataset)


_ITEMS_DONE = set()  # datasets whose `items` checkpoint has completed in this run


def shard_items(wildcards):
    """The items of one shard. The shard files are written by the `items` checkpoint and
    rewritten only when their content changes: they are deliberately not declared as
    its outputs, so unchanged shards keep their mtime and their jobs do not rerun."""
    after_items(wildcards.dataset)
    return f"{RESULTS}/data/{wildcards.dataset}/shards/shard-{wildcards.shard}.csv"


def kinds_regex(section, kind):
    """Regex matching the names of config[section] entries of one kind (wildcard_constraints)."""
    names = [name for name, entry in CONFIG.get(section, {}).items() if entry["kind"] == kind]
    return "|".join(names) if names else "(?!)"


def model_input_files(*keys):
    """Snakemake inputs of the named models: their tiny builds (MODEL_INPUTS), nothing for
    a real model. Unset keys (None) are skipped; an unknown key is reported by model_inputs."""
    return [path for key in keys if key
            for path in (MODEL_INPUTS[key] if key in MODEL_INPUTS else model_inputs(CONFIG, key))]


def model_entries(*keys):
    """{key: config entry} of the named models, a job's params (so the params trigger sees
    a changed entry). Unset keys (None) are skipped."""
    return {key: model_entry(CONFIG, key) for key in keys if key}


MODEL_SETTINGS = ("model", "controlnet", "clip", "segmenter", "inpaint", "vqmodel")  # method keys that name models


def method_model_keys(method):
    entry = CONFIG["methods"][method]
    return [entry[k] for k in MODEL_SETTINGS if k in entry]


def method_model_inputs(wildcards):
    return model_input_files(*method_model_keys(wildcards.method))


def method_models(wildcards):
    """The model entries a method's job loads."""
    return model_entries(*method_model_keys(wildcards.method))


def wildcard_model_inputs(wildcards):
    """The inputs of the model named by the {model} wildcard."""
    return model_input_files(wildcards.model)


def wildcard_model_entry(wildcards):
    """{key: config entry} of the model named by the {model} wildcard."""
    return model_entries(wildcards.model)


def method_input_dirs(wildcards):
    """{method: images folder of this shard} for the runs a method consumes (base/candidates)."""
    after_items(wildcards.dataset)
    return {
        source: images_dir(wildcards.dataset, source, paramset, wildcards.shard)
        for source, paramset in cb_config.method_inputs(CONFIG, wildcards.method)
    }


def method_input_embeddings(wildcards):
    """{method: CLIP image-embedding cache} of the runs a select method compares."""
    model = CONFIG["methods"][wildcards.method]["model"]
    return {
        source: clip_images_cache(model, wildcards.dataset, source, paramset, wildcards.shard)
        for source, paramset in cb_config.method_inputs(CONFIG, wildcards.method)
    }


def clip_images_cache(model, dataset, method, paramset, shard):
    return f"{RESULTS}/cache/clip/{model}/{dataset}/images/{method}/{paramset}/shard-{shard}.npz"


def clip_real_cache(model, dataset, shard):
    return f"{RESULTS}/cache/clip/{model}/{dataset}/real/shard-{shard}.npz"


def clip_prompts_cache(model, dataset, prompt_set, shard):
    return f"{RESULTS}/cache/clip/{model}/{dataset}/prompts/{prompt_set}/shard-{shard}.npz"


def prompts_shard(dataset, prompt_set, shard):
    return f"{RESULTS}/prompts/{dataset}/{prompt_set}/shard-{shard}.csv"


def runtime():
    """The runtime settings every model-loading job receives."""
    return {k: CONFIG[k] for k in ("results_dir", "device", "dtype", "hub_offline")}


def paramset_params(wildcards):
    return PARAMSETS[wildcards.method][wildcards.paramset]


def shard_images(wildcards):
    after_items(wildcards.dataset)
    return images_dir(wildcards.dataset, wildcards.method, wildcards.paramset, wildcards.shard)


def images_dir(dataset, method, paramset, shard):
    return f"{RESULTS}/images/{dataset}/{method}/{paramset}/shard-{shard}"


def method_runs():
    """(dataset, method, paramset) for every configured run."""
    for method, entry in CONFIG["methods"].items():
        for dataset in entry["datasets"]:
            for paramset in PARAMSETS[method]:
                yield dataset, method, paramset


def method_prompts(wildcards):
    after_items(wildcards.dataset)
    return prompts_shard(wildcards.dataset, CONFIG["methods"][wildcards.method]["prompts"], wildcards.shard)


def all_metric_shards(wildcards):
    for dataset in sorted({dataset for dataset, _, _ in method_runs()}):
        after_items(dataset)
    files = []
    for dataset, method, paramset in method_runs():
        kind = CONFIG["methods"][method]["kind"]
        metrics = list(CLIP_SCORERS)
        if kind in ("sdedit", "gradop"):
            metrics.append("faithfulness")
        if kind in cb_config.REGION_KINDS:
            metrics += list(IOU_METRICS)  # iou, and iou_held_out with evaluation.iou.held_out
        if CONFIG["evaluation"].get("aesthetic"):
            metrics.append("aesthetic")
        files += [f"{RESULTS}/metrics/{dataset}/{method}/{paramset}/{metric}/shard-{shard}.csv"
                  for metric in metrics for shard in SHARDS]
    # set-level metrics: one file per run
    files += [f"{RESULTS}/metrics/{dataset}/{method}/{paramset}/fid/set.csv" for dataset, method, paramset in fid_runs()]
    return files


def retrieval_inputs(wildcards):
    after_items(wildcards.dataset)
    method = CONFIG["methods"][wildcards.method]
    inputs = {
        "prompts": prompts_shard(wildcards.dataset, method["prompts"], wildcards.shard),
        "shard_items": f"{RESULTS}/data/{wildcards.dataset}/shards/shard-{wildcards.shard}.csv",
        "gallery": f"{RESULTS}/data/{wildcards.dataset}/gallery.csv",
    }
    if PARAMSETS[wildcards.method][wildcards.paramset]["strategy"] == "text":
        inputs["gallery_emb"] = f"{RESULTS}/cache/gallery/{wildcards.dataset}/{method['model']}.npz"
    return inputs


def select_inputs(wildcards):
    method = CONFIG["methods"][wildcards.method]
    dirs = method_input_dirs(wildcards)
    embeddings = method_input_embeddings(wildcards)
    inputs = {f"dir_{name}": path for name, path in dirs.items()}
    inputs.update({f"emb_{name}": path for name, path in embeddings.items()})
    inputs["text"] = clip_prompts_cache(method["model"], wildcards.dataset, method["prompts"], wildcards.shard)
    return inputs


CLIP_EVAL = CONFIG["evaluation"]["clip"]
# The optional metrics' settings; {} when the metric is off (its rules are then never used).
# Rules read them as constants, not through lambdas: a callable costs Snakemake a call
# per job, and there are thousands of metric jobs in a sweep.
FID_EVAL = CONFIG["evaluation"].get("fid") or {}
IOU_EVAL = CONFIG["evaluation"].get("iou") or {}
IOU_METRICS = cb_config.iou_metrics(CONFIG)  # {metric name: segmenter model key}
AESTHETIC_EVAL = CONFIG["evaluation"].get("aesthetic") or {}


def prompt_set_shard(wildcards):
    after_items(wildcards.dataset)
    return prompts_shard(wildcards.dataset, wildcards.prompt_set, wildcards.shard)


def has_real_images(dataset):
    """Prompt-list and ParaPrompts datasets have no real images, so no i_sim."""
    return CONFIG["datasets"][dataset]["format"] not in cb_config.TEXT_ONLY_FORMATS


# The CLIP models that score t_sim / i_sim, by metric folder: the evaluation CLIP, and the
# held-out one (a CLIP that chose no base image) when evaluation.clip.held_out is set.
CLIP_SCORERS = {"clip": CLIP_EVAL["model"],
                **({"clip_held_out": CLIP_EVAL["held_out"]} if CLIP_EVAL.get("held_out") else {})}
CLIP_SCORER_SUFFIX = {"clip": "", "clip_held_out": "_held_out"}


def clip_similarity_inputs(wildcards):
    after_items(wildcards.dataset)
    model, dataset, shard = CLIP_SCORERS[wildcards.scorer], wildcards.dataset, wildcards.shard
    inputs = {
        "images": clip_images_cache(model, dataset, wildcards.method, wildcards.paramset, shard),
        "text": clip_prompts_cache(model, dataset, cb_config.evaluation_prompts(CONFIG, dataset), shard),
    }
    if has_real_images(dataset):
        inputs["real"] = clip_real_cache(model, dataset, shard)
    return inputs


def paper_rows(paper):
    """{paper row: "method/paramset", or {dataset: "method/paramset"}} from report.papers.<paper>."""
    return cb_config.paper_rows(CONFIG, paper)


def summary_table():
    return f"{RESULTS}/tables/summary.csv"


def paper_table(paper):
    return f"{RESULTS}/tables/paper_{paper}.csv"


def html_report_file():
    return f"{RESULTS}/report/index.html"


def run_datasets():
    """The datasets some method runs on."""
    return sorted({dataset for dataset, _, _ in method_runs()})


def grid_runs(wildcards):
    """One image grid per (method, parameter set) run on the dataset."""
    return [{"dataset": dataset, "method": method, "paramset": paramset,
             "shard_dirs": [images_dir(dataset, method, paramset, shard) for shard in SHARDS]}
            for dataset, method, paramset in method_runs() if dataset == wildcards.dataset]


def grid_inputs(wildcards):
    after_items(wildcards.dataset)
    return [folder for run in grid_runs(wildcards) for folder in run["shard_dirs"]]


def paper_tables():
    """The comparison table of every paper report.papers maps rows for."""
    return [paper_table(paper) for paper in CONFIG.get("report", {}).get("papers", {})]


def print_results_location():
    table = Path(summary_table())
    if table.exists():
        print(f"\nctrlbench: done. Summary table: {table.resolve()}")
        print(f"Images: {Path(RESULTS, 'images').resolve()}; metrics: {Path(RESULTS, 'metrics').resolve()}")
        for table_path in map(Path, paper_tables()):
            if table_path.exists():
                print(f"Paper comparison: {table_path.resolve()}")
        if Path(html_report_file()).exists():
            print(f"HTML report: {Path(html_report_file()).resolve()}")
        print()
        print(table.read_text())


# --- FID / KID and the aesthetic score ------------------------------------------------------

def fid_images_cache(model, dataset, method, paramset, shard):
    return f"{RESULTS}/cache/fid/{model}/{dataset}/images/{method}/{paramset}/shard-{shard}.npz"


def fid_real_cache(model, dataset, shard):
    return f"{RESULTS}/cache/fid/{model}/{dataset}/real/shard-{shard}.npz"


def fid_reference_name(dataset):
    """None (no FID for this dataset), "real", "real:<other dataset>", or "<method>@<paramset>"
    (a file-name form of the reference run) from evaluation.fid.reference."""
    reference = cb_config.fid_reference(CONFIG, dataset)
    if reference == "none" or (reference == "real" and not has_real_images(dataset)):
        return None
    if reference == "real" or cb_config.real_reference_dataset(reference):
        return reference
    return "@".join(cb_config.resolve_ref(CONFIG, reference, f"evaluation.fid.reference.{dataset}"))


def fid_reference_file(dataset):
    """The reference statistics of a dataset's FID: another dataset's real images are that
    dataset's own real reference (computed once, whichever datasets use it)."""
    name = fid_reference_name(dataset)
    other = cb_config.real_reference_dataset(name)
    if other:
        dataset, name = other, "real"
    return f"{RESULTS}/cache/fid/{FID_EVAL['model']}/{dataset}/reference/{name}.npz"


def fid_reference_shards(wildcards):
    """The per-shard feature caches that make up a dataset's reference set."""
    after_items(wildcards.dataset)
    if wildcards.reference == "real":
        return [fid_real_cache(wildcards.model, wildcards.dataset, shard) for shard in SHARDS]
    method, paramset = wildcards.reference.split("@", 1)
    return [fid_images_cache(wildcards.model, wildcards.dataset, method, paramset, shard) for shard in SHARDS]


def fid_runs():
    """(dataset, method, paramset) scored by FID/KID: not where the dataset has no
    reference, and not the reference run against itself."""
    if not CONFIG["evaluation"].get("fid"):
        return
    for dataset, method, paramset in method_runs():
        reference = fid_reference_name(dataset)
        if reference is not None and reference != f"{method}@{paramset}":
            yield dataset, method, paramset


# --- DAG build speed ---------------------------------------------------------------------

def cache_function_signatures(rules):
    """Store the signature of every input and params function of `rules` on the function.

    Snakemake runs inspect.signature on a rule's function three times per call, about six
    times per job: 5% of a 20,000-job DAG build (bench/README.md). It reads a function's
    `_overwrite_params` attribute first, the hook its own snakemake.ioutils helpers set
    through overwrite_function_params. What is stored is exactly what Snakemake would
    compute. Should a later Snakemake drop the hook, nothing breaks: it inspects again."""
    import inspect
    try:
        from snakemake.common import overwrite_function_params
    except ImportError:
        return
    for definition in rules:
        for item in [*definition.input, *definition.params]:
            # A function given to input is kept bare, or wrapped in a string (unpack(...))
            # that may itself sit in an IOFile; params functions are kept bare.
            func = getattr(getattr(item, "_file", item), "callable", item)
            if inspect.isfunction(func):
                overwrite_function_params(func, inspect.signature(func).parameters)
