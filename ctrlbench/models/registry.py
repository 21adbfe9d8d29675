"""Where each configured model comes from, without importing torch.

A model entry is {kind, source[, arch, revision]}; source is "tiny" (a random-weight
stand-in that the tiny_model rule builds under <results_dir>/models/tiny/<key>), a
local path, or a Hugging Face id / library tag.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import ConfigError

TINY = "tiny"
MODEL_KINDS = ("sd", "controlnet", "sd_inpaint", "open_clip", "deeplabv3", "aesthetic", "fid_inception",
               "causal_lm", "text_embedder", "paradiffusion", "vqmodel")
# torchvision segmenters that kind deeplabv3 builds (`arch`): each has COCO_WITH_VOC_LABELS_V1
# weights (21 VOC classes) and the same {"out": logits} output.
SEGMENTER_ARCHS = ("deeplabv3_resnet50", "deeplabv3_resnet101", "deeplabv3_mobilenet_v3_large",
                   "fcn_resnet50", "fcn_resnet101")


def model_entry(config: dict, key: str) -> dict:
    try:
        return config["models"][key]
    except KeyError:
        known = ", ".join(sorted(config.get("models", {}))) or "none"
        raise ConfigError(f"unknown model '{key}' (models: {known})") from None


def is_tiny(config: dict, key: str) -> bool:
    return model_entry(config, key)["source"] == TINY


def tiny_dir(config: dict, key: str) -> str:
    return str(Path(config["results_dir"]) / "models" / "tiny" / key)


def model_source(config: dict, key: str) -> str:
    """The path or id a loader reads: the tiny build folder for tiny models."""
    entry = model_entry(config, key)
    return tiny_dir(config, key) if entry["source"] == TINY else entry["source"]


def model_inputs(config: dict, *keys: str) -> list[str]:
    """Snakemake inputs for the given models: tiny builds are produced by a rule;
    real models are checked by their loader when the job starts."""
    return [tiny_dir(config, key) for key in keys if is_tiny(config, key)]
