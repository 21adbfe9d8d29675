"""The demo DAG end to end on toy data and tiny models, in a temporary directory.

One module-scoped run is shared by the tests below, which then check incremental
behaviour: a no-op rerun, a changed sweep value, added dataset items, determinism.
"""

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil

import pandas as pd
import pytest
import yaml
from PIL import Image

from ctrlbench.shards import shard_of

ROOT = Path(__file__).resolve().parent.parent
FAST_CONFIG = ROOT / "tests" / "configs" / "tiny.yaml"  # the fast config (tiny random models), as conftest
SNAKEMAKE = Path(sys.executable).parent / "snakemake"

pytestmark = pytest.mark.slow


def snakemake(workdir, *args, check=True):
    cmd = [str(SNAKEMAKE), "--snakefile", str(ROOT / "Snakefile"), "--directory", str(workdir),
           "--cores", "2", *args]
    # The full demo takes about 15 minutes on 2 cores (a fresh venv compiles its bytecode first).
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=2400)
    if check and result.returncode != 0:
        raise AssertionError(f"snakemake failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}")
    return result


def write_config(workdir, config):
    (workdir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))


def manifests(results):
    return {p: p.stat().st_mtime_ns for p in sorted((results / "images").glob("*/*/*/shard-*/manifest.csv"))}


def sd_only_config():
    """The demo config cut down to one method (SD, template prompts, toy CUB): the
    incremental-rerun checks below need several runs, so they run the smallest DAG."""
    config = yaml.safe_load(FAST_CONFIG.read_text())
    config["datasets"] = {"cub": config["datasets"]["cub"]}
    config["methods"] = {"sd": {**config["methods"]["sd_template"], "datasets": ["cub"]}}
    config["evaluation"]["clip"]["long_text"] = ["truncate"]  # short template prompts: one chunk anyway
    config["evaluation"]["clip"]["prompts"] = "template"  # one prompt set (the demo scores descriptions)
    for metric in ("fid", "aesthetic"):  # the full demo covers them; these tests count t_sim/i_sim jobs
        config["evaluation"].pop(metric)
    config.pop("report")
    return config


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("demo")
    config = sd_only_config()
    config["n_shards"] = 4  # with 3 added items below, at least one shard stays untouched
    write_config(workdir, config)
    snakemake(workdir)
    # Fingerprints of the first run, before the tests below change the config: the
    # interrupted run must end with the same bytes.
    (workdir / "first_run.json").write_text(json.dumps(result_fingerprints(workdir / "results")))
    shutil.copy(workdir / "results" / "tables" / "summary.csv", workdir / "first_summary.csv")
    (workdir / "first_config.json").write_text(json.dumps(config))  # the tests below change `config`
    return workdir, config


def result_fingerprints(results: Path) -> dict[str, str]:
    """sha256 of every image, manifest, metric file and table (not logs, caches or
    params.json, whose provenance holds times and paths). Dataset image paths are
    absolute (docs/data.md), so the run's own folder is replaced by a placeholder first."""
    files = [p for folder in ("images", "metrics", "tables") for p in (results / folder).rglob("*")
             if p.is_file() and p.suffix in (".png", ".csv")]
    run_dir = str(results.parent.resolve()).encode()
    return {str(p.relative_to(results)): hashlib.sha256(p.read_bytes().replace(run_dir, b"<run>")).hexdigest()
            for p in files}


def test_demo_produces_summary_images_and_provenance(demo):
    workdir, config = demo
    results = workdir / "results"
    summary = pd.read_csv(results / "tables" / "summary.csv")
    n_items = config["toy"]["cub"]["n_classes"] * config["toy"]["cub"]["test_per_class"]
    n_images = n_items * config["methods"]["sd"]["params"]["images_per_prompt"]
    means = summary[summary["aggregate"] == "mean"]
    assert sorted(means["paramset"]) == ["guidance_scale=5.0"] * 2 + ["guidance_scale=7.5"] * 2
    assert sorted(means["metric"]) == ["i_sim", "i_sim", "t_sim", "t_sim"]
    assert (means["n"] == n_images).all()
    best = summary[summary["aggregate"] == "best_of_n"]
    assert len(best) == 4 and (best["n"] == n_items).all() and (best["mean"].values >= means["mean"].values).all()
    assert summary["scale"].eq("cos01").all() and summary["mean"].between(0, 100).all()
    assert (summary["ci95_low"] <= summary["mean"]).all() and (summary["mean"] <= summary["ci95_high"]).all()
    assert sorted(set(summary["guidance_scale"])) == [5.0, 7.5]
    assert not (results / "tables" / "paper_mmm2025.csv").exists()  # no report.papers configured

    shard_dirs = sorted((results / "images" / "cub" / "sd" / "guidance_scale=5.0").glob("shard-*"))
    assert [d.name for d in shard_dirs] == [f"shard-{i:03d}" for i in range(4)]
    frames = [pd.read_csv(d / "manifest.csv", dtype={"item_id": str}) for d in shard_dirs]
    all_rows = pd.concat(frames)
    assert len(all_rows) == n_images
    for shard_dir, frame in zip(shard_dirs, frames):
        shard = int(shard_dir.name.split("-")[1])
        assert all(shard_of(i, 4) == shard for i in frame["item_id"])
        for name in frame["image"]:
            with Image.open(shard_dir / name) as image:
                assert image.size == (64, 64)
        record = yaml.safe_load((shard_dir / "params.json").read_text())
        assert record["params"]["guidance_scale"] == 5.0 and record["params"]["seed"] == 42
        assert record["packages"]["torch"].startswith("2.14.1")
        assert record["model"]["sd"]["source"] == "tiny"
    prompts = pd.concat(pd.read_csv(p) for p in (results / "prompts" / "cub" / "template").glob("*.csv"))
    assert prompts["prompt"].str.startswith("a photo of ").all()
    assert prompts["prompt"].str.contains("a bird of this species with ").all()


def test_second_run_does_nothing(demo):
    workdir, _ = demo
    result = snakemake(workdir, "--dry-run")
    assert "Nothing to be done" in result.stdout + result.stderr


# Runs a dry run in-process and counts, for the functions defined in the Snakefile and
# rules/: how often Snakemake asks for their signature (get_function_params) and how often
# it then has to compute one (inspect.signature called from get_function_params).
SIGNATURE_PROBE = """
import collections, inspect, json, sys
import snakemake.api, snakemake.cli, snakemake.common, snakemake.rules

def from_workflow(func):
    filename = getattr(getattr(func, "__code__", None), "co_filename", "")
    return filename.endswith(".smk") or filename.endswith("Snakefile")

counts = collections.Counter()
signature, asked = inspect.signature, snakemake.common.get_function_params

def counting_signature(obj, *args, **kwargs):
    if from_workflow(obj) and sys._getframe(1).f_code.co_name == "get_function_params":
        counts["inspected"] += 1
    return signature(obj, *args, **kwargs)

def counting_asked(func):
    counts["asked"] += from_workflow(func)
    return asked(func)

inspect.signature = counting_signature
snakemake.common.get_function_params = snakemake.rules.get_function_params = counting_asked
sys.argv = ["snakemake", *sys.argv[1:]]
try:
    snakemake.cli.main()
finally:
    print("COUNTS", json.dumps(counts))
"""


def test_rule_functions_signatures_are_inspected_once_not_per_call(demo):
    """Snakemake inspects a rule function's signature at every call unless the Snakefile
    stored it (cache_function_signatures): 5% of a 20,000-job DAG build."""
    workdir, _ = demo
    result = subprocess.run(
        [sys.executable, "-c", SIGNATURE_PROBE, "--snakefile", str(ROOT / "Snakefile"),
         "--directory", str(workdir), "--cores", "2", "--dry-run", "--quiet", "rules"],
        capture_output=True, text=True, timeout=600)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    counts = json.loads(output.split("COUNTS ")[1].splitlines()[0])
    assert counts.get("asked", 0) > 100, counts  # every job's input and params functions
    assert counts.get("inspected", 0) == 0, counts


def test_changing_one_swept_value_reruns_only_that_parameter_set(demo):
    workdir, config = demo
    results = workdir / "results"
    before = manifests(results)
    config["methods"]["sd"]["sweep"]["guidance_scale"] = [5.0, 9.0]
    write_config(workdir, config)
    snakemake(workdir)
    after = manifests(results)
    kept = {p: t for p, t in before.items() if "guidance_scale=5.0" in str(p)}
    assert kept and all(after[p] == t for p, t in kept.items())  # untouched
    new = [p for p in after if "guidance_scale=9.0" in str(p)]
    assert len(new) == 4
    summary = pd.read_csv(results / "tables" / "summary.csv")
    assert sorted(set(summary["paramset"])) == ["guidance_scale=5.0", "guidance_scale=9.0"]


def test_adding_items_reruns_only_affected_shards(demo):
    workdir, config = demo
    results = workdir / "results"
    old_items = set(pd.read_csv(results / "data" / "cub" / "items.csv", dtype={"item_id": str})["item_id"])
    before = manifests(results)
    config["toy"]["cub"]["test_per_class"] += 1
    write_config(workdir, config)
    snakemake(workdir)
    items = set(pd.read_csv(results / "data" / "cub" / "items.csv", dtype={"item_id": str})["item_id"])
    added = items - old_items
    assert len(added) == config["toy"]["cub"]["n_classes"] and old_items < items
    affected = {shard_of(i, 4) for i in added}
    assert len(affected) < 4
    after = manifests(results)
    current = [f"guidance_scale={g}" for g in config["methods"]["sd"]["sweep"]["guidance_scale"]]
    checked = 0
    for path, mtime in before.items():
        if path.parent.parent.name not in current:
            continue  # a parameter set no longer in the sweep is left alone
        checked += 1
        shard = int(path.parent.name.split("-")[1])
        assert (after[path] != mtime) == (shard in affected), path
    assert checked == 8


def test_same_config_and_seed_give_identical_images(demo):
    workdir, _ = demo
    shard_dir = next(p for p in sorted((workdir / "results/images/cub/sd/guidance_scale=5.0").glob("shard-*"))
                     if len(pd.read_csv(p / "manifest.csv")))
    before = {p.name: p.read_bytes() for p in shard_dir.glob("*.png")}
    shutil.rmtree(shard_dir)
    snakemake(workdir, str(shard_dir.relative_to(workdir)))  # a deleted intermediate is rebuilt on request
    after = {p.name: p.read_bytes() for p in shard_dir.glob("*.png")}
    assert before and before == after


def test_bad_config_fails_at_load_naming_the_key(tmp_path):
    config = sd_only_config()
    config["methods"]["sd"]["params"]["guidance"] = 3.0
    write_config(tmp_path, config)
    result = snakemake(tmp_path, "--dry-run", check=False)
    assert result.returncode != 0
    assert "methods.sd.params: unknown parameter(s) guidance" in result.stdout + result.stderr
    assert not (tmp_path / "results").exists()


def job_counts(dry_run_output: str) -> dict[str, int]:
    lines = dry_run_output.split("Job stats:")[1].splitlines()[3:]
    counts = {}
    for line in lines:
        parts = line.split()
        if len(parts) != 2 or not parts[1].isdigit():
            break
        counts[parts[0]] = int(parts[1])
    return counts


def test_configfile_replaces_the_demo_config(tmp_path):
    """--configfile must not be deep-merged with config.yaml (no demo sweep, no tiny models)."""
    real = str(ROOT / "configs" / "sd-cub.yaml")
    counts = job_counts(snakemake(tmp_path, "--dry-run", "--configfile", real).stdout)
    assert counts == {"items": 1, "summary": 1, "sweep_plots": 1, "image_grids": 1, "html_report": 1, "all": 1,
                      "total": 6}  # no tiny_model, no toy_data
    # The real config has no sweep: only the `default` parameter set exists.
    shard = "results-sd-cub/images/cub/sd/{}/shard-000"
    assert snakemake(tmp_path, shard.format("default"), "--dry-run", "--configfile", real).returncode == 0
    merged = snakemake(tmp_path, shard.format("guidance_scale=5.0"), "--dry-run", "--configfile", real,
                       check=False)
    assert merged.returncode != 0
    shutil.copy(FAST_CONFIG, tmp_path / "config.yaml")
    counts = job_counts(snakemake(tmp_path, "--dry-run", "--config", "n_shards=3").stdout)
    demo = yaml.safe_load(FAST_CONFIG.read_text())
    toy = {entry["format"] for entry in demo["datasets"].values() if entry["root"] == "toy"}
    assert counts["toy_data"] == len(toy)  # the demo config was loaded, with the override on top


@pytest.fixture(scope="module")
def mmm2025_demo(tmp_path_factory):
    """The default config as shipped: the whole mmm2025 chain on toy CUB and Flowers."""
    workdir = tmp_path_factory.mktemp("mmm2025")
    shutil.copy(FAST_CONFIG, workdir / "config.yaml")
    snakemake(workdir)
    return workdir, yaml.safe_load(FAST_CONFIG.read_text())


def read_manifests(results, dataset, method, paramset="default"):
    folders = sorted((results / "images" / dataset / method / paramset).glob("shard-*"))
    return pd.concat([pd.read_csv(f / "manifest.csv", dtype={"item_id": str}).assign(folder=str(f))
                      for f in folders], ignore_index=True)


def test_mmm2025_chain_runs_every_step_on_cub_and_flowers(mmm2025_demo):
    workdir, config = mmm2025_demo
    results = workdir / "results"
    paper = pd.read_csv(results / "tables" / "paper_mmm2025.csv", keep_default_na=False)
    reference = paper["paper_row"].str.startswith(("Table 2", "Table 3"))
    assert set(paper[~reference]["status"]) == {"ok"}, paper[~reference & (paper.status != "ok")]
    assert set(paper[reference]["status"]) == {"not reproducible"}  # the README's Tables 2 and 3
    assert set(paper["dataset"]) == {"cub", "flowers"}
    assert set(paper[paper.paper_row == "retrieval"]["ours_method"]) == {"cn_retrieval_attr/default",
                                                                         "cn_retrieval/default"}
    summary = pd.read_csv(results / "tables" / "summary.csv")
    for name, method in config["methods"].items():
        for dataset in method["datasets"]:
            ran = summary[(summary.method == name) & (summary.dataset == dataset)]
            # prompt lists and paragraphs have no real image to compare with, so no i_sim
            text_only = config["datasets"][dataset]["format"] in ("prompts", "paraprompts")
            expected = {"t_sim"} if text_only else {"t_sim", "i_sim"}
            assert expected <= set(ran["metric"]), (name, dataset)
    for dataset in ("cub", "flowers"):
        items = pd.read_csv(results / "data" / dataset / "items.csv", dtype={"item_id": str})
        gallery = pd.read_csv(results / "data" / dataset / "gallery.csv", dtype={"item_id": str})
        assert set(items["split"]) == {"test"} and set(gallery["split"]) == {"train"}
        # Retrieval returns train images only, one per test item.
        retrieved = read_manifests(results, dataset, "retrieval")
        assert sorted(retrieved["item_id"]) == sorted(items["item_id"])
        assert set(retrieved["retrieved_item_id"]) <= set(gallery["item_id"])
        # AS-all picks, per item, one of its candidates' images.
        chosen = read_manifests(results, dataset, "as_all")
        assert sorted(chosen["item_id"]) == sorted(items["item_id"])
        assert set(chosen["selected_method"]) <= {"sd_template", "sd_llm", "retrieval"}
        # ControlNet regenerates each base with its canny map beside the outputs.
        samples = config["methods"]["cn_retrieval"]["params"]["samples_per_input"]
        regenerated = read_manifests(results, dataset, "cn_retrieval")
        assert len(regenerated) == len(items) * samples
        for row in regenerated.itertuples():
            assert (Path(row.folder) / row.canny).exists() and (Path(row.folder) / row.image).exists()
        # every SD base is regenerated (base_samples 0), and so are the AS choices
        bases = config["methods"]["sd_template"]["params"]["images_per_prompt"]
        assert len(read_manifests(results, dataset, "cn_template")) == len(items) * bases * samples
        as_choices = read_manifests(results, dataset, "cn_as_lt")
        assert sorted(set(as_choices["base_image"])) == sorted(read_manifests(results, dataset, "as_lt")["image"])
        # ControlNet's prompt and t_sim's text are the description (the item's captions)
        descriptions = pd.concat(pd.read_csv(p, dtype={"item_id": str})
                                 for p in (results / "prompts" / dataset / "description").glob("*.csv"))
        by_item = dict(zip(descriptions.item_id, descriptions.prompt))
        assert all(prompt.startswith(f"a photo of {row_class}, {by_item[item]}")
                   for item, row_class, prompt in zip(as_choices.item_id, as_choices.class_name, as_choices.prompt))
        # LLM prompts: the paper's request, answers cached outside the outputs.
        llm = pd.concat(pd.read_csv(p) for p in (results / "prompts" / dataset / "llm").glob("*.csv"))
        domain = config["datasets"][dataset]["domain"]
        assert llm["request"].str.startswith(f"Please use less than 120 words to describe the {domain}(").all()
        assert (llm["prompt"].str.len() > 0).all()
        assert list((results / "cache" / "llm" / dataset / "llm").glob("shard-*.jsonl"))
    cub_attr = read_manifests(results, "cub", "retrieval_attr")
    assert (cub_attr["strategy"] == "attribute").all()


def test_mmm2025_rerun_is_a_no_op(mmm2025_demo):
    workdir, _ = mmm2025_demo
    result = snakemake(workdir, "--dry-run")
    assert "Nothing to be done" in result.stdout + result.stderr


def test_guided_synthesis_sweep_and_tcig_in_the_demo(mmm2025_demo):
    """SDEdit / GradOP+ on toy stroke paintings (strength x grad-steps sweep) and TCIG on
    toy COCO run in the default DAG, with faithfulness rows the report can plot."""
    workdir, config = mmm2025_demo
    results = workdir / "results"
    summary = pd.read_csv(results / "tables" / "summary.csv")
    faith = summary[(summary["metric"] == "faithfulness_mse") & (summary["aggregate"] == "mean")]
    gradop_sets = {p for p in faith[faith.method == "gradop"]["paramset"]}
    assert gradop_sets == {f"grad_steps_per_iter={g}__strength={s}" for g in (2, 6) for s in (0.6, 0.8)}
    assert set(faith[faith.method == "sdedit"]["paramset"]) == {"strength=0.6", "strength=0.8"}
    assert {"strength", "grad_steps_per_iter"} <= set(summary.columns)  # swept values as columns
    assert (faith["mean"] > 0).all()
    gradop = read_manifests(results, "strokes", "gradop", "grad_steps_per_iter=6__strength=0.8")
    losses = [json.loads(text) for text in gradop["gradop_losses"]]
    assert all(step["last"] < step["first"] for log in losses for step in log)  # the inner loop optimises
    tcig = read_manifests(results, "coco", "tcig")
    items = pd.read_csv(results / "data" / "coco" / "items.csv", dtype={"item_id": str})
    assert sorted(tcig["item_id"]) == sorted(items["item_id"])
    for row in tcig.itertuples():
        assert (Path(row.folder) / row.stage1_image).exists() and (Path(row.folder) / row.image).exists()


def test_region_methods_iou_table_and_panoramas_in_the_demo(mmm2025_demo):
    """The COCO region subset feeds TCIG, MultiDiffusion, SI and BLD; each is scored by
    DeepLabv3 IoU against the masks it was given, beside MultiDiffusion's IoU table.
    Panoramas are scored on square crops."""
    workdir, config = mmm2025_demo
    results = workdir / "results"
    counts = pd.read_csv(results / "data" / "coco" / "item_counts.csv")
    items = pd.read_csv(results / "data" / "coco" / "items.csv", dtype={"item_id": str})
    assert counts["images_remaining"].iloc[0] == config["toy"]["coco"]["n_images"]
    applied = counts[counts["applied"]]
    assert applied["images_remaining"].iloc[-1] == len(items) > 0
    # the last row: the other small_masks reading (drop_mask) also keeps toy image 11
    assert counts["step"].iloc[-1] == "other_reading" and counts["images_remaining"].iloc[-1] == len(items) + 1
    for objects in items["objects"]:
        listed = json.loads(objects)
        assert 2 <= len(listed) <= 4 and all(obj["category"] != "person" for obj in listed)

    summary = pd.read_csv(results / "tables" / "summary.csv")
    iou = summary[(summary.metric == "iou") & (summary["aggregate"] == "mean")].set_index("method")
    assert set(iou.index) == {"tcig", "multidiffusion", "si", "bld"}
    assert (iou["n"] == len(items)).all() and iou["mean"].between(0, 1).all()
    paper = pd.read_csv(results / "tables" / "paper_multidiffusion.csv").set_index("paper_row")
    assert set(paper["status"]) == {"ok"}, paper
    assert paper.loc["MultiDiffusion", "paper"] == 0.26 and paper.loc["MultiDiffusion", "paper_std"] == 0.12
    assert paper.loc["SI", "ours_mean"] == pytest.approx(iou.loc["si", "mean"])

    # every region method got the same target masks for an item
    masks = {name: read_manifests(results, "coco", name).set_index("item_id")["masks"]
             for name in ("tcig", "multidiffusion", "si", "bld")}
    for item in items["item_id"]:
        listed = {name: sorted(m["class"] for m in json.loads(masks[name][item])) for name in masks}
        assert len({tuple(v) for v in listed.values()}) == 1, listed
    si, bld = read_manifests(results, "coco", "si"), read_manifests(results, "coco", "bld")
    for a, b in zip(si.sort_values("item_id").itertuples(), bld.sort_values("item_id").itertuples()):
        with Image.open(Path(a.folder) / a.background) as one, Image.open(Path(b.folder) / b.background) as two:
            assert one.tobytes() == two.tobytes()  # SI and BLD edit the same background

    params = config["methods"]["panorama"]["params"]
    panoramas = read_manifests(results, "landscapes", "panorama")
    prompts = pd.read_csv(results / "data" / "landscapes" / "items.csv", dtype={"item_id": str})
    n_crops = params["width"] // params["height"]
    assert len(panoramas) == len(prompts) * n_crops
    for row in panoramas.itertuples():
        with Image.open(Path(row.folder) / row.image) as crop, Image.open(Path(row.folder) / row.panorama) as full:
            assert crop.size == (params["height"], params["height"])
            assert full.size == (params["width"], params["height"])
    t_sim = summary[(summary.dataset == "landscapes") & (summary["aggregate"] == "mean") & (summary.metric == "t_sim")]
    assert set(t_sim["method"]) == {"panorama", "sd_panorama"}
    assert t_sim.set_index("method").loc["panorama", "n"] == len(panoramas)


def test_paradiffusion_and_chunked_clip_score_in_the_demo(mmm2025_demo):
    """ParaDiffusion (tiny Llama + LoRA) and chunked-prompt SD on toy ParaPrompts paragraphs,
    scored with the paragraph cut at 77 CLIP tokens and read in chunks, both labelled."""
    workdir, config = mmm2025_demo
    results = workdir / "results"
    items = pd.read_csv(results / "data" / "paragraphs" / "items.csv", dtype={"item_id": str})
    assert len(items) == config["toy"]["paraprompts"]["n_prompts"] and (items["category"] != "").all()
    para = read_manifests(results, "paragraphs", "paradiffusion")
    assert sorted(para["item_id"]) == sorted(items["item_id"])
    for folder in set(para["folder"]):
        record = json.loads((Path(folder) / "params.json").read_text())
        assert record["text_handling"] == "llama-truncate" and record["text_tokens"]["max_text_tokens"] == 256

    metrics = pd.concat(pd.read_csv(p) for p in (results / "metrics" / "paragraphs").glob("*/*/clip/shard-*.csv"))
    assert set(metrics["metric"]) == {"t_sim", "t_sim_chunked"}  # no real images: no i_sim
    assert set(metrics.groupby("metric")["text_handling"].first().items()) == {("t_sim", "truncate"),
                                                                              ("t_sim_chunked", "chunked")}
    assert (metrics["text_chunks"] > 1).all()  # every toy paragraph is longer than 77 CLIP tokens

    summary = pd.read_csv(results / "tables" / "summary.csv")
    means = summary[(summary.dataset == "paragraphs") & (summary["aggregate"] == "mean")]
    assert {(m, x) for m, x in zip(means.method, means.metric)} == {
        (m, x) for m in ("paradiffusion", "sd_paragraph") for x in ("t_sim", "t_sim_chunked", "aesthetic")}
    paper = pd.read_csv(results / "tables" / "paper_paradiffusion.csv")
    assert set(paper["status"]) == {"ok"} and paper["paper"].isna().all()  # human votes only in the paper
    assert set(paper["ours_method"]) == {"paradiffusion/default", "sd_paragraph/default"}


def test_fid_aesthetic_plots_grids_and_html_report_in_the_demo(mmm2025_demo, tmp_path):
    """The evaluation layer on the demo: FID/KID per run against the configured reference
    set, the aesthetic score from the CLIP cache, sweep plots, one image grid per run and a
    self-contained HTML page; plus Snakemake's own --report of the marked outputs."""
    workdir, config = mmm2025_demo
    results = workdir / "results"
    summary = pd.read_csv(results / "tables" / "summary.csv")
    fid = summary[(summary["aggregate"] == "set") & (summary.metric == "fid")]
    assert set(fid["dataset"]) == {"coco", "landscapes"}  # the demo's two references; the others: none
    assert set(fid[fid.dataset == "landscapes"]["method"]) == {"panorama"}  # sd_panorama is the reference itself
    runs = {(d, m) for d, m in zip(summary.dataset, summary.method) if d == "coco"}
    assert {(d, m) for d, m in zip(fid.dataset, fid.method)} == runs | {("landscapes", "panorama")}
    panorama = pd.read_csv(results / "metrics" / "landscapes" / "panorama" / "default" / "fid" / "set.csv")
    n_crops = len(read_manifests(results, "landscapes", "panorama"))
    assert set(panorama["reference"]) == {"sd_panorama/default"} and (panorama["n_images"] == n_crops).all()
    assert (panorama["antialias"].astype(str) == "False").all() and panorama["dtype"].eq("float64").all()
    assert panorama["implementation"].str.contains("torchmetrics").all()
    kid = panorama.set_index("metric").loc["kid"]
    assert kid["kid_subset_size"] <= min(kid["n_images"], kid["n_reference"])  # adapted to the tiny sets
    assert list((results / "cache" / "fid" / "fid" / "landscapes" / "reference").glob("*.npz")) == [
        results / "cache" / "fid" / "fid" / "landscapes" / "reference" / "sd_panorama@default.npz"]

    aesthetic = summary[(summary.metric == "aesthetic") & (summary["aggregate"] == "mean")]
    t_sim = summary[(summary.metric == "t_sim") & (summary["aggregate"] == "mean")]
    assert len(aesthetic) == len(t_sim) and set(aesthetic["scale"]) == {"laion_v2"}
    assert (aesthetic.set_index(["dataset", "method", "paramset"])["n"]
            == t_sim.set_index(["dataset", "method", "paramset"])["n"]).all()  # every image scored

    plots = pd.read_csv(results / "report" / "plots" / "plots.csv")
    assert {("sd_template", "guidance_scale"), ("gradop", "strength"), ("gradop", "grad_steps_per_iter"),
            ("sdedit", "strength")} <= set(zip(plots.method, plots.param))
    assert all((results / "report" / "plots" / path).is_file() for path in plots["path"])
    for dataset in config["datasets"]:
        grids = sorted((results / "report" / "grids" / dataset).glob("*.jpg"))
        expected = {(m, p) for d, m, p in zip(summary.dataset, summary.method, summary.paramset) if d == dataset}
        assert len(grids) == len(expected) and all(g.with_suffix(".csv").is_file() for g in grids)

    page = (results / "report" / "index.html").read_text(encoding="utf-8")
    assert "<script" not in page and 'src="http' not in page
    assert page.count('<img src="data:image/') == len(plots) + sum(
        1 for _ in (results / "report" / "grids").glob("*/*.jpg"))
    assert "paper_paradiffusion" in page or "paradiffusion" in page

    out = tmp_path / "snakemake_report.html"
    snakemake(workdir, "--report", str(out))
    assert out.stat().st_size > 10_000


# --- interrupted runs -----------------------------------------------------------------------

def interrupt_run(workdir, ready, interrupt, *args):
    """Start snakemake, wait until ready(workdir, process) holds, interrupt it, wait for the
    end. Returns (outputs of the jobs Snakemake reported finished, their mtimes, output)."""
    cmd = [str(SNAKEMAKE), "--snakefile", str(ROOT / "Snakefile"), "--directory", str(workdir), "--cores", "2",
           *args]
    with open(workdir / "interrupted.log", "w+") as log:
        # SIGINT back to its default: a shell's background job (`make test &`) starts with it
        # ignored, and Python (hence Snakemake) then never hears a Ctrl-C.
        process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                   preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        deadline = time.monotonic() + 600
        while not ready(workdir, process):
            assert process.poll() is None, "the run ended before the point where it was to be interrupted"
            assert time.monotonic() < deadline
            time.sleep(0.1)
        interrupt(process, Path(log.name))
        assert process.wait(timeout=300) != 0
        log.seek(0)
        output = log.read()
    assert "Nothing to be done" not in output
    outputs = finished_outputs(output)
    results = workdir / "results"
    assert outputs and not (results / "tables" / "summary.csv").exists()
    check_no_half_written_results(results)
    return {o: (workdir / o).stat().st_mtime_ns for o in outputs}


def finished_outputs(log: str) -> set[str]:
    """The outputs of every job the log reports as finished ('Finished jobid: N')."""
    outputs, current = {}, []
    for line in log.splitlines():
        line = line.strip()
        if line.startswith("output:"):
            current = [o.strip() for o in line[len("output:"):].split(",")]
        elif line.startswith("jobid:"):
            outputs[line.split()[1]] = current
    done = re.findall(r"Finished jobid: (\d+)", log)
    return {o for jobid in done for o in outputs.get(jobid, [])}


def check_no_half_written_results(results: Path):
    """Every file under a final name is whole: tables parse, images decode, arrays load."""
    for path in results.rglob("*"):
        if not path.is_file() or any(part.startswith(".") for part in path.relative_to(results).parts):
            continue  # hidden .name.XXXXXXXX.tmp files of a killed job are never read
        if path.suffix == ".csv":
            pd.read_csv(path)
        elif path.suffix == ".png":
            with Image.open(path) as image:
                image.load()
        elif path.suffix == ".npz":
            with np.load(path) as arrays:
                [arrays[k] for k in arrays.files]
    for manifest in results.rglob("manifest.csv"):
        for name in pd.read_csv(manifest)["image"]:
            assert (manifest.parent / name).is_file(), manifest


def running_script(name):
    """ready(): a job running scripts/<name>.py (Snakemake runs a copy named *.<name>.py)."""
    def ready(workdir, process):
        try:
            children = psutil.Process(process.pid).children(recursive=True)
            return any(any(arg.endswith(f".{name}.py") for arg in child.cmdline()) for child in children)
        except psutil.Error:
            return False
    return ready


def exists(pattern, at_least=1):
    return lambda workdir, process: len(list((workdir / "results").glob(pattern))) >= at_least


def both(*conditions):
    return lambda workdir, process: all(c(workdir, process) for c in conditions)


def ctrl_c(process, log):
    """SIGINT to the whole foreground group, as a terminal sends it; pressed again if, after
    5 s, the run goes on and Snakemake has not said it is terminating. Snakemake 9 can lose
    a SIGINT that lands inside one of its short internal asyncio runs (the runner turns it
    into a task cancellation that the coroutine swallows); a user would press Ctrl-C again."""
    for _ in range(10):
        os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(timeout=5)
            return
        except subprocess.TimeoutExpired:
            if "Terminating processes on user request" in log.read_text():
                return  # heard: interrupt_run waits for its end


def sigterm(process, log):
    process.send_signal(signal.SIGTERM)  # kill, scancel, a shutdown


def kill_job(name):
    def interrupt(process, log):  # the kernel's OOM killer, a crashed job
        for child in psutil.Process(process.pid).children(recursive=True):
            if any(arg.endswith(f".{name}.py") for arg in child.cmdline()):
                child.kill()
    return interrupt


def node_loss(process, log):
    os.killpg(process.pid, signal.SIGKILL)  # Snakemake and every job die at once, nothing cleans up


def test_interrupted_runs_resume_to_the_same_results(demo, tmp_path):
    """The demo's config (one of its two guidance scales, to keep the test short) run with
    four interruptions at different steps, each resumed: nothing a finished job wrote is
    recomputed, no half-written file is ever under a final name, and the end result is
    byte-identical to the uninterrupted run's (images, per-image metrics, summary rows),
    which also shows that two runs of one config agree exactly."""
    config = json.loads((demo[0] / "first_config.json").read_text())
    config["methods"]["sd"]["sweep"]["guidance_scale"] = [5.0]
    write_config(tmp_path, config)
    results = tmp_path / "results"
    steps = [
        (exists("prompts/cub/template/shard-*.csv"), ctrl_c),
        (both(exists("images/cub/sd/*/shard-*"), running_script("generate_sd")), kill_job("generate_sd")),
        (running_script("clip_embeddings"), sigterm),
        (exists("metrics/cub/sd/*/clip/shard-*.csv"), node_loss),
    ]
    kept = {}
    for ready, interrupt in steps:
        finished = interrupt_run(tmp_path, ready, interrupt, "--rerun-incomplete")
        assert all(kept[o] == (tmp_path / o).stat().st_mtime_ns for o in kept)  # earlier work untouched
        kept.update(finished)
    # Node loss leaves Snakemake's lock behind; the documented resume is --unlock, then rerun.
    snakemake(tmp_path, "--unlock")
    snakemake(tmp_path, "--rerun-incomplete")
    assert all(kept[o] == (tmp_path / o).stat().st_mtime_ns for o in kept), "finished work was recomputed"
    assert not [p for p in results.rglob(".*.tmp*")], "a killed job's temporary file was left behind"
    check_no_half_written_results(results)

    first = json.loads((demo[0] / "first_run.json").read_text())
    resumed = result_fingerprints(results)
    summary = "tables/summary.csv"
    expected = {path: digest for path, digest in first.items() if "guidance_scale=5.0" in path}
    n_images = (config["toy"]["cub"]["n_classes"] * config["toy"]["cub"]["test_per_class"]
                * config["methods"]["sd"]["params"]["images_per_prompt"])
    assert len(expected) == n_images + 4 + 4  # images, 4 manifests, 4 metric files
    assert {p: d for p, d in resumed.items() if p != summary} == expected
    uninterrupted = pd.read_csv(demo[0] / "first_summary.csv")
    uninterrupted = uninterrupted[uninterrupted["paramset"] == "guidance_scale=5.0"].reset_index(drop=True)
    pd.testing.assert_frame_equal(pd.read_csv(results / summary), uninterrupted, check_exact=True)
