"""ParaPrompts-400 (format "paraprompts", ctrlbench.data.paraprompts), its toy copy, and the
multi-line CSV cells of prompt lists (ctrlbench.data.prompt_list)."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from pathlib import Path

import pandas as pd
import pytest

from ctrlbench.data import ITEM_COLUMNS
from ctrlbench.data.layout import dataset_index_files
from ctrlbench.data.paraprompts import read_paraprompts
from ctrlbench.data.prompt_list import read_prompts
from ctrlbench.data.readers import read_dataset
from ctrlbench.data.toy import MARKER, make_toy, make_toy_paraprompts
from ctrlbench.errors import DatasetError

HEADER = "Image,Prompt,Category,Prompt_Chinese\n"
ID_A, ID_B = "0f04e2fe766b54523b7fe89174c7b2eb", "83115101fe2cef995452e139a807e5a0"
# Like the real file: the English paragraph quoted (it holds commas), the Chinese not.
REAL_LIKE = (HEADER
             + f'{ID_A}.JPEG,"A large pot was placed on top of a burning stove. The flames spread, '
               f'and two people stood behind them.",Human,一个烧着火的火炉上面搁着一口大锅\n'
             + f'{ID_B}.JPEG,"In a tunnel paved with bright black bricks, a man holds a guitar.",'
               f'Others,亮黑色砖块铺成的隧道中\n')


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def csv_file(tmp_path: Path, text: str) -> Path:
    return write(tmp_path / "ParaPrompts_400.csv", text)


# --- the reader -----------------------------------------------------------------------------

def test_items_table_of_a_real_like_file(tmp_path):
    path = csv_file(tmp_path, REAL_LIKE)
    frame = read_paraprompts(path)
    assert list(frame.columns) == [*ITEM_COLUMNS, "category", "prompt_chinese", "source_image"]
    assert frame["item_id"].tolist() == [ID_A, ID_B]
    row = frame.set_index("item_id").loc[ID_A]
    assert json.loads(row["captions"]) == ["A large pot was placed on top of a burning stove. The flames spread, "
                                           "and two people stood behind them."]
    assert (row["split"], row["class_id"], row["class_name"], row["image"], row["attributes"]) \
        == ("all", -1, "Human", "", "[]")
    assert (row["category"], row["prompt_chinese"], row["source_image"]) \
        == ("Human", "一个烧着火的火炉上面搁着一口大锅", f"{ID_A}.JPEG")
    assert set(read_paraprompts(path, "test")["split"]) == {"test"}
    with pytest.raises(DatasetError, match="unknown split 'dev'"):
        read_paraprompts(path, "dev")


def test_folder_root_file_root_and_dispatch(tmp_path):
    path = csv_file(tmp_path / "pp", REAL_LIKE)
    by_file = read_paraprompts(path)
    pd.testing.assert_frame_equal(read_paraprompts(tmp_path / "pp"), by_file)
    pd.testing.assert_frame_equal(read_dataset("paraprompts", tmp_path / "pp"), by_file)  # default split "all"
    # any file name works when the file itself is the root (e.g. a subset)
    subset = write(tmp_path / "subset.csv", REAL_LIKE)
    pd.testing.assert_frame_equal(read_paraprompts(subset), by_file)


def test_quoted_cells_with_line_breaks_commas_and_quotes(tmp_path):
    text = (HEADER
            + f'{ID_A}.JPEG,"First line, with a comma.\nSecond line with a ""quoted"" sign.\n\nThird.",Human,甲\n'
            + f'{ID_B}.JPEG,"A plain paragraph.",Food,乙\n'
            + 'bad name.JPEG,"x",Food,丙\n')  # line 7: the row after the 4-line cell and the next row
    path = csv_file(tmp_path, text)
    with pytest.raises(DatasetError, match=r"ParaPrompts_400\.csv line 7: the Image name .* 'bad name\.JPEG'"):
        read_paraprompts(path)
    path = csv_file(tmp_path, text.rsplit("bad name", 1)[0])
    frame = read_paraprompts(path).set_index("item_id")
    assert len(frame) == 2
    assert json.loads(frame.loc[ID_A, "captions"]) == [
        'First line, with a comma.\nSecond line with a "quoted" sign.\n\nThird.']
    assert frame.loc[ID_B, "category"] == "Food" and frame.loc[ID_B, "prompt_chinese"] == "乙"


def test_bom_crlf_blank_lines_and_optional_chinese_column(tmp_path):
    text = ("\ufeffImage,Prompt,Category\r\n"
            f"{ID_A}.JPEG,A stove.,Human\r\n"
            "\r\n"
            f"{ID_B}.jpg,  A tunnel.  ,Others\r\n")
    frame = read_paraprompts(csv_file(tmp_path, text))
    assert frame["item_id"].tolist() == [ID_A, ID_B]
    assert frame["prompt_chinese"].tolist() == ["", ""]
    assert json.loads(frame["captions"][1]) == ["A tunnel."] and frame["source_image"][1] == f"{ID_B}.jpg"


@pytest.mark.parametrize("text, message", [
    ("", r"ParaPrompts_400\.csv is empty"),
    (HEADER, r"ParaPrompts_400\.csv holds a header but no prompt rows"),
    ("Image,Text,Category\nx.JPEG,a,b\n", r"ParaPrompts_400\.csv line 1: missing column\(s\) Prompt "),
    ("Prompt\na\n", r"ParaPrompts_400\.csv line 1: missing column\(s\) Image, Category "),
    (HEADER + f"{ID_A}.JPEG,a,Human,甲\n{ID_B}.JPEG,  ,Human,乙\n",
     rf"ParaPrompts_400\.csv line 3: empty Prompt \(Image {ID_B}\.JPEG\)"),
    (HEADER + f'{ID_A}.JPEG,"a\nb",Human,甲\n ,c,Human,乙\n', r"ParaPrompts_400\.csv line 4: empty Image"),
    (HEADER + f'{ID_A}.JPEG,a,Human,甲\n{ID_B}.JPEG,b,Human,乙\n{ID_A}.png,"c\nd",Human,丙\n',  # row's 1st line
     rf"ParaPrompts_400\.csv line 4: item id {ID_A} \(Image {ID_A}\.png\) is already used on line 2"),
    (HEADER + "dir/x.JPEG,a,Human,甲\n", r"ParaPrompts_400\.csv line 2: the Image name .* may only use"),
    (HEADER + f'{ID_A}.JPEG,"a quote never closed,Human,甲\n{ID_B}.JPEG,b,Human,乙\n',
     r"ParaPrompts_400\.csv line 2: 2 fields where the header has 4 \(a quote not closed"),
    (HEADER + f"{ID_A}.JPEG,a, b,Human,甲\n", r"ParaPrompts_400\.csv line 2: 5 fields where the header has 4"),
])
def test_errors_name_the_file_the_line_and_the_problem(tmp_path, text, message):
    with pytest.raises(DatasetError, match=message):
        read_paraprompts(csv_file(tmp_path, text))


def test_missing_root_and_bad_encoding(tmp_path):
    with pytest.raises(DatasetError, match=r"nowhere\.csv does not exist\. Expected ParaPrompts_400\.csv .*"
                                           r"github\.com/weijiawu/ParaDiffusion, folder ParaPrompts-400/"):
        read_paraprompts(tmp_path / "nowhere.csv")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match=r"folder .*empty holds no ParaPrompts_400\.csv\. Expected"):
        read_paraprompts(tmp_path / "empty")
    # a clone of the repository: point at the subfolder
    csv_file(tmp_path / "ParaDiffusion" / "ParaPrompts-400", REAL_LIKE)
    with pytest.raises(DatasetError, match=r"ParaPrompts-400: use that folder as the root"):
        read_paraprompts(tmp_path / "ParaDiffusion")
    path = tmp_path / "latin1" / "ParaPrompts_400.csv"
    path.parent.mkdir()
    path.write_bytes((HEADER + "x.JPEG,un caf\u00e9,Food,\n").encode("latin-1"))
    with pytest.raises(DatasetError, match=r"paraprompts: .*ParaPrompts_400\.csv line 2: not valid UTF-8"):
        read_paraprompts(path.parent)


# --- the toy copy ---------------------------------------------------------------------------

def toy_rows(root: Path) -> list[dict]:
    text = (root / "ParaPrompts_400.csv").read_text(encoding="utf-8")
    return list(csv.DictReader(io.StringIO(text, newline="")))


def test_toy_paraprompts_is_in_the_real_format(tmp_path):
    root = make_toy("paraprompts", tmp_path / "pp", n_prompts=12, image_size=64, seed=0)
    assert (root / MARKER).is_file()
    text = (root / "ParaPrompts_400.csv").read_text(encoding="utf-8")
    assert text.startswith(HEADER) and ' reads ""FRESH BREAD"", ' in text  # csv doubles the quotes
    rows = toy_rows(root)
    assert any(' reads "FRESH BREAD", ' in row["Prompt"] for row in rows)
    assert len(rows) == 12 and len({row["Prompt"] for row in rows}) == 12
    for row in rows:
        assert re.fullmatch(r"[0-9a-f]{32}\.JPEG", row["Image"])
        assert row["Image"] == hashlib.md5(row["Prompt"].encode("utf-8")).hexdigest() + ".JPEG"
        assert 60 <= len(row["Prompt"].split()) <= 160 and row["Prompt_Chinese"].strip()
    assert len({row["Category"] for row in rows[:2]}) == 2
    frame = read_dataset("paraprompts", root)
    assert len(frame) == 12 and set(frame["image"]) == {""}
    assert set(frame["category"]) == {row["Category"] for row in rows} and len(set(frame["category"])) == 8
    assert sorted(frame["item_id"]) == sorted(row["Image"][:-5] for row in rows)
    assert dataset_index_files("paraprompts", str(root)) == [str(root / "ParaPrompts_400.csv")]


def test_toy_paragraphs_need_more_than_one_clip_chunk(tmp_path):
    tokenizer = pytest.importorskip("open_clip.tokenizer").SimpleTokenizer()
    for seed in (0, 1):
        rows = toy_rows(make_toy_paraprompts(tmp_path / f"s{seed}", n_prompts=24, seed=seed))
        assert all(len(tokenizer.encode(row["Prompt"])) > 75 for row in rows)  # 77 minus BOS and EOS


def test_toy_paraprompts_is_deterministic_and_grows_by_appending(tmp_path):
    first = (make_toy_paraprompts(tmp_path / "a") / "ParaPrompts_400.csv").read_bytes()
    assert (make_toy_paraprompts(tmp_path / "b") / "ParaPrompts_400.csv").read_bytes() == first
    bigger = (make_toy_paraprompts(tmp_path / "c", n_prompts=5) / "ParaPrompts_400.csv").read_bytes()
    assert bigger.startswith(first) and bigger != first
    other = toy_rows(make_toy_paraprompts(tmp_path / "d", seed=1))
    assert [row["Prompt"] for row in other] != [row["Prompt"] for row in toy_rows(tmp_path / "a")]
    assert (make_toy_paraprompts(tmp_path / "e", seed=1) / "ParaPrompts_400.csv").read_bytes() \
        == (tmp_path / "d" / "ParaPrompts_400.csv").read_bytes()
    for seed in range(5):  # whatever the seed, two prompts already span two categories
        rows = toy_rows(make_toy_paraprompts(tmp_path / "f", n_prompts=2, seed=seed))
        assert len({row["Category"] for row in rows}) == 2
    with pytest.raises(ValueError, match="n_prompts must be at most 24"):
        make_toy_paraprompts(tmp_path / "huge", n_prompts=25)
    with pytest.raises(ValueError, match="n_prompts must be a positive integer"):
        make_toy_paraprompts(tmp_path / "none", n_prompts=0)


# --- prompt lists: quoted CSV cells spanning lines ------------------------------------------

def test_prompt_list_csv_cells_may_span_lines(tmp_path):
    path = write(tmp_path / "prompts.csv", 'prompt,category\n'
                 '"a lake,\nat dawn",nature\n'
                 'a hill,nature\n'
                 '"two\nline prompt",\n'
                 '"","x\ny"\n')  # lines 7-8: an empty prompt, after two 2-line records
    with pytest.raises(DatasetError, match=r"prompts\.csv line 7: empty prompt"):
        read_prompts(path)
    path = write(path, path.read_text(encoding="utf-8").rsplit('"",', 1)[0])
    frame = read_prompts(path)
    assert sorted(json.loads(c)[0] for c in frame["captions"]) == ["a hill", "a lake,\nat dawn", "two\nline prompt"]
    assert frame["category"].tolist().count("nature") == 2
