"""Index files of each dataset format, without reading them (cheap, for the Snakefile).

Declaring them as inputs of the items step makes Snakemake rerun it when a real
dataset's index changes (e.g. images were added).
"""

from __future__ import annotations

from pathlib import Path

INDEX_FILES = {
    "cub": ("images.txt", "image_class_labels.txt", "train_test_split.txt",
            "classes.txt", "attributes/image_attribute_labels.txt"),
    "flowers": ("imagelabels.mat", "setid.mat"),
    "coco": ("annotations/instances_val2017.json", "annotations/instances_train2017.json"),
    "strokes": ("prompts.csv",),
    "prompts": ("prompts.txt", "prompts.csv"),  # when root is a folder; a file root is its own index
    "paraprompts": ("ParaPrompts_400.csv",),
}


def dataset_index_files(fmt: str, root: str) -> list[str]:
    base = Path(root)
    if fmt in ("prompts", "paraprompts") and base.is_file():
        return [str(base)]
    if fmt == "cub" and (base / "CUB_200_2011").is_dir():
        base = base / "CUB_200_2011"
    return [str(base / name) for name in INDEX_FILES.get(fmt, ()) if (base / name).exists()]
