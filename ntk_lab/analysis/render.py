"""Render report.html to a PNG with headless Chromium (a picture of the page to commit or check).

    python -m ntk_lab.analysis.render outputs/multirun/…/analysis/report.html report.png

Chromium is not a dependency: Debian's ``chromium`` package (``apt-get install -y chromium``)
or any Chrome/Chromium on PATH. Chromium's ``--screenshot`` captures one window, so a
full-page picture is a tall window whose blank bottom is then cut off.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
WINDOW_WIDTH = 1280  # a laptop screen's CSS width
FULL_PAGE_HEIGHT = 16000  # tall enough for a sweep with a dozen figures
BLANK_MARGIN_PX = 40  # white kept below the page's last content when trimming
# Rows whose every channel is within this of white count as blank when trimming.
WHITE_LEVEL = 250
RENDER_TIMEOUT_S = 120
# Flags that run Chromium headless in a container as root, with no network and no profile.
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--hide-scrollbars",
)


class RenderError(RuntimeError):
    """Chromium is missing or did not write the picture."""


def find_chromium() -> Optional[str]:
    """The path of a Chromium-family browser on PATH, or None."""
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


def render_png(
    html_path: Path, png_path: Path, *, width: int = WINDOW_WIDTH, height: int = 2000,
    full_page: bool = False, browser: Optional[str] = None,
) -> Path:
    """Screenshot ``html_path`` in headless Chromium into ``png_path``.

    Args:
        html_path: the page (a local file).
        png_path: the PNG to write.
        width, height: the window in CSS pixels (the picture's size unless ``full_page``).
        full_page: render in a :data:`FULL_PAGE_HEIGHT` window and cut the blank bottom.
        browser: the browser executable; :func:`find_chromium` by default.

    Returns:
        ``png_path``.

    Raises:
        RenderError: no browser, or it wrote no picture (its stderr's last line says why).
    """
    browser = browser or find_chromium()
    if browser is None:
        raise RenderError("no Chromium on PATH (Debian: apt-get install -y chromium)")
    png_path = Path(png_path).resolve()
    png_path.parent.mkdir(parents=True, exist_ok=True)
    png_path.unlink(missing_ok=True)
    window_height = FULL_PAGE_HEIGHT if full_page else height
    with tempfile.TemporaryDirectory(prefix="ntk_lab_chromium_") as profile:
        command = [browser, *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
                   f"--screenshot={png_path}", f"--window-size={width},{window_height}",
                   Path(html_path).resolve().as_uri()]
        try:
            done = subprocess.run(command, capture_output=True, text=True,
                                  timeout=RENDER_TIMEOUT_S, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise RenderError(f"{browser} took longer than {RENDER_TIMEOUT_S} s") from None
    if not png_path.is_file() or png_path.stat().st_size == 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise RenderError(f"{browser} wrote no screenshot (exit {done.returncode}): {last}")
    if full_page:
        trim_blank_bottom(png_path)
    return png_path


def trim_blank_bottom(png_path: Path, margin: int = BLANK_MARGIN_PX) -> None:
    """Cut the white rows below the last non-white row, keeping ``margin`` of them."""
    from PIL import Image  # matplotlib's own dependency

    with Image.open(png_path) as image:
        pixels = np.asarray(image.convert("RGB"))
        content = np.nonzero((pixels < WHITE_LEVEL).any(axis=(1, 2)))[0]
        bottom = min(len(pixels), (int(content[-1]) + 1 if len(content) else 0) + margin)
        cropped = image.crop((0, 0, image.width, max(bottom, 1)))
        cropped.load()
    cropped.save(png_path)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ntk_lab.analysis.render",
                                     description="Render an HTML report to a full-page PNG.")
    parser.add_argument("html", type=Path)
    parser.add_argument("png", type=Path)
    parser.add_argument("--width", type=int, default=WINDOW_WIDTH)
    args = parser.parse_args(argv)
    if not args.html.is_file():
        print(f"render: error: {args.html} is not a file", file=sys.stderr)
        return 2
    try:
        render_png(args.html, args.png, width=args.width, full_page=True)
    except RenderError as err:
        print(f"render: error: {err}", file=sys.stderr)
        return 1
    print(f"rendered: {args.png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
