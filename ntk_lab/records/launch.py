"""How a sweep was launched, read back from what Hydra recorded beside its runs.

A multirun folder holds ``multirun.yaml`` (the sweep's composed config with ``hydra.overrides``,
``hydra.sweeper.params`` and ``hydra.runtime``); a single run folder holds
``.hydra/hydra.yaml``. From either, :func:`read_launch` rebuilds the command a user typed, the
grid a preset swept and the config-group choices, for the reports and the MLflow parent run.
Plain YAML reading: no Hydra object is composed here.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

MULTIRUN_FILE = "multirun.yaml"
RUN_HYDRA_FILE = Path(".hydra") / "hydra.yaml"
ENTRY_POINT = "python -m ntk_lab.run"

# Hydra records the mode (RUN, MULTIRUN) as an override of its own; the command shows `-m`.
_MODE_OVERRIDE = "hydra.mode="


@dataclass(frozen=True)
class Launch:
    """What Hydra recorded about how a sweep (or a single run) was started.

    Attributes:
        source: the file read, relative to the analysed folder (``multirun.yaml``).
        multirun: whether it was a ``-m`` sweep.
        overrides: the command-line overrides, in the order typed.
        grid: the preset's ``hydra.sweeper.params`` (key -> comma-separated values).
        choices: the config-group options used (``data: circle``, ``experiment: …``),
            Hydra's own groups left out.
        cwd: the folder the command ran from.
        hydra_version: Hydra's version.
    """

    source: str
    multirun: bool
    overrides: tuple[str, ...]
    grid: dict[str, str] = field(default_factory=dict)
    choices: dict[str, str] = field(default_factory=dict)
    cwd: str = ""
    hydra_version: str = ""

    @property
    def command(self) -> str:
        """The command line that starts this sweep again (shell-quoted)."""
        flag = ["-m"] if self.multirun else []
        return " ".join([ENTRY_POINT, *flag, *(shlex.quote(o) for o in self.overrides)])


def read_launch(root: Path) -> Optional[Launch]:
    """The launch record of the sweep or run folder ``root``, or None when Hydra left none
    (a folder assembled by hand) or it cannot be read."""
    root = Path(root)
    for name, multirun in ((MULTIRUN_FILE, True), (RUN_HYDRA_FILE, False)):
        path = root / name
        if not path.is_file():
            continue
        try:
            content = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError):
            return None
        hydra = content.get("hydra") if isinstance(content, dict) else None
        if isinstance(hydra, dict):
            return _from_hydra(hydra, Path(name).as_posix(), multirun)
        return None
    return None


def _from_hydra(hydra: dict[str, Any], source: str, multirun: bool) -> Launch:
    overrides = _dict(hydra.get("overrides"))
    typed = [*_strings(overrides.get("task")), *_strings(overrides.get("hydra"))]
    runtime = _dict(hydra.get("runtime"))
    choices = {str(k): str(v) for k, v in _dict(runtime.get("choices")).items()
               if v is not None and not str(k).startswith("hydra/")}
    grid = {str(k): str(v) for k, v in _dict(_dict(hydra.get("sweeper")).get("params")).items()}
    return Launch(
        source=source, multirun=multirun,
        overrides=tuple(o for o in typed if not o.startswith(_MODE_OVERRIDE)),
        grid=grid, choices=dict(sorted(choices.items())), cwd=str(runtime.get("cwd") or ""),
        hydra_version=str(runtime.get("version") or ""),
    )


def _dict(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def _strings(value: Any) -> list[str]:
    return [str(v) for v in value] if isinstance(value, list) else []
