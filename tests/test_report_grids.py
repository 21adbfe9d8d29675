import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from ctrlbench.errors import InputError
from ctrlbench.report.grids import BLANK, HEADER_HEIGHT, PALETTE, SIDECAR_COLUMNS, make_grid

CELL = 32
RED, GREEN, BLUE, YELLOW, CYAN = (200, 0, 0), (0, 200, 0), (0, 0, 200), (200, 200, 0), (0, 200, 200)


def _png(path: Path, color, size=(16, 16)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


def _shard(folder: Path, rows: list[dict], columns=None) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows, columns=columns).to_csv(folder / "manifest.csv", index=False)
    return str(folder)


def _items(tmp_path: Path, images: dict) -> str:
    path = tmp_path / "items.csv"
    pd.DataFrame({"item_id": list(images), "image": list(images.values())}).to_csv(path, index=False)
    return str(path)


def _pixel(path, column, row):
    """Colour at the centre of a cell (row 0 = first item row, below the header)."""
    with Image.open(path) as image:
        return image.convert("RGB").getpixel((column * CELL + CELL // 2, HEADER_HEIGHT + row * CELL + CELL // 2))


@pytest.fixture
def controlnet_like(tmp_path):
    """Items b, a, c (unsorted); a canny column; b has one sample only; c has no real image."""
    shard = tmp_path / "shard-000"
    rows = []
    for item, samples in (("b", 1), ("a", 2), ("c", 2)):
        _png(shard / "canny" / f"{item}.png", YELLOW)
        for s in range(samples):
            _png(shard / f"{item}_{s:02d}.png", GREEN if s == 0 else BLUE)
            rows.append({"item_id": item, "sample": s, "image": f"{item}_{s:02d}.png", "prompt": f"a photo of {item}",
                         "canny": f"canny/{item}.png"})
    real = {"a": str(_png(tmp_path / "real" / "a.jpg", RED, (40, 20))),
            "b": str(_png(tmp_path / "real" / "b.jpg", RED)), "c": ""}
    return _shard(shard, rows), _items(tmp_path, real)


def test_grid_layout_sidecar_and_blank_cells(tmp_path, controlnet_like):
    shard, items = controlnet_like
    out = tmp_path / "grid.png"
    sidecar = make_grid([shard], items, str(out), cell=CELL)
    with Image.open(out) as image:
        assert image.format == "PNG"
        assert image.size == (4 * CELL, HEADER_HEIGHT + 3 * CELL)  # input, canny, sample 0, sample 1
    assert list(sidecar.columns) == SIDECAR_COLUMNS
    assert sidecar["item_id"].tolist() == ["a", "b", "c"]                  # sorted by item id
    assert sidecar["prompt"].tolist() == ["a photo of a", "a photo of b", "a photo of c"]
    assert {json.loads(c) == ["input", "canny", "sample 0", "sample 1"] for c in sidecar["columns"]} == {True}
    written = pd.read_csv(out.with_suffix(".csv"), dtype={"item_id": str}, keep_default_na=False)
    assert written["item_id"].tolist() == ["a", "b", "c"] and written["row"].tolist() == [0, 1, 2]
    assert json.loads(written.loc[2, "images"])[0] == ""                    # c: no real image
    assert json.loads(written.loc[0, "images"])[2] == str(Path(shard) / "a_00.png")
    assert [_pixel(out, j, 0) for j in range(4)] == [RED, YELLOW, GREEN, BLUE]
    assert _pixel(out, 3, 1) == BLANK                                       # b has no sample 1
    assert _pixel(out, 0, 2) == BLANK                                       # c has no input
    with Image.open(out) as image:                                          # 40x20 input: letterboxed on white
        assert image.convert("RGB").getpixel((CELL // 2, HEADER_HEIGHT + 2)) == (255, 255, 255)


def test_limits_and_no_items_table(tmp_path, controlnet_like):
    shard, _ = controlnet_like
    sidecar = make_grid([shard], None, str(tmp_path / "g.png"), max_items=2, max_samples=1, cell=CELL)
    assert sidecar["item_id"].tolist() == ["a", "b"]
    assert json.loads(sidecar.loc[0, "columns"]) == ["canny", "sample 0"]
    with Image.open(tmp_path / "g.png") as image:
        assert image.size == (2 * CELL, HEADER_HEIGHT + 2 * CELL)


def test_deterministic_bytes(tmp_path, controlnet_like):
    shard, items = controlnet_like
    for suffix in (".png", ".jpg"):
        make_grid([shard], items, str(tmp_path / f"one{suffix}"), cell=CELL)
        make_grid([shard], items, str(tmp_path / f"two{suffix}"), cell=CELL)
        assert (tmp_path / f"one{suffix}").read_bytes() == (tmp_path / f"two{suffix}").read_bytes()
    with Image.open(tmp_path / "one.jpg") as image:
        assert image.format == "JPEG"


def test_corrupt_image_names_the_file(tmp_path, controlnet_like):
    shard, items = controlnet_like
    (Path(shard) / "a_01.png").write_bytes(b"not a png")
    with pytest.raises(InputError, match="a_01.png cannot be read"):
        make_grid([shard], items, str(tmp_path / "g.png"), cell=CELL)
    (Path(shard) / "a_01.png").unlink()
    with pytest.raises(InputError, match="a_01.png does not exist"):
        make_grid([shard], items, str(tmp_path / "g.png"), cell=CELL)
    assert not (tmp_path / "g.png").exists()


def test_empty_manifest_gives_placeholder(tmp_path):
    shard = _shard(tmp_path / "shard-000", [], columns=["item_id", "sample", "image", "prompt"])
    sidecar = make_grid([shard], None, str(tmp_path / "g.png"), cell=CELL)
    assert len(sidecar) == 0
    assert (tmp_path / "g.csv").read_text().strip() == ",".join(SIDECAR_COLUMNS)
    with Image.open(tmp_path / "g.png") as image:
        assert image.size[0] > 0 and image.size[1] > 0


def test_base_from_params_base_dir_and_several_shards(tmp_path):
    base = tmp_path / "base"
    _png(base / "x_00.png", CYAN)
    _png(base / "y_00.png", CYAN)
    shards = []
    for k, item in enumerate(("y", "x")):
        folder = tmp_path / f"shard-{k:03d}"
        rows = []
        for b in (1, 0):  # two bases per item, listed out of order: the grid shows base 0's outputs
            _png(folder / f"{item}_b{b}_00.png", GREEN if b == 0 else BLUE)
            rows.append({"item_id": item, "sample": 0, "image": f"{item}_b{b}_00.png", "prompt": item,
                         "base_image": f"{item}_0{b}.png" if b else f"{item}_00.png", "base_sample": b})
        shards.append(_shard(folder, rows))
        (folder / "params.json").write_text(json.dumps({"base_dir": str(base)}))
    out = tmp_path / "g.png"
    sidecar = make_grid(shards, None, str(out), cell=CELL)
    assert sidecar["item_id"].tolist() == ["x", "y"]
    assert json.loads(sidecar.loc[0, "columns"]) == ["base", "sample 0"]
    assert json.loads(sidecar.loc[0, "images"]) == [str(base / "x_00.png"), str(Path(shards[1]) / "x_b0_00.png")]
    assert [_pixel(out, j, i) for i in range(2) for j in range(2)] == [CYAN, GREEN] * 2


def test_per_sample_intermediates_masks_and_panorama(tmp_path):
    tcig = tmp_path / "tcig"
    (tcig / "masks").mkdir(parents=True)
    Image.fromarray(np.pad(np.full((16, 8), 255, np.uint8), ((0, 0), (0, 8)))).save(tcig / "masks" / "a_dog.png")
    rows = []
    for s in range(2):
        _png(tcig / "stage1" / f"a_{s:02d}.png", YELLOW)
        _png(tcig / f"a_{s:02d}.png", GREEN)
        rows.append({"item_id": "a", "sample": s, "image": f"a_{s:02d}.png", "prompt": "a dog",
                     "stage1_image": f"stage1/a_{s:02d}.png",
                     "masks": json.dumps([{"voc_class": "dog", "path": "masks/a_dog.png"}])})
    out = tmp_path / "t.png"
    sidecar = make_grid([_shard(tcig, rows)], None, str(out), cell=CELL)
    assert json.loads(sidecar.loc[0, "columns"]) == ["masks", "stage1 0", "sample 0", "stage1 1", "sample 1"]
    assert [_pixel(out, j, 0) for j in range(1, 5)] == [YELLOW, GREEN, YELLOW, GREEN]
    with Image.open(out) as image:  # mask: left half in the first palette colour, right half black
        assert image.convert("RGB").getpixel((4, HEADER_HEIGHT + 16)) == PALETTE[0]
        assert image.convert("RGB").getpixel((28, HEADER_HEIGHT + 16)) == (0, 0, 0)

    pano = tmp_path / "pano"
    _png(pano / "panorama" / "p_00.png", BLUE, (64, 16))
    rows = [{"item_id": "p", "sample": 0, "crop": c, "image": f"p_00_c{c:02d}.png", "panorama": "panorama/p_00.png",
             "prompt": "a landscape"} for c in range(3)]
    for c in range(3):
        _png(pano / f"p_00_c{c:02d}.png", RED)
    sidecar = make_grid([_shard(pano, rows)], None, str(tmp_path / "p.png"), cell=CELL)
    assert json.loads(sidecar.loc[0, "columns"]) == ["sample 0"]
    assert json.loads(sidecar.loc[0, "images"]) == [str(pano / "panorama" / "p_00.png")]
    assert _pixel(tmp_path / "p.png", 0, 0) == BLUE
