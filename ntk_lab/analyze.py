"""Command line: ``python -m ntk_lab.analyze DIR [--out OUTDIR]``.

Analyses every run folder under DIR (a Hydra multirun folder, one run, or any folder of
runs) and writes runs.csv, fits.csv, the figures, report.md and report.html to DIR/analysis
(or OUTDIR).
Exit status: 0 on success, 2 when DIR is not a directory.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Sequence


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m ntk_lab.analyze",
        description="Collect the runs under DIR, fit scaling exponents, draw figures and "
                    "write report.md.")
    parser.add_argument("dir", type=Path, metavar="DIR", help="sweep or run folder")
    parser.add_argument("--out", type=Path, default=None, metavar="OUTDIR",
                        help="where to write (default: DIR/analysis)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the analysis; return the exit status."""
    args = build_parser().parse_args(argv)
    if not args.dir.is_dir():
        reason = "is not a directory" if args.dir.exists() else "does not exist"
        print(f"ntk_lab.analyze: error: {args.dir} {reason}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # Imported here so that a mistyped DIR is answered before torch and matplotlib load.
    from ntk_lab.analysis import analyze_sweep
    from ntk_lab.analysis.pipeline import HTML_REPORT_FILE, REPORT_FILE

    out_dir = analyze_sweep(args.dir, args.out, progress=sys.stderr.isatty())
    print(f"report: {out_dir / REPORT_FILE}")
    print(f"html:   {out_dir / HTML_REPORT_FILE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
