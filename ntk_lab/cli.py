"""What the command lines share: where the configs are, the one-line check of a command
line's overrides before Hydra composes them, and the one-line error exit.

``run.py``, ``coord_check.py`` and ``fluctuations.py`` are Hydra entry points; each calls
:func:`check_command_line` first, so a typo in a group option or a key gets one line and exit
code 2 instead of Hydra's multi-line composition error.
"""

from __future__ import annotations

import signal
import sys
import time
from importlib import resources
from pathlib import Path
from typing import Any, NoReturn, Optional, Sequence

import yaml
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from ntk_lab.config import STUDY_BLOCKS, ConfigError
from ntk_lab.data import DataError
from ntk_lab.study import run_study
from ntk_lab.training.loop import Interrupted


class StopOnSignal:
    """SIGINT / SIGTERM (Ctrl-C, Slurm preemption) stop the run wherever it is: the handler
    raises :class:`Interrupted`, which the runner turns into an ``interrupted`` run with its
    files intact, and the process exits with 128 + the signal's number (130, 143)."""

    def __init__(self) -> None:
        self.signal: Optional[int] = None

    def __call__(self) -> bool:
        return self.signal is not None

    def install(self) -> None:
        def handler(signum, _frame):
            self.signal = signum
            raise Interrupted(signum)

        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                signal.signal(sig, handler)
            except ValueError:  # not the main thread (some launchers): keep the defaults
                pass


def config_dir() -> str:
    """configs/ shipped inside the package (a wheel), else the repo's top-level configs/."""
    try:
        packaged = resources.files("ntk_lab.configs")
        if packaged.joinpath("config.yaml").is_file():
            return str(packaged)
    except (ModuleNotFoundError, TypeError):
        pass
    return str(Path(__file__).resolve().parent.parent / "configs")


def exit_with_error(message: str) -> NoReturn:
    """A user error: one line on stderr, exit code 2, no traceback."""
    print(f"ntk_lab: error: {message}", file=sys.stderr)
    sys.exit(2)


def check_command_line(argv: Sequence[str]) -> None:
    """Exit with one line if ``argv`` names an unknown group option, key or study setting."""
    directory = Path(config_dir())
    problem = check_overrides(list(argv), directory) or unknown_study_key(argv, directory)
    if problem:
        exit_with_error(problem)


def execute_study(preset: str, cfg: DictConfig) -> None:
    """Run study ``preset`` on the composed config into Hydra's output folder (one line on a
    user error, exit code 2)."""
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    plain = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    started = time.time()
    StopOnSignal().install()
    try:
        report = run_study(preset, plain, out_dir)
    except (ConfigError, DataError) as err:
        exit_with_error(str(err))
    except Interrupted as stop:  # files the study wrote are whole (atomic writes)
        print(f"ntk_lab: interrupted by {stop.name}: {out_dir}", file=sys.stderr)
        sys.exit(128 + stop.signum)
    print(f"ntk_lab: ok ({time.time() - started:.0f} s): {report}")


def unknown_study_key(argv: Sequence[str], config_dir: Path) -> Optional[str]:
    """The one-line error for an override of a study block's key that the block does not
    have (``fluctuations.nseeds=…``), else None; Hydra would answer it in several lines."""
    for preset, block in STUDY_BLOCKS.items():
        content = yaml.safe_load((config_dir / "experiment" / f"{preset}.yaml").read_text())
        known = sorted((content or {}).get(block) or {})
        for arg in argv:
            key = arg.split("=", 1)[0].lstrip("+~")
            if "=" in arg and key.startswith(f"{block}.") and key[len(block) + 1:] not in known:
                return f"{key} is not a setting; {block} has: {', '.join(known)}"
    return None


# Config groups whose option a user picks on the command line (`data=digits`); an unknown option
# is reported here in one line, before Hydra would print a multi-line composition error.
_USER_GROUPS = ("model", "data", "train", "ntk", "lazy", "logger", "optim", "experiment")


def _yaml_keys(path: Path) -> set[str]:
    content = yaml.safe_load(path.read_text()) or {}
    return {k for k in content if k not in ("defaults", "hydra")}


def check_overrides(argv: list[str], config_dir: Path) -> Optional[str]:
    """The one-line error for the first override naming an unknown option or key, or None.

    ``group=option`` (comma-separated sweep values each checked) must name a file of the
    group; ``group.key=value`` a key that some option of the group has (any ``model.*`` key
    with ``model=custom``: the custom module receives it); ``key=value`` a
    top-level key of config.yaml. Hydra's own keys (``hydra.*``) are left to Hydra.
    """
    top_level = _yaml_keys(config_dir / "config.yaml")
    # a custom module takes any further model.* key (passed to its builder as a keyword)
    custom = any(a.lstrip("+~") in ("model=custom",) for a in argv)
    for arg in argv:
        if arg.startswith("-") or "=" not in arg:
            continue
        key, value = arg.split("=", 1)
        key = key.lstrip("+~")
        group, _, sub = key.partition(".")
        if group == "hydra" or group.startswith("hydra/"):
            continue
        if group in _USER_GROUPS and not sub:
            allowed = sorted(p.stem for p in (config_dir / group).glob("*.yaml"))
            for option in value.split(","):
                if value not in ("", "null") and option.strip() not in allowed:
                    return f"{group}={option.strip()!r} is invalid: allowed: {', '.join(allowed)}"
        elif group in _USER_GROUPS and group != "experiment":
            if group == "model" and custom:
                continue
            known = set().union(*(_yaml_keys(p) for p in (config_dir / group).glob("*.yaml")))
            if sub not in known:
                return f"{key} is not a setting; {group} has: {', '.join(sorted(known))}"
            problem = None if arg.startswith("+") else _key_of_another_option(
                group, sub, argv, config_dir)  # `+group.key=` adds a key on purpose
            if problem:
                return problem
        elif not sub and group not in top_level:
            return f"{key} is not a setting; top-level keys: {', '.join(sorted(top_level))}"
    return None


def _key_of_another_option(group: str, key: str, argv: list[str], config_dir: Path) -> Optional[str]:
    """The error for ``group.key`` when the group's chosen option lacks ``key`` (it belongs to
    another option: ``logger.tracking_uri`` without ``logger=mlflow``), else None.

    The chosen option is the command line's ``group=option``, else the chosen preset's
    ``override /group: option``, else config.yaml's default; a swept option is not checked.
    """
    chosen = _chosen_options(argv, config_dir)
    option = chosen.get(group)
    path = config_dir / group / f"{option}.yaml"
    if not option or not path.is_file() or key in _yaml_keys(path):
        return None
    # config.yaml or the preset (both `_global_`) may set the key under the group themselves
    for extra in (config_dir / "config.yaml",
                  config_dir / "experiment" / f"{chosen.get('experiment')}.yaml"):
        if extra.is_file() and key in _group_section(extra, group):
            return None
    owners = sorted(p.stem for p in (config_dir / group).glob("*.yaml") if key in _yaml_keys(p))
    return (f"{group}.{key} is not a setting of {group}={option}; it belongs to "
            f"{' or '.join(f'{group}={o}' for o in owners)} (choose one on the command line)")


def _group_section(path: Path, group: str) -> dict:
    section = (yaml.safe_load(path.read_text()) or {}).get(group)
    return section if isinstance(section, dict) else {}


def _chosen_options(argv: list[str], config_dir: Path) -> dict[str, str]:
    """Group -> option as the command line, the chosen preset and config.yaml's defaults pick
    it (in that order of precedence); groups swept over several options are left out."""
    def entries(path: Path) -> dict[str, Any]:
        found = {}
        for entry in (yaml.safe_load(path.read_text()) or {}).get("defaults") or []:
            if isinstance(entry, dict):
                for name, option in entry.items():
                    found[str(name).replace("override", "").strip().strip("/")] = option
        return found

    chosen = {g: o for g, o in entries(config_dir / "config.yaml").items() if g in _USER_GROUPS}
    typed: dict[str, Optional[str]] = {}
    for arg in argv:
        name, _, value = arg.partition("=")
        name = name.lstrip("+~")
        if name in _USER_GROUPS and "=" in arg:
            typed[name] = None if "," in value else value
    preset = typed.get("experiment", chosen.get("experiment"))
    if preset and (config_dir / "experiment" / f"{preset}.yaml").is_file():
        chosen.update({g: o for g, o in entries(config_dir / "experiment" / f"{preset}.yaml")
                       .items() if g in _USER_GROUPS})
    chosen.update(typed)
    return {g: str(o) for g, o in chosen.items() if o is not None}
