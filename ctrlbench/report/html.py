"""One self-contained HTML page with every result: summary tables, the papers'
numbers beside ours, sweep plots and image grids.

The page is a single file: images are embedded as base64 `data:` URIs, the CSS is
inline, there are no external references and no JavaScript. Every piece of text that
comes from an input (method names, prompts, column labels, provenance values) is
escaped with `html.escape(..., quote=True)`, and a Content-Security-Policy meta tag
forbids scripts as a second line of defence. The output depends only on the inputs:
the same inputs give the same bytes.
"""

from __future__ import annotations

import base64
import csv
import html
import io as _stdio
import json
import math
import re
from pathlib import Path
from typing import Any, Iterable

from .. import io
from ..errors import InputError
from ..stats import STD_DDOF

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"

SUMMARY_COLUMNS = ["dataset", "method", "paramset", "metric", "aggregate", "scale", "n", "mean", "std",
                   "ci95_low", "ci95_high"]
PAPER_COLUMNS = ["paper_row", "dataset", "metric", "paper", "paper_std", "ours_mean", "ours_std", "ours_best_of_n",
                 "ours_n_images", "ours_method", "status"]
PLOT_COLUMNS = ["path", "dataset", "method", "metric", "param"]
GRID_COLUMNS = ["row", "item_id", "prompt", "columns"]

EMPTY = "\u2013"  # en dash: a missing (NaN) number
# Said on the page, so a reader comparing stds with a paper knows which one ours is.
STD_NOTE = f"std over images = the sample std (ddof {STD_DDOF})"
IMAGE_TYPES = {"PNG": "image/png", "JPEG": "image/jpeg"}

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 1.5em auto; max-width: 1200px;
       padding: 0 1em; color: #1a1a1a; background: #fff; line-height: 1.4; }
h1 { margin-bottom: 0.2em; }
h2 { border-bottom: 1px solid #ccc; padding-bottom: 0.2em; margin-top: 2em; }
nav ul { columns: 2; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.2em 0.5em; vertical-align: top; }
th { background: #f2f2f2; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.prompt { max-width: 60em; white-space: pre-wrap; word-break: break-word; }
.none { color: #666; font-style: italic; }
.status { padding: 0 0.3em; border-radius: 3px; white-space: nowrap; }
.status-ok { background: #d9f2d9; }
.status-not-run { background: #f8e0c0; }
.status-not-configured { background: #e6e6e6; }
.status-other-scale { background: #f5f0b8; }
figure { margin: 0 0 1.5em; }
figcaption { font-size: 0.9em; color: #333; margin-top: 0.3em; }
img { max-width: 100%; height: auto; border: 1px solid #ddd; }
.plots { display: flex; flex-wrap: wrap; gap: 1em; }
.plots figure { flex: 0 1 380px; }
footer { margin-top: 3em; border-top: 1px solid #ccc; font-size: 0.85em; color: #333; }
footer table { font-size: 1em; }
""".strip()


def write_report(out_html, *, summary_csv, paper_tables: dict[str, str], plots_csv: str | None,
                 grids: list[str], title: str = "ctrlbench report", provenance: dict | None = None,
                 claims_csv: str | None = None) -> None:
    """Write the report page to `out_html` (atomically).

    `summary_csv`: results/tables/summary.csv; `paper_tables`: {paper: paper_<paper>.csv};
    `plots_csv`: CSV of sweep plots (path, dataset, method, metric, param; a relative path
    is taken from the CSV's folder) or None; `grids`: grid images, each with a sidecar CSV
    (same path, `.csv`: row, item_id, prompt, columns); `provenance`: shown in the footer;
    `claims_csv`: the toy world's claims table (toyworld.claims), a "Claims" section first.
    Empty inputs give sections that say "none"; a listed file that is missing or unusable
    raises InputError naming it."""
    io.write_text(out_html, render_report(summary_csv=summary_csv, paper_tables=paper_tables, plots_csv=plots_csv,
                                          grids=grids, title=title, provenance=provenance, claims_csv=claims_csv))


def render_report(*, summary_csv, paper_tables: dict[str, str] | None, plots_csv: str | None,
                  grids: Iterable[str] | None, title: str = "ctrlbench report",
                  provenance: dict | None = None, claims_csv: str | None = None) -> str:
    """The page as a string (what write_report writes)."""
    ids = _Ids()
    sections = [_claims_section(claims_csv, ids)] if claims_csv else []
    sections += [
        _summary_section(summary_csv, ids),
        _papers_section(paper_tables or {}, ids),
        _plots_section(plots_csv, ids),
        _grids_section(list(grids or []), ids),
    ]
    toc = "".join(_toc_entry(section) for section in sections)
    body = "\n".join(section["html"] for section in sections)
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{_e(CSP)}">\n'
        '<meta name="referrer" content="no-referrer">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{_e(title)}</title>\n<style>\n{STYLE}\n</style>\n</head>\n<body>\n"
        f'<header><h1 id="top">{_e(title)}</h1></header>\n'
        f'<nav id="contents"><h2>Contents</h2>\n<ul>\n{toc}'
        '<li><a href="#provenance">Provenance</a></li>\n</ul>\n</nav>\n'
        f"<main>\n{body}\n</main>\n"
        f"{_footer(provenance)}"
        "</body>\n</html>\n"
    )


# --- sections -------------------------------------------------------------------------

def _summary_section(summary_csv, ids: "_Ids") -> dict:
    columns, rows = _read_csv(summary_csv, SUMMARY_COLUMNS, "summary table")
    params = [c for c in columns if c not in SUMMARY_COLUMNS]
    parts, children = [], []
    by_dataset: dict[str, list[dict]] = {}
    for row in rows:
        by_dataset.setdefault(row["dataset"], []).append(row)
    for dataset in sorted(by_dataset):
        group = by_dataset[dataset]
        # Only the swept parameters some row of this dataset sets.
        shown = [p for p in params if any(_cell(r.get(p)) for r in group)]
        header = ["method", "paramset", *shown, "metric", "aggregate", "scale", "n", "mean", "std",
                  "95% CI low", "95% CI high"]
        body = []
        for r in group:
            cells = [_td(r["method"]), _td(r["paramset"]), *(_td(r.get(p)) for p in shown),
                     _td(r["metric"]), _td(r["aggregate"]), _td(r["scale"]), _num(r["n"], integer=True),
                     _num(r["mean"]), _num(r["std"]), _num(r["ci95_low"]), _num(r["ci95_high"])]
            body.append(cells)
        anchor = ids.make("summary", dataset)
        children.append((anchor, dataset))
        parts.append(f'<section id="{anchor}">\n<h3>{_e(dataset)}</h3>\n{_table(header, body)}</section>')
    return _section(ids.make("summary"), "Summary", parts, children,
                    intro="Per dataset: one row per method, parameter set, metric and aggregate "
                          "(mean over images, or best of N samples per item); numbers to 4 significant digits. "
                          f"The {STD_NOTE}; a set row's (KID) std is over KID's subsets (torchmetrics, ddof 0).")


CLAIM_COLUMNS = ["claim", "paper", "statement", "measure", "a", "a_value", "b", "b_value", "difference", "ci_low",
                 "ci_high", "holds", "n", "ceiling"]


def _claims_section(claims_csv: str, ids: "_Ids") -> dict:
    _, rows = _read_csv(claims_csv, CLAIM_COLUMNS, "claims table")
    header = ["claim", "paper", "statement", "measure", "A", "A value", "B", "B value", "A - B", "95% interval",
              "holds", "items", "ceiling"]
    body = [[_td(r["claim"]), _td(r["paper"]), _td(r["statement"]), _td(r["measure"]), _td(r["a"]),
             _num(r["a_value"]), _td(r["b"]), _num(r["b_value"]), _num(r["difference"]),
             _td(f"{float(r['ci_low']):.4g} .. {float(r['ci_high']):.4g}"),
             _status("yes" if r["holds"].strip().lower() == "true" else "no"), _num(r["n"], integer=True),
             _num(r["ceiling"])] for r in rows]
    table = _table(header, body) if body else '<p class="none">none (the table has no rows)</p>\n'
    return _section(ids.make("claims"), "Claims", [table], [],
                    intro="Each paper's claim checked in the toy world with the trained toy models "
                          "(docs/toyworld.md): A against B on the same held-out scenes, the paired "
                          "difference with its bootstrap 95% interval; it holds when the interval lies on "
                          "the claimed side. Ceiling: the measure on real toy scenes.")


def _papers_section(paper_tables: dict[str, str], ids: "_Ids") -> dict:
    parts, children = [], []
    header = ["paper row", "dataset", "metric", "paper", "paper std", "ours mean", "ours std", "ours best of N",
              "images", "our method", "status", "note"]
    for paper in sorted(paper_tables):
        _, rows = _read_csv(paper_tables[paper], PAPER_COLUMNS, f"paper table '{paper}'")
        body = [[_td(r["paper_row"]), _td(r["dataset"]), _td(r["metric"]), _num(r["paper"]), _num(r["paper_std"]),
                 _num(r["ours_mean"]), _num(r["ours_std"]), _num(r["ours_best_of_n"]),
                 _num(r["ours_n_images"], integer=True), _td(r["ours_method"]), _status(r["status"]),
                 _td(r.get("note", ""))]  # tables written before the note column have none
                for r in rows]
        anchor = ids.make("paper", paper)
        children.append((anchor, paper))
        table = _table(header, body) if body else '<p class="none">none (the table has no rows)</p>\n'
        parts.append(f'<section id="{anchor}">\n<h3>{_e(paper)}</h3>\n{table}</section>')
    return _section(ids.make("papers"), "Papers: ours beside the paper", parts, children,
                    intro=f"{EMPTY} marks a number the paper does not report or we did not compute. "
                          f"Our {STD_NOTE}; the papers do not say which std they report.")


def _plots_section(plots_csv: str | None, ids: "_Ids") -> dict:
    parts, children = [], []
    if plots_csv is not None:
        _, rows = _read_csv(plots_csv, PLOT_COLUMNS, "plot list")
        folder = Path(plots_csv).parent
        by_dataset: dict[str, list[dict]] = {}
        for row in rows:
            by_dataset.setdefault(row["dataset"], []).append(row)
        for dataset in sorted(by_dataset):
            figures = []
            for r in by_dataset[dataset]:
                path = _plot_path(r["path"], folder)
                qualifiers = ", ".join(r[c] for c in ("scale", "aggregate") if r.get(c))
                metric = f"{r['metric']} ({qualifiers})" if qualifiers else r["metric"]
                caption = f"{r['method']} \u00b7 {metric} against {r['param']}"
                figures.append(f"<figure>{_img(path, f'plot ({plots_csv})', caption)}"
                               f"<figcaption>{_e(caption)}</figcaption></figure>\n")
            anchor = ids.make("plots", dataset)
            children.append((anchor, dataset))
            parts.append(f'<section id="{anchor}">\n<h3>{_e(dataset)}</h3>\n<div class="plots">\n'
                         f'{"".join(figures)}</div>\n</section>')
    return _section(ids.make("plots"), "Sweep plots", parts, children)


def _plot_path(text: str, folder: Path) -> Path:
    """A plot's path: absolute, or relative to the plot list's folder; a relative path
    that only exists as written (relative to the working directory, as a workflow run
    from the repository writes it) is accepted too."""
    path = Path(text)
    if path.is_absolute():
        return path
    beside = folder / path
    return path if not beside.is_file() and path.is_file() else beside


def _grids_section(grids: list[str], ids: "_Ids") -> dict:
    parts, children = [], []
    for grid in grids:
        grid = Path(grid)
        sidecar = grid.with_suffix(".csv")
        if not grid.is_file():
            raise InputError(f"grid image {grid} does not exist")
        _, rows = _read_csv(sidecar, GRID_COLUMNS, f"grid sidecar of {grid}")
        # <dataset>__<method>__<paramset>; a paramset may itself hold "__" (two swept values)
        heading = " / ".join(grid.stem.split("__", 2))
        labels = []
        for r in rows:
            try:
                value = json.loads(r["columns"])
            except json.JSONDecodeError as err:
                raise InputError(f"grid sidecar {sidecar}: 'columns' of row {r['row']!r} is not JSON ({err})") from None
            value = [str(v) for v in value] if isinstance(value, list) else [str(value)]
            if value not in labels:
                labels.append(value)
        head = ["row", "item id", "prompt"]
        body = [[_td(r["row"], "num"), _td(r["item_id"]), _td(r["prompt"], "prompt")] for r in rows]
        if len(labels) > 1:  # rows disagree on the columns: show each row's
            head.append("columns")
            body = [cells + [_td(", ".join(str(v) for v in _json_list(r["columns"])))] for cells, r in zip(body, rows)]
        columns_line = (f"<p>Columns: {', '.join(_e(v) for v in labels[0])}</p>\n" if len(labels) == 1 else "")
        table = _table(head, body) if body else '<p class="none">none (no rows in the sidecar)</p>\n'
        anchor = ids.make("grid", grid.stem)
        children.append((anchor, heading))
        parts.append(f'<section id="{anchor}">\n<h3>{_e(heading)}</h3>\n'
                     f"<figure>{_img(grid, 'grid image', heading)}</figure>\n{columns_line}"
                     f"{table}"
                     "</section>")
    return _section(ids.make("grids"), "Image grids", parts, children)


def _footer(provenance: dict | None) -> str:
    content = _value_html(provenance) if provenance else '<p class="none">none</p>\n'
    return f'<footer id="provenance">\n<h2>Provenance</h2>\n{content}</footer>\n'


def _value_html(value: Any) -> str:
    if isinstance(value, dict):
        if not value:
            return _e(EMPTY)
        rows = "".join(f"<tr><th>{_e(k)}</th><td>{_value_html(v)}</td></tr>\n" for k, v in value.items())
        return f"<table>\n{rows}</table>\n"
    if isinstance(value, (list, tuple)):
        return _e(", ".join(_plain(v) for v in value)) if value else _e(EMPTY)
    return _e(_plain(value))


def _plain(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return EMPTY
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, sort_keys=True, default=str)
    return str(value)


# --- building blocks ------------------------------------------------------------------

class _Ids:
    """Unique, deterministic anchor ids made of safe characters."""

    def __init__(self):
        self.used: set[str] = set()

    def make(self, *parts: str) -> str:
        base = "-".join(re.sub(r"[^A-Za-z0-9_-]+", "-", str(p)).strip("-") or "x" for p in parts)
        anchor, k = base, 2
        while anchor in self.used:
            anchor, k = f"{base}-{k}", k + 1
        self.used.add(anchor)
        return anchor


def _section(anchor: str, title: str, parts: list[str], children: list[tuple[str, str]], intro: str = "") -> dict:
    intro_html = f"<p>{_e(intro)}</p>\n" if intro and parts else ""
    content = "\n".join(parts) if parts else '<p class="none">none</p>'
    return {"id": anchor, "title": title, "children": children,
            "html": f'<section id="{anchor}">\n<h2>{_e(title)}</h2>\n{intro_html}{content}\n</section>'}


def _toc_entry(section: dict) -> str:
    sub = "".join(f'<li><a href="#{a}">{_e(t)}</a></li>\n' for a, t in section["children"])
    sub = f"\n<ul>\n{sub}</ul>\n" if sub else ""
    return f'<li><a href="#{section["id"]}">{_e(section["title"])}</a>{sub}</li>\n'


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join(f"<tr>{''.join(cells)}</tr>\n" for cells in rows)
    return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}</tbody>\n</table>\n"


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _cell(value: str | None) -> str:
    return "" if value is None else str(value)


def _td(value: str | None, cls: str = "") -> str:
    text = _cell(value)
    attr = f' class="{cls}"' if cls else ""
    return f"<td{attr}>{_e(text) if text != '' else _e(EMPTY)}</td>"


def _num(value: str | None, integer: bool = False) -> str:
    """A number to 4 significant digits; empty or NaN as an en dash; text as it is."""
    text = _cell(value).strip()
    try:
        number = float(text)
    except ValueError:
        return _td(text)
    if math.isnan(number):
        return _td("")
    if integer and number.is_integer():
        return _td(str(int(number)), "num")
    return _td(f"{number:.4g}", "num")


def _status(value: str | None) -> str:
    text = _cell(value)
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "unknown"
    return f'<td><span class="status status-{slug}">{_e(text) if text else _e(EMPTY)}</span></td>'


def _json_list(text: str) -> list:
    value = json.loads(text)
    return value if isinstance(value, list) else [value]


def _img(path: Path, what: str, alt: str) -> str:
    """An <img> with the file's bytes as a base64 data URI (PNG or JPEG, checked)."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{what} {path} does not exist")
    data = path.read_bytes()
    try:
        with Image.open(_stdio.BytesIO(data)) as image:
            kind, (width, height) = image.format, image.size
    except (UnidentifiedImageError, OSError) as err:
        raise InputError(f"{what} {path} is not a readable image ({err})") from None
    if kind not in IMAGE_TYPES:
        raise InputError(f"{what} {path} is a {kind} image; only PNG and JPEG are embedded")
    uri = f"data:{IMAGE_TYPES[kind]};base64,{base64.b64encode(data).decode('ascii')}"
    return f'<img src="{uri}" width="{width}" height="{height}" alt="{_e(alt)}">'


def _read_csv(path, columns: list[str], what: str) -> tuple[list[str], list[dict[str, str]]]:
    """(column names, rows as dicts of strings); every cell is kept as written."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{what} {path} does not exist")
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        fields = list(reader.fieldnames or [])
        missing = [c for c in columns if c not in fields]
        if missing:
            raise InputError(f"{what} {path} lacks column(s) {', '.join(missing)}")
        return fields, list(reader)


def write_site_report(out_html, *, summary_csv, paper_tables: dict[str, str], plots_dir: str | None,
                      grid_dirs: list[str], title: str = "ctrlbench report", config_files=(),
                      claims_csv: str | None = None) -> None:
    """`write_report` on a workflow's outputs: the plots listed in `<plots_dir>/plots.csv`,
    every grid in `grid_dirs` (sorted by name), and the run's provenance (package versions,
    git commit, config files) in the footer."""
    plots_csv = str(Path(plots_dir) / "plots.csv") if plots_dir else None
    grids = sorted(str(p) for folder in grid_dirs for p in Path(folder).iterdir()
                   if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    provenance = io.provenance(config_files=", ".join(str(f) for f in config_files) or "config.yaml")
    write_report(out_html, summary_csv=summary_csv, paper_tables=paper_tables, plots_csv=plots_csv,
                 grids=grids, title=title, provenance=provenance, claims_csv=claims_csv)
