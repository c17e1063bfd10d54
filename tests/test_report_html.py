"""report.html: parsed back with the standard library's HTML parser, and rendered in Chromium.

The sweep is synthetic (run folders written with :mod:`ntk_lab.records`, as the trainer
writes them, with the helpers of test_analysis.py) plus damaged folders of every status, and
a multirun.yaml like Hydra's. The page is checked against the files the analysis wrote
beside it: every figure's embedded bytes against the PNG file, the fits table against
fits.csv, the run table against each folder's summary.json.
"""

from __future__ import annotations

import base64
import html
import json
import math
import re
from html.parser import HTMLParser
from urllib.parse import unquote

import numpy as np
import pandas as pd
import pytest
import yaml

from ntk_lab.analysis import analyze_sweep
from ntk_lab.records.launch import read_launch
from ntk_lab.analysis.render import RenderError, find_chromium, render_png
from ntk_lab.analysis.report import FIT_HEADER
from ntk_lab.analysis.report_html import png_size
from tests.test_analysis import metric_rows, summary_for, write_run

WIDTHS = (64, 128, 256, 512)
SEEDS = (0, 1)
# The page shows slopes and interval ends rounded to 3 decimals: half a unit of the last place.
ROUNDING_TOL = 5e-4 + 1e-12
OVERRIDES = ["width=64,128,256,512", "seed=0,1", "depth=1", "model.activation=relu"]
HYDRA_OVERRIDES = ["hydra.sweep.dir=sweeps/test", "hydra.mode=MULTIRUN"]
EVIL_MESSAGE = "RuntimeError: <script>alert('x')</script> & more"
STATUSES = {"failed": "failed", "diverged": "diverged", "interrupted": "interrupted",
            "killed": "incomplete", "corrupt": "incomplete"}
# A rendered page counts as non-blank when at least this share of its pixels is not the
# white background and it holds at least this many distinct colours: text alone covers a
# few percent of a page; the embedded figures add thousands of colours (anti-aliased lines).
MIN_INK_FRACTION = 0.03
MIN_COLOURS = 500


# ---------------------------------------------------------------- a parsed page


class Page(HTMLParser):
    """The parts of report.html the tests read: images, tables (cell text and links), the
    ids of headings, the ``<pre>`` text, every tag name and every URL attribute."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.images: list[dict] = []
        self.tables: list[dict] = []  # {"after": id of the last h2, "rows": [[cell, …]]}
        self.tags: list[str] = []
        self.urls: list[str] = []
        self.pre: list[str] = []
        self._h2 = None
        self._cell = None
        self._in_pre = False
        self.feed(text)
        self.close()

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append(tag)
        self.urls += [attrs[k] for k in ("src", "href") if k in attrs]
        if tag == "h2":
            self._h2 = attrs.get("id")
        elif tag == "img":
            self.images.append(attrs)
        elif tag == "table":
            self.tables.append({"after": self._h2, "rows": []})
        elif tag == "tr" and self.tables:
            self.tables[-1]["rows"].append([])
        elif tag in ("td", "th"):
            self._cell = {"text": "", "href": None, "header": tag == "th", "classes": []}
        elif tag == "a" and self._cell is not None:
            self._cell["href"] = attrs.get("href")
        elif tag == "span" and self._cell is not None:
            self._cell["classes"] += (attrs.get("class") or "").split()
        elif tag == "pre":
            self._in_pre = True
            self.pre.append("")

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self._cell["text"] = self._cell["text"].strip()
            self.tables[-1]["rows"][-1].append(self._cell)
            self._cell = None
        elif tag == "pre":
            self._in_pre = False

    def handle_data(self, data):
        if self._cell is not None:
            self._cell["text"] += data
        if self._in_pre:
            self.pre[-1] += data

    def table_after(self, section: str, first_column: str | None = None) -> list[list[dict]]:
        """The first table of a section (the first whose first header is ``first_column``)."""
        found = [t["rows"] for t in self.tables if t["after"] == section and (
            first_column is None or t["rows"][0][0]["text"] == first_column)]
        assert found, f"no table in section {section!r}"
        return found[0]


def as_records(rows: list[list[dict]]) -> list[dict]:
    """Header row + body rows -> one dict per body row, column name -> cell."""
    header = [c["text"] for c in rows[0]]
    assert all(c["header"] for c in rows[0])
    return [dict(zip(header, row)) for row in rows[1:]]


# ---------------------------------------------------------------- the sweep


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """8 ok runs (4 widths × 2 seeds, depth 1) and one damaged folder of every status."""
    root = tmp_path_factory.mktemp("html") / "sweep"
    index = 0
    for width in WIDTHS:
        for seed in SEEDS:
            write_run(root / str(index), summary_for(width, 1, seed), metric_rows(width, 1, seed))
            index += 1
    write_run(root / "failed", summary_for(64, 1, 5, status="failed", message=EVIL_MESSAGE))
    diverged = metric_rows(128, 1, 5)
    diverged[-1]["train_loss"] = float("nan")
    write_run(root / "diverged", summary_for(128, 1, 5, status="diverged", diverged_step=37,
                                             message="loss is nan"), diverged)
    write_run(root / "interrupted", summary_for(256, 1, 5, status="interrupted",
                                                message="KeyboardInterrupt"),
              metric_rows(256, 1, 5)[:2])
    write_run(root / "killed", summary_for(512, 1, 5, status="running"))
    corrupt = write_run(root / "corrupt", summary_for(512, 1, 6))
    (corrupt / "summary.json").write_text('{"width": 512, "sta')
    multirun = {"hydra": {
        "overrides": {"hydra": HYDRA_OVERRIDES, "task": OVERRIDES},
        "sweeper": {"params": {"width": "64,128,256,512", "seed": "0,1"}},
        "runtime": {"cwd": "/home/user/project", "version": "1.3.8",
                    "choices": {"data": "circle", "experiment": "width_sweep_cpu",
                                "hydra/launcher": "basic", "logger": None}},
    }, "width": "???"}
    (root / "multirun.yaml").write_text(yaml.safe_dump(multirun))
    out = analyze_sweep(root)
    text = (out / "report.html").read_text()
    return root, out, text, Page(text)


# ---------------------------------------------------------------- the page


def test_every_drawn_figure_is_embedded_with_its_bytes(sweep):
    _, out, _, page = sweep
    drawn = re.findall(r"!\[([^\]]+)\]\(([^)]+)\)", (out / "report.md").read_text())
    assert len(drawn) >= 4  # ntk_err_inf, kappa vs width, per layer, kappa vs step, …
    by_alt = {image["alt"]: image for image in page.images}
    assert sorted(by_alt) == sorted(name for name, _ in drawn)
    for name, _ in drawn:
        src = by_alt[name]["src"]
        assert src.startswith("data:image/png;base64,"), name
        data = base64.b64decode(src.split(",", 1)[1], validate=True)
        assert data == (out / name).read_bytes(), name
        width, height = png_size(data)
        assert (by_alt[name]["width"], by_alt[name]["height"]) == (str(width), str(height))


def test_page_is_self_contained_and_has_no_script(sweep):
    _, _, text, page = sweep
    assert text.startswith("<!DOCTYPE html>")
    assert "script" not in page.tags and "link" not in page.tags and "iframe" not in page.tags
    for url in page.urls:
        # Embedded images, in-page anchors and relative links to run folders only.
        assert url.startswith(("data:image/png;base64,", "#", "../")), url[:80]
    # A message full of markup shows as text: escaped once, never a tag.
    assert html.escape(EVIL_MESSAGE, quote=True) in text


def test_fits_table_matches_fits_csv(sweep):
    _, out, _, page = sweep
    fits = pd.read_csv(out / "fits.csv")
    assert len(fits) >= 5
    rows = page.table_after("fits")
    assert [c["text"] for c in rows[0]] == list(FIT_HEADER)
    records = as_records(rows)
    assert len(records) == len(fits)
    for shown, (_, expected) in zip(records, fits.iterrows()):
        assert shown["metric"]["text"] == expected["metric"]
        assert shown["x"]["text"] == expected["x"]
        assert shown["step"]["text"] == str(expected["step"])
        assert float(shown["slope"]["text"]) == pytest.approx(expected["slope"],
                                                              abs=ROUNDING_TOL)
        assert int(shown["n_runs"]["text"]) == expected["n_runs"]
        assert shown["CI method"]["text"] == expected["ci_method"]
        interval = shown["95% CI"]["text"]
        if math.isnan(expected["ci_low"]):
            assert interval == "—"
        else:
            low, high = map(float, interval.strip("[]").split(","))
            assert low == pytest.approx(expected["ci_low"], abs=ROUNDING_TOL)
            assert high == pytest.approx(expected["ci_high"], abs=ROUNDING_TOL)
            assert low <= float(shown["slope"]["text"]) <= high
    assert any(r["metric"]["text"] == "ntk_err_inf" and r["CI method"]["text"] == "bootstrap"
               for r in records)  # two seeds at every width: bootstrap intervals


def test_every_run_is_listed_with_its_status_and_a_link_to_its_folder(sweep):
    root, out, _, page = sweep
    records = as_records(page.table_after("every-run"))
    folders = {r["folder"]["text"]: r for r in records}
    expected_folders = {str(i) for i in range(len(WIDTHS) * len(SEEDS))} | set(STATUSES)
    assert set(folders) == expected_folders
    for folder, row in folders.items():
        target = (out / unquote(row["folder"]["href"])).resolve()
        assert target == (root / folder).resolve() and target.is_dir(), folder
        status = row["status"]["text"]
        assert status == STATUSES.get(folder, "ok"), folder
        assert f"status-{status}" in row["status"]["classes"]
        if folder.isdigit():  # ok runs: their settings and final values, read independently
            summary = json.loads((root / folder / "summary.json").read_text())
            final = pd.read_csv(root / folder / "metrics.csv").iloc[-1]
            assert int(row["width"]["text"]) == summary["width"]
            assert int(row["seed"]["text"]) == summary["seed"]
            assert float(row["final kappa"]["text"]) == pytest.approx(final["kappa"], rel=1e-3)
            assert int(row["steps"]["text"]) == final["step"]
            assert row["detail"]["text"] == ""
    assert "diverged at step 37" in folders["diverged"]["detail"]["text"]
    assert EVIL_MESSAGE in folders["failed"]["detail"]["text"]
    # The counts at the top agree with the table.
    counts = pd.Series([r["status"]["text"] for r in records]).value_counts()
    for status, count in counts.items():
        assert f"{status}: {count}" in sweep[2]


def test_command_grid_and_settings_come_from_hydras_record(sweep):
    _, _, text, page = sweep
    assert page.pre == ["python -m ntk_lab.run -m " + " ".join(OVERRIDES)
                        + " hydra.sweep.dir=sweeps/test"]
    grid = {r["key"]["text"]: r["values"]["text"]
            for r in as_records(page.table_after("launch", "key"))}
    assert grid == {"width": "64,128,256,512", "seed": "0,1"}
    assert "experiment=width_sweep_cpu" in text and "hydra/launcher" not in text
    assert "/home/user/project" in text
    swept = {r["knob"]["text"]: r["values"]["text"]
             for r in as_records(page.table_after("launch", "knob"))}
    assert swept["width"] == "64, 128, 256, 512"
    assert "<code>activation=relu</code>" in text  # a fixed setting


def test_read_launch_single_run_and_missing_record(tmp_path):
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump({"hydra": {
        "overrides": {"hydra": ["hydra.mode=RUN"], "task": ["+width=4096", "data=digits"]},
        "runtime": {"cwd": "/x", "version": "1.3.8", "choices": {"data": "digits"}}}}))
    launch = read_launch(run)
    assert launch.command == "python -m ntk_lab.run +width=4096 data=digits"
    assert not launch.multirun and launch.choices == {"data": "digits"}
    assert read_launch(tmp_path) is None
    (tmp_path / "multirun.yaml").write_text("hydra: [unclosed")
    assert read_launch(tmp_path) is None


def test_empty_folder_still_writes_a_page(tmp_path):
    out = analyze_sweep(tmp_path, tmp_path / "analysis")
    page = Page((out / "report.html").read_text())
    assert not page.images and not page.tables
    assert "No run folders were found" in (out / "report.html").read_text()


# ---------------------------------------------------------------- rendered (slow)


@pytest.mark.slow
def test_chromium_renders_the_page_to_a_non_blank_png(sweep, tmp_path):
    if find_chromium() is None:
        pytest.skip("headless Chromium is not installed (Debian: apt-get install -y chromium)")
    from PIL import Image

    _, out, _, _ = sweep
    try:
        png = render_png(out / "report.html", tmp_path / "report.png", width=1280, height=2000)
    except RenderError as err:
        pytest.fail(str(err))
    with Image.open(png) as image:
        assert image.size == (1280, 2000)
        pixels = np.asarray(image.convert("RGB"))
    ink = (pixels < 245).any(axis=2).mean()
    colours = len(np.unique(pixels.reshape(-1, 3), axis=0))
    assert ink >= MIN_INK_FRACTION, ink
    assert colours >= MIN_COLOURS, colours
    # The full page: taller than one screen, white margin cut to the content.
    full = render_png(out / "report.html", tmp_path / "full.png", full_page=True)
    with Image.open(full) as image:
        assert 2000 < image.height < 16000
