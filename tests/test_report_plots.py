import json
import struct
from pathlib import Path

import numpy as np
import pandas as pd

from ctrlbench import paramsets
from ctrlbench.report.plots import PLOT_COLUMNS, sweep_plots
from ctrlbench.report.tables import SUMMARY_COLUMNS

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _row(dataset, method, paramset, metric, mean, aggregate="mean", scale="cos01", ci=0.5):
    return {"dataset": dataset, "method": method, "paramset": paramset, "metric": metric, "aggregate": aggregate,
            "scale": scale, "n": 8, "mean": mean, "std": 1.0,
            "ci95_low": mean - ci if ci is not None else np.nan,
            "ci95_high": mean + ci if ci is not None else np.nan, **paramsets.parse_name(paramset)}


def _write(tmp_path, rows) -> str:
    table = pd.DataFrame(rows)
    extra = sorted(set(table.columns) - set(SUMMARY_COLUMNS))
    path = tmp_path / "summary.csv"
    table.reindex(columns=SUMMARY_COLUMNS + extra).to_csv(path, index=False)
    return str(path)


def _png_size(path):
    data = Path(path).read_bytes()
    assert data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def _sweep_rows():
    rows = []
    for g in (5.0, 7.5):
        for s in (0.25, 0.5):
            name = paramsets.paramset_name({"guidance_scale": g, "strength": s})
            rows.append(_row("cub", "sdedit", name, "t_sim", 60 + g + s))
            rows.append(_row("cub", "sdedit", name, "t_sim", 61 + g + s, aggregate="best_of_n"))
            rows.append(_row("cub", "sdedit", name, "fid", 30 - g, aggregate="set", scale="fid", ci=None))
    rows.append(_row("cub", "retrieval", "default", "t_sim", 59.0))          # no sweep
    for g in (5.0, 7.5):                                                     # one swept parameter
        rows.append(_row("flowers", "sd", paramsets.paramset_name({"guidance_scale": g}), "i_sim", 70 + g))
    return rows


def test_two_by_two_sweep(tmp_path):
    out = tmp_path / "plots"
    plots = sweep_plots(_write(tmp_path, _sweep_rows()), str(out))
    got = {(p["dataset"], p["method"], p["metric"], p["param"]): p for p in plots}
    assert sorted(got) == [("cub", "sdedit", "fid", "guidance_scale"), ("cub", "sdedit", "fid", "strength"),
                           ("cub", "sdedit", "t_sim", "guidance_scale"), ("cub", "sdedit", "t_sim", "strength"),
                           ("flowers", "sd", "i_sim", "guidance_scale")]
    by_g = got[("cub", "sdedit", "t_sim", "guidance_scale")]
    assert by_g["series"] == ["strength=0.25", "strength=0.5"]
    assert by_g["aggregate"] == "mean" and by_g["scale"] == "cos01"
    assert got[("cub", "sdedit", "t_sim", "strength")]["series"] == ["guidance_scale=5.0", "guidance_scale=7.5"]
    assert got[("cub", "sdedit", "fid", "strength")]["aggregate"] == "set"   # FID only has set rows
    assert got[("flowers", "sd", "i_sim", "guidance_scale")]["series"] == [""]
    assert Path(by_g["path"]) == out / "cub__sdedit__t_sim__guidance_scale.png"
    for p in plots:
        assert _png_size(p["path"]) == (500, 350)
    assert sorted(x.name for x in out.iterdir()) == sorted([Path(p["path"]).name for p in plots] + ["plots.csv"])
    index = pd.read_csv(out / "plots.csv")
    assert list(index.columns) == PLOT_COLUMNS and len(index) == len(plots)
    assert json.loads(index.set_index("path").loc[Path(by_g["path"]).name, "series"]) == by_g["series"]
    assert not index["path"].str.contains("/").any()  # relative to the plots folder


def test_deterministic_bytes(tmp_path):
    summary = _write(tmp_path, _sweep_rows())
    first = sweep_plots(summary, str(tmp_path / "a"))
    second = sweep_plots(summary, str(tmp_path / "b"))
    for p, q in zip(first, second):
        data = Path(p["path"]).read_bytes()
        assert data == Path(q["path"]).read_bytes()
        assert b"Software" not in data and b"matplotlib" not in data


def test_no_sweep_gives_no_plots(tmp_path):
    rows = [_row("cub", "retrieval", "default", "t_sim", 59.0), _row("cub", "sd_llm", "default", "t_sim", 60.0)]
    out = tmp_path / "plots"
    assert sweep_plots(_write(tmp_path, rows), str(out)) == []
    assert (out / "plots.csv").read_text().strip() == ",".join(PLOT_COLUMNS)
    assert [x.name for x in out.iterdir()] == ["plots.csv"]


def test_empty_summary(tmp_path):
    path = tmp_path / "summary.csv"
    pd.DataFrame(columns=SUMMARY_COLUMNS).to_csv(path, index=False)
    assert sweep_plots(str(path), str(tmp_path / "plots")) == []
    path.write_text("")
    assert sweep_plots(str(path), str(tmp_path / "plots")) == []


def test_nan_ci_and_nan_mean(tmp_path):
    rows = [_row("cub", "gradop", paramsets.paramset_name({"grad_steps_per_iter": k}), "t_sim", 60.0 + k, ci=None)
            for k in (1, 2, 4)]
    rows[1]["mean"] = np.nan
    rows[2]["ci95_low"] = 63.0  # one point with an interval, the others without
    plots = sweep_plots(_write(tmp_path, rows), str(tmp_path / "plots"))
    assert [(p["param"], p["series"]) for p in plots] == [("grad_steps_per_iter", [""])]
    assert _png_size(plots[0]["path"]) == (500, 350)


def test_categorical_parameter_and_several_scales(tmp_path):
    rows = []
    for flag in (True, False):
        name = paramsets.paramset_name({"use_mask": flag})
        rows.append(_row("coco", "bld", name, "t_sim", 60.0 + flag))
        rows.append(_row("coco", "bld", name, "t_sim", 20.0 + flag, scale="clip100"))
    plots = sweep_plots(_write(tmp_path, rows), str(tmp_path / "plots"))
    assert sorted(Path(p["path"]).name for p in plots) == ["coco__bld__t_sim__clip100__use_mask.png",
                                                           "coco__bld__t_sim__cos01__use_mask.png"]
