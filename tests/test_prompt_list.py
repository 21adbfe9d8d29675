"""Prompt-list datasets (format "prompts", ctrlbench.data.prompt_list) and their toy copy."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pandas as pd
import pytest

from ctrlbench.data import ITEM_COLUMNS
from ctrlbench.data.items import prepare_items
from ctrlbench.data.prompt_list import prompt_id, read_prompts
from ctrlbench.data.readers import read_dataset
from ctrlbench.data.toy import MARKER, make_toy, make_toy_prompts
from ctrlbench.errors import DatasetError

PROMPTS = ["a photo of the dolomites", "a city skyline at night", "a photo of a snowy mountain range"]


def sha12(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:12]


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_txt_items_table(tmp_path):
    path = write(tmp_path / "panoramas.txt", "# panorama prompts\n\n" + "\n".join(
        [PROMPTS[0], "   ", f"  {PROMPTS[1]}  ", "  # an indented comment", PROMPTS[2]]) + "\n")
    frame = read_prompts(path)
    assert list(frame.columns) == [*ITEM_COLUMNS, "category"]
    assert frame["item_id"].tolist() == sorted(sha12(p) for p in PROMPTS)
    by_id = frame.set_index("item_id")
    for prompt in PROMPTS:
        row = by_id.loc[sha12(prompt)]
        assert json.loads(row["captions"]) == [prompt] and prompt_id(prompt) == sha12(prompt)
        assert (row["split"], row["class_id"], row["class_name"], row["image"], row["attributes"], row["category"]) \
            == ("all", -1, "", "", "[]", "")
    assert set(read_prompts(path, "test")["split"]) == {"test"}
    pd.testing.assert_frame_equal(read_dataset("prompts", path), frame)  # the default split is "all"


def test_ids_are_stable_when_prompts_are_added(tmp_path):
    small = read_prompts(write(tmp_path / "a.txt", "\n".join(PROMPTS[:2])))
    big = read_prompts(write(tmp_path / "b.txt", "\n".join(["a desert at noon", PROMPTS[1], PROMPTS[0]])))
    assert set(small["item_id"]) < set(big["item_id"])
    merged = big.set_index("item_id").loc[small["item_id"]]
    assert merged["captions"].tolist() == small["captions"].tolist()


def test_csv_with_category_and_item_id(tmp_path):
    path = write(tmp_path / "prompts.csv", "\ufeffprompt,category,item_id\n"  # a spreadsheet's BOM
                 f"{PROMPTS[0]},mountains,dolomites\n"
                 f"\"{PROMPTS[1]}, with neon lights\",city,\n"
                 "\n"
                 f"{PROMPTS[2]},,\n")
    frame = read_prompts(path).set_index("item_id")
    with_comma = f"{PROMPTS[1]}, with neon lights"
    assert sorted(frame.index) == sorted(["dolomites", sha12(with_comma), sha12(PROMPTS[2])])
    assert frame.loc["dolomites", "category"] == "mountains" == frame.loc["dolomites", "class_name"]
    assert json.loads(frame.loc[sha12(with_comma), "captions"]) == [with_comma]
    assert frame.loc[sha12(PROMPTS[2]), "category"] == ""


def test_a_folder_holding_prompts_txt_or_csv(tmp_path):
    write(tmp_path / "txt" / "prompts.txt", "\n".join(PROMPTS))
    write(tmp_path / "csv" / "prompts.csv", "prompt\n" + "\n".join(PROMPTS))
    pd.testing.assert_frame_equal(read_prompts(tmp_path / "txt"), read_prompts(tmp_path / "txt" / "prompts.txt"))
    pd.testing.assert_frame_equal(read_prompts(tmp_path / "csv"), read_prompts(tmp_path / "txt"))
    write(tmp_path / "csv" / "prompts.txt", PROMPTS[0])
    with pytest.raises(DatasetError, match="holds both prompts.txt and prompts.csv"):
        read_prompts(tmp_path / "csv")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="holds neither prompts.txt nor prompts.csv"):
        read_prompts(tmp_path / "empty")


@pytest.mark.parametrize("name, text, message", [
    ("p.txt", "", r"p\.txt holds no prompt"),
    ("p.txt", "# only a comment\n\n", r"p\.txt holds no prompt"),
    ("p.csv", "", r"p\.csv is empty"),
    ("p.csv", "text,category\na lake,x\n", r"p\.csv line 1: no 'prompt' column"),
    ("p.csv", "prompt,category\na lake,x\n  ,y\n", r"p\.csv line 3: empty prompt"),
    ("p.txt", "a lake\na hill\na lake\n", r"p\.txt line 3: duplicate prompt \(first on line 1\)"),
    ("p.csv", "prompt,item_id\na lake,x1\na hill,x1\n", r"p\.csv line 3: item_id x1 is already used on line 2"),
    ("p.csv", "prompt,item_id\na lake,a/b\n", r"p\.csv line 2: item_id may only use"),
    ("p.md", "a lake\n", r"p\.md is neither a \.txt nor a \.csv file"),
])
def test_errors_name_the_file_and_line(tmp_path, name, text, message):
    path = write(tmp_path / name, text)
    with pytest.raises(DatasetError, match=message):
        read_prompts(path)


def test_missing_file_bad_encoding_and_split(tmp_path):
    with pytest.raises(DatasetError, match=r"nowhere\.txt does not exist"):
        read_prompts(tmp_path / "nowhere.txt")
    path = tmp_path / "latin1.txt"
    path.write_bytes("a lake\nun caf\u00e9 \u00e0 Paris\n".encode("latin-1"))
    with pytest.raises(DatasetError, match=r"latin1\.txt line 2: not valid UTF-8"):
        read_prompts(path)
    with pytest.raises(DatasetError, match="unknown split 'dev'"):
        read_prompts(write(tmp_path / "ok.txt", "a lake"), "dev")


def test_toy_prompts(tmp_path):
    root = make_toy("prompts", tmp_path / "prompts", image_size=64, seed=0)
    assert (root / MARKER).is_file()
    lines = [line for line in (root / "prompts.txt").read_text().splitlines() if not line.startswith("#")]
    assert lines == ["a photo of the dolomites", "a city skyline at night",
                     "a photo of a snowy mountain range at sunrise", "a sandy beach with palm trees at sunset"]
    frame = read_dataset("prompts", root)
    assert len(frame) == 4 and set(frame["image"]) == {""}
    # deterministic, growth only appends, another seed another order
    again = make_toy_prompts(tmp_path / "again")
    assert (again / "prompts.txt").read_bytes() == (root / "prompts.txt").read_bytes()
    bigger = (make_toy_prompts(tmp_path / "big", n_prompts=6) / "prompts.txt").read_text().splitlines()
    assert bigger[:5] == (root / "prompts.txt").read_text().splitlines()
    other = (make_toy_prompts(tmp_path / "other", seed=1) / "prompts.txt").read_text().splitlines()
    assert other != (root / "prompts.txt").read_text().splitlines()
    with pytest.raises(ValueError, match="n_prompts must be at most"):
        make_toy_prompts(tmp_path / "huge", n_prompts=10_000)


def test_prepare_items_for_a_prompt_list(tmp_path):
    root = make_toy_prompts(tmp_path / "prompts", n_prompts=3)
    out = tmp_path / "data"
    prepare_items("prompts", str(root), "all", str(out / "items.csv"), str(out / "shards"), 2,
                  counts_csv=str(out / "counts.csv"))
    items = pd.read_csv(out / "items.csv", dtype={"item_id": str}, keep_default_na=False)
    assert len(items) == 3 and set(items["image"]) == {""} and "category" in items.columns
    assert pd.read_csv(out / "counts.csv")["images_remaining"].tolist() == [3]
