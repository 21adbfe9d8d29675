"""Stroke paintings with prompts: the inputs of GradOP+ and its SDEdit baseline.

GradOP's repository ships its example paintings as `input-images/<name>.png` and passes
the prompt on the command line (run.py --img_path ... --prompt ...). Here a dataset is a
folder of paintings plus one CSV that pairs each painting with its prompt:

    <root>/prompts.csv              header row, then one row per item:
                                      image   the painting's file name (fox.png), or a path
                                              relative to <root> (./input-images/fox.png)
                                      prompt  the text prompt (not empty)
                                      item_id optional; default: the file stem made safe
    <root>/images/<name>.png        the paintings (PNG or any format PIL reads);
                                    GradOP's own folder name input-images/ works too

`img_path` and `file_name` are accepted as names of the `image` column (run.py's
argument name and a common alternative). A bare file name is looked up in `images/`, or
in `input-images/` when there is no `images/` folder; a value with a slash is relative to
<root>. Extra columns are ignored. The same painting may appear on several rows (several
prompts for one painting) if those rows have distinct `item_id`s.

`read_strokes` returns the items table of docs/data.md: item_id, split "test",
class_id -1, class_name "", image (absolute path), captions ([prompt] as JSON),
attributes "[]", plus a `prompt` column. `make_toy_strokes` derives stroke paintings
from toy images (flat colours, then blurred) so the pipeline runs without real data.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path
from typing import Sequence

import pandas as pd
from PIL import Image, ImageFilter, ImageOps

from ctrlbench.data.readers import check_split, items_frame, require_dir, to_json
from ctrlbench.errors import DatasetError

DATASET = "strokes"
PROMPTS_CSV = "prompts.csv"
IMAGE_DIRS = ("images", "input-images")
IMAGE_COLUMNS = ("image", "img_path", "file_name")
SPLITS = ("test", "all")
EXTRA_COLUMNS = ("prompt",)
LAYOUT = (f"Expected <root>/{PROMPTS_CSV} with columns image,prompt (optional item_id) and the paintings "
          f"in <root>/images/ (or GradOP's input-images/); see ctrlbench/data/strokes.py")


def safe_item_id(text: str) -> str:
    """A file stem made safe for item ids and file names: [A-Za-z0-9._-], starting alphanumeric."""
    text = re.sub(r"[^A-Za-z0-9._-]+", "_", str(text).strip())
    text = re.sub(r"\.{2,}", ".", text)
    return re.sub(r"^[^A-Za-z0-9]+", "", text)


def _image_dir(root: Path) -> Path:
    for name in IMAGE_DIRS:
        if (root / name).is_dir():
            return root / name
    return root / IMAGE_DIRS[0]


def read_strokes(root, split: str = "test") -> pd.DataFrame:
    """The items table of the stroke dataset at `root` (layout in the module docstring)."""
    check_split(split, SPLITS, DATASET)
    root = require_dir(root, DATASET, LAYOUT).resolve()
    csv_path = root / PROMPTS_CSV
    if not csv_path.is_file():
        raise DatasetError(f"{DATASET}: missing file {csv_path}. {LAYOUT}")
    table = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    image_column = next((c for c in IMAGE_COLUMNS if c in table.columns), None)
    if image_column is None or "prompt" not in table.columns:
        raise DatasetError(f"{csv_path}: needs columns image (or {', '.join(IMAGE_COLUMNS[1:])}) and prompt; "
                           f"found {', '.join(table.columns) or 'none'}")
    image_dir = _image_dir(root)
    rows = []
    for index, record in enumerate(table.to_dict("records")):
        line = index + 2  # 1-based, after the header
        name, prompt = record[image_column].strip(), record["prompt"].strip()
        where = f"{csv_path} line {line}"
        if not name:
            raise DatasetError(f"{where}: empty {image_column}")
        if not prompt:
            raise DatasetError(f"{where}: empty prompt for image {name!r}")
        path = (root / name) if ("/" in name or "\\" in name) else (image_dir / name)
        if not path.is_file():
            raise DatasetError(f"{where}: image {path} is missing")
        item_id = safe_item_id(record.get("item_id", "").strip() or Path(name).stem)
        if not item_id:
            raise DatasetError(f"{where}: cannot make an item id from {name!r}; add an item_id column")
        rows.append({"item_id": item_id, "split": "test", "class_id": -1, "class_name": "",
                     "image": str(path.resolve()), "captions": to_json([prompt]), "attributes": "[]",
                     "prompt": prompt})
    try:
        return items_frame(rows, EXTRA_COLUMNS, DATASET)
    except DatasetError as error:
        raise DatasetError(f"{csv_path}: {error} (give repeated paintings distinct item_id values)") from None


# --- toy stroke paintings -----------------------------------------------------------------

def stroke_painting(image: Image.Image, image_size: int = 64, n_colors: int = 6,
                    blur_radius: float | None = None) -> Image.Image:
    """A coarse "user painting" of an image: square crop, flat colours, blurred edges.

    Centre-cropped to a square and resized to image_size (bicubic); quantised to
    `n_colors` flat colours (PIL median cut, no dithering); speckles removed with a mode
    filter; then a Gaussian blur of `blur_radius` pixels (default image_size / 64).
    Deterministic: the same image and arguments give the same pixels.
    """
    square = ImageOps.fit(image.convert("RGB"), (image_size, image_size), Image.BICUBIC)
    flat = square.quantize(colors=n_colors, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    flat = flat.filter(ImageFilter.ModeFilter(max(3, image_size // 16) | 1)).convert("RGB")
    radius = image_size / 64 if blur_radius is None else blur_radius
    return flat.filter(ImageFilter.GaussianBlur(radius)) if radius > 0 else flat


def make_toy_strokes(root, source_images: Sequence, prompts: Sequence[str], image_size: int = 64, *,
                     n_colors: int = 6, blur_radius: float | None = None) -> Path:
    """Write a stroke dataset at `root` from `source_images` (paths or PIL images) and `prompts`.

    One painting per source image (`stroke_painting`), saved as images/<stem>.png (the
    source file's stem made safe, or stroke_NNN for PIL images; repeated stems get -N), and
    prompts.csv with columns image, prompt, source_image (the source's file name, so the
    files do not depend on where the sources were). Built in a temporary sibling folder
    and renamed into place (replacing an earlier toy copy, never a foreign folder).
    """
    from ctrlbench.data.toy import _staged

    if len(source_images) != len(prompts):
        raise ValueError(f"toy strokes: {len(source_images)} source images for {len(prompts)} prompts")
    if not isinstance(image_size, int) or image_size < 16:
        raise ValueError(f"toy strokes: image_size must be an integer >= 16, got {image_size!r}")
    empty = [i for i, prompt in enumerate(prompts) if not str(prompt).strip()]
    if empty:
        raise ValueError(f"toy strokes: prompt {empty[0]} is empty")
    settings = {"image_size": image_size, "n_colors": n_colors, "blur_radius": blur_radius, "n": len(prompts)}
    with _staged(root, "make_toy_strokes", settings) as staging:
        (staging / "images").mkdir()
        rows, used = [], set()
        for i, (source, prompt) in enumerate(zip(source_images, prompts)):
            if isinstance(source, Image.Image):
                image, stem, origin = source, f"stroke_{i:03d}", ""
            else:
                path = Path(source)
                try:
                    with Image.open(path) as opened:
                        image = opened.convert("RGB")
                except OSError as error:
                    raise DatasetError(f"toy strokes: cannot read source image {path}: {error}") from None
                stem, origin = safe_item_id(path.stem) or f"stroke_{i:03d}", path.name
            name, k = stem, 1
            while name in used:
                name, k = f"{stem}-{k}", k + 1
            used.add(name)
            stroke_painting(image, image_size, n_colors, blur_radius).save(staging / "images" / f"{name}.png")
            rows.append([f"{name}.png", str(prompt).strip(), origin])
        with open(staging / PROMPTS_CSV, "w", encoding="utf-8", newline="") as handle:
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(["image", "prompt", "source_image"])
            writer.writerows(rows)
    return Path(root)
