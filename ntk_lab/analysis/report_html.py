"""report.html: the sweep's analysis as one self-contained page to open in a browser.

The same content as report.md, laid out for a laptop screen: the command and settings, the
fits table with its confidence intervals, every figure embedded as a base64 PNG (the file
can be mailed or copied anywhere), and the status of every run with a link to its folder.
A light template (one inline style sheet, no JavaScript); the tables are pandas'
``DataFrame.to_html`` of cells escaped here, so a run's message can never inject markup.
"""

from __future__ import annotations

import base64
import html
import os
import re
import struct
from pathlib import Path
from typing import Any, Optional, Sequence
from urllib.parse import quote

import pandas as pd

from ntk_lab.analysis.collect import STATUS_INCOMPLETE, Sweep, format_value, is_missing
from ntk_lab.analysis.fit import FitTable
from ntk_lab.records.launch import Launch, read_launch
from ntk_lab.analysis.report import (
    FIT_HEADER, FITS_EXPLANATION, ReportFigure, fit_rows, run_detail, status_counts,
    value_list,
)
from ntk_lab.records import (
    STATUS_DIVERGED, STATUS_FAILED, STATUS_INTERRUPTED, STATUS_OK, atomic_write_text,
)

# Figures at least this many pixels wide (multi-panel ones) take a full row of the grid;
# single panels (624 px at matplotlib's 100 dpi) sit two to a row on a laptop screen.
WIDE_FIGURE_PX = 1000
# Final metrics shown per run in the run table, when the sweep recorded them.
RUN_TABLE_METRICS = ("train_loss", "test_loss", "kappa", "ntk_err_inf")
STATUS_CLASSES = {
    STATUS_OK: "ok", STATUS_DIVERGED: "diverged", STATUS_INTERRUPTED: "interrupted",
    STATUS_FAILED: "failed", STATUS_INCOMPLETE: "incomplete",
}
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

_STYLE = """
:root { --fg: #1f2328; --muted: #59636e; --line: #d1d9e0; --bg-alt: #f6f8fa; --accent: #0969da; }
* { box-sizing: border-box; }
body { margin: 0; color: var(--fg); background: #fff;
       font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; }
main { max-width: 1200px; margin: 0 auto; padding: 1.5rem 2rem 3rem; }
h1 { font-size: 1.6rem; margin: 0 0 .25rem; }
h2 { font-size: 1.25rem; margin: 2.2rem 0 .6rem; padding-bottom: .3rem;
     border-bottom: 1px solid var(--line); }
h3 { font-size: 1rem; margin: 1.2rem 0 .4rem; }
p, li { max-width: 80ch; }
.muted { color: var(--muted); }
nav { margin: .6rem 0 0; font-size: .95rem; }
nav a { margin-right: 1.1rem; }
a { color: var(--accent); text-decoration: none; }
a:hover { text-decoration: underline; }
code, pre { font: .86rem/1.45 ui-monospace, "SFMono-Regular", "DejaVu Sans Mono", monospace; }
pre { background: var(--bg-alt); border: 1px solid var(--line); border-radius: 6px;
      padding: .7rem .9rem; overflow-x: auto; white-space: pre-wrap; word-break: break-all; }
.table-wrap { overflow-x: auto; margin: .4rem 0 1rem; }
table.data { border-collapse: collapse; font-size: .88rem; }
table.data th, table.data td { border: 1px solid var(--line); padding: .3rem .6rem;
                                text-align: left; vertical-align: top; }
table.data th { background: var(--bg-alt); font-weight: 600; white-space: nowrap; }
table.data tbody tr:nth-child(even) td { background: #fbfcfd; }
table.data td { font-variant-numeric: tabular-nums; }
.status { display: inline-block; padding: 0 .5rem; border-radius: 1rem; font-size: .82rem;
          font-weight: 600; white-space: nowrap; border: 1px solid transparent; }
.status-ok { background: #dafbe1; color: #116329; border-color: #aceebb; }
.status-diverged { background: #fff1e5; color: #953800; border-color: #ffd8b5; }
.status-interrupted { background: #ddf4ff; color: #0a3069; border-color: #b6e3ff; }
.status-failed { background: #ffebe9; color: #82071e; border-color: #ffcecb; }
.status-incomplete { background: #eaeef2; color: #424a53; border-color: #d1d9e0; }
.chips { display: flex; flex-wrap: wrap; gap: .35rem .5rem; }
.chips code { background: var(--bg-alt); border: 1px solid var(--line); border-radius: 4px;
              padding: .05rem .4rem; }
.counts { display: flex; flex-wrap: wrap; gap: .5rem; margin: .4rem 0; }
.counts .status { font-size: .95rem; padding: .15rem .8rem; }
.figures { display: grid; grid-template-columns: repeat(auto-fit, minmax(460px, 1fr));
           gap: 1.2rem; }
figure { margin: 0; padding: .6rem; border: 1px solid var(--line); border-radius: 6px; }
figure.wide { grid-column: 1 / -1; }
figure img { display: block; max-width: 100%; height: auto; margin: 0 auto; }
figcaption { font-size: .88rem; color: var(--muted); margin-top: .4rem; }
figcaption code { color: var(--fg); }
"""


def write_html_report(
    sweep: Sweep,
    fits: FitTable,
    figures: Sequence[ReportFigure],
    not_drawn: Sequence[tuple[str, str]],
    notes: Sequence[str],
    path: Path,
) -> Path:
    """Write report.html beside the figures it embeds.

    Args:
        sweep: the collected runs.
        fits: the fitted exponents.
        figures: the figures drawn, in order; each is read from ``path.parent / name``.
        not_drawn: ``(file name, what it needs)`` for figures the data did not support.
        notes: further remarks (figures that failed, …).
        path: where to write (``<sweep>/analysis/report.html``).

    Returns:
        ``path``.
    """
    path = Path(path)
    launch = read_launch(sweep.root)
    body = [_header(sweep)]
    if not sweep.records:
        body.append(_paragraph(
            f"No run folders were found under {sweep.root} (a run folder holds summary.json, "
            "metrics.csv or .hydra/). Nothing to analyse."))
        body.append(_launch_section(launch, sweep))
    else:
        body += [_status_section(sweep), _launch_section(launch, sweep),
                 _fits_section(sweep, fits), _figures_section(figures, not_drawn, path.parent),
                 _runs_section(sweep, path.parent)]
    if notes:
        body.append('<h2 id="notes">Notes</h2>' + _bullets(notes))
    title = f"Sweep analysis: {sweep.root.name or sweep.root}"
    page = ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
            f"<title>{_esc(title)}</title>\n<style>{_STYLE}</style>\n</head>\n<body>\n<main>\n"
            + "\n".join(body) + "\n</main>\n</body>\n</html>\n")
    atomic_write_text(path, page)
    return path


# ----------------------------------------------------------------------------- sections


def _header(sweep: Sweep) -> str:
    sections = [("runs", "Runs"), ("launch", "Command and settings"), ("fits", "Scaling fits"),
                ("figures", "Figures"), ("every-run", "Every run")]
    nav = "".join(f'<a href="#{anchor}">{label}</a>' for anchor, label in sections)
    return (f"<header><h1>Sweep analysis</h1>"
            f'<div class="muted"><code>{_esc(sweep.root)}</code></div>'
            f"<nav>{nav if sweep.records else ''}</nav></header>")


def _status_section(sweep: Sweep) -> str:
    badges = "".join(_status_badge(status, f"{status}: {count}")
                     for status, count in status_counts(sweep))
    return (f'<h2 id="runs">Runs</h2><p>{len(sweep.records)} run folders.</p>'
            f'<div class="counts">{badges}</div>')


def _launch_section(launch: Optional[Launch], sweep: Sweep) -> str:
    parts = ['<h2 id="launch">Command and settings</h2>']
    if launch is None:
        parts.append(_paragraph(
            "Hydra left no launch record here (no multirun.yaml or .hydra/hydra.yaml): the "
            "command is unknown. The settings below are read from the runs."))
    else:
        where = f" (from {launch.cwd})" if launch.cwd else ""
        parts.append(f"<p>The command{_esc(where)}, as Hydra recorded it in "
                     f"<code>{_esc(launch.source)}</code>:</p><pre>{_esc(launch.command)}</pre>")
        if launch.grid:
            parts.append("<h3>Sweep grid of the preset</h3>"
                         + _table(pd.DataFrame({"key": list(launch.grid),
                                                "values": list(launch.grid.values())})))
        if launch.choices:
            parts.append("<p>Config groups: " + ", ".join(
                f"<code>{_esc(k)}={_esc(v)}</code>" for k, v in launch.choices.items()) + "</p>")
    if sweep.records:
        parts.append(_settings(sweep))
        versions = _versions(sweep)
        if versions:
            parts.append(f'<p class="muted">Versions (first run): {_esc(versions)}</p>')
    return "\n".join(parts)


def _settings(sweep: Sweep) -> str:
    swept = [c for c in sweep.config_columns if len(sweep.values(c)) > 1]
    fixed = [c for c in sweep.config_columns if len(sweep.values(c)) == 1]
    out = []
    if swept:
        frame = pd.DataFrame(
            [(c, value_list(sweep.values(c)), "yes" if c in sweep.knobs else "no")
             for c in swept], columns=["knob", "values", "groups fits"])
        out.append("<h3>What was swept</h3><p>Values over ok runs; <em>groups fits</em> says "
                   "whether fits are done separately for each value (width is the x axis, "
                   "seeds are replicates).</p>" + _table(frame))
    else:
        out.append("<h3>What was swept</h3><p>No config value varies across ok runs.</p>")
    if fixed:
        chips = "".join(f"<code>{_esc(c)}={_esc(format_value(sweep.values(c)[0]))}</code>"
                        for c in fixed)
        out.append(f'<h3>Fixed settings</h3><div class="chips">{chips}</div>')
    return "\n".join(out)


def _versions(sweep: Sweep) -> str:
    for record in sweep.records:
        versions = record.summary.get("versions")
        if isinstance(versions, dict) and versions:
            return ", ".join(f"{k} {v}" for k, v in sorted(versions.items()))
    return ""


def _fits_section(sweep: Sweep, fits: FitTable) -> str:
    parts = ['<h2 id="fits">Scaling fits (fits.csv)</h2>',
             f"<p>{_inline_markdown(FITS_EXPLANATION)}</p>"]
    if fits.entries:
        frame = pd.DataFrame(fit_rows(sweep, fits), columns=list(FIT_HEADER))
        parts.append(_table(frame))
    else:
        parts.append("<p>No scaling law could be fitted (see the notes).</p>")
    if fits.notes:
        parts.append("<p>Left out of the fits:</p>" + _bullets(fits.notes))
    return "\n".join(parts)


def _figures_section(
    figures: Sequence[ReportFigure], not_drawn: Sequence[tuple[str, str]], folder: Path
) -> str:
    parts = ['<h2 id="figures">Figures</h2>']
    if figures:
        parts.append('<div class="figures">' + "".join(_figure(f, folder) for f in figures)
                     + "</div>")
    else:
        parts.append("<p>No figure: the runs do not hold enough data for any.</p>")
    if not_drawn:
        parts.append("<p>Not drawn (the sweep does not support them):</p><ul>" + "".join(
            f"<li><code>{_esc(name)}</code> — needs {_esc(needs)}</li>"
            for name, needs in not_drawn) + "</ul>")
    return "\n".join(parts)


def _figure(figure: ReportFigure, folder: Path) -> str:
    data = (folder / figure.name).read_bytes()
    size = png_size(data)
    wide = size is not None and size[0] >= WIDE_FIGURE_PX
    dims = f' width="{size[0]}" height="{size[1]}"' if size else ""
    src = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
    anchor = re.sub(r"[^A-Za-z0-9_-]", "-", Path(figure.name).stem)
    css = ' class="wide"' if wide else ""
    return (f'<figure id="fig-{anchor}"{css}>'
            f'<img src="{src}" alt="{_esc(figure.name)}"{dims}>'
            f"<figcaption><code>{_esc(figure.name)}</code> — {_esc(figure.caption)}"
            "</figcaption></figure>")


def png_size(data: bytes) -> Optional[tuple[int, int]]:
    """(width, height) in pixels from a PNG's IHDR chunk, or None for anything else."""
    if len(data) < 24 or not data.startswith(_PNG_SIGNATURE) or data[12:16] != b"IHDR":
        return None
    return struct.unpack(">II", data[16:24])


def _runs_section(sweep: Sweep, folder: Path) -> str:
    info = sweep.run_info.sort_values("run_dir", key=_natural_keys)
    knobs = [c for c in ("width", "seed", *sweep.knobs) if c in info.columns]
    knobs = list(dict.fromkeys(knobs))  # width/seed first, no repeats
    finals = _final_rows(sweep)
    metrics = [m for m in RUN_TABLE_METRICS if m in sweep.metric_columns]
    rows = []
    for _, run in info.iterrows():
        final = finals.get(run["run_dir"], {})
        link = _relative_link(sweep.root / run["run_dir"], folder)
        row = {"folder": f'<a href="{link}">{_esc(run["run_dir"])}</a>',
               "status": _status_badge(run["status"], run["status"])}
        row.update({k: _esc(format_value(run[k])) for k in knobs})
        row.update({f"final {m}": _number(final.get(m)) for m in metrics})
        row["steps"] = _esc(format_value(final.get("step")))
        wall = run.get("wall_time_s")
        row["wall s"] = "" if is_missing(wall) or wall is None else f"{float(wall):.1f}"
        row["detail"] = _esc(_detail_or_blank(run))
        rows.append(row)
    frame = pd.DataFrame(rows)
    return ('<h2 id="every-run">Every run</h2><p>Folders link to the run folders (relative to '
            "this page, so they work inside the sweep folder); final values are at the last "
            "checkpoint each run reached.</p>" + _table(frame, escaped=True))


def _final_rows(sweep: Sweep) -> dict[str, dict[str, Any]]:
    """The last checkpoint row of every run that has metrics, whatever its status."""
    runs = sweep.runs
    if not len(runs):
        return {}
    last = runs.sort_values(["run_dir", "step"]).groupby("run_dir", sort=False).tail(1)
    return {row["run_dir"]: row.to_dict() for _, row in last.iterrows()}


def _detail_or_blank(run: pd.Series) -> str:
    if run["status"] == STATUS_OK and not str(run.get("problem") or "").strip():
        return ""
    return run_detail(run)


# ----------------------------------------------------------------------------- helpers


def _table(frame: pd.DataFrame, escaped: bool = False) -> str:
    """pandas' HTML table of ``frame``; cells are escaped here unless ``escaped`` says they
    already are (then they may hold links and badges built by this module)."""
    if not escaped:
        frame = frame.apply(lambda column: column.map(
            lambda v: "—" if v is None or is_missing(v) else _esc(v)))
    table = frame.to_html(index=False, escape=False, border=0, classes="data", na_rep="—")
    return f'<div class="table-wrap">{table}</div>'


def _status_badge(status: Any, text: Any) -> str:
    css = STATUS_CLASSES.get(str(status), "incomplete")
    return f'<span class="status status-{css}">{_esc(text)}</span>'


def _relative_link(target: Path, folder: Path) -> str:
    rel = os.path.relpath(Path(target).resolve(), Path(folder).resolve())
    return quote(Path(rel).as_posix()) + "/"


def _number(value: Any) -> str:
    if value is None or is_missing(value):
        return ""
    try:
        return f"{float(value):.4g}"
    except (TypeError, ValueError):
        return _esc(value)


def _natural_keys(series: pd.Series) -> pd.Series:
    """Sort run folders 0, 1, 2, …, 10 rather than 0, 1, 10, 2."""
    return series.map(lambda s: tuple((0, int(t), "") if t.isdigit() else (1, 0, t)
                                      for t in re.split(r"(\d+)", str(s)) if t))


def _inline_markdown(text: str) -> str:
    """Escape text and turn its markdown ``*word*`` and `` `code` `` into HTML."""
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", _esc(text))
    return re.sub(r"\*([^*\s][^*]*)\*", r"<em>\1</em>", out)


def _paragraph(text: str) -> str:
    return f"<p>{_esc(text)}</p>"


def _bullets(items: Sequence[str]) -> str:
    return "<ul>" + "".join(f"<li>{_inline_markdown(item)}</li>" for item in items) + "</ul>"


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)
