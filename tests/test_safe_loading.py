"""Safe loading (issue "Reliability", part 4): weights are never unpickled as Python
objects, nothing from a config or a dataset reaches a shell, text from datasets and LLMs
is escaped where it is rendered, and file names built from item ids or manifest paths
stay inside the results. docs/reliability.md describes the rules."""

from __future__ import annotations

import ast
import json
import pickle
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from conftest import ROOT, FAST_CONFIG
from ctrlbench import config as cb_config
from ctrlbench import io
from ctrlbench.data.prompt_list import read_prompts
from ctrlbench.data.readers import items_frame
from ctrlbench.errors import ConfigError, DatasetError, InputError, ModelNotFoundError
from ctrlbench.models.loaders import load_model

PACKAGE_FILES = sorted((ROOT / "ctrlbench").rglob("*.py"))
SCRIPT_FILES = sorted((ROOT / "scripts").glob("*.py"))
WORKFLOW_FILES = [ROOT / "Snakefile", *sorted((ROOT / "rules").glob("*.smk"))]


def _calls(files):
    """(file, line, dotted callee, ast.Call) of every call in `files`."""
    for path in files:
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                yield path.relative_to(ROOT), node.lineno, _dotted(node.func), node


def _dotted(node) -> str:
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    if isinstance(node, ast.Name):
        return node.id
    return "?"


def _keyword(call: ast.Call, name: str):
    for keyword in call.keywords:
        if keyword.arg == name:
            return keyword.value
    return None


def _is_constant(node, value) -> bool:
    return isinstance(node, ast.Constant) and node.value is value


# --- weights: safetensors or torch.load(weights_only=True) only ----------------------------

def test_the_scan_sees_the_package():
    assert len(PACKAGE_FILES) > 50 and len(SCRIPT_FILES) > 20
    assert any(name.endswith("torch.load") for _, _, name, _ in _calls(PACKAGE_FILES))


def test_every_torch_load_passes_weights_only_true():
    loads = [(f, line, call) for f, line, name, call in _calls(PACKAGE_FILES + SCRIPT_FILES)
             if name in ("torch.load", "load") and (name == "torch.load" or _imports_torch_load(f))]
    assert loads, "no torch.load call found: the scan is broken"
    unsafe = [f"{f}:{line}" for f, line, call in loads if not _is_constant(_keyword(call, "weights_only"), True)]
    assert unsafe == [], f"torch.load without weights_only=True: {unsafe}"
    # the calls are all in one helper, which refuses files holding Python objects
    assert {str(f) for f, _, _ in loads} == {"ctrlbench/models/loaders.py"}


def _imports_torch_load(relative: Path) -> bool:
    tree = ast.parse((ROOT / relative).read_text(encoding="utf-8"))
    return any(isinstance(node, ast.ImportFrom) and node.module == "torch" and any(a.name == "load" for a in node.names)
               for node in ast.walk(tree))


# Modules and calls that unpickle (or otherwise execute) data.
UNPICKLING_MODULES = {"dill", "cloudpickle", "joblib", "shelve", "marshal", "_pickle", "cPickle", "jsonpickle"}
UNSAFE_CALLS = {"pickle.load", "pickle.loads", "pickle.Unpickler", "pd.read_pickle", "pandas.read_pickle",
                "yaml.load", "yaml.unsafe_load", "yaml.full_load", "yaml.load_all", "yaml.unsafe_load_all",
                "torch.jit.load", "np.lib.format.read_array", "eval", "exec"}


def test_no_pickle_loading_anywhere():
    problems = []
    for path in PACKAGE_FILES + SCRIPT_FILES:
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        where = path.relative_to(ROOT)
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) else [])
                problems += [f"{where}:{node.lineno} imports {n}" for n in names
                             if n and n.split(".")[0] in UNPICKLING_MODULES]
                if isinstance(node, ast.ImportFrom) and node.module == "pickle":
                    problems.append(f"{where}:{node.lineno} imports from pickle")
            # pickle may only be named for its exception type (loaders catch UnpicklingError)
            if isinstance(node, ast.Attribute) and _dotted(node.value) == "pickle" \
                    and node.attr not in ("UnpicklingError", "PickleError"):
                problems.append(f"{where}:{node.lineno} uses pickle.{node.attr}")
    for where, line, name, call in _calls(PACKAGE_FILES + SCRIPT_FILES):
        if name in UNSAFE_CALLS:
            problems.append(f"{where}:{line} calls {name}")
        if name in ("np.load", "numpy.load"):
            allow = _keyword(call, "allow_pickle")
            if allow is not None and not _is_constant(allow, False):
                problems.append(f"{where}:{line} np.load with allow_pickle={ast.unparse(allow)}")
    assert problems == []


class _Payload:
    """Unpickling this runs code: it creates the marker file."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').close()",)


def _malicious(path: Path, marker: Path, fmt: str) -> Path:
    state = {"layers.0.weight": torch.zeros(2, 2), "payload": _Payload(marker)}
    if fmt == "torch_zip":
        torch.save(state, path)
    else:  # a plain pickle, as old .pth files are
        path.write_bytes(pickle.dumps(state, protocol=2))
    return path


def test_the_payload_is_live(tmp_path):
    """The malicious file does run code when loaded the unsafe way, so the tests below mean something."""
    marker = tmp_path / "pwned"
    torch.load(_malicious(tmp_path / "evil.pth", marker, "torch_zip"), weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("fmt", ["torch_zip", "plain_pickle"])
@pytest.mark.parametrize("kind", ["aesthetic", "fid_inception", "deeplabv3"])
def test_malicious_weights_file_is_refused(tmp_path, kind, fmt):
    marker = tmp_path / "pwned"
    weights = _malicious(tmp_path / "weights.pth", marker, fmt)
    config = {"results_dir": str(tmp_path), "hub_offline": True, "device": "cpu", "dtype": "float32",
              "models": {"m": {"kind": kind, "source": str(weights)}}}
    with pytest.raises(ModelNotFoundError, match=rf"model 'm' \(kind {kind}, .*{re.escape(str(weights))} is not a "
                                                 r"plain weights file: torch\.load\(weights_only=True\) refused it"):
        load_model(config, "m")
    assert not marker.exists()


# --- no shell -------------------------------------------------------------------------------

def test_workflow_has_no_shell_or_run_directives():
    """Every rule runs a Python script (`script:`): config and dataset values reach jobs as
    Python objects through `snakemake.params`, never through a shell command line."""
    directives, shells = [], []
    for path in WORKFLOW_FILES:
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            code = line.split("#", 1)[0]
            found = re.match(r"^\s*(shell|run|script|notebook|wrapper|cwl)\s*:", code)
            if found:
                directives.append(found.group(1))
            if re.search(r"\bshell\s*\(|\bos\.system\s*\(|\bsubprocess\.", code):
                shells.append(f"{path.name}:{number}")
    assert shells == []
    assert set(directives) == {"script"} and len(directives) >= 30


SHELL_CALLS = {"os.system", "os.popen", "subprocess.getoutput", "subprocess.getstatusoutput", "pty.spawn",
               "commands.getoutput"}
SUBPROCESS_CALLS = {"subprocess.run", "subprocess.call", "subprocess.check_call", "subprocess.check_output",
                    "subprocess.Popen"}


def test_python_runs_no_shell_and_only_literal_commands():
    found = []
    for where, line, name, call in _calls(PACKAGE_FILES + SCRIPT_FILES):
        assert name not in SHELL_CALLS and not name.startswith(("os.exec", "os.spawn")), f"{where}:{line}: {name}"
        if name in SUBPROCESS_CALLS or name in ("run", "Popen", "check_output") and _imports_subprocess(where):
            shell = _keyword(call, "shell")
            assert shell is None or _is_constant(shell, False), f"{where}:{line}: shell=True"
            command = call.args[0] if call.args else _keyword(call, "args")
            # an argument list of string literals: nothing can be interpolated into it
            assert isinstance(command, (ast.List, ast.Tuple)) and all(
                isinstance(e, ast.Constant) and isinstance(e.value, str) for e in command.elts), f"{where}:{line}"
            found.append((str(where), [e.value for e in command.elts]))
    assert found == [("ctrlbench/io.py", ["git", "rev-parse", "HEAD"])]  # the commit id in params.json


def _imports_subprocess(relative: Path) -> bool:
    text = (ROOT / relative).read_text(encoding="utf-8")
    return re.search(r"^from subprocess import", text, re.M) is not None


# --- escaping where text is rendered --------------------------------------------------------

EVIL = 'a bird <script>alert(1)</script> on a branch "><img src=x onerror=alert(2)>'


class _Tags(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def test_dataset_and_llm_text_is_escaped_in_the_report(tmp_path):
    from ctrlbench.report.grids import make_grid
    from ctrlbench.report.html import write_report

    shard = tmp_path / "images" / "cub" / "sd_llm" / "default" / "shard-000"
    shard.mkdir(parents=True)
    Image.new("RGB", (16, 16), (200, 0, 0)).save(shard / "a_00.png")
    # the prompt is an LLM answer (or a dataset caption) holding markup
    pd.DataFrame({"item_id": ["a"], "sample": [0], "image": ["a_00.png"], "prompt": [EVIL]}).to_csv(
        shard / "manifest.csv", index=False)
    grid = tmp_path / "grids" / "cub__sd_llm__default.jpg"
    sidecar = make_grid([str(shard)], None, str(grid))
    assert sidecar["prompt"][0] == EVIL
    summary = tmp_path / "summary.csv"
    pd.DataFrame([{"dataset": "cub", "method": EVIL, "paramset": "default", "metric": "t_sim",
                   "aggregate": "mean", "scale": EVIL, "n": 1, "mean": 0.5, "std": "", "ci95_low": "",
                   "ci95_high": ""}]).to_csv(summary, index=False)
    out = tmp_path / "index.html"
    write_report(out, summary_csv=str(summary), paper_tables={}, plots_csv=None, grids=[str(grid)],
                 title=EVIL, provenance={"note": EVIL})
    page = out.read_text(encoding="utf-8")
    assert "<script" not in page and "onerror=alert" not in page.replace("onerror=alert(2)&gt;", "")
    assert page.count("&lt;script&gt;alert(1)&lt;/script&gt;") >= 4  # title, summary, grid table, footer
    assert "&quot;&gt;&lt;img src=x onerror=alert(2)&gt;" in page
    parser = _Tags()
    parser.feed(page)
    assert not any(tag == "script" for tag, _ in parser.tags)
    assert not any(name.startswith("on") for _, attrs in parser.tags for name in attrs)
    images = [attrs for tag, attrs in parser.tags if tag == "img"]
    assert len(images) == 1 and images[0]["src"].startswith("data:image/jpeg;base64,")


def test_dollar_signs_do_not_crash_plots(tmp_path):
    """matplotlib reads "$...$" as mathtext; labels are plain text, so "$x^$" (invalid
    TeX) must render as written."""
    from ctrlbench.report.plots import _plot, sweep_plots

    # method and dataset names cannot hold "$" (config identifiers), item ids neither ...
    config = cb_config.load(FAST_CONFIG)
    config["methods"]["sd$x"] = config["methods"]["sd_template"]
    with pytest.raises(ConfigError, match=r"'methods': 'sd\$x' does not match"):
        cb_config.validate(config)
    # ... but a title with one, and parameter values with them, are drawn as text
    frame = pd.DataFrame({"strength": ["$x^$", "$\\frac$", "a$b"], "seed": ["1", "1", "1"],
                          "mean": [0.1, 0.2, 0.3], "ci95_low": [0.0, 0.1, 0.2], "ci95_high": [0.2, 0.3, 0.4]})
    labels = _plot(tmp_path / "direct.png", frame, "strength", ["seed"], "birds$ / sd$x^$", "t_sim ($)")
    assert labels == ["seed=1"] and (tmp_path / "direct.png").stat().st_size > 0
    rows = [{"dataset": "birds", "method": "sd", "paramset": f"seed={seed}__strength={s}", "metric": "t_sim",
             "aggregate": "mean", "scale": "cos01", "n": 2, "mean": m, "std": 0.1, "ci95_low": m - 0.1,
             "ci95_high": m + 0.1} for seed in ("$1$", "$2^$") for s, m in (("$x^$", 0.1), ("$y_$", 0.2))]
    pd.DataFrame(rows).to_csv(tmp_path / "summary.csv", index=False)
    plots = sweep_plots(str(tmp_path / "summary.csv"), str(tmp_path / "plots"))
    assert [(p["param"], p["series"]) for p in plots] == [("seed", ["strength=$x^$", "strength=$y_$"]),
                                                          ("strength", ["seed=$1$", "seed=$2^$"])]
    assert all(Path(p["path"]).is_file() for p in plots)


# --- file names from item ids and manifest paths ------------------------------------------

UNSAFE_IDS = ["../x", "/etc/passwd", "a/b", "..", ".hidden", "a\\b", "a\0b", "x\n", ""]


@pytest.mark.parametrize("item_id", UNSAFE_IDS, ids=repr)
def test_unsafe_item_ids_are_rejected(item_id):
    with pytest.raises(ValueError, match="unsafe file name"):
        io.safe_name(item_id)
    row = {"item_id": item_id, "split": "test", "class_id": 1, "class_name": "x", "image": "", "captions": "[]",
           "attributes": "[]"}
    with pytest.raises(DatasetError, match=r"toy: item ids may only use \[A-Za-z0-9\._-\], start with a letter or "
                                           r"digit and hold no '\.\.'"):
        items_frame([row, {**row, "item_id": "good"}], (), "toy")


@pytest.mark.parametrize("item_id", ["..", ".hidden", "x..y"])
def test_a_reader_rejects_ids_that_pass_its_own_character_check(tmp_path, item_id):
    csv = tmp_path / "prompts.csv"
    csv.write_text(f"prompt,item_id\na lake at dawn,{item_id}\n", encoding="utf-8")
    with pytest.raises(DatasetError, match=r"prompts: item ids may only use .*" + re.escape(repr(item_id))):
        read_prompts(csv)


def test_safe_ids_still_pass():
    for item_id in ("Black_Footed_Albatross_0001_796111", "000000000139", "image_00001", "a.b-c_d", "x."):
        assert io.safe_name(item_id) == item_id


def _shard(folder: Path, image: str, **extra) -> Path:
    folder.mkdir(parents=True)
    Image.new("RGB", (16, 16), (0, 128, 0)).save(folder / "a_00.png")
    row = {"item_id": "a", "sample": 0, "image": image, "prompt": "p", "seed": 0, "class_name": "c",
           "source_image": "", **extra}
    pd.DataFrame([row]).to_csv(folder / "manifest.csv", index=False)
    return folder


def _readers():
    from ctrlbench.bases.selection import select_shard
    from ctrlbench.methods import controlnet
    from ctrlbench.metrics import fid, iou
    from ctrlbench.metrics.embeddings import embed_method_images
    from ctrlbench.metrics.faithfulness import faithfulness_shard
    from ctrlbench.report.grids import make_grid

    def faithfulness(shard, out):
        pd.DataFrame({"item_id": ["a"], "image": [str(shard / "a_00.png")]}).to_csv(shard.parent / "in.csv",
                                                                                   index=False)
        faithfulness_shard(str(shard), str(shard.parent / "in.csv"), str(out))

    def controlnet_job(shard, out):
        pd.DataFrame({"item_id": ["a"], "prompt": ["p"], "class_name": ["c"], "image": [""]}).to_csv(
            shard.parent / "prompts.csv", index=False)
        controlnet.run_shard({}, "sd", "cn", str(shard), str(shard.parent / "prompts.csv"), str(out),
                             {"base_samples": 1})

    return {
        "clip_embeddings": lambda shard, out: embed_method_images({}, "clip", str(shard), str(out)),
        "fid_features": lambda shard, out: fid.embed_method_images_fid({}, "fid", str(shard), str(out)),
        "iou": lambda shard, out: iou.run_shard({}, "deeplab", shard, out),
        "faithfulness": faithfulness,
        "grids": lambda shard, out: make_grid([str(shard)], None, str(out)),
        "selection": lambda shard, out: select_shard({"sd": str(shard)}, {"sd": str(shard.parent / "c.npz")},
                                                     str(shard.parent / "t.npz"), str(out), {}),
        "controlnet": controlnet_job,
    }


@pytest.mark.parametrize("reader", ["clip_embeddings", "fid_features", "iou", "faithfulness", "grids", "selection",
                                    "controlnet"])
@pytest.mark.parametrize("column, value", [
    ("image", "../../x.png"), ("image", "/etc/passwd"), ("masks", '[{"voc_class": "dog", "path": "../x.png"}]'),
], ids=["image_dotdot", "image_absolute", "masks_dotdot"])
def test_manifest_paths_cannot_leave_the_shard(tmp_path, monkeypatch, reader, column, value):
    monkeypatch.setattr("ctrlbench.models.loaders.load_model",
                        lambda *a, **k: pytest.fail("the model must not be loaded"))
    Image.new("RGB", (16, 16), (0, 0, 0)).save(tmp_path / "x.png")  # a real file outside the shard
    extra = {"masks": '[{"voc_class": "dog", "path": "masks/a_dog.png"}]', "base_image": "a_00.png"}
    extra[column] = value
    image = value if column == "image" else "a_00.png"
    shard = _shard(tmp_path / "results" / "images" / "sd" / "shard-000", image,
                   **{k: v for k, v in extra.items() if k != "image"})
    out = tmp_path / "results" / "out" / ("x.jpg" if reader == "grids" else "shard-000")
    bad = json.loads(value)[0]["path"] if column == "masks" else value
    with pytest.raises(InputError, match=rf"manifest\.csv: item a, column {column}: path {re.escape(repr(bad))} "
                                         r"leaves its folder"):
        _readers()[reader](shard, out)
    assert not out.exists()
    assert not out.parent.exists() or list(out.parent.glob(".*.tmp*")) == []


def test_check_relative_path_accepts_the_paths_methods_write():
    for path in ("a_00.png", "masks/a_dog.png", "panoramas/a_00.png", "canny/a_b0.png", "x..y.png"):
        assert io.check_relative_path(path, "test") == path
    for path in ("..", "../a.png", "masks/../../a.png", "/abs.png", "\\\\server\\share.png", "C:/x.png", "a\0.png"):
        with pytest.raises(InputError, match="leaves its folder"):
            io.check_relative_path(path, "test")


def test_numpy_caches_load_without_pickle(tmp_path):
    """The embedding caches hold no object arrays: they load with allow_pickle=False."""
    from ctrlbench.metrics.embeddings import load_embeddings, save_embeddings

    keys = pd.DataFrame({"item_id": ["a", "b"], "sample": [0, 1], "prompt": ["x", "ü 🦜"]})
    save_embeddings(tmp_path / "c.npz", keys, np.eye(2, dtype=np.float32), "clip")
    with np.load(tmp_path / "c.npz", allow_pickle=False) as data:
        assert all(data[name].dtype != object for name in data.files)
    loaded, emb = load_embeddings(tmp_path / "c.npz")
    assert list(loaded["prompt"]) == ["x", "ü 🦜"] and emb.shape == (2, 2)
