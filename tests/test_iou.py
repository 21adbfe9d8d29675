"""Mask IoU of generated images (ctrlbench.metrics.iou): constructed predictions, a fake
DeepLab with fixed logits, and the tiny DeepLab end to end."""

from __future__ import annotations

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torch import nn

from ctrlbench.errors import InputError
from ctrlbench.methods.regions import save_item_masks
from ctrlbench.methods.segmentation import VOC_CLASSES, voc_index
from ctrlbench.metrics import iou as iou_metric
from ctrlbench.metrics.iou import COLUMNS, class_ious, iou_scores, predict_classes, run_shard, summarize_iou

DOG, CAT, CAR = voc_index("dog"), voc_index("cat"), voc_index("car")


def box(top, left, bottom, right, size=(16, 16)) -> np.ndarray:
    mask = np.zeros(size, bool)
    mask[top:bottom, left:right] = True
    return mask


def class_map(boxes: dict[int, np.ndarray], size=(16, 16)) -> np.ndarray:
    out = np.zeros(size, np.int64)
    for index, mask in boxes.items():
        out[mask] = index
    return out


class FakeDeeplab(nn.Module):
    """Logits that put a fixed class map (or one per call) at whatever size it is asked,
    recording the input batch shapes."""

    def __init__(self, *maps: np.ndarray):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))  # segment_probs reads device and dtype from it
        self.maps = [torch.from_numpy(m) for m in maps]
        self.calls: list[tuple[int, ...]] = []

    def forward(self, x):
        self.calls.append(tuple(x.shape))
        labels = self.maps[min(len(self.calls), len(self.maps)) - 1]
        assert labels.shape == x.shape[-2:], "the image reaches the model at its mask's size"
        logits = nn.functional.one_hot(labels, 21).permute(2, 0, 1).float() * 10.0
        return {"out": logits.unsqueeze(0).expand(x.shape[0], -1, -1, -1) + self.weight}


def gray(size=(16, 16)) -> Image.Image:
    return Image.new("RGB", (size[1], size[0]), (128, 128, 128))


# --- the formula -------------------------------------------------------------------------------

def test_perfect_disjoint_and_half_overlap():
    dog = box(0, 0, 8, 16)
    assert class_ious(class_map({DOG: dog}), {DOG: dog}) == {DOG: 1.0}
    assert class_ious(class_map({DOG: box(8, 0, 16, 16)}), {DOG: dog}) == {DOG: 0.0}
    assert class_ious(class_map({CAT: dog}), {DOG: dog}) == {DOG: 0.0}  # right place, wrong class
    # prediction rows 4-12, target rows 0-8: 64 shared pixels of 192 in the union
    assert class_ious(class_map({DOG: box(4, 0, 12, 16)}), {DOG: dog}) == {DOG: pytest.approx(1 / 3, abs=0)}
    # the prediction inside the target: 32 / 128
    assert class_ious(class_map({DOG: box(0, 0, 2, 16)}), {DOG: dog})[DOG] == 0.25


def test_objects_are_averaged_per_image():
    dog, cat = box(0, 0, 8, 8), box(8, 8, 16, 16)
    fake = FakeDeeplab(class_map({DOG: dog, CAR: cat}))  # the dog right, the cat taken for a car
    [score] = iou_scores(fake, [gray()], [{DOG: dog, CAT: cat}])
    assert score == {"iou": 0.5, "n_objects": 2, "per_class": {"cat": 0.0, "dog": 1.0}}


def test_images_are_resized_to_their_masks_and_batched_by_size():
    small, large = box(0, 0, 8, 16), box(0, 0, 12, 24, size=(24, 24))
    fake = FakeDeeplab(class_map({DOG: small}), class_map({DOG: small}), class_map({DOG: large}, (24, 24)))
    images = [gray((32, 32)), gray(), gray((24, 24)), gray((40, 20))]
    masks = [{DOG: small}, {DOG: small}, {DOG: large}, {DOG: small}]
    scores = iou_scores(fake, images, masks, batch_size=2)
    assert fake.calls == [(2, 3, 16, 16), (1, 3, 16, 16), (1, 3, 24, 24)]
    assert [s["iou"] for s in scores] == [1.0, 1.0, 1.0, 1.0]


def test_bad_masks():
    fake = FakeDeeplab(np.zeros((16, 16), np.int64))
    with pytest.raises(ValueError, match="mask of class dog is empty"):
        iou_scores(fake, [gray()], [{DOG: np.zeros((16, 16), bool)}])
    with pytest.raises(ValueError, match="not a VOC object class"):
        iou_scores(fake, [gray()], [{0: box(0, 0, 4, 4)}])
    with pytest.raises(ValueError, match="no target mask"):
        iou_scores(fake, [gray()], [{}])
    with pytest.raises(ValueError, match="masks differ in size"):
        iou_scores(fake, [gray()], [{DOG: box(0, 0, 4, 4), CAT: box(0, 0, 4, 4, size=(8, 8))}])
    with pytest.raises(ValueError, match="1 images but 2 mask sets"):
        iou_scores(fake, [gray()], [{DOG: box(0, 0, 4, 4)}] * 2)


def test_summary_is_mean_and_sample_std():
    assert summarize_iou([0.0, 1.0]) == (0.5, pytest.approx(np.sqrt(0.5)))  # ddof=0 would be 0.5
    mean, std = summarize_iou(np.array([0.2, 0.4, 0.9]))
    assert mean == pytest.approx(0.5) and std == pytest.approx(np.std([0.2, 0.4, 0.9], ddof=1))
    assert summarize_iou([0.3])[0] == 0.3 and np.isnan(summarize_iou([0.3])[1])  # no spread from one image
    assert all(np.isnan(summarize_iou([])))
    with pytest.raises(ValueError, match="finite"):
        summarize_iou([0.5, float("nan")])


def test_one_std_from_per_image_iou_to_the_paper_table_and_the_page(tmp_path):
    """Per-image IoU files -> summary.csv -> paper_multidiffusion.csv -> HTML: every std is
    the sample std (ddof 1), on values where ddof 0 gives another number."""
    from ctrlbench.report.html import render_report
    from ctrlbench.report.papers import paper_table
    from ctrlbench.report.tables import summarize_metric_files

    values = [0.1, 0.3, 0.8]  # ddof 1: 0.3606, ddof 0: 0.2944
    sample, population = np.std(values, ddof=1), np.std(values, ddof=0)
    assert f"{sample:.4g}" != f"{population:.4g}"
    files = []
    for shard, part in enumerate((values[:2], values[2:])):
        path = tmp_path / "metrics" / "coco" / "multidiffusion" / "default" / "iou" / f"shard-{shard:03d}.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        pd.DataFrame([{"item_id": f"{shard}{k}", "sample": 0, "image": f"{shard}{k}.png", "metric": "iou",
                       "value": value, "scale": "fraction", "model": "deeplab", "text_handling": "",
                       "n_objects": 1, "per_class": "{}"} for k, value in enumerate(part)],
                     columns=COLUMNS).to_csv(path, index=False)
        files.append(str(path))
    summary = summarize_metric_files(files, str(tmp_path / "summary.csv"))
    row = summary[(summary["metric"] == "iou") & (summary["aggregate"] == "mean")].iloc[0]
    assert row["n"] == 3 and row["std"] == pytest.approx(sample)
    assert summarize_iou(values) == (pytest.approx(row["mean"]), pytest.approx(row["std"]))  # the log line's too
    paper = paper_table("multidiffusion", str(tmp_path / "summary.csv"), str(tmp_path / "paper.csv"),
                        {"MultiDiffusion": "multidiffusion/default"}, {"coco": "coco"}, "cos01")
    ours = paper.set_index("paper_row").loc["MultiDiffusion"]
    assert ours["status"] == "ok" and ours["ours_std"] == pytest.approx(sample) and ours["paper_std"] == 0.12
    page = render_report(summary_csv=str(tmp_path / "summary.csv"),
                         paper_tables={"multidiffusion": str(tmp_path / "paper.csv")}, plots_csv=None, grids=[])
    assert page.count(f'<td class="num">{sample:.4g}</td>') == 2  # the summary and the paper table
    assert f"{population:.4g}" not in page and "sample std (ddof 1)" in page


# --- run_shard ---------------------------------------------------------------------------------

def write_shard(out_dir, rows: list[tuple[str, int, Image.Image, dict]]) -> None:
    """A method's output folder: images/, masks/ and manifest.csv, as the methods write them
    (masks keyed by class name; the rows here give VOC indices)."""
    (out_dir / "images").mkdir(parents=True)
    records = []
    for item, sample, image, masks in rows:
        name = f"images/{item}_{sample:02d}.png"
        image.save(out_dir / name)
        named = {VOC_CLASSES[c] if isinstance(c, int) else c: m for c, m in masks.items()}
        records.append({"item_id": item, "sample": sample, "image": name,
                        "masks": save_item_masks(out_dir, item, named)})
    pd.DataFrame(records).to_csv(out_dir / "manifest.csv", index=False)


def test_run_shard_with_a_fake_model(tmp_path, monkeypatch):
    dog, cat = box(0, 0, 8, 16), box(8, 0, 16, 16)
    prediction = class_map({DOG: box(4, 0, 8, 16), CAT: cat})  # half the dog, all the cat
    fake = FakeDeeplab(prediction)
    monkeypatch.setattr("ctrlbench.models.loaders.load_model", lambda config, key, device, dtype: fake)
    write_shard(tmp_path / "run", [("000000000001", 0, gray(), {DOG: dog, CAT: cat}),
                                   ("000000000001", 1, gray((32, 32)), {DOG: dog, CAT: cat}),
                                   ("000000000002", 0, gray(), {CAT: cat})])
    out = tmp_path / "metrics" / "iou.csv"
    frame = run_shard({"device": "cpu", "dtype": "float32"}, "deeplab", tmp_path / "run", out, batch_size=2)
    written = pd.read_csv(out, dtype={"item_id": str}, keep_default_na=False)
    pd.testing.assert_frame_equal(written, frame, check_dtype=False)
    assert list(written.columns) == COLUMNS
    assert written[["item_id", "sample"]].values.tolist() == [["000000000001", 0], ["000000000001", 1],
                                                              ["000000000002", 0]]
    assert written["value"].tolist() == [0.75, 0.75, 1.0]
    assert set(written["metric"]) == {"iou"} and set(written["model"]) == {"deeplab"}
    assert written["n_objects"].tolist() == [2, 2, 1]
    assert json.loads(written.loc[0, "per_class"]) == {"cat": 1.0, "dog": 0.5}
    assert written.loc[1, "image"] == "images/000000000001_01.png"
    assert fake.calls == [(2, 3, 16, 16), (1, 3, 16, 16)]


def test_run_shard_checks_masks_before_loading_the_model(tmp_path, monkeypatch):
    def never(*args):
        raise AssertionError("the model must not be loaded")

    monkeypatch.setattr("ctrlbench.models.loaders.load_model", never)
    with pytest.raises(InputError, match="manifest .*manifest.csv does not exist"):
        run_shard({}, "deeplab", tmp_path / "nothing", tmp_path / "iou.csv")
    write_shard(tmp_path / "run", [("a", 0, gray(), {DOG: box(0, 0, 8, 8)}), ("b", 0, gray(), {CAT: box(0, 0, 8, 8)})])
    (tmp_path / "run" / "masks" / "b_cat.png").unlink()
    with pytest.raises(InputError, match="item b .*cannot read its masks"):
        run_shard({}, "deeplab", tmp_path / "run", tmp_path / "iou.csv")
    manifest = pd.read_csv(tmp_path / "run" / "manifest.csv")
    manifest.loc[1, "masks"] = "[]"
    manifest.to_csv(tmp_path / "run" / "manifest.csv", index=False)
    with pytest.raises(InputError, match="item b .*has no target mask"):
        run_shard({}, "deeplab", tmp_path / "run", tmp_path / "iou.csv")
    manifest.iloc[:0].to_csv(tmp_path / "run" / "manifest.csv", index=False)  # an empty shard
    assert run_shard({}, "deeplab", tmp_path / "run", tmp_path / "empty.csv").empty
    assert pd.read_csv(tmp_path / "empty.csv").columns.tolist() == COLUMNS
    manifest.drop(columns="masks").to_csv(tmp_path / "run" / "manifest.csv", index=False)
    with pytest.raises(InputError, match="lacks column.s. masks"):
        run_shard({}, "deeplab", tmp_path / "run", tmp_path / "iou.csv")
    assert not (tmp_path / "iou.csv").exists()


def test_a_held_out_scorer_is_its_own_metric(tmp_path, monkeypatch):
    """TCIG's real configs score IoU twice: with the segmenter stage 1 optimised against
    (metric iou, the paper table's) and with one it never saw (iou_held_out). Rows, summary
    and paper table keep them apart."""
    from ctrlbench import config as cb_config
    from ctrlbench.report.papers import paper_table
    from ctrlbench.report.tables import summarize_metric_files

    dog = box(0, 0, 8, 16)
    segmenters = {"deeplab": FakeDeeplab(class_map({DOG: dog})),                 # the guide: a perfect match
                  "deeplab_r101": FakeDeeplab(class_map({DOG: box(4, 0, 8, 16)}))}  # held out: half the dog
    monkeypatch.setattr("ctrlbench.models.loaders.load_model", lambda config, key, device, dtype: segmenters[key])
    write_shard(tmp_path / "run", [("a", 0, gray(), {DOG: dog}), ("b", 0, gray(), {DOG: dog})])
    tcig_config = cb_config.load(os.path.join(os.path.dirname(__file__), "..", "configs", "tcig.yaml"))
    metrics = cb_config.iou_metrics(tcig_config)
    assert metrics == {"iou": "deeplab", "iou_held_out": "deeplab_r101"}
    assert tcig_config["methods"]["tcig"]["segmenter"] == "deeplab" != metrics["iou_held_out"]
    files = []
    for metric, key in metrics.items():
        out = tmp_path / "metrics" / "coco" / "tcig" / "default" / metric / "shard-000.csv"
        frame = run_shard({"device": "cpu", "dtype": "float32"}, key, tmp_path / "run", out, metric=metric)
        assert frame["metric"].tolist() == [metric] * 2 and frame["model"].tolist() == [key] * 2
        files.append(out)
    summary = summarize_metric_files(files, tmp_path / "summary.csv")
    means = summary[summary["aggregate"] == "mean"].set_index("metric")["mean"]
    assert means.to_dict() == {"iou": 1.0, "iou_held_out": 0.5}
    table = paper_table("multidiffusion", str(tmp_path / "summary.csv"), str(tmp_path / "paper.csv"),
                        {"TCIG": "tcig/default"}, {"coco": "coco"}, "clip100").set_index(["paper_row", "metric"])
    assert table.loc[("TCIG", "iou"), "ours_mean"] == 1.0 and table.loc[("TCIG", "iou"), "paper"] == 0.30
    held = table.loc[("TCIG", "iou_held_out")]
    assert held["ours_mean"] == 0.5 and np.isnan(held["paper"]) and "held-out segmenter" in held["note"]


def test_held_out_segmenter_in_the_dag(tmp_path, default_config):
    """With evaluation.iou.held_out, each region run gets an iou_held_out job on the second
    model, beside its iou job; without it, there is no such target (dry runs of the demo)."""
    from conftest import dry_run

    config = default_config
    config["models"]["deeplab2"] = {"kind": "deeplabv3", "source": "tiny"}
    config["evaluation"]["iou"]["held_out"] = "deeplab2"
    config["results_dir"] = str(tmp_path / "results")
    targets = [f"{tmp_path}/results/metrics/coco/tcig/default/{folder}/shard-000.csv"
               for folder in ("iou", "iou_held_out")]
    out = dry_run(tmp_path, config, targets)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "iou_metric=iou_held_out" in out.stdout and "results/models/tiny/deeplab2" in out.stdout
    counts = {line.split()[0]: int(line.split()[1]) for line in out.stdout.splitlines()
              if len(line.split()) == 2 and line.split()[1].isdigit()}
    assert counts.get("iou") == 2, out.stdout
    del config["evaluation"]["iou"]["held_out"]
    assert dry_run(tmp_path, config, targets[1:]).returncode != 0  # no held-out scorer, no such metric


def test_run_shard_with_the_tiny_deeplab(tmp_path):
    from ctrlbench.models.loaders import load_model
    from ctrlbench.models.tiny import build_tiny

    build_tiny("deeplabv3", tmp_path / "results" / "models" / "tiny" / "deeplab")
    config = {"results_dir": str(tmp_path / "results"), "hub_offline": True, "device": "cpu", "dtype": "float32",
              "models": {"deeplab": {"kind": "deeplabv3", "source": "tiny"}}}
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in range(3)]
    images.append(images[0].resize((48, 48), Image.BICUBIC))  # another size than its masks
    masks = [{DOG: box(0, 0, 16, 32, (32, 32)), CAT: box(16, 0, 32, 32, (32, 32))},
             {CAR: box(8, 8, 24, 24, (32, 32))}, {DOG: box(0, 0, 32, 32, (32, 32))},
             {DOG: box(0, 0, 16, 32, (32, 32))}]
    write_shard(tmp_path / "run", [(f"item{i}", 0, image, m) for i, (image, m) in enumerate(zip(images, masks))])
    frame = run_shard(config, "deeplab", tmp_path / "run", tmp_path / "iou.csv", batch_size=3)

    # the same numbers from the model's argmax and the formula, written out here
    model = load_model(config, "deeplab")
    resized = [image if image.size == (32, 32) else image.resize((32, 32), Image.BICUBIC) for image in images]
    predictions = predict_classes(model, resized)
    for row, prediction, targets in zip(frame.itertuples(), predictions, masks):
        expected = {VOC_CLASSES[c]: ((prediction == c) & m).sum() / ((prediction == c) | m).sum()
                    for c, m in targets.items()}
        assert json.loads(row.per_class) == pytest.approx(expected)
        assert row.value == pytest.approx(np.mean(list(expected.values())))
        assert row.n_objects == len(targets) and 0.0 <= row.value <= 1.0
    assert pd.read_csv(tmp_path / "iou.csv")["value"].tolist() == pytest.approx(frame["value"].tolist())


def test_module_constants():
    assert iou_metric.COLUMNS == ["item_id", "sample", "image", "metric", "value", "scale", "model",
                                  "text_handling", "n_objects", "per_class"]
