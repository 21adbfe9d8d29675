"""`read_dataset` (dispatch on the dataset format) and the helpers the readers share.

Every reader returns the items table described in docs/data.md: one row per image, the
columns of ITEM_COLUMNS first (in that order), then the dataset's extra columns, rows
sorted by item_id. Every problem with the files on disk is a DatasetError that names the
file and, where it applies, the line.
"""

from __future__ import annotations

import importlib
import json
import os
import re
from pathlib import Path
from typing import Iterable, Iterator

import pandas as pd

from ctrlbench import io
from ctrlbench.data import ITEM_COLUMNS
from ctrlbench.errors import ConfigError, DatasetError

# Readers are imported on first use: reading CUB should not import pycocotools, and the
# reader modules import the helpers below (importing them eagerly here would be a cycle).
_READERS = {
    "cub": ("ctrlbench.data.cub", "read_cub", "test"),
    "flowers": ("ctrlbench.data.flowers", "read_flowers", "test"),
    "coco": ("ctrlbench.data.coco", "read_coco", "val"),
    "strokes": ("ctrlbench.data.strokes", "read_strokes", "test"),
    "prompts": ("ctrlbench.data.prompt_list", "read_prompts", "all"),
    "paraprompts": ("ctrlbench.data.paraprompts", "read_paraprompts", "all"),
}

ITEM_ID_PATTERN = re.compile(r"^[A-Za-z0-9._-]+$")


def read_dataset(fmt: str, root, split: str | None = None, layout: str | None = None) -> pd.DataFrame:
    """Read dataset `fmt` ("cub" | "flowers" | "coco" | "strokes" | "prompts" |
    "paraprompts") under `root` as an items table.

    `split` defaults to the dataset's evaluation split ("test"; "val" for COCO; "all" for
    a prompt list or ParaPrompts, which have no splits). `layout` (Flowers only: "auto" |
    "oxford" | "kaggle"; None = "auto") names the on-disk layout.
    """
    if fmt not in _READERS:
        raise DatasetError(f"unknown dataset format {fmt!r}; expected one of {sorted(_READERS)}")
    if layout is not None and fmt != "flowers":
        raise ConfigError(f"layout applies to Flowers datasets only (format 'flowers'), not format {fmt!r}")
    module_name, function_name, default_split = _READERS[fmt]
    reader = getattr(importlib.import_module(module_name), function_name)
    options = {} if layout is None else {"layout": layout}
    return reader(root, split=default_split if split is None else split, **options)


# --- checks -----------------------------------------------------------------------------

def check_split(split: str, allowed: Iterable[str], dataset: str) -> None:
    allowed = tuple(allowed)
    if split not in allowed:
        raise DatasetError(f"{dataset}: unknown split {split!r}; expected one of {list(allowed)}")


def require_dir(path, dataset: str, layout: str) -> Path:
    path = Path(path)
    if not path.is_dir():
        what = "is not a folder" if path.exists() else "does not exist"
        raise DatasetError(f"{dataset} root {path} {what}. {layout}")
    return path


def require_file(path, dataset: str, layout: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{dataset}: missing file {path}. {layout}")
    return path


def require_images_exist(paths: Iterable[str], listed_in: str, dataset: str) -> None:
    """Fail on the first image that an index file lists but that is not on disk."""
    for path in paths:
        if not os.path.isfile(path):
            raise DatasetError(f"{dataset}: image {path} is listed in {listed_in} but the file is missing")


# --- parsing ------------------------------------------------------------------------------

def read_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, stripped line) for every non-blank line; line numbers are 1-based."""
    with open(path, encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, start=1):
            line = line.strip()
            if line:
                yield number, line


def malformed(path, line_number: int, problem: str, line: str | None = None) -> DatasetError:
    shown = f": {line[:120]!r}" if line is not None else ""
    return DatasetError(f"{path} line {line_number}: {problem}{shown}")


def read_index(path: Path, fields: tuple[str, ...]) -> Iterator[tuple[int, list[str]]]:
    """Whitespace-separated index file with exactly len(fields) columns per line.

    The last column takes the rest of the line, so paths with spaces survive.
    """
    expected = " ".join(f"<{name}>" for name in fields)
    for number, line in read_lines(path):
        parts = line.split(maxsplit=len(fields) - 1)
        if len(parts) != len(fields):
            raise malformed(path, number, f"expected {expected}", line)
        yield number, parts


def parse_int(path: Path, line_number: int, text: str, what: str, line: str | None = None) -> int:
    try:
        return int(text)
    except ValueError:
        raise malformed(path, line_number, f"{what} must be an integer, got {text!r}", line) from None


def read_int_map(path: Path, key: str, value: str, allowed: tuple[int, ...] | None = None) -> dict[int, int]:
    """Index file of '<key> <value>' integer pairs, e.g. image_class_labels.txt."""
    mapping: dict[int, int] = {}
    for number, (key_text, value_text) in read_index(path, (key, value)):
        key_id = parse_int(path, number, key_text, key)
        if key_id in mapping:
            raise malformed(path, number, f"{key} {key_id} appears twice")
        mapping[key_id] = parse_int(path, number, value_text, value)
        if allowed is not None and mapping[key_id] not in allowed:
            raise malformed(path, number, f"{value} must be one of {list(allowed)}, got {value_text!r}")
    return mapping


def load_json_object(path: Path, dataset: str, layout: str) -> dict:
    """The top-level JSON object of `path`; bad JSON is reported with its line and column."""
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except json.JSONDecodeError as error:
        raise DatasetError(f"{dataset}: {path} line {error.lineno} column {error.colno}: "
                           f"invalid JSON: {error.msg}") from None
    except UnicodeDecodeError as error:
        raise DatasetError(f"{dataset}: {path} is not valid UTF-8 ({error.reason})") from None
    except OSError as error:
        raise DatasetError(f"{dataset}: cannot read {path}: {error}. {layout}") from None
    if not isinstance(data, dict):
        raise DatasetError(f"{dataset}: {path} must hold a JSON object at the top level")
    return data


def read_captions(path: Path) -> list[str]:
    """Caption lines of one text_c10 file; [] when the file does not exist (captions are optional)."""
    if not path.is_file():
        return []
    return [line for _, line in read_lines(path)]


# --- the items table ----------------------------------------------------------------------

def to_json(value) -> str:
    return json.dumps(value, ensure_ascii=False)


def _safe_id(item_id) -> bool:
    """An item id usable as a file name (ctrlbench.io.safe_name)."""
    try:
        io.safe_name(item_id)
    except ValueError:
        return False
    return isinstance(item_id, str)


def items_frame(rows: list[dict], extra_columns: tuple[str, ...], dataset: str) -> pd.DataFrame:
    """Build the items table: contract columns first, sorted by item_id, ids unique and safe."""
    columns = list(ITEM_COLUMNS) + list(extra_columns)
    frame = pd.DataFrame(rows, columns=columns)
    bad = [item_id for item_id in frame["item_id"] if not _safe_id(item_id)]
    if bad:
        raise DatasetError(f"{dataset}: item ids may only use [A-Za-z0-9._-], start with a letter or digit "
                           f"and hold no '..' (they name files); got {bad[:5]}")
    duplicated = frame["item_id"][frame["item_id"].duplicated()].tolist()
    if duplicated:
        raise DatasetError(f"{dataset}: item ids are not unique: {sorted(set(duplicated))[:5]}")
    frame["class_id"] = frame["class_id"].astype("int64")
    return frame.sort_values("item_id", kind="stable").reset_index(drop=True)
