"""Command line of the finite-width fluctuation study (Hanin & Nica 2019).

    python -m ntk_lab.fluctuations                                 # the depth_over_width preset
    python -m ntk_lab.fluctuations fluctuations.widths=[16,64] fluctuations.n_seeds=5000

A Hydra entry point over its own primary config (``configs/fluctuations.yaml``: the run's
config with the ``depth_over_width`` preset), so the model, precision and device knobs are a
run's and ``hydra.run.dir`` sets the output folder. The study itself is
:mod:`ntk_lab.studies.fluctuations`; its grid runner is :mod:`ntk_lab.study`.
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from ntk_lab.cli import check_command_line, config_dir, execute_study
from ntk_lab.config import FLUCTUATIONS_PRESET


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="fluctuations")
def _hydra_main(cfg: DictConfig) -> None:
    execute_study(FLUCTUATIONS_PRESET, cfg)


def main() -> None:
    """``python -m ntk_lab.fluctuations [overrides]``."""
    check_command_line(sys.argv[1:])
    _hydra_main()


def __getattr__(name: str):
    # The study's functions (ntk_diagonal_samples, moment_ratio, …) lived here before the
    # package was grouped by role.
    from ntk_lab import _moved_attribute

    return _moved_attribute(__name__, "ntk_lab.studies.fluctuations", name)


if __name__ == "__main__":
    main()
