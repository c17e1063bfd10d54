"""Command line of the coordinate check (Yang & Hu 2021; microsoft/mup's ``coord_check``).

    python -m ntk_lab.coord_check                                  # the coord_check preset
    python -m ntk_lab.coord_check coord_check.widths=[64,256,1024] coord_check.seeds=[0] lr=0.5

A Hydra entry point over its own primary config (``configs/coord_check.yaml``: the run's
config with the ``coord_check`` preset), so the model, data, precision and device knobs are a
run's and ``hydra.run.dir`` sets the output folder. The study itself is
:mod:`ntk_lab.studies.coord_check`; its grid runner is :mod:`ntk_lab.study`.
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from ntk_lab.cli import check_command_line, config_dir, execute_study
from ntk_lab.config import COORD_CHECK_PRESET


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="coord_check")
def _hydra_main(cfg: DictConfig) -> None:
    execute_study(COORD_CHECK_PRESET, cfg)


def main() -> None:
    """``python -m ntk_lab.coord_check [overrides]``."""
    check_command_line(sys.argv[1:])
    _hydra_main()


def __getattr__(name: str):
    # The study's functions lived here before the package was grouped by role.
    from ntk_lab import _moved_attribute

    return _moved_attribute(__name__, "ntk_lab.studies.coord_check", name)


if __name__ == "__main__":
    main()
