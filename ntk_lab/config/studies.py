"""The settings of the two studies that are not training runs, checked like a run's.

A study reads the run-level settings (model, data, precision, device: :func:`validate`) and
its own block of the composed config: ``coord_check:`` (widths × parameterizations × seeds,
steps, lr) or ``fluctuations:`` (widths × depths, seeds per cell, input dimension). The
checkers are the run's own (:mod:`ntk_lab.config.validation`), so a bad value reads the same.
"""

from __future__ import annotations

from typing import Any, Mapping

from ntk_lab.config.schema import ConfigError, RunConfig
from ntk_lab.config.validation import _choice, _fail, _float, _int, validate
from ntk_lab.layers import PARAMETERIZATIONS

# The preset each study applies when no other experiment= is given (configs/experiment/).
COORD_CHECK_PRESET = "coord_check"
FLUCTUATIONS_PRESET = "depth_over_width"
# The block of the composed config that holds each study's grid.
STUDY_BLOCKS = {COORD_CHECK_PRESET: "coord_check", FLUCTUATIONS_PRESET: "fluctuations"}


def _block(plain: Mapping[str, Any], name: str, preset: str) -> Mapping[str, Any]:
    block = plain.get(name)
    if not isinstance(block, Mapping):
        raise ConfigError(f"{name} settings are missing: this study runs with "
                          f"experiment={preset} (the default) or a preset with a {name}: block")
    return block


def _int_list(key: str, value: Any, minimum: int) -> list[int]:
    """A non-empty list of integers ≥ minimum (a single integer is a list of one)."""
    if not isinstance(value, (list, tuple)):
        value = [value]
    if not value:
        raise _fail(key, value, f"must be a non-empty list of integers >= {minimum}, e.g. [16,32]")
    try:
        return [_int(key, v, minimum) for v in value]
    except ConfigError:
        raise _fail(key, value, f"must be a non-empty list of integers >= {minimum}, "
                                f"e.g. [16,32]") from None


def _choices(key: str, value: Any, allowed: tuple[str, ...]) -> list[str]:
    """A non-empty list of names from ``allowed`` (a single name is a list of one)."""
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, (list, tuple)) or not values:
        raise _fail(key, value, f"a non-empty list of {', '.join(allowed)}")
    try:
        return [_choice(key, v, allowed) for v in values]
    except ConfigError:
        raise _fail(key, value, f"a non-empty list of {', '.join(allowed)}") from None


# Each study block's keys and their checks: (full key, value) -> checked value.
COORD_CHECK_CHECKS = {
    "widths": lambda k, v: _int_list(k, v, 1),
    "parameterizations": lambda k, v: _choices(k, v, PARAMETERIZATIONS),
    "seeds": lambda k, v: _int_list(k, v, 0),
    "steps": lambda k, v: _int(k, v, 1),
    "lr": lambda k, v: _float(k, v, lambda x: x > 0, "must be a number > 0"),
}
FLUCTUATION_CHECKS = {
    "widths": lambda k, v: _int_list(k, v, 1),
    "depths": lambda k, v: _int_list(k, v, 1),
    "n_seeds": lambda k, v: _int(k, v, 2),
    "in_dim": lambda k, v: _int(k, v, 1),
}


def _study_settings(plain: Mapping[str, Any], preset: str, checks: Mapping) -> tuple[RunConfig, dict]:
    config = validate(plain)
    name = STUDY_BLOCKS[preset]
    block = _block(plain, name, preset)
    return config, {key: check(f"{name}.{key}", block.get(key)) for key, check in checks.items()}


def coord_check_settings(plain: Mapping[str, Any]) -> tuple[RunConfig, dict]:
    """The run-level settings and the ``coord_check:`` block, checked.

    Raises:
        ConfigError: one line naming the key and what is allowed.
    """
    return _study_settings(plain, COORD_CHECK_PRESET, COORD_CHECK_CHECKS)


def fluctuation_settings(plain: Mapping[str, Any]) -> tuple[RunConfig, dict]:
    """The run-level settings and the ``fluctuations:`` block, checked.

    Raises:
        ConfigError: one line naming the key and what is allowed.
    """
    return _study_settings(plain, FLUCTUATIONS_PRESET, FLUCTUATION_CHECKS)


def study_of(plain: Mapping[str, Any]) -> str | None:
    """The study preset whose block the composed settings hold (``coord_check`` or
    ``depth_over_width``), or None for a training run."""
    for preset, block in STUDY_BLOCKS.items():
        if isinstance(plain.get(block), Mapping):
            return preset
    return None
