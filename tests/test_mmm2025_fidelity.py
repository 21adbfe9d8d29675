"""The mmm2025 switches of issue 18 (docs/fidelity.md): each shows both behaviours differ
where they should. Text roles (description prompts), the held-out CLIP scorer, the paper
table's row mapping and reference rows, and the config checks of the new settings. The
preprocessing switches are tested beside their code (test_long_prompt, test_controlnet)."""

import copy
import json

import numpy as np
import pandas as pd
import pytest

from ctrlbench import config as cb_config
from ctrlbench.errors import ConfigError, InputError
from ctrlbench.metrics.clip_score import similarity_shard
from ctrlbench.metrics.embeddings import save_embeddings
from ctrlbench.methods.controlnet import regeneration_prompt
from ctrlbench.methods.registry import CONTROLNET_DEFAULTS
from ctrlbench.prompts.templates import description_prompts_for_shard, template_prompts_for_shard
from ctrlbench.report.papers import mmm2025_table
from ctrlbench.report.tables import summarize

from conftest import ROOT, FAST_CONFIG

CAPTIONS = ["this bird has a white belly and a hooked bill", "a large bird with long grey wings"]
ATTRIBUTES = ["has_bill_shape::hooked_seabird", "has_underparts_color::white"]


def shard(tmp_path, rows):
    frame = pd.DataFrame([{"item_id": item, "split": "test", "class_id": 1, "class_name": "Laysan Albatross",
                           "image": f"/data/{item}.jpg", "captions": json.dumps(captions),
                           "attributes": json.dumps(attributes)} for item, captions, attributes in rows])
    path = tmp_path / f"shard-{'-'.join(item for item, _, _ in rows)}.csv"
    frame.to_csv(path, index=False)
    return str(path)


# --- which text does what ---------------------------------------------------------------

def test_description_prompts_join_captions_or_attributes(tmp_path):
    items = shard(tmp_path, [("a", CAPTIONS, ATTRIBUTES), ("b", CAPTIONS[:1], [])])
    captions = description_prompts_for_shard(items, str(tmp_path / "c.csv"), {"kind": "description"})
    assert captions.set_index("item_id")["prompt"].to_dict() == {"a": ", ".join(CAPTIONS), "b": CAPTIONS[0]}
    first = description_prompts_for_shard(items, str(tmp_path / "f.csv"),
                                          {"kind": "description", "max_captions": 1, "separator": " "})
    assert first.set_index("item_id")["prompt"]["a"] == CAPTIONS[0]
    attributes = description_prompts_for_shard(shard(tmp_path, [("a", CAPTIONS, ATTRIBUTES)]),
                                               str(tmp_path / "a.csv"), {"kind": "description",
                                                                         "source": "attributes"})
    assert attributes["prompt"].tolist() == ["has bill shape::hooked seabird, has underparts color::white"]
    assert list(captions.columns) == ["item_id", "prompt", "class_name", "image"]
    # an item without the chosen text fails, naming the item; nothing is made up
    with pytest.raises(InputError, match="item b: no attributes"):
        description_prompts_for_shard(items, str(tmp_path / "x.csv"), {"kind": "description", "source": "attributes"})


def test_controlnet_prompt_from_the_description_has_no_double_prefix(tmp_path):
    """main.py: ControlNet's prompt is 'a photo of ' + class + ', ' + description. Wrapping the
    template prompt instead (our old default) repeated 'a photo of <class>'."""
    items = shard(tmp_path, [("a", CAPTIONS, ATTRIBUTES)])
    template = template_prompts_for_shard(items, str(tmp_path / "t.csv"), {
        "template": "a photo of {class}, a {domain} of this species with {attributes}."}, "bird")
    description = description_prompts_for_shard(items, str(tmp_path / "d.csv"), {"kind": "description"})
    wrap = CONTROLNET_DEFAULTS["prompt_template"]
    old = regeneration_prompt(wrap, "Laysan Albatross", template["prompt"][0])
    new = regeneration_prompt(wrap, "Laysan Albatross", description["prompt"][0])
    assert old.count("a photo of Laysan Albatross") == 2
    assert new == (f"a photo of Laysan Albatross, {', '.join(CAPTIONS)}, best quality, extremely detailed")


def test_paper_config_gives_each_step_the_authors_text():
    config = cb_config.load(ROOT / "configs" / "mmm2025.yaml")
    methods = config["methods"]
    assert config["prompts"]["description"] == {**config["prompts"]["description"], "kind": "description",
                                                "source": "captions"}
    assert {methods[m]["prompts"] for m in ("sd_template", "sd_llm")} == {"template", "llm"}
    for name, method in methods.items():
        if method["kind"] in ("controlnet", "select") or name.startswith("retrieval_clip"):
            assert method["prompts"] == "description", name
    assert cb_config.evaluation_prompts(config, "cub") == "description"
    sets = {name: cb_config.method_params(config, name) for name in methods}
    assert sets["sd_template"]["text_handling"] == "authors" and sets["cn_template"]["text_handling"] == "truncate"
    assert all(sets[m]["base_samples"] == 0 and sets[m]["canny_input"] == "rgb"
               and sets[m]["control_resize"] == "annotator" for m in methods if methods[m]["kind"] == "controlnet")
    assert config["prompts"]["llm"]["api"] == "completions"
    # the AS choices are regenerated, and the paper's retrieval is the attribute one on CUB
    assert methods["cn_as_lt"]["base"] == "as_lt" and methods["cn_as_all"]["base"] == "as_all"
    rows = cb_config.paper_rows(config, "mmm2025")
    assert rows["AS(l+t) + SD"] == "cn_as_lt/default" and rows["AS(l+t) + SD (chosen base, not regenerated)"] \
        == "as_lt/default"
    assert rows["retrieval (regeneration table)"] == {"cub": "retrieval_attr/default",
                                                      "flowers": "retrieval_clip/default"}
    assert sets["retrieval_attr"]["strategy"] == "attribute"


# --- the held-out scorer ----------------------------------------------------------------

def unit(rng, n, d=8):
    x = rng.normal(size=(n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_held_out_scorer_writes_its_own_metrics(tmp_path):
    rng = np.random.default_rng(0)
    keys = pd.DataFrame({"item_id": ["a", "a", "b"], "sample": [0, 1, 0], "image": ["a0", "a1", "b0"]})
    text_keys = pd.DataFrame({"item_id": ["a", "b"], "prompt": ["x", "y"]})
    real_keys = pd.DataFrame({"item_id": ["a", "b"], "image": ["/r/a.jpg", "/r/b.jpg"]})
    scores = {}
    for model in ("clip", "clip_h14"):  # two CLIPs embed the same images differently
        paths = {what: tmp_path / f"{model}_{what}.npz" for what in ("images", "text", "real")}
        save_embeddings(paths["images"], keys, unit(rng, 3), model)
        save_embeddings(paths["text"], text_keys, unit(rng, 2), model)
        save_embeddings(paths["real"], real_keys, unit(rng, 2), model)
        suffix = "_held_out" if model == "clip_h14" else ""
        scores[model] = similarity_shard(str(paths["images"]), str(paths["real"]), str(paths["text"]),
                                         str(tmp_path / f"{model}.csv"), "cos01", model, suffix=suffix)
    assert set(scores["clip"]["metric"]) == {"t_sim", "i_sim"}
    assert set(scores["clip_h14"]["metric"]) == {"t_sim_held_out", "i_sim_held_out"}
    assert set(scores["clip_h14"]["model"]) == {"clip_h14"}
    assert not np.allclose(scores["clip"]["value"], scores["clip_h14"]["value"])


def test_held_out_scorer_in_the_dag(tmp_path):
    """With evaluation.clip.held_out, every run gets clip_held_out metric jobs on the second
    model's embedding caches; without it, none (a dry run of the demo)."""
    import subprocess
    import sys
    import yaml

    config = yaml.safe_load(FAST_CONFIG.read_text())
    config["models"]["clip2"] = {"kind": "open_clip", "source": "tiny"}
    config["evaluation"]["clip"]["held_out"] = "clip2"
    config["results_dir"] = str(tmp_path / "results")
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    targets = [f"{tmp_path}/results/metrics/cub/cn_as_lt/default/{folder}/shard-000.csv"
               for folder in ("clip", "clip_held_out")]
    out = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--quiet", "rules", "--cores", "1",
                          "--snakefile", str(ROOT / "Snakefile"), "--configfile", str(tmp_path / "c.yaml"),
                          "--directory", str(tmp_path), *targets], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    counts = {line.split()[0]: int(line.split()[1]) for line in out.stdout.splitlines()
              if len(line.split()) == 2 and line.split()[1].isdigit()}
    assert counts.get("clip_similarity") == 2, out.stdout
    config["evaluation"]["clip"]["held_out"] = "clip"
    with pytest.raises(ConfigError, match="evaluation.clip.held_out.*another CLIP"):
        cb_config.validate(config)


# --- the paper table --------------------------------------------------------------------

def test_paper_table_rows_per_dataset_reference_rows_and_held_out(tmp_path):
    rows = []
    for method, value in (("cn_retrieval_attr", 61.0), ("cn_retrieval_clip", 62.0)):
        for dataset in ("cub", "flowers"):
            for metric, shift in (("t_sim", 0.0), ("t_sim_held_out", 5.0)):
                rows += [{"dataset": dataset, "method": method, "paramset": "default", "item_id": f"i{k}",
                          "sample": 0, "metric": metric, "value": value + shift + k, "scale": "cos01"}
                         for k in range(2)]
    summary = summarize(pd.DataFrame(rows))
    summary.to_csv(tmp_path / "summary.csv", index=False)
    mapping = {"retrieval": {"cub": "cn_retrieval_attr/default", "flowers": "cn_retrieval_clip/default"}}
    table = mmm2025_table(str(tmp_path / "summary.csv"), str(tmp_path / "paper.csv"), mapping,
                          {"cub": "cub", "flowers": "flowers"}, "cos01")
    at = table.set_index(["paper_row", "dataset", "metric"])
    assert at.loc[("retrieval", "cub", "t_sim"), "ours_mean"] == pytest.approx(61.5)
    assert at.loc[("retrieval", "flowers", "t_sim"), "ours_mean"] == pytest.approx(62.5)
    assert at.loc[("retrieval", "flowers", "t_sim"), "ours_method"] == "cn_retrieval_clip/default"
    held = at.loc[("retrieval", "cub", "t_sim_held_out")]
    assert held["ours_mean"] == pytest.approx(66.5) and np.isnan(held["paper"]) and "held-out" in held["note"]
    # the authors' README Tables 2 and 3: shown as reference rows, their setting undefined
    reference = at.loc[("Table 2 (zero shot): AS-all", "cub", "t_sim")]
    assert reference["paper"] == 60.95 and reference["status"] == "not reproducible"
    assert "not reproducible from the public material" in reference["note"]
    assert at.loc[("AS-all (chosen base, not regenerated)", "cub", "t_sim"), "status"] == "not configured"
    assert "regenerations" in at.loc[("AS-all", "cub", "t_sim"), "note"]


# --- config checks of the new settings ----------------------------------------------------

@pytest.mark.parametrize("mutate, fragment", [
    (lambda c: c["methods"]["cn_template"]["params"].update(text_handling="cut"),
     "methods.cn_template.params.text_handling: 'cut' is not one of chunked, truncate, authors"),
    (lambda c: c["methods"]["cn_template"]["params"].update(canny_input="hsv"), "canny_input"),
    (lambda c: c["methods"]["cn_template"].update(sweep={"control_resize": ["annotator", "square"]}),
     "control_resize: 'square'"),
    (lambda c: c["methods"]["sd_llm"]["params"].update(text_handling="authorz"), "params.text_handling: 'authorz'"),
    (lambda c: c["methods"]["retrieval"]["params"].update(strategy="image"), "retrieval.params.strategy"),
    (lambda c: c["prompts"]["description"].update(source="attributes"),
     "dataset 'flowers' (flowers) has none"),
    (lambda c: c["prompts"]["template"].update(source="captions"), "prompts.template: source only apply"),
    (lambda c: c["prompts"]["description"].update(source="words"), "prompts.description.source"),
    (lambda c: c["report"]["papers"]["mmm2025"].update(retrieval={"imagenet": "cn_retrieval"}),
     "unknown dataset(s) imagenet"),
    (lambda c: c["report"]["papers"]["mmm2025"].update(retrieval={"flowers": "cn_retrieval_attr"}),
     "method 'cn_retrieval_attr' does not run on dataset 'flowers'"),
])
def test_bad_fidelity_settings_are_named(default_config, mutate, fragment):
    config = copy.deepcopy(default_config)
    mutate(config)
    with pytest.raises(ConfigError) as error:
        cb_config.validate(config)
    assert fragment in str(error.value)


def test_description_on_toy_cub_and_rgb_canny_on_its_images(tmp_path):
    """On the toy CUB: captions and attribute words give different descriptions, the
    captions one is the item's text_c10 lines joined; and the RGB Canny of its images is
    not the gray one (the toy birds have colour edges of near-equal luminance)."""
    from PIL import Image

    from ctrlbench.data.items import prepare_items
    from ctrlbench.data.toy import make_toy
    from ctrlbench.methods.controlnet import canny_map

    root = make_toy("cub", tmp_path / "cub")
    prepare_items("cub", str(root), "test", str(tmp_path / "items.csv"), str(tmp_path / "shards"), 1)
    items = str(tmp_path / "shards" / "shard-000.csv")
    captions = description_prompts_for_shard(items, str(tmp_path / "c.csv"), {"kind": "description"})
    words = description_prompts_for_shard(items, str(tmp_path / "a.csv"), {"kind": "description",
                                                                           "source": "attributes"})
    assert len(captions) == len(words) > 0
    assert (captions["prompt"] != words["prompt"]).all()
    table = pd.read_csv(tmp_path / "items.csv", dtype={"item_id": str}).set_index("item_id")
    for row in captions.itertuples():
        assert row.prompt == ", ".join(json.loads(table.loc[row.item_id, "captions"]))
    differ = [not np.array_equal(np.asarray(canny_map(Image.open(path), 100, 200, "rgb")),
                                 np.asarray(canny_map(Image.open(path), 100, 200, "gray")))
              for path in table["image"]]
    assert any(differ), "RGB and gray Canny agree on every toy image"
