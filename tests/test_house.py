"""The house rules of docs/architecture.md, checked on the source: imports run one way (each
package imports only the packages below it, at module level or inside a function), files stay
small, and comments point at the repo's own docs rather than at documents a clone lacks."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "ntk_lab"

# What each room may import (besides itself and the package root's deprecation helper), as
# docs/architecture.md draws it. A top-level module not named here is a command line or a
# runner and may import anything below it.
MAY_IMPORT = {
    "records": set(),
    "layers": set(),
    "models": {"layers"},
    "kernels": {"layers", "models"},
    "data": {"models"},
    "dynamics": {"layers", "models", "kernels"},
    "measures": {"layers", "models", "kernels"},
    "training": {"layers", "models", "kernels", "data", "dynamics", "measures", "records"},
    "analysis": {"records"},
    "loggers": {"records"},
    "studies": {"layers", "models", "kernels", "data", "measures", "training", "records",
                "analysis"},
    "config": {"layers", "models", "kernels", "data", "dynamics", "measures", "training",
               "records", "loggers"},
    "examples": set(),
    "experiment": {"config", "layers", "models", "kernels", "data", "dynamics", "measures",
                   "training", "records", "analysis", "loggers"},
}
MAY_IMPORT["study"] = MAY_IMPORT["experiment"] | {"studies", "experiment"}
COMMAND_LINES = {"run", "analyze", "coord_check", "fluctuations", "cli"}

# The longest file a newcomer should have to read as one concept.
MAX_LINES = 450


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def _room(path: Path) -> str:
    """The package (or top-level module) a file belongs to: ``kernels``, ``run``, …"""
    parts = path.relative_to(PACKAGE).parts
    return parts[0] if len(parts) > 1 else parts[0][:-3]


def _imported_rooms(path: Path) -> set[tuple[str, int]]:
    """(room, line) of every ntk_lab import in the file, at any depth (functions included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] if node.module != "ntk_lab" else [
                f"ntk_lab.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "ntk_lab" and len(parts) > 1 and not parts[1].startswith("_"):
                found.add((parts[1], node.lineno))
    return found


def test_imports_run_one_way():
    wrong = []
    for path in _modules():
        room = _room(path)
        if room in COMMAND_LINES or room == "__init__":
            continue
        allowed = MAY_IMPORT[room] | {room}
        for target, line in sorted(_imported_rooms(path)):
            if target not in allowed:
                wrong.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports ntk_lab.{target}")
    assert not wrong, "imports that run back up:\n" + "\n".join(wrong)


def test_the_rule_table_knows_every_room():
    rooms = {_room(p) for p in _modules()} - {"__init__"}
    assert rooms <= set(MAY_IMPORT) | COMMAND_LINES, rooms - set(MAY_IMPORT) - COMMAND_LINES


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_files_stay_small(path):
    assert len(path.read_text().splitlines()) <= MAX_LINES


# A design file or an issue tracker that a clone of the repo does not have.
FOREIGN_REFERENCE = re.compile(r"DESIGN\.md|\bissue \d+|\bissues? #\d+|\.\./shared|COMMON\.md")


def test_comments_point_at_the_repo_docs():
    repo = PACKAGE.parent
    files = [repo / "README.md"] + [
        p for root in ("ntk_lab", "configs", "scripts", "docs", "experiments")
        for p in sorted((repo / root).rglob("*")) if p.suffix in (".py", ".yaml", ".sh", ".md")]
    hits = [f"{p.relative_to(repo)}:{i}" for p in files
            for i, line in enumerate(p.read_text().splitlines(), start=1)
            if FOREIGN_REFERENCE.search(line)]
    assert not hits, hits


def test_the_docs_the_code_points_at_exist():
    docs = PACKAGE.parent / "docs"
    cited = set()
    for path in _modules():
        cited.update(re.findall(r"docs/(\w+\.md)(?:, \*([^*]+)\*)?", path.read_text()))
    assert cited
    for name, section in cited:
        text = (docs / name).read_text()
        if section:
            assert re.search(rf"^#+ {re.escape(section)}\s*$", text, re.M), (name, section)
