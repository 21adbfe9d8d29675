"""Config loading and validation.

The JSON schema (schemas/config.schema.yaml) checks keys and types; `check_references`
checks what a schema cannot: that every model, dataset and prompt set a method names
exists and that method parameters are known. Nothing here imports torch, so the
Snakefile stays cheap to import (every SLURM job re-imports it).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from . import paramsets
from .errors import ConfigError
from .methods.registry import METHOD_DEFAULTS, PARAMETER_CHOICES
from .models.registry import SEGMENTER_ARCHS
from .models.vocabulary import VOC, segmenter_vocabulary
from .toyworld import DATASET_FORMATS as TOYWORLD_FORMATS
from .toyworld import TRAINING_SEEDS as TOYWORLD_TRAINING_SEEDS

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "schemas" / "config.schema.yaml"


def load_schema() -> dict:
    with open(SCHEMA_PATH, encoding="utf-8") as fh:
        return yaml.safe_load(fh)


def _where(error: jsonschema.ValidationError) -> str:
    return ".".join(str(p) for p in error.absolute_path) or "(top level)"


def _message(error: jsonschema.ValidationError) -> str:
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        hint = f"; allowed keys: {', '.join(allowed)}" if allowed else ""
        return f"config: {error.message} at '{_where(error)}'{hint}"
    return f"config: '{_where(error)}': {error.message}"


def _fill_defaults(schema: dict, instance: Any, root: dict) -> None:
    """Fill `default` values of the schema into the instance (in place)."""
    if "$ref" in schema:
        schema = _resolve_ref(root, schema["$ref"])
    if not isinstance(instance, dict):
        return
    for key, sub in schema.get("properties", {}).items():
        if "$ref" in sub:  # keywords beside the $ref (a default) win over the referenced schema's
            sub = {**_resolve_ref(root, sub["$ref"]), **{k: v for k, v in sub.items() if k != "$ref"}}
        if key not in instance and "default" in sub:
            instance[key] = copy.deepcopy(sub["default"])
        if key in instance:
            _fill_defaults(sub, instance[key], root)
    extra = schema.get("additionalProperties")
    if isinstance(extra, dict):
        for key, value in instance.items():
            if key not in schema.get("properties", {}):
                _fill_defaults(extra, value, root)


def _resolve_ref(root: dict, ref: str) -> dict:
    node = root
    for part in ref.lstrip("#/").split("/"):
        node = node[part]
    return node


def validate(config: dict) -> dict:
    """Validate a config dict; return a copy with defaults filled in.

    Raises ConfigError naming the first bad key or value.
    """
    if not isinstance(config, dict):
        raise ConfigError(f"config must be a mapping, got {type(config).__name__}")
    schema = load_schema()
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: (len(e.absolute_path), str(e.absolute_path)))
    if errors:
        # The deepest error of the most specific branch is the most useful one.
        best = jsonschema.exceptions.best_match(errors)
        raise ConfigError(_message(best))
    config = copy.deepcopy(config)
    _fill_defaults(schema, config, schema)
    check_references(config)
    return config


def load(path: str | Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file not found: {path}")
    try:
        with open(path, encoding="utf-8") as fh:
            config = yaml.safe_load(fh)
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
    return validate(config)


# Which model kinds each method kind (and each model-using setting) accepts.
METHOD_MODEL_KINDS = {
    "sd": ("sd",),
    "controlnet": ("sd",),
    "retrieval": ("text_embedder", "open_clip"),
    "select": ("open_clip",),
    "sdedit": ("sd",),
    "gradop": ("sd",),
    "tcig": ("sd",),
    "multidiffusion_panorama": ("sd",),
    "multidiffusion_regions": ("sd",),
    "si": ("sd",),
    "bld": ("sd",),
    "paradiffusion": ("paradiffusion",),
}
# Methods generating from target masks (COCO objects): their datasets must be COCO, and
# evaluation.iou scores them.
REGION_KINDS = ("tcig", "multidiffusion_regions", "si", "bld")
# Dataset formats without real images: no i_sim, no FID against "real".
TEXT_ONLY_FORMATS = ("prompts", "paraprompts")


def _check_model(config: dict, key: str, where: str, kinds: tuple[str, ...]) -> None:
    models = config.get("models", {})
    if key not in models:
        raise ConfigError(f"{where}: unknown model '{key}' (models: {', '.join(sorted(models)) or 'none'})")
    if models[key]["kind"] not in kinds:
        raise ConfigError(f"{where}: model '{key}' is of kind {models[key]['kind']}, "
                          f"expected {' or '.join(kinds)}")


def resolve_ref(config: dict, ref: str, where: str) -> tuple[str, str]:
    """'method' or 'method/paramset' -> (method, paramset), checked against the config."""
    method, _, paramset = ref.partition("/")
    if method not in config.get("methods", {}):
        raise ConfigError(f"{where}: unknown method '{method}' "
                          f"(methods: {', '.join(sorted(config.get('methods', {})))})")
    sets = method_paramsets(config, method)
    if not paramset:
        if len(sets) > 1:
            raise ConfigError(f"{where}: method '{method}' has several parameter sets "
                              f"({', '.join(sets)}); name one as '{method}/<paramset>'")
        paramset = next(iter(sets))
    elif paramset not in sets:
        raise ConfigError(f"{where}: method '{method}' has no parameter set '{paramset}' "
                          f"(it has: {', '.join(sets)})")
    return method, paramset


def method_inputs(config: dict, name: str) -> list[tuple[str, str]]:
    """The (method, paramset) runs whose images this method consumes, in config order."""
    method = config["methods"][name]
    refs = [method["base"]] if method["kind"] == "controlnet" else method.get("candidates", [])
    return [resolve_ref(config, ref, f"methods.{name}") for ref in refs]


def check_references(config: dict) -> None:
    datasets = config.get("datasets", {})
    prompts = config.get("prompts", {})
    for key, entry in config.get("models", {}).items():
        if entry["kind"] == "deeplabv3" and entry.get("arch", SEGMENTER_ARCHS[0]) not in SEGMENTER_ARCHS:
            raise ConfigError(f"models.{key}.arch: '{entry['arch']}' is not a torchvision segmenter with "
                              f"COCO_WITH_VOC_LABELS_V1 weights ({', '.join(SEGMENTER_ARCHS)})")
    for name, entry in prompts.items():
        if entry["kind"] == "template" and "template" not in entry:
            raise ConfigError(f"prompts.{name}: a template prompt set needs 'template'")
        stray = sorted(set(entry) & {"source", "separator", "max_captions"}) if entry["kind"] != "description" else []
        if stray:
            raise ConfigError(f"prompts.{name}: {', '.join(stray)} only apply to description prompt sets "
                              f"(this one is {entry['kind']})")
        if entry["kind"] == "llm":
            backend = entry.get("backend")
            if backend == "local":
                _check_model(config, entry.get("model", ""), f"prompts.{name}.model", ("causal_lm",))
            elif backend == "openai":
                for key in ("base_url", "endpoint_model"):
                    if key not in entry:
                        raise ConfigError(f"prompts.{name}: the openai backend needs '{key}'")
            else:
                raise ConfigError(f"prompts.{name}.backend: choose 'openai' or 'local'")
    methods = config.get("methods", {})
    for name, method in methods.items():
        where = f"methods.{name}"
        kind = method["kind"]
        _check_model(config, method["model"], f"{where}.model", METHOD_MODEL_KINDS[kind])
        for dataset in method["datasets"]:
            if dataset not in datasets:
                raise ConfigError(f"{where}.datasets: unknown dataset '{dataset}' "
                                  f"(datasets: {', '.join(sorted(datasets))})")
        if method["prompts"] not in prompts:
            raise ConfigError(f"{where}.prompts: unknown prompt set '{method['prompts']}' "
                              f"(prompts: {', '.join(sorted(prompts)) or 'none'})")
        method_paramsets(config, name)  # checks parameter names and sweep values
        if kind == "controlnet":
            for key in ("controlnet", "base"):
                if key not in method:
                    raise ConfigError(f"{where}: a controlnet method needs '{key}'")
            _check_model(config, method["controlnet"], f"{where}.controlnet", ("controlnet",))
        if kind == "tcig":
            for key, model_kind in (("clip", "open_clip"), ("segmenter", "deeplabv3")):
                if key not in method:
                    raise ConfigError(f"{where}: a tcig method needs '{key}'")
                _check_model(config, method[key], f"{where}.{key}", (model_kind,))
            if "vqmodel" in method:
                _check_model(config, method["vqmodel"], f"{where}.vqmodel", ("vqmodel",))
            elif any(p["decoder"] == "vqmodel" for p in method_paramsets(config, name).values()):
                raise ConfigError(f"{where}: params.decoder vqmodel needs 'vqmodel', the key of a model of kind "
                                  f"vqmodel (the VQGAN, docs/models.md)")
        if kind == "si":
            if "inpaint" not in method:
                raise ConfigError(f"{where}: an si method needs 'inpaint' (a model of kind sd_inpaint)")
            _check_model(config, method["inpaint"], f"{where}.inpaint", ("sd_inpaint",))
        if kind in REGION_KINDS:
            for dataset in method["datasets"]:
                if dataset in datasets and datasets[dataset]["format"] != "coco":
                    raise ConfigError(f"{where}: a {kind} method needs target masks, from a coco dataset; "
                                      f"dataset '{dataset}' is {datasets[dataset]['format']}")
        for paramset, params in method_paramsets(config, name).items():
            for key, allowed in PARAMETER_CHOICES.get(kind, {}).items():
                if params[key] not in allowed:
                    raise ConfigError(f"{where}.params.{key}: '{params[key]}' is not one of "
                                      f"{', '.join(allowed)} (parameter set {paramset})")
        if kind == "select" and not method.get("candidates"):
            raise ConfigError(f"{where}: a select method needs 'candidates'")
        for key in ("base", "candidates"):
            if key in method and kind not in ({"base": "controlnet", "candidates": "select"}[key],):
                raise ConfigError(f"{where}.{key}: only a {'controlnet' if key == 'base' else 'select'} "
                                  f"method takes '{key}'")
        for source, _ in method_inputs(config, name):
            if source == name:
                raise ConfigError(f"{where}: a method cannot consume its own images")
            missing = sorted(set(method["datasets"]) - set(methods[source]["datasets"]))
            if missing:
                raise ConfigError(f"{where}: its input method '{source}' does not run on "
                                  f"dataset(s) {', '.join(missing)}")
        if kind == "retrieval" and method_params(config, name)["strategy"] == "attribute":
            for dataset in method["datasets"]:
                if datasets[dataset]["format"] != "cub":
                    raise ConfigError(f"{where}: attribute retrieval needs CUB attributes; "
                                      f"dataset '{dataset}' is {datasets[dataset]['format']}")
    _check_no_cycles(config)
    _check_description_sources(config)
    clip = config.get("evaluation", {}).get("clip")
    if clip:
        _check_model(config, clip["model"], "evaluation.clip.model", ("open_clip",))
        if clip.get("held_out"):
            _check_model(config, clip["held_out"], "evaluation.clip.held_out", ("open_clip",))
            if clip["held_out"] == clip["model"]:
                raise ConfigError(f"evaluation.clip.held_out: '{clip['held_out']}' is evaluation.clip.model "
                                  "itself; a held-out scorer must be another CLIP model")
        used = {dataset for method in methods.values() for dataset in method["datasets"]}
        for dataset in sorted(used):
            prompt_set = evaluation_prompts(config, dataset)
            if prompt_set not in prompts:
                raise ConfigError(f"evaluation.clip.prompts: unknown prompt set '{prompt_set}' "
                                  f"(for dataset {dataset})")
    seed = config.get("toyworld", {}).get("seed")
    if seed in TOYWORLD_TRAINING_SEEDS:
        raise ConfigError(f"toyworld.seed: {seed} is a world the toy models were trained on (seeds "
                          f"{', '.join(map(str, TOYWORLD_TRAINING_SEEDS))}); datasets must be held-out scenes, "
                          f"e.g. seed 1000")
    for name, entry in datasets.items():
        if entry["root"] == "toyworld" and entry["format"] not in TOYWORLD_FORMATS:
            raise ConfigError(f"datasets.{name}: the toy world (root: toyworld) is written as "
                              f"{', '.join(TOYWORLD_FORMATS)} datasets, not {entry['format']}")
        if "region_filter" in entry and entry["format"] != "coco":
            raise ConfigError(f"datasets.{name}.region_filter: only coco datasets have object masks to filter on; "
                              f"this one is {entry['format']}")
        if "layout" in entry and entry["format"] != "flowers":
            raise ConfigError(f"datasets.{name}.layout: only flowers datasets have two on-disk layouts; "
                              f"this one is {entry['format']}")
        if "target_classes" in entry and entry["format"] != "coco":
            raise ConfigError(f"datasets.{name}.target_classes: only coco datasets have object categories to name "
                              f"target masks by; this one is {entry['format']}")
        region_filter = entry.get("region_filter") or {}
        if region_filter.get("min_objects", 2) > region_filter.get("max_objects", 4):
            raise ConfigError(f"datasets.{name}.region_filter: min_objects {region_filter['min_objects']} > "
                              f"max_objects {region_filter['max_objects']}")
    iou = config.get("evaluation", {}).get("iou")
    if iou:
        _check_model(config, iou["model"], "evaluation.iou.model", ("deeplabv3",))
        if iou.get("held_out"):
            _check_model(config, iou["held_out"], "evaluation.iou.held_out", ("deeplabv3",))
            if iou["held_out"] == iou["model"]:
                raise ConfigError(f"evaluation.iou.held_out: '{iou['held_out']}' is evaluation.iou.model itself; "
                                  f"a held-out scorer must be another segmenter")
    _check_segmenter_vocabularies(config)
    aesthetic = config.get("evaluation", {}).get("aesthetic")
    if aesthetic:
        _check_model(config, aesthetic["model"], "evaluation.aesthetic.model", ("aesthetic",))
        _check_model(config, aesthetic["clip"], "evaluation.aesthetic.clip", ("open_clip",))
    fid = config.get("evaluation", {}).get("fid")
    if fid:
        _check_model(config, fid["model"], "evaluation.fid.model", ("fid_inception", "open_clip"))
        references = fid["reference"] if isinstance(fid["reference"], dict) else {}
        unknown = sorted(set(references) - set(datasets) - {"default"})
        if unknown:
            raise ConfigError(f"evaluation.fid.reference: unknown dataset(s) {', '.join(unknown)} "
                              f"(datasets: {', '.join(sorted(datasets))})")
        for dataset in sorted({d for method in methods.values() for d in method["datasets"]}):
            where = f"evaluation.fid.reference.{dataset}"
            if dataset in references and references[dataset] == "real" \
                    and datasets[dataset]["format"] in TEXT_ONLY_FORMATS:
                raise ConfigError(f"{where}: dataset '{dataset}' ({datasets[dataset]['format']}) has no "
                                  f"real images; name a method whose images are the reference, or none")
            reference = fid_reference(config, dataset)
            other = real_reference_dataset(reference)
            if other:
                if other not in datasets:
                    raise ConfigError(f"{where}: '{reference}' names an unknown dataset '{other}' "
                                      f"(datasets: {', '.join(sorted(datasets))})")
                if datasets[other]["format"] in TEXT_ONLY_FORMATS:
                    raise ConfigError(f"{where}: '{reference}': dataset '{other}' ({datasets[other]['format']}) "
                                      f"has no real images")
            elif reference not in ("real", "none"):
                source, _ = resolve_ref(config, reference, where)
                if dataset not in methods[source]["datasets"]:
                    raise ConfigError(f"{where}: reference method '{source}' does not run on "
                                      f"dataset '{dataset}'")
    from .report.papers import PAPERS  # light: pandas only

    for paper, rows in (config.get("report", {}).get("papers") or {}).items():
        for row in rows:
            if row not in PAPERS[paper]:
                raise ConfigError(f"report.papers.{paper}: unknown row '{row}' (rows: {', '.join(PAPERS[paper])})")
        paper_rows(config, paper)


def target_classes(config: dict, dataset: str) -> str:
    """What a coco dataset's target masks are named by (methods/regions.py, TARGET_CLASSES):
    "voc" (the default: Pascal VOC classes) or "categories" (its own category names)."""
    return config["datasets"][dataset].get("target_classes", "voc")


def _check_segmenter_vocabularies(config: dict) -> None:
    """Every segmenter that sees a dataset's VOC targets (TCIG's guide, the IoU scorers)
    must know every VOC object class. A dataset named by its own categories is checked
    against the segmenters by the jobs, which read its categories (the config cannot)."""
    datasets = config.get("datasets", {})
    scorers = [(f"evaluation.iou.{'model' if metric == 'iou' else 'held_out'}", key)
               for metric, key in iou_metrics(config).items()]
    for name, method in config.get("methods", {}).items():
        if method["kind"] not in REGION_KINDS:
            continue
        segmenters = scorers + ([(f"methods.{name}.segmenter", method["segmenter"])]
                                if method["kind"] == "tcig" else [])
        for dataset in method["datasets"]:
            if datasets[dataset]["format"] != "coco" or target_classes(config, dataset) != "voc":
                continue
            for where, key in segmenters:
                vocabulary = segmenter_vocabulary(config, key)  # None: its folder is not there yet
                missing = [c for c in VOC.objects if vocabulary is not None and c not in vocabulary]
                if missing:
                    others = f" (nor {len(missing) - 1} other VOC classes)" if len(missing) > 1 else ""
                    raise ConfigError(
                        f"{where}: segmenter '{key}' ({vocabulary.name}: {vocabulary.describe()}) has no class "
                        f"'{missing[0]}'{others}, a target class of dataset '{dataset}' (methods.{name}): "
                        f"datasets.{dataset}.target_classes is voc, the Pascal VOC classes. A dataset whose categories "
                        f"are the segmenter's own class names needs datasets.{dataset}.target_classes: categories")


def paper_rows(config: dict, paper: str) -> dict[str, str | dict[str, str]]:
    """{paper row: "method/paramset"} from report.papers.<paper>; a row mapped per dataset
    ({dataset: ref}, e.g. mmm2025's retrieval: attributes on CUB, text on Flowers) gives
    {dataset: "method/paramset"}. Every reference is checked."""
    out: dict[str, str | dict[str, str]] = {}
    for row, ref in (config.get("report", {}).get("papers") or {}).get(paper, {}).items():
        where = f"report.papers.{paper}.{row}"
        if isinstance(ref, dict):
            unknown = sorted(set(ref) - set(config.get("datasets", {})))
            if unknown:
                raise ConfigError(f"{where}: unknown dataset(s) {', '.join(unknown)} "
                                  f"(datasets: {', '.join(sorted(config.get('datasets', {})))})")
            out[row] = {}
            for dataset, dataset_ref in ref.items():
                method, paramset = resolve_ref(config, dataset_ref, f"{where}.{dataset}")
                if dataset not in config["methods"][method]["datasets"]:
                    raise ConfigError(f"{where}.{dataset}: method '{method}' does not run on dataset '{dataset}'")
                out[row][dataset] = f"{method}/{paramset}"
        else:
            out[row] = "{}/{}".format(*resolve_ref(config, ref, where))
    return out


def _check_description_sources(config: dict) -> None:
    """A description made of attribute words needs a dataset with attributes (CUB)."""
    datasets, prompts = config.get("datasets", {}), config.get("prompts", {})
    uses = [(f"methods.{name}.prompts", method["prompts"], dataset)
            for name, method in config.get("methods", {}).items() for dataset in method["datasets"]]
    if config.get("evaluation", {}).get("clip"):
        uses += [("evaluation.clip.prompts", evaluation_prompts(config, dataset), dataset)
                 for dataset in sorted({d for m in config.get("methods", {}).values() for d in m["datasets"]})]
    for where, prompt_set, dataset in uses:
        entry = prompts.get(prompt_set, {})
        if entry.get("kind") == "description" and entry.get("source") == "attributes" \
                and datasets[dataset]["format"] != "cub":
            raise ConfigError(f"{where}: prompt set '{prompt_set}' describes items by their attributes, but dataset "
                              f"'{dataset}' ({datasets[dataset]['format']}) has none (only CUB has attributes); "
                              f"use source: captions")


def fid_reference(config: dict, dataset: str) -> str:
    """What a dataset's FID compares against: "real", "real:<another dataset>", "none", or a
    method[/paramset] ref (as written in evaluation.fid.reference; a string applies to every
    dataset)."""
    reference = config["evaluation"]["fid"]["reference"]
    if isinstance(reference, dict):
        reference = reference.get(dataset, reference.get("default", "real"))
    return reference


REAL_PREFIX = "real:"


def real_reference_dataset(reference: str) -> str | None:
    """The dataset whose real images a "real:<dataset>" FID reference names, else None."""
    return reference[len(REAL_PREFIX):] if reference.startswith(REAL_PREFIX) else None


def iou_metrics(config: dict) -> dict[str, str]:
    """{IoU metric name: segmenter model key}: "iou" scored by evaluation.iou.model and, when
    set, "iou_held_out" by evaluation.iou.held_out; {} when IoU is off."""
    iou = config.get("evaluation", {}).get("iou")
    if not iou:
        return {}
    return {"iou": iou["model"], **({"iou_held_out": iou["held_out"]} if iou.get("held_out") else {})}


def evaluation_prompts(config: dict, dataset: str) -> str | None:
    """The prompt set t_sim scores a dataset's images against."""
    prompts = config["evaluation"]["clip"]["prompts"]
    if isinstance(prompts, str):
        return prompts
    return prompts.get(dataset, prompts.get("default"))


def _check_no_cycles(config: dict) -> None:
    state: dict[str, str] = {}

    def visit(name: str, path: list[str]) -> None:
        if state.get(name) == "done":
            return
        if state.get(name) == "active":
            raise ConfigError(f"methods: input cycle {' -> '.join(path + [name])}")
        state[name] = "active"
        for source, _ in method_inputs(config, name):
            visit(source, path + [name])
        state[name] = "done"

    for name in config.get("methods", {}):
        visit(name, [])


def _cast(value, default, where: str):
    """Check a parameter value against its default's type; ints are accepted for floats."""
    expected = type(default)
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
        raise ConfigError(f"{where}: expected {expected.__name__}, got {value!r}")
    return value


def method_params(config: dict, name: str) -> dict[str, Any]:
    """Module defaults overlaid with the config's params, unknown keys rejected."""
    method = config["methods"][name]
    defaults = METHOD_DEFAULTS[method["kind"]]
    params = method.get("params") or {}
    if not isinstance(params, dict):
        raise ConfigError(f"methods.{name}.params: expected a mapping, got {params!r}")
    unknown = sorted(set(params) - set(defaults))
    if unknown:
        raise ConfigError(f"methods.{name}.params: unknown parameter(s) {', '.join(unknown)} "
                          f"for kind '{method['kind']}' (known: {', '.join(sorted(defaults))})")
    return {**defaults, **{key: _cast(value, defaults[key], f"methods.{name}.params.{key}")
                           for key, value in params.items()}}


def method_paramsets(config: dict, name: str) -> dict[str, dict[str, Any]]:
    """{paramset name: resolved params} for every point of the method's sweep grid."""
    method = config["methods"][name]
    defaults = METHOD_DEFAULTS[method["kind"]]
    sweep = {}
    for key, values in (method.get("sweep") or {}).items():
        if key in defaults and isinstance(values, list):
            values = [_cast(v, defaults[key], f"methods.{name}.sweep.{key}") for v in values]
        sweep[key] = values
    return paramsets.expand(method_params(config, name), sweep, where=f"methods.{name}")


def resolve_device(config: dict) -> str:
    """The torch device string for a job (imports torch: call inside jobs only)."""
    import torch

    device = config.get("device", "auto")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device: '{device}' requested but no CUDA device is available")
    return device


def resolve_dtype(config: dict, device: str):
    """fp16 on GPU and fp32 on CPU unless the config names a dtype."""
    import torch

    dtype = config.get("dtype", "auto")
    if dtype == "auto":
        return torch.float16 if device.startswith("cuda") else torch.float32
    return getattr(torch, dtype)
