"""Image grids: per item (one row each), the input, what the method started from, and
its outputs, so a reader sees what each method did.

Columns, left to right (a column is left out when no row of the grid has an image for it):

  input           the item's real image: items.csv `image` (absolute path, "" when none)
  base            ControlNet's `base_image` (relative to the base folder that the shard's
                  params.json names as `base_dir`; the shard folder when it names none)
  canny           ControlNet's `canny` control map
  masks           the region masks (`masks`: JSON list of {class, path}) drawn as one
                  colour map, one fixed colour per mask in list order
  then per output slot k = 0 .. max_samples-1:
  stage1 k        TCIG's `stage1_image` of that sample
  background k    the region-editing baselines' (SI, BLD) `background` of that sample
  sample k        the k-th output of the item (by `sample`): the manifest's `image`, or
                  for MultiDiffusion panoramas its `panorama` (one per sample; the crops
                  in `image` are what the metrics read and are not shown)

Paths are relative to the shard folder unless said otherwise. Other manifest columns
(e.g. selection's `selected_method`) are not images and are not shown. An item with
several inputs (ControlNet with base_samples > 1) shows its first input (lowest
base_sample) and that input's outputs only.

Rows are the first `max_items` item ids of the shard(s) in sorted order. Every cell is
cell x cell pixels with a PAD-pixel white border; each image is resized (up or down,
Lanczos) to fit inside the border keeping its aspect ratio and centred on white; a
missing cell is light grey. Above the cells is a header row
(HEADER_HEIGHT pixels) with the column labels in PIL's default font. The image format
follows the output's suffix: .png (lossless; the default the report uses) or
.jpg/.jpeg (JPEG quality 90, much smaller for photographs). The same inputs give the
same bytes. A shard without images gives a small placeholder saying "no images".

Sidecar `<out>.csv` (SIDECAR_COLUMNS), one row per grid row: row (0-based), item_id,
prompt (the manifest prompt of the row's first output), columns (JSON list of the
column labels, the same for every row) and images (JSON list of the file shown in each
column, "" for a blank cell).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageFont

from .. import io
from ..errors import InputError
from ..metrics.embeddings import open_rgb

# (manifest column, label): images that belong to the item's input, shown once per row.
ITEM_COLUMNS = [("base_image", "base"), ("canny", "canny"), ("masks", "masks")]
# (manifest column, label): intermediate images of one sample, shown before its output.
SAMPLE_COLUMNS = [("stage1_image", "stage1"), ("background", "background")]
PANORAMA_COLUMN = "panorama"
SIDECAR_COLUMNS = ["row", "item_id", "prompt", "columns", "images"]
HEADER_HEIGHT = 20
PAD = 1  # white border inside every cell, so neighbouring images stay apart
BLANK = (230, 230, 230)
BACKGROUND = (255, 255, 255)
TEXT = (0, 0, 0)
JPEG_QUALITY = 90
# Mask colours (in list order), distinguishable on black.
PALETTE = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
           (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212)]


def _read_manifests(shard_dirs: list[str]) -> pd.DataFrame:
    frames = []
    for folder in shard_dirs:
        manifest = io.read_manifest(folder, ["item_id", "sample", "image"], "manifest")
        frames.append(manifest.assign(_dir=str(folder), _base_dir=_base_dir(folder)))
    frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    if len(frame):
        frame["sample"] = pd.to_numeric(frame["sample"])
    return frame


def _base_dir(folder) -> str:
    """The folder ControlNet's base_image paths are relative to (params.json base_dir)."""
    params = Path(folder) / "params.json"
    if params.is_file():
        try:
            base = json.loads(params.read_text(encoding="utf-8")).get("base_dir")
        except (json.JSONDecodeError, AttributeError):
            base = None
        if base:
            return str(base)
    return str(folder)


def _present(frame: pd.DataFrame, column: str) -> bool:
    return column in frame and (frame[column].astype(str) != "").any()


def _fit(image: Image.Image | None, cell: int) -> Image.Image:
    """A cell: `image` fitted into the cell less its PAD border (None: a blank cell)."""
    out = Image.new("RGB", (cell, cell), BACKGROUND)
    inner = cell - 2 * PAD
    if image is None:
        out.paste(Image.new("RGB", (inner, inner), BLANK), (PAD, PAD))
        return out
    scale = min(inner / image.width, inner / image.height)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    if size != image.size:
        image = image.resize(size, Image.LANCZOS)
    out.paste(image, ((cell - size[0]) // 2, (cell - size[1]) // 2))
    return out


def _mask_map(shard_dir: str, masks_json: str) -> Image.Image:
    try:
        entries = json.loads(masks_json)
    except json.JSONDecodeError as error:
        raise InputError(f"manifest of {shard_dir}: masks column is not JSON ({error}): {masks_json[:80]!r}") from None
    canvas = None
    for k, entry in enumerate(entries):
        mask = np.asarray(open_rgb(Path(shard_dir) / entry["path"]).convert("L")) > 127
        if canvas is None:
            canvas = np.zeros(mask.shape + (3,), np.uint8)
        if mask.shape != canvas.shape[:2]:
            raise InputError(f"mask {Path(shard_dir) / entry['path']} is {mask.shape[1]}x{mask.shape[0]}, "
                             f"the item's first mask {canvas.shape[1]}x{canvas.shape[0]}")
        canvas[mask] = PALETTE[k % len(PALETTE)]
    return Image.fromarray(canvas if canvas is not None else np.zeros((8, 8, 3), np.uint8))


def _label(draw: ImageDraw.ImageDraw, font, text: str, x: int, width: int) -> None:
    while text and draw.textlength(text, font=font) > width - 4:
        text = text[:-3] + ".." if len(text) > 3 else text[:-1]
    w = draw.textlength(text, font=font)
    draw.text((x + (width - w) / 2, HEADER_HEIGHT / 2), text, fill=TEXT, font=font, anchor="lm")


def _save(image: Image.Image, out_png) -> None:
    path = Path(out_png)
    jpeg = path.suffix.lower() in (".jpg", ".jpeg")
    with io.atomic_path(path) as tmp:
        if jpeg:
            image.save(tmp, format="JPEG", quality=JPEG_QUALITY)
        else:
            image.save(tmp, format="PNG")


def _rows(manifest: pd.DataFrame, items: dict[str, str], max_items: int, max_samples: int):
    """[(item_id, prompt, {label: (kind, path)})] and the column labels in order."""
    item_cols = [(c, label) for c, label in ITEM_COLUMNS if _present(manifest, c)]
    sample_cols = [(c, label) for c, label in SAMPLE_COLUMNS if _present(manifest, c)]
    panorama = _present(manifest, PANORAMA_COLUMN)
    rows = []
    for item_id in sorted(set(manifest["item_id"]))[:max_items]:
        part = manifest[manifest["item_id"] == item_id]
        order = ["base_sample", "sample"] if "base_sample" in part else ["sample"]
        part = part.sort_values(order, kind="stable")
        first = part.iloc[0]
        # One input per row: the outputs that share the first row's input images.
        for column, _ in item_cols:
            part = part[part[column].astype(str) == str(first[column])]
        cells = {}
        if items.get(item_id):
            cells["input"] = ("image", items[item_id])
        for column, label in item_cols:
            value = str(first[column])
            if value:
                if column == "masks":
                    cells[label] = ("masks", (first["_dir"], value))
                else:
                    root = first["_base_dir"] if column == "base_image" else first["_dir"]
                    cells[label] = ("image", str(Path(root) / value))
        output = part.assign(_out=part[PANORAMA_COLUMN].astype(str).where(part[PANORAMA_COLUMN].astype(str) != "",
                                                                           part["image"].astype(str))
                             if panorama else part["image"].astype(str))
        output = output.drop_duplicates(["sample", "_out"]).head(max_samples)
        for k, (_, row) in enumerate(output.iterrows()):
            for column, label in sample_cols:
                if str(row[column]):
                    cells[f"{label} {k}"] = ("image", str(Path(row["_dir"]) / str(row[column])))
            cells[f"sample {k}"] = ("image", str(Path(row["_dir"]) / row["_out"]))
        rows.append((item_id, str(first.get("prompt", "")), cells))
    n_out = max((sum(label.startswith("sample ") for label in cells) for *_, cells in rows), default=0)
    labels = ["input"] + [label for _, label in item_cols]
    for k in range(n_out):
        labels += [f"{label} {k}" for _, label in sample_cols] + [f"sample {k}"]
    labels = [label for label in labels if any(label in cells for *_, cells in rows)]
    return rows, labels


def _placeholder(cell: int) -> Image.Image:
    image = Image.new("RGB", (2 * cell, max(HEADER_HEIGHT, cell // 2)), BLANK)
    draw = ImageDraw.Draw(image)
    draw.text((image.width / 2, image.height / 2), "no images", fill=TEXT, font=ImageFont.load_default(),
              anchor="mm")
    return image


def make_grid(shard_dirs: list[str], items_csv: str | None, out_png: str, *, max_items: int = 4,
              max_samples: int = 4, cell: int = 128) -> pd.DataFrame:
    """Draw the grid of the method shard folder(s) `shard_dirs` (each with manifest.csv)
    into `out_png` and write the sidecar `out_png` with suffix .csv; returns the sidecar
    table. `items_csv` (the dataset's items table) gives the input column; None leaves it out."""
    if max_items < 1 or max_samples < 1 or cell < 8:
        raise ValueError(f"make_grid: max_items and max_samples must be >= 1 and cell >= 8, got "
                         f"{max_items}, {max_samples}, {cell}")
    manifest = _read_manifests(list(shard_dirs))
    items = {}
    if items_csv is not None:
        table = io.read_table(items_csv, ["item_id"], "items table")
        if "image" in table:
            items = dict(zip(table["item_id"], table["image"].astype(str)))
    sidecar = Path(out_png).with_suffix(".csv")
    if not len(manifest):
        _save(_placeholder(cell), out_png)
        frame = pd.DataFrame(columns=SIDECAR_COLUMNS)
        io.write_csv(sidecar, frame)
        return frame
    rows, labels = _rows(manifest, items, max_items, max_samples)
    grid = Image.new("RGB", (cell * len(labels), HEADER_HEIGHT + cell * len(rows)), BACKGROUND)
    draw = ImageDraw.Draw(grid)
    font = ImageFont.load_default()
    for j, label in enumerate(labels):
        _label(draw, font, label, j * cell, cell)
    records = []
    for i, (item_id, prompt, cells) in enumerate(rows):
        shown = []
        for j, label in enumerate(labels):
            box = (j * cell, HEADER_HEIGHT + i * cell)
            if label not in cells:
                grid.paste(_fit(None, cell), box)
                shown.append("")
                continue
            kind, source = cells[label]
            image = _mask_map(*source) if kind == "masks" else open_rgb(source)
            grid.paste(_fit(image, cell), box)
            shown.append(source if kind == "image" else str(source[1]))
        records.append({"row": i, "item_id": item_id, "prompt": prompt, "columns": json.dumps(labels),
                        "images": json.dumps(shown)})
    _save(grid, out_png)
    frame = pd.DataFrame(records, columns=SIDECAR_COLUMNS)
    io.write_csv(sidecar, frame)
    return frame


def grid_name(dataset: str, method: str, paramset: str) -> str:
    """The grid file of one run: `<dataset>__<method>__<paramset>.jpg` (the HTML report
    takes its heading from this name; JPEG keeps the self-contained page a few MB). Parameter-set names are folder names already
    (e.g. strength=0.6__grad_steps_per_iter=2), never holding a "/"."""
    if "/" in paramset or ".." in paramset:
        raise ValueError(f"unsafe parameter set name {paramset!r}")
    return f"{io.safe_name(dataset)}__{io.safe_name(method)}__{paramset}.jpg"


def make_grids(runs: list[dict], items_csv: str | None, out_dir: str, *, max_items: int = 4,
               max_samples: int = 4) -> list[str]:
    """One grid per run ({"dataset", "method", "paramset", "shard_dirs"}) of a dataset into
    `out_dir` (replaced as a whole, so no grid of a removed run lingers); returns their paths."""
    written = []
    with io.atomic_dir(out_dir) as tmp:
        for run in runs:
            name = grid_name(run["dataset"], run["method"], run["paramset"])
            make_grid(run["shard_dirs"], items_csv, str(Path(tmp) / name), max_items=max_items,
                      max_samples=max_samples)
            written.append(str(Path(out_dir) / name))
    return written
