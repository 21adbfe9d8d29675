"""The HTML report page: self-contained, escaped, deterministic (no browser needed)."""

from __future__ import annotations

import base64
import html
import io as _stdio
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image

from ctrlbench.errors import InputError
from ctrlbench.report.html import CSP, write_report

SCRIPT_PROMPT = 'a bird <script>alert(1)</script> on a branch "><img src=x onerror=alert(2)>'


def _png(path: Path, color, size=(8, 6)) -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path, format="PNG")
    return path.read_bytes()


def _jpeg(path: Path, color, size=(12, 4)) -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path, format="JPEG", quality=90)
    return path.read_bytes()


def _write(path: Path, text: str) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return str(path)


def _sidecar(grid: Path, rows) -> None:
    import csv

    with grid.with_suffix(".csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["row", "item_id", "prompt", "columns"])
        for row in rows:
            writer.writerow(row)


@pytest.fixture()
def inputs(tmp_path):
    """Small fake results: summary (with a NaN), a paper table, one plot, two grids."""
    res = tmp_path / "results"
    summary = _write(res / "tables" / "summary.csv",
                     "dataset,method,paramset,metric,aggregate,scale,n,mean,std,ci95_low,ci95_high,guidance_scale\n"
                     "cub,sd,default,t_sim,mean,cos01,12,0.6123456,0.0123456,0.6,0.62,\n"
                     "cub,sd,default,t_sim,best_of_n,cos01,4,0.65,,0.64,0.66,\n"
                     "cub,sd,guidance_scale=7.5,t_sim,mean,cos01,1,0.7,,,,7.5\n"
                     "coco,<b>evil</b>,default,iou,mean,,3,0.25,0.125,0.2,0.3,\n")
    paper = _write(res / "tables" / "paper_multidiffusion.csv",
                   "paper_row,dataset,metric,paper,paper_std,ours_mean,ours_std,ours_best_of_n,ours_n_images,"
                   "ours_method,status\n"
                   "MultiDiffusion,coco,iou,0.26,0.12,0.25,0.125,0.3,3,multidiffusion/default,ok\n"
                   "SI,coco,iou,0.16,0.1,,,,0,,not configured\n"
                   "BLD,coco,iou,0.17,0.11,,,,0,bld/default,not run\n")
    paper2 = _write(res / "tables" / "paper_paradiffusion.csv",
                    "paper_row,dataset,metric,paper,paper_std,ours_mean,ours_std,ours_best_of_n,ours_n_images,"
                    "ours_method,status\n"
                    "ParaDiffusion,paraprompts,t_sim,,,0.61,0.01,0.62,5,paradiffusion/default,other scale\n")
    plot_bytes = _png(res / "plots" / "cub" / "sd__t_sim__guidance_scale.png", (200, 30, 30))
    plot_abs_bytes = _png(tmp_path / "elsewhere" / "abs_plot.png", (30, 30, 200), size=(5, 5))
    plots = _write(res / "plots" / "plots.csv",
                   "path,dataset,method,metric,param\n"
                   "cub/sd__t_sim__guidance_scale.png,cub,sd,t_sim,guidance_scale\n"
                   f"{tmp_path / 'elsewhere' / 'abs_plot.png'},coco,tcig,iou,steps\n")
    grid = res / "grids" / "cub__sd__default.png"
    grid_bytes = _png(grid, (10, 180, 10), size=(16, 8))
    _sidecar(grid, [[0, "item-001", SCRIPT_PROMPT, json.dumps(["sample 0", "sample <1>"])],
                    [1, "007", "a plain prompt\nwith a newline", json.dumps(["sample 0", "sample <1>"])]])
    grid_jpg = res / "grids" / "coco__tcig__steps=20.jpg"
    grid_jpg_bytes = _jpeg(grid_jpg, (90, 90, 90))
    _sidecar(grid_jpg, [[0, "42", "three cats", json.dumps(["base", "ours"])]])
    return {
        "kwargs": dict(summary_csv=summary, paper_tables={"paradiffusion": paper2, "multidiffusion": paper},
                       plots_csv=plots, grids=[str(grid), str(grid_jpg)], title="ctrlbench <report>",
                       provenance={"git_commit": "abc123", "config": "config.yaml",
                                   "packages": {"torch": "2.14.1", "pillow": None},
                                   "note": '<script>alert("prov")</script>'}),
        "images": sorted([plot_bytes, plot_abs_bytes, grid_bytes, grid_jpg_bytes]),
    }


class _Page(HTMLParser):
    """Tags with their attributes, ids, and the visible text (character references decoded)."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag in ("style", "title"):
            self._skip += 1

    def handle_endtag(self, tag):
        if tag in ("style", "title"):
            self._skip -= 1

    def handle_data(self, data):
        if not self._skip:
            self.text.append(data)


def _parse(text: str) -> _Page:
    page = _Page()
    page.feed(text)
    page.close()
    return page


def _report(tmp_path, kwargs, name="report.html") -> str:
    out = tmp_path / "out" / name
    write_report(out, **kwargs)
    return out.read_text(encoding="utf-8")


def test_self_contained_one_file_with_embedded_images(tmp_path, inputs):
    out_dir = tmp_path / "out"
    text = _report(tmp_path, inputs["kwargs"])
    assert [p.name for p in out_dir.iterdir()] == ["report.html"]  # no temp files, no side files
    page = _parse(text)

    # No external references anywhere: links are in-page anchors, images are data URIs.
    assert not re.search(r"(?:src|href|srcset|action|poster)\s*=\s*[\"']?\s*(?:https?:|//|file:)", text, re.I)
    assert "url(" not in text and "@import" not in text
    assert not {"link", "script", "iframe", "object", "embed", "base", "form"} & {t for t, _ in page.tags}
    ids = {a["id"] for _, a in page.tags if "id" in a}
    hrefs = [a["href"] for t, a in page.tags if "href" in a]
    assert hrefs and all(h.startswith("#") and h[1:] in ids for h in hrefs)

    imgs = [a for t, a in page.tags if t == "img"]
    assert imgs and all(a["src"].startswith("data:image/") for a in imgs)
    assert all(set(a) <= {"src", "width", "height", "alt"} for a in imgs)
    decoded = []
    for a in imgs:
        head, payload = a["src"].split(",", 1)
        assert head in ("data:image/png;base64", "data:image/jpeg;base64")
        data = base64.b64decode(payload, validate=True)
        with Image.open(_stdio.BytesIO(data)) as image:
            image.load()
            assert head.endswith(f"{image.format.lower()};base64")
            assert (int(a["width"]), int(a["height"])) == image.size
        decoded.append(data)
    assert sorted(decoded) == inputs["images"]

    csp = [a for t, a in page.tags if t == "meta" and a.get("http-equiv") == "Content-Security-Policy"]
    assert [a["content"] for a in csp] == [CSP]
    assert "default-src 'none'" in CSP and "script-src" not in CSP


def test_all_text_escaped(tmp_path, inputs):
    text = _report(tmp_path, inputs["kwargs"])
    assert "<script" not in text.lower()
    assert "onerror=alert(2)>" not in text
    assert "<b>evil" not in text and "<report>" not in text
    assert html.escape(SCRIPT_PROMPT, quote=True) in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "&quot;&gt;&lt;img src=x onerror=alert(2)&gt;" in text
    page = _parse(text)
    visible = "".join(page.text)
    assert SCRIPT_PROMPT in visible  # shown as text
    assert "<b>evil</b>" in visible and "sample <1>" in visible
    assert '<script>alert("prov")</script>' in visible
    imgs = [a for t, a in page.tags if t == "img"]
    assert all("onerror" not in a for a in imgs) and len(imgs) == 4


def test_contents_tables_and_numbers(tmp_path, inputs):
    text = _report(tmp_path, inputs["kwargs"])
    page = _parse(text)
    visible = "".join(page.text)
    assert "<title>ctrlbench &lt;report&gt;</title>" in text
    # Table of contents links every section and sub-section.
    nav = text.split('<nav id="contents">', 1)[1].split("</nav>", 1)[0]
    for anchor in ("summary", "summary-cub", "summary-coco", "papers", "paper-multidiffusion",
                   "paper-paradiffusion", "plots", "plots-cub", "plots-coco", "grids", "grid-cub__sd__default",
                   "provenance"):
        assert f'href="#{anchor}"' in nav and f'id="{anchor}"' in text
    # Summary: one table per dataset (sorted), 4 significant digits, NaN as an en dash.
    summary = text.split('<section id="summary">', 1)[1].split('<section id="papers">', 1)[0]
    assert summary.index('id="summary-coco"') < summary.index('id="summary-cub"')
    assert summary.count("<table>") == 2
    assert '<td class="num">0.6123</td>' in summary and '<td class="num">0.01235</td>' in summary
    assert '<td class="num">12</td>' in summary
    cub = summary.split('id="summary-cub"', 1)[1]
    assert "<th>guidance_scale</th>" in cub and "<td>7.5</td>" in cub
    coco = summary.split('id="summary-cub"', 1)[0]
    assert "guidance_scale" not in coco  # not swept there: no empty column
    assert "<td>\u2013</td>" in summary  # the NaN std
    assert "nan" not in summary.lower().replace("paramset", "")
    # Papers: ours beside the paper, every status shown, NaN paper values as an en dash.
    papers = text.split('<section id="papers">', 1)[1].split('<section id="plots">', 1)[0]
    assert papers.index("multidiffusion") < papers.index("paradiffusion")
    for status in ("ok", "not configured", "not run", "other scale"):
        assert f">{status}</span>" in papers
    para = papers.split('id="paper-paradiffusion"', 1)[1]
    assert para.count("<td>\u2013</td>") >= 2 and '<td class="num">0.61</td>' in para
    # Grids: heading from the file name, column labels, item ids as written.
    assert "cub / sd / default" in visible and "coco / tcig / steps=20" in visible
    assert "Columns: sample 0, sample <1>" in visible
    assert "<td>007</td>" in text and "<td>item-001</td>" in text
    # Provenance footer, nested dicts as tables, None as an en dash.
    footer = text.split('<footer id="provenance">', 1)[1]
    assert "abc123" in footer and "<th>torch</th><td>2.14.1</td>" in footer
    assert "<th>pillow</th><td>\u2013</td>" in footer


def test_deterministic(tmp_path, inputs):
    first = tmp_path / "a" / "report.html"
    second = tmp_path / "b" / "report.html"
    write_report(first, **inputs["kwargs"])
    write_report(second, **inputs["kwargs"])
    assert first.read_bytes() == second.read_bytes()
    write_report(first, **inputs["kwargs"])  # overwrites in place, same bytes
    assert first.read_bytes() == second.read_bytes()


def test_missing_sections_say_none(tmp_path, inputs):
    empty_summary = _write(tmp_path / "empty.csv",
                           "dataset,method,paramset,metric,aggregate,scale,n,mean,std,ci95_low,ci95_high\n")
    text = _report(tmp_path, dict(summary_csv=empty_summary, paper_tables={}, plots_csv=None, grids=[]))
    for section in ("summary", "papers", "plots", "grids"):
        body = text.split(f'<section id="{section}">', 1)[1].split("</section>", 1)[0]
        assert '<p class="none">none</p>' in body, section
    assert '<footer id="provenance">\n<h2>Provenance</h2>\n<p class="none">none</p>' in text
    assert "<img" not in text and "<table" not in text
    # An empty plot list is a section that says none too.
    plots = _write(tmp_path / "plots.csv", "path,dataset,method,metric,param\n")
    text = _report(tmp_path, dict(inputs["kwargs"], plots_csv=plots), name="r2.html")
    body = text.split('<section id="plots">', 1)[1].split("</section>", 1)[0]
    assert '<p class="none">none</p>' in body


@pytest.mark.parametrize("case", ["summary", "paper", "plots_csv", "plot_png", "grid", "sidecar",
                                  "column", "not_image"])
def test_listed_but_missing_file_is_named(tmp_path, inputs, case):
    kwargs = dict(inputs["kwargs"])
    res = tmp_path / "results"
    if case == "summary":
        missing = res / "tables" / "nope.csv"
        kwargs["summary_csv"] = str(missing)
    elif case == "paper":
        missing = res / "tables" / "paper_gone.csv"
        kwargs["paper_tables"] = {**kwargs["paper_tables"], "gone": str(missing)}
    elif case == "plots_csv":
        missing = res / "plots" / "absent.csv"
        kwargs["plots_csv"] = str(missing)
    elif case == "plot_png":
        missing = res / "plots" / "cub" / "sd__t_sim__guidance_scale.png"
        missing.unlink()
    elif case == "grid":
        missing = res / "grids" / "x__y__z.png"
        kwargs["grids"] = [*kwargs["grids"], str(missing)]
    elif case == "sidecar":
        missing = res / "grids" / "cub__sd__default.csv"
        missing.unlink()
    elif case == "column":
        missing = Path(_write(res / "tables" / "bad.csv", "paper_row,dataset\nx,y\n"))
        kwargs["paper_tables"] = {"bad": str(missing)}
    else:
        missing = res / "grids" / "cub__sd__default.png"
        missing.write_bytes(b"not an image at all")
    out = tmp_path / "out" / "report.html"
    with pytest.raises(InputError) as err:
        write_report(out, **kwargs)
    assert str(missing) in str(err.value)
    if case == "column":
        assert "lacks column(s)" in str(err.value) and "status" in str(err.value)
    assert not out.exists() and not any(out.parent.glob("*"))  # nothing half-written


def test_plot_list_from_sweep_plots(tmp_path, inputs, monkeypatch):
    """A plot list as report/plots.py writes it: extra columns (scale, aggregate, series),
    paths relative to the working directory rather than to the list's folder."""
    monkeypatch.chdir(tmp_path)
    plots = _write(tmp_path / "results" / "plots" / "sweep" / "plots.csv",
                   "path,dataset,method,metric,scale,aggregate,param,series\n"
                   'results/plots/cub/sd__t_sim__guidance_scale.png,cub,sd,t_sim,cos01,mean,guidance_scale,"[""""]"\n')
    text = _report(tmp_path, dict(inputs["kwargs"], plots_csv=plots))
    plots_html = text.split('<section id="plots">', 1)[1].split('<section id="grids">', 1)[0]
    assert plots_html.count("<img") == 1
    assert "<figcaption>sd \u00b7 t_sim (cos01, mean) against guidance_scale</figcaption>" in plots_html
