"""Sweep plots: a metric against each swept parameter of a method.

Input: the summary table (report/tables.py `summarize`). For every (dataset, method)
with at least 2 parameter sets, every (metric, scale) and every parameter the method
sweeps (>= 2 values among its parameter sets) one PNG

    <out_dir>/<dataset>__<method>__<metric>__<param>.png
    (<dataset>__<method>__<metric>__<scale>__<param>.png when the method has the metric
    on several scales)

plots the metric's mean against the parameter value, with the bootstrap 95% interval
(ci95_low / ci95_high) as error bars where present, one line per combination of the
method's other swept parameters. The aggregate is "mean" (over every image), or "set"
for a metric that only has set-level rows (FID / KID). Parameter values are read from
the paramset name (paramsets.parse_name: the exact strings of the directory name); a
parameter whose values are all numbers gets a numeric x axis, any other (booleans,
strings) a categorical one in sorted order.

`<out_dir>/plots.csv` lists the plots (PLOT_COLUMNS; `series` is the JSON list of the
legend labels, [""] for a single unlabelled line). Figures are drawn with matplotlib's
Agg renderer (no display) at a fixed size and dpi with the default style, and the PNGs
carry no Software/date metadata, so the same summary gives the same bytes.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from .. import io, paramsets

PLOT_COLUMNS = ["path", "dataset", "method", "metric", "scale", "aggregate", "param", "series"]
FIGSIZE = (5.0, 3.5)
DPI = 100
MISSING = "(unset)"


def _read_summary(summary_csv) -> pd.DataFrame:
    try:
        frame = pd.read_csv(summary_csv, dtype={"dataset": str, "method": str, "paramset": str, "metric": str,
                                                "aggregate": str, "scale": str})
    except pd.errors.EmptyDataError:
        return pd.DataFrame()
    return frame


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _order(values) -> list[str]:
    """Parameter values in plotting order: numerically when all are numbers."""
    values = sorted(set(values))
    if all(_is_number(v) for v in values):
        return sorted(values, key=float)
    return values


def _plot(path: Path, frame: pd.DataFrame, param: str, others: list[str], title: str, ylabel: str) -> list[str]:
    """Draw one sweep plot of `frame` (columns mean, ci95_low, ci95_high and the parameter
    values as strings in columns `param` and `others`); returns the legend labels ([""]
    for a single line)."""
    from matplotlib import rc_context, style
    from matplotlib.figure import Figure

    xs = _order(frame[param])
    numeric = all(_is_number(v) for v in xs)
    position = {v: (float(v) if numeric else i) for i, v in enumerate(xs)}
    group_values = {o: _order(frame[o]) for o in others}
    frame = frame.assign(_x=frame[param].map(position),
                         _group=[tuple(row) for row in frame[others].itertuples(index=False)] if others
                         else [()] * len(frame))
    groups = sorted(set(frame["_group"]),
                    key=lambda g: tuple(group_values[o].index(v) for o, v in zip(others, g)))
    labels = []
    # Labels are plain text: a "$" in a name or value must not start matplotlib mathtext.
    with style.context("default"), rc_context({"text.parse_math": False}):
        fig = Figure(figsize=FIGSIZE, dpi=DPI)
        ax = fig.add_subplot()
        for k, group in enumerate(groups):
            part = frame[frame["_group"] == group].sort_values("_x")
            part = part[part["mean"].notna()]
            label = ", ".join(f"{o}={v}" for o, v in zip(others, group))
            labels.append(label)
            color = f"C{k % 10}"
            ax.plot(part["_x"], part["mean"], marker="o", color=color, label=label or None)
            ci = part[part["ci95_low"].notna() & part["ci95_high"].notna()]
            if len(ci):
                low = (ci["mean"] - ci["ci95_low"]).clip(lower=0)
                high = (ci["ci95_high"] - ci["mean"]).clip(lower=0)
                ax.errorbar(ci["_x"], ci["mean"], yerr=[low.to_numpy(), high.to_numpy()], fmt="none",
                            ecolor=color, capsize=3)
        if not numeric:
            ax.set_xticks(range(len(xs)), xs)
        elif len(xs) <= 8:
            ax.set_xticks([float(v) for v in xs], xs)
        ax.set_xlabel(param)
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize="medium")
        if any(labels):
            ax.legend(fontsize="small")
        ax.grid(True, alpha=0.3)
        fig.tight_layout()
        with io.atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", metadata={"Software": None})
    return labels


def _metric_rows(rows: pd.DataFrame) -> list[tuple[str, str, str, pd.DataFrame]]:
    """(metric, scale, aggregate, rows) to plot: "mean" rows, or "set" rows for a metric without mean rows."""
    out = []
    for (metric, scale), group in rows.groupby(["metric", "scale"], sort=True, dropna=False):
        for aggregate in ("mean", "set"):
            chosen = group[group["aggregate"] == aggregate]
            if len(chosen):
                out.append((metric, scale, aggregate, chosen))
                break
    return out


def sweep_plots(summary_csv: str, out_dir: str) -> list[dict]:
    """Write the sweep plots of `summary_csv` and `<out_dir>/plots.csv` (paths relative to
    out_dir); returns one
    {"path", "dataset", "method", "metric", "scale", "aggregate", "param", "series"} per
    plot (series: the legend labels). No sweep gives an empty list and an index with
    only the header."""
    summary = _read_summary(summary_csv)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plots = []
    if len(summary):
        summary = summary.assign(scale=summary["scale"].fillna(""))
        for (dataset, method), rows in summary.groupby(["dataset", "method"], sort=True):
            names = sorted(set(rows["paramset"]))
            if len(names) < 2:
                continue
            values = {name: paramsets.parse_name(name) for name in names}
            params = sorted({p for v in values.values() for p in v})
            swept = [p for p in params if len({v[p] for v in values.values() if p in v}) >= 2]
            if not swept:
                continue
            # Parameter values as the paramset name spells them (not the summary's
            # parsed columns, whose dtype depends on the other rows).
            value_of = {p: rows["paramset"].map(lambda n, p=p: values[n].get(p, MISSING)) for p in swept}
            metrics = _metric_rows(rows)
            n_scales = pd.Series([m for m, *_ in metrics]).value_counts()
            for metric, scale, aggregate, chosen in metrics:
                table = pd.DataFrame({p: value_of[p].loc[chosen.index] for p in swept})
                table[["mean", "ci95_low", "ci95_high"]] = chosen[["mean", "ci95_low", "ci95_high"]].astype(float)
                for param in swept:
                    part = table[table[param] != MISSING]
                    if part[param].nunique() < 2:
                        continue
                    stem = [dataset, method, metric] + ([scale] if n_scales[metric] > 1 else []) + [param]
                    path = out_dir / ("__".join(io.safe_name(s) for s in stem) + ".png")
                    ylabel = f"{metric} ({scale}, {aggregate})" if scale else f"{metric} ({aggregate})"
                    series = _plot(path, part, param, [o for o in swept if o != param],
                                   f"{dataset} / {method}", ylabel)
                    plots.append({"path": str(path), "dataset": dataset, "method": method, "metric": metric,
                                  "scale": scale, "aggregate": aggregate, "param": param, "series": series})
    # The index names each plot relative to its own folder, so the folder can move.
    index = pd.DataFrame([{**p, "path": Path(p["path"]).name, "series": json.dumps(p["series"])} for p in plots],
                         columns=PLOT_COLUMNS)
    io.write_csv(out_dir / "plots.csv", index)
    return plots
