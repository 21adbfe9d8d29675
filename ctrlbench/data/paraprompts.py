"""Reader for ParaPrompts-400 (dataset format "paraprompts"): the paragraph-long prompts
that ParaDiffusion (Wu et al., 2023) evaluates on, https://github.com/weijiawu/ParaDiffusion,
folder ParaPrompts-400/.

`root` is ParaPrompts_400.csv itself or the folder holding it. The file is a UTF-8 CSV
with the header `Image,Prompt,Category,Prompt_Chinese` (Prompt_Chinese optional), one
row per prompt; cells holding commas are quoted (quoted cells may also hold line
breaks). `Image` names the photo the paragraph describes (`<32 hex digits>.JPEG`); the
photos are not distributed, so items have no image.

One item per row: item_id = the Image file name without its extension, image "",
captions = [Prompt], class_id -1, class_name = Category, attributes []; extra columns
category, prompt_chinese ("" when the column is absent) and source_image (the Image cell).
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from ctrlbench.data.prompt_list import SPLITS, csv_rows, read_text
from ctrlbench.data.readers import ITEM_ID_PATTERN, check_split, items_frame, malformed, to_json
from ctrlbench.errors import DatasetError

DATASET = "paraprompts"
FILE_NAME = "ParaPrompts_400.csv"
COLUMNS = ("Image", "Prompt", "Category", "Prompt_Chinese")  # the real file's header, in its order
REQUIRED_COLUMNS = ("Image", "Prompt", "Category")
EXTRA_COLUMNS = ("category", "prompt_chinese", "source_image")
LAYOUT = (f"Expected {FILE_NAME} (UTF-8 CSV with the header {','.join(COLUMNS)}; Prompt_Chinese optional) "
          f"or a folder holding it; get it from https://github.com/weijiawu/ParaDiffusion, folder ParaPrompts-400/")


def read_paraprompts(root, split: str = "all") -> pd.DataFrame:
    """Items table of ParaPrompts-400 at `root` (see the module docstring).

    Every item gets split = `split` (the set has no splits: the value only labels the
    items). Problems raise a DatasetError naming the file and, where it applies, the line
    where the offending row starts.
    """
    check_split(split, SPLITS, DATASET)
    path = paraprompts_file(root)
    rows = csv_rows(path, read_text(path, DATASET), DATASET)
    first = next(rows, None)
    header = [name.strip() for name in first[1]] if first else []
    if not header:
        raise DatasetError(f"{DATASET}: {path} is empty. {LAYOUT}")
    missing = [name for name in REQUIRED_COLUMNS if name not in header]
    if missing:
        raise DatasetError(f"{DATASET}: {path} line {first[0]}: missing column(s) {', '.join(missing)} "
                           f"(columns: {', '.join(header)}). {LAYOUT}")
    items, seen = [], {}
    for line, cells in rows:
        if not any(cell.strip() for cell in cells):
            continue  # a blank line
        # A count that differs from the header's usually means a quote left open or a stray comma.
        if len(cells) != len(header):
            raise malformed(path, line, f"{len(cells)} fields where the header has {len(header)} "
                                        f"(a quote not closed, or a comma outside quotes?)")
        row = {name: cell.strip() for name, cell in zip(header, cells)}
        image, prompt = row["Image"], row["Prompt"]
        if not image:
            raise malformed(path, line, "empty Image")
        if not prompt:
            raise malformed(path, line, f"empty Prompt (Image {image})")
        item_id = os.path.splitext(image)[0]
        if not ITEM_ID_PATTERN.match(item_id):
            raise malformed(path, line, "the Image name without its extension is the item id and may "
                                        "only use [A-Za-z0-9._-]", image)
        if item_id in seen:
            raise malformed(path, line, f"item id {item_id} (Image {image}) is already used on line {seen[item_id]}")
        seen[item_id] = line
        items.append({"item_id": item_id, "split": split, "class_id": -1, "class_name": row["Category"],
                      "image": "", "captions": to_json([prompt]), "attributes": to_json([]),
                      "category": row["Category"], "prompt_chinese": row.get("Prompt_Chinese", ""),
                      "source_image": image})
    if not items:
        raise DatasetError(f"{DATASET}: {path} holds a header but no prompt rows. {LAYOUT}")
    return items_frame(items, EXTRA_COLUMNS, DATASET)


def paraprompts_file(root) -> Path:
    """The CSV that `root` names: the file itself, or ParaPrompts_400.csv in the folder `root`."""
    path = Path(root)
    if path.is_dir():
        if (path / FILE_NAME).is_file():
            return path / FILE_NAME
        # A clone of the ParaDiffusion repository keeps the file one folder down.
        hint = (f" (it is in {path / 'ParaPrompts-400'}: use that folder as the root)"
                if (path / "ParaPrompts-400" / FILE_NAME).is_file() else "")
        raise DatasetError(f"{DATASET}: folder {path} holds no {FILE_NAME}{hint}. {LAYOUT}")
    if not path.exists():
        raise DatasetError(f"{DATASET}: {path} does not exist. {LAYOUT}")
    return path
