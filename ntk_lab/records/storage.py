"""Which probe kernels a run keeps in ``kernels.pt``, and in which dtype: the storage policy.

Metrics are always computed from the full kernels in the run's precision; this module only
decides what is *kept* (in memory until the end of the run, then on disk). A probe kernel is
(N, N) for N = ``data.n_probe``, so at N = 4096 one float32 matrix is 64 MiB and a run with 21
checkpoints would write 1.4 GB if it kept them all.

Levels (``ntk.store``):

| level  | Θ_t kept                 | Θ_∞ | NNGP_∞ |
| ------ | ------------------------ | --- | ------ |
| all    | every checkpoint          | yes | yes    |
| ends   | the first and the last    | yes | no     |
| none   | none                      | no  | no     |

``auto`` (the default) takes the first of all, ends, none whose file fits in
``ntk.store_max_mb`` (256 MB), trying each level first in the computed dtypes (Θ_t in the
run's precision, Θ_∞ and NNGP_∞ in float64) and then in float32. ``ntk.store_dtype``
(``auto`` | ``float32`` | ``float64``) forces one dtype for every stored kernel. An explicit
level is honoured whatever its size (the user asked for it). The probe inputs, the
checkpoint steps and the small per-checkpoint arrays are always kept.

Examples: the default run (N = 64, 21 checkpoints) keeps ``all`` in the computed dtypes
(0.4 MB); N = 4096 keeps ``ends`` in float32 (3 × 64 MiB = 201 MB).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

STORE_LEVELS = ("auto", "all", "ends", "none")
STORE_DTYPES = ("auto", "float32", "float64")
DEFAULT_STORE_MAX_MB = 256

_DTYPES = {"float32": torch.float32, "float64": torch.float64}
_BYTES = {torch.float32: 4, torch.float64: 8}


@dataclass(frozen=True)
class StoragePlan:
    """What the run keeps.

    Attributes:
        level: "all", "ends" or "none" (never "auto": the plan has resolved it).
        theta_dtype: dtype of the stored Θ_t (None: as computed).
        limit_dtype: dtype of the stored Θ_∞ / NNGP_∞ (None: as computed, float64).
        bytes: the planned size of the stored kernels.
    """

    level: str
    theta_dtype: Optional[torch.dtype]
    limit_dtype: Optional[torch.dtype]
    bytes: int

    @property
    def keeps_limits(self) -> bool:
        """Θ_∞ is stored (all and ends)."""
        return self.level in ("all", "ends")

    @property
    def keeps_nngp(self) -> bool:
        return self.level == "all"

    def thetas_kept(self, n_checkpoints: int) -> int:
        """How many Θ_t matrices are held at most (memory estimate)."""
        return {"all": n_checkpoints, "ends": min(2, n_checkpoints), "none": 0}[self.level]

    def cast_theta(self, theta: torch.Tensor) -> torch.Tensor:
        return theta if self.theta_dtype is None else theta.to(self.theta_dtype)

    def cast_limit(self, kernel: torch.Tensor) -> torch.Tensor:
        return kernel if self.limit_dtype is None else kernel.to(self.limit_dtype)


def _level_bytes(level: str, n_probe: int, n_checkpoints: int, theta_bytes: int,
                 limit_bytes: int) -> int:
    matrix = n_probe * n_probe
    thetas = {"all": n_checkpoints, "ends": min(2, n_checkpoints), "none": 0}[level]
    limits = {"all": 2, "ends": 1, "none": 0}[level]
    return matrix * (thetas * theta_bytes + limits * limit_bytes)


def plan_storage(n_probe: int, n_checkpoints: int, precision: torch.dtype, *, store: str = "auto",
                 store_dtype: str = "auto", max_mb: int = DEFAULT_STORE_MAX_MB) -> StoragePlan:
    """Resolve ``ntk.store`` / ``ntk.store_dtype`` for a run (see the module docstring).

    Args:
        n_probe: N, the probe set's size.
        n_checkpoints: K, the number of checkpoint steps.
        precision: the dtype Θ_t is computed in (float32 or float64).
        store: "auto", "all", "ends" or "none".
        store_dtype: "auto", "float32" or "float64".
        max_mb: the cap ``auto`` keeps the stored kernels under (MB = 10⁶ bytes).
    """
    if store not in STORE_LEVELS:
        raise ValueError(f"unknown store level {store!r}; known: {', '.join(STORE_LEVELS)}")
    if store_dtype not in STORE_DTYPES:
        raise ValueError(f"unknown store dtype {store_dtype!r}; known: {', '.join(STORE_DTYPES)}")
    if store_dtype == "auto":
        candidates = [(None, None), (torch.float32, torch.float32)]
    else:
        forced = _DTYPES[store_dtype]
        candidates = [(forced, forced)]
    levels = ("all", "ends", "none") if store == "auto" else (store,)
    cap = max_mb * 10**6
    for level in levels:
        for theta_dtype, limit_dtype in candidates:
            size = _level_bytes(level, n_probe, n_checkpoints,
                                _BYTES[theta_dtype or precision], _BYTES[limit_dtype or torch.float64])
            if store != "auto" or size <= cap or level == "none":
                return StoragePlan(level, theta_dtype, limit_dtype, size)
    raise AssertionError("unreachable: 'none' always fits")
