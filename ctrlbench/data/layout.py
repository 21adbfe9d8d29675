"""Index files of each dataset format, without reading them (cheap, for the Snakefile).

Declaring them as inputs of the items step makes Snakemake rerun it when a real
dataset's index changes (e.g. images were added).

The Flowers on-disk layouts are recognised here too (only folder listings, no reads), so
that the reader and the Snakefile agree on which files index a Flowers dataset.
"""

from __future__ import annotations

from pathlib import Path

INDEX_FILES = {
    "cub": ("images.txt", "image_class_labels.txt", "train_test_split.txt",
            "classes.txt", "attributes/image_attribute_labels.txt"),
    "flowers": ("imagelabels.mat", "setid.mat"),  # the Oxford layout; Kaggle: kaggle_index_files
    "coco": ("annotations/instances_val2017.json", "annotations/instances_train2017.json"),
    "strokes": ("prompts.csv",),
    "prompts": ("prompts.txt", "prompts.csv"),  # when root is a folder; a file root is its own index
    "paraprompts": ("ParaPrompts_400.csv",),
}

# Flowers-102 layouts: `layout` in a flowers dataset's config entry ("auto" when absent).
FLOWERS_LAYOUTS = ("auto", "oxford", "kaggle")
OXFORD_MARKERS = ("imagelabels.mat", "setid.mat", "jpg")
# The Kaggle "pytorch challenge" copy: one folder per split, one subfolder per class.
KAGGLE_SPLIT_DIRS = {"train": "train", "val": "valid", "test": "test"}
KAGGLE_CLASS_NAMES = "cat_to_name.json"


def dataset_index_files(fmt: str, root: str, layout: str | None = None) -> list[str]:
    base = Path(root)
    if fmt in ("prompts", "paraprompts") and base.is_file():
        return [str(base)]
    if fmt == "cub" and (base / "CUB_200_2011").is_dir():
        base = base / "CUB_200_2011"
    if fmt == "flowers" and flowers_layouts_found(base, layout or "auto") == ["kaggle"]:
        return kaggle_index_files(base)
    return [str(base / name) for name in INDEX_FILES.get(fmt, ()) if (base / name).exists()]


def flowers_layouts_found(root: Path, layout: str = "auto") -> list[str]:
    """The Flowers layouts `root` shows signs of ("oxford", "kaggle"), restricted to `layout`
    unless it is "auto". A partial layout counts, so that its reader can name what is missing."""
    found = []
    if any((root / name).exists() for name in OXFORD_MARKERS):
        found.append("oxford")
    if kaggle_bases(root):
        found.append("kaggle")
    return found if layout == "auto" else [name for name in found if name == layout]


def kaggle_bases(root: Path) -> list[Path]:
    """The folders holding the Kaggle split folders: `root` itself, else those of its
    subfolders that do (the download unpacks to dataset/ or flower_data/ beside
    cat_to_name.json)."""
    if _holds_splits(root):
        return [root]
    if not root.is_dir():
        return []
    return sorted(child for child in root.iterdir() if child.is_dir() and _holds_splits(child))


def kaggle_beside(base: Path, name: str) -> Path | None:
    """`name` in the folder holding the split folders or, failing that, in its parent."""
    for folder in (base, base.parent):
        if (folder / name).exists():
            return folder / name
    return None


def kaggle_index_files(root: Path) -> list[str]:
    bases = kaggle_bases(root)
    found = kaggle_beside(bases[0], KAGGLE_CLASS_NAMES) if len(bases) == 1 else None
    return [str(found)] if found else []


def _holds_splits(folder: Path) -> bool:
    return any((folder / KAGGLE_SPLIT_DIRS[split]).is_dir() for split in ("train", "val"))
