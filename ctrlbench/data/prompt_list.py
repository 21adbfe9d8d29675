"""Reader for prompt lists (dataset format "prompts"): text-only items, e.g. the panorama
prompts of MultiDiffusion, later ParaPrompts-like sets.

`root` is one of

    prompts.txt    UTF-8, one prompt a line; blank lines and lines starting with # are skipped
    prompts.csv    UTF-8 with a header: a `prompt` column, optional `category` and `item_id`
    a folder       holding prompts.txt or prompts.csv (how toy datasets are passed)

Every prompt is one item: item_id = the CSV's item_id, else the first 12 hex digits of
sha1(prompt), so ids stay put when prompts are added or reordered; image "" (there is
no reference image), captions = [prompt], class_id -1, class_name = category (or "").
"""

from __future__ import annotations

import csv
import hashlib
import io
from pathlib import Path
from typing import Iterator

import pandas as pd

from ctrlbench.data.readers import ITEM_ID_PATTERN, check_split, items_frame, malformed, to_json
from ctrlbench.errors import DatasetError

SPLITS = ("train", "val", "test", "all")  # a prompt list has no splits: the value only labels the items
EXTRA_COLUMNS = ("category",)
FILE_NAMES = ("prompts.txt", "prompts.csv")
LAYOUT = ("Expected a UTF-8 .txt file with one prompt a line, a .csv file with a 'prompt' column "
          "(optional 'category', 'item_id'), or a folder holding prompts.txt or prompts.csv")


def prompt_id(prompt: str) -> str:
    """The item id of a prompt without a given id: sha1 of its UTF-8 text, 12 hex digits."""
    return hashlib.sha1(prompt.encode("utf-8")).hexdigest()[:12]


def read_prompts(root, split: str = "all") -> pd.DataFrame:
    """Items table of the prompt list at `root` (see the module docstring).

    Every item gets split = `split`. Missing or empty files, a CSV without a `prompt`
    column, an empty prompt, a bad or duplicate id and a duplicate prompt raise a
    DatasetError naming the file and the line.
    """
    check_split(split, SPLITS, "prompts")
    path = prompts_file(root)
    entries = _read_csv(path) if path.suffix.lower() == ".csv" else _read_txt(path)
    if not entries:
        raise DatasetError(f"prompts: {path} holds no prompt. {LAYOUT}")
    seen_prompts: dict[str, int] = {}
    seen_ids: dict[str, int] = {}
    rows = []
    for line, prompt, category, item_id in entries:
        if prompt in seen_prompts:
            raise malformed(path, line, f"duplicate prompt (first on line {seen_prompts[prompt]})", prompt)
        seen_prompts[prompt] = line
        item_id = item_id or prompt_id(prompt)
        if not ITEM_ID_PATTERN.match(item_id):
            raise malformed(path, line, "item_id may only use [A-Za-z0-9._-]", item_id)
        if item_id in seen_ids:
            raise malformed(path, line, f"item_id {item_id} is already used on line {seen_ids[item_id]}")
        seen_ids[item_id] = line
        rows.append({"item_id": item_id, "split": split, "class_id": -1, "class_name": category,
                     "image": "", "captions": to_json([prompt]), "attributes": to_json([]),
                     "category": category})
    return items_frame(rows, EXTRA_COLUMNS, "prompts")


def prompts_file(root) -> Path:
    """The prompt file that `root` names: the file itself, or prompts.txt / prompts.csv in
    the folder `root`."""
    path = Path(root)
    if path.is_dir():
        found = [path / name for name in FILE_NAMES if (path / name).is_file()]
        if not found:
            raise DatasetError(f"prompts: folder {path} holds neither prompts.txt nor prompts.csv. {LAYOUT}")
        if len(found) > 1:
            raise DatasetError(f"prompts: folder {path} holds both prompts.txt and prompts.csv; "
                               f"name the file to use as the dataset root")
        return found[0]
    if not path.exists():
        raise DatasetError(f"prompts: {path} does not exist. {LAYOUT}")
    if path.suffix.lower() not in (".txt", ".csv"):
        raise DatasetError(f"prompts: {path} is neither a .txt nor a .csv file. {LAYOUT}")
    return path


def read_text(path: Path, dataset: str = "prompts") -> str:
    """The UTF-8 text of `path`; a DatasetError (prefixed `dataset`) names the line of the
    first byte that is not UTF-8."""
    try:
        # utf-8-sig: spreadsheet programs often start a CSV with a byte-order mark
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as error:
        line = path.read_bytes()[:error.start].count(b"\n") + 1
        raise DatasetError(f"{dataset}: {path} line {line}: not valid UTF-8 ({error.reason})") from None
    except OSError as error:
        raise DatasetError(f"{dataset}: cannot read {path}: {error}") from None


def csv_rows(path: Path, text: str, dataset: str = "prompts") -> Iterator[tuple[int, list[str]]]:
    """(line number, cells) of every record of the CSV `text` read from `path`, the header
    included; a blank line gives []. Quoted cells may hold commas and line breaks, so the
    whole text goes to the csv module (not text.splitlines()) and the number is the line
    where the record starts. A csv.Error becomes a DatasetError naming the line."""
    reader = csv.reader(io.StringIO(text, newline=""))
    while True:
        first_line = reader.line_num + 1
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as error:
            raise DatasetError(f"{dataset}: {path} line {reader.line_num}: {error}") from None
        yield first_line, cells


def _read_txt(path: Path) -> list[tuple[int, str, str, str]]:
    """(line number, prompt, category "", item_id "") of every prompt line."""
    entries = []
    for number, line in enumerate(read_text(path).splitlines(), start=1):
        line = line.strip()
        if line and not line.startswith("#"):
            entries.append((number, line, "", ""))
    return entries


def _read_csv(path: Path) -> list[tuple[int, str, str, str]]:
    """(line number, prompt, category, item_id) of every data row; an empty item_id cell
    means the prompt's hash id."""
    rows = csv_rows(path, read_text(path))
    first = next(rows, None)
    header = [name.strip() for name in first[1]] if first else []
    if not header:
        raise DatasetError(f"prompts: {path} is empty; it needs a header with a 'prompt' column. {LAYOUT}")
    if "prompt" not in header:
        raise DatasetError(f"prompts: {path} line 1: no 'prompt' column (columns: {header}). {LAYOUT}")
    entries = []
    for number, cells in rows:
        row = dict(zip(header, cells))  # cells beyond the header are ignored, missing ones read as ""
        if not any(value.strip() for value in row.values()):
            continue  # a blank line
        prompt = row.get("prompt", "").strip()
        if not prompt:
            raise malformed(path, number, "empty prompt")
        entries.append((number, prompt, row.get("category", "").strip(), row.get("item_id", "").strip()))
    return entries
