"""Markdown tables: the one writer behind report.md and the studies' reports."""

from __future__ import annotations

from typing import Any, Sequence

import pandas as pd


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    """A GitHub markdown table; ``|`` and newlines in cells are escaped."""
    def cell(value: Any) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")
    out = ["| " + " | ".join(cell(h) for h in header) + " |",
           "| " + " | ".join("---" for _ in header) + " |"]
    out += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return out


def frame_table(frame: pd.DataFrame, digits: int = 3) -> list[str]:
    """A data frame as a markdown table, floats to ``digits`` significant digits."""
    fmt = lambda v: f"{v:.{digits}g}" if isinstance(v, float) else str(v)  # noqa: E731
    return markdown_table(list(frame.columns),
                          [[fmt(v) for v in row] for row in frame.itertuples(index=False)])
