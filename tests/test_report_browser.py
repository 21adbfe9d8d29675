"""The HTML report page in headless Chromium: it renders, its images load, and a prompt
holding a <script> tag is shown as text (no script element, no dialog).

Needs Debian's chromium (`apt-get install -y chromium`, /usr/bin/chromium) and the
Python package playwright (`pip install playwright`, in the test extras). Playwright
drives the system chromium: `playwright install` (a browser download) is not needed.
Without either the test is skipped, saying which is missing.
"""

from __future__ import annotations

import csv
import io as _stdio
import json
import os
from pathlib import Path

import pytest
from PIL import Image, ImageStat

from ctrlbench.report.html import write_report

CHROMIUM = "/usr/bin/chromium"
# --headless: Playwright adds it too for headless=True; --user-data-dir: Playwright takes
# it as launch_persistent_context's user_data_dir (it refuses the flag in args). The
# network flags keep a closed machine from flooding refused connections.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TITLE = 'ctrlbench <report> & "friends"'
SCRIPT = "<script>alert(1)</script>"
PROMPT = f'a red bird {SCRIPT} on a branch "><img src=x onerror=alert(2)>'


def _sync_playwright(chromium: str = CHROMIUM):
    if not (os.path.isfile(chromium) and os.access(chromium, os.X_OK)):
        pytest.skip(f"{chromium} is missing: install Debian's chromium package (apt-get install -y chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("the Python package playwright is missing: pip install playwright (or the test extras, "
                    "pip install -e '.[test]'); it drives /usr/bin/chromium, so `playwright install` is not needed")
    return sync_playwright


def _png(path: Path, color, size) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path, format="PNG")


def _report(tmp_path: Path) -> Path:
    res = tmp_path / "results"
    (res / "tables").mkdir(parents=True)
    summary = res / "tables" / "summary.csv"
    summary.write_text("dataset,method,paramset,metric,aggregate,scale,n,mean,std,ci95_low,ci95_high\n"
                       "cub,sd,default,t_sim,mean,cos01,2,0.61234567,,0.6,0.62\n", encoding="utf-8")
    paper = res / "tables" / "paper_mmm2025.csv"
    paper.write_text("paper_row,dataset,metric,paper,paper_std,ours_mean,ours_std,ours_best_of_n,ours_n_images,"
                     "ours_method,status\n"
                     "template + SD,cub,t_sim,60.72,,61.0,0.5,61.5,2,sd/default,other scale\n", encoding="utf-8")
    _png(res / "plots" / "cub__sd__t_sim__steps.png", (40, 90, 200), (60, 40))
    plots = res / "plots" / "plots.csv"
    plots.write_text("path,dataset,method,metric,param\ncub__sd__t_sim__steps.png,cub,sd,t_sim,steps\n",
                     encoding="utf-8")
    grid = res / "grids" / "cub__sd__default.png"
    _png(grid, (220, 40, 40), (96, 48))
    with grid.with_suffix(".csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["row", "item_id", "prompt", "columns"])
        writer.writerow([0, "0001", PROMPT, json.dumps(["sample 0", "sample 1"])])
    out = tmp_path / "report" / "index.html"
    write_report(out, summary_csv=str(summary), paper_tables={"mmm2025": str(paper)}, plots_csv=str(plots),
                 grids=[str(grid)], title=TITLE, provenance={"git_commit": "<b>deadbeef</b>"})
    return out


def test_report_renders_in_headless_chromium(tmp_path):
    sync_playwright = _sync_playwright()
    page_path = _report(tmp_path)
    dialogs, requests, console = [], [], []
    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 1200, "height": 900}, timeout=60_000)
        try:
            page = context.pages[0] if context.pages else context.new_page()
            page.set_default_timeout(30_000)

            def on_dialog(dialog):
                dialogs.append(dialog.message)
                dialog.dismiss()

            page.on("dialog", on_dialog)
            page.on("request", lambda request: requests.append(request.url))
            page.on("console", lambda message: console.append(f"{message.type}: {message.text}"))
            page.goto(page_path.as_uri(), wait_until="load")

            assert page.title() == TITLE
            images = page.evaluate("""() => Array.from(document.images).map(img => ({
                complete: img.complete, width: img.naturalWidth, height: img.naturalHeight,
                data: img.src.startsWith('data:image/')}))""")
            assert len(images) == 2
            assert all(img["complete"] and img["width"] > 0 and img["data"] for img in images), images
            assert sorted((img["width"], img["height"]) for img in images) == [(60, 40), (96, 48)]

            text = page.evaluate("() => document.body.innerText")
            assert SCRIPT in text
            assert '"><img src=x onerror=alert(2)>' in text
            assert "<b>deadbeef</b>" in text
            assert page.evaluate("() => document.querySelectorAll('script').length") == 0
            # The injected <img src=x> must not have become an element.
            assert page.evaluate("() => document.querySelectorAll('img:not([src^=\"data:image/\"])').length") == 0
            # Every table-of-contents link leads to an element of the page.
            missing = page.evaluate("""() => Array.from(document.querySelectorAll('a[href]'))
                .map(a => a.getAttribute('href'))
                .filter(h => !h.startsWith('#') || !document.getElementById(h.slice(1)))""")
            assert missing == []

            shot = Image.open(_stdio.BytesIO(page.screenshot(full_page=True))).convert("RGB")
            assert max(hi - lo for lo, hi in shot.getextrema()) > 50  # not blank
            assert max(ImageStat.Stat(shot).stddev) > 5
        finally:
            context.close()
    assert dialogs == []
    assert [url for url in requests if not url.startswith(("data:", page_path.as_uri()))] == []
    # Inline style and data: images are allowed by the page's CSP: nothing was refused.
    assert not [m for m in console if "Content Security Policy" in m or m.startswith("error")], console


def test_skip_reason_names_what_is_missing(tmp_path):
    """The skip message says what is missing and how to install it (no browser needed)."""
    absent = str(tmp_path / "no-chromium")
    with pytest.raises(pytest.skip.Exception, match=r"no-chromium is missing: .*apt-get install -y chromium"):
        _sync_playwright(absent)
