"""The device a run uses, from the ``device`` setting and the sweep's job number."""

from __future__ import annotations

from typing import Optional

import torch

from ntk_lab.config.schema import ConfigError


def resolve_device(name: str, job_num: Optional[int] = None,
                   gpu_count: Optional[int] = None) -> torch.device:
    """The device a run uses.

    ``auto`` -> CUDA when available, else CPU. In a sweep (``job_num`` given: Hydra's job
    number) on a node with k ≥ 2 visible GPUs, ``auto`` puts job j on ``cuda:(j mod k)``, so
    parallel jobs (``hydra/launcher=local_parallel``) spread over the node's GPUs; under
    Slurm each job usually sees only its own GPU (k = 1) and takes ``cuda:0``. An explicit
    CUDA device must exist.

    Args:
        name: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        job_num: the job's number within a multirun, None for a single run.
        gpu_count: visible GPUs (default ``torch.cuda.device_count()``; tests stub it).
    """
    count = torch.cuda.device_count() if gpu_count is None else gpu_count
    if name == "auto":
        if count == 0 or (gpu_count is None and not torch.cuda.is_available()):
            return torch.device("cpu")
        if job_num is not None and count > 1:
            return torch.device("cuda", job_num % count)
        return torch.device("cuda")
    if name.startswith("cuda"):
        if count == 0 or (gpu_count is None and not torch.cuda.is_available()):
            raise ConfigError(f"device={name!r} is invalid: CUDA is not available here; allowed: auto, cpu")
        index = int(name.split(":")[1]) if ":" in name else 0
        if index >= count:
            raise ConfigError(f"device={name!r} is invalid: this machine has {count} GPU(s); "
                              f"allowed: auto, cpu, cuda:0 … cuda:{count - 1}")
    return torch.device(name)
