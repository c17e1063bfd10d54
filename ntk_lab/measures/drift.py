"""Drift and convergence metrics (docs/conventions.md, *Metrics*). Pure functions: tensors in,
floats out.

κ, the kernel distance and the distance to Θ_∞ are reduced in float64 in row blocks: a small
relative change of a float32 kernel is not lost to rounding, and a large probe kernel is never
copied whole to float64. The parameter changes are per-tensor sums (see
:func:`squared_distances`).
"""

from __future__ import annotations

import math
from typing import Mapping

import torch
from torch import Tensor


def _f64(t: Tensor) -> Tensor:
    return t.detach().to(torch.float64)


# Rows of a kernel converted to float64 at a time by the blockwise reductions below: one pass
# over the (float32) kernel, 256 × N float64 in flight, no N × N float64 copy (at N = 4096 the
# geometry columns are memory-bound, and a copy is 134 MB).
ROW_BLOCK = 256


def _row_blocks(n: int) -> list[slice]:
    return [slice(i, min(i + ROW_BLOCK, n)) for i in range(0, n, ROW_BLOCK)]


def relative_distance(a: Tensor, b: Tensor, norm_b: float | None = None) -> float:
    """‖a − b‖_F / ‖b‖_F in one blockwise float64 pass over both.

    Args:
        a, b: (N, N), any dtypes.
        norm_b: ‖b‖_F if already known (a step-0 reference), else computed here.

    Returns:
        The ratio, NaN when ‖b‖ = 0.
    """
    diff, norm = 0.0, 0.0
    for rows in _row_blocks(a.shape[0]):
        block_a = _f64(a[rows])
        block_b = _f64(b[rows]).to(block_a.device)  # Θ_0 may be kept on another device
        diff += (block_a - block_b).pow(2).sum().item()
        if norm_b is None:
            norm += block_b.pow(2).sum().item()
    norm_b = math.sqrt(norm) if norm_b is None else norm_b
    return math.sqrt(diff) / norm_b if norm_b > 0 else float("nan")


def frobenius_norm(a: Tensor) -> float:
    """‖a‖_F in one blockwise float64 pass."""
    return math.sqrt(sum(_f64(a[rows]).pow(2).sum().item() for rows in _row_blocks(a.shape[0])))


def cosine_distance(a: Tensor, b: Tensor) -> float:
    """1 − ⟨a, b⟩_F/(‖a‖_F‖b‖_F) in one blockwise float64 pass (no N × N float64 copies).

    Clamped at 0: for a = b the cosine rounds to 1 + ε and the distance to about −1e-15.
    NaN when a norm is 0.
    """
    dot, norm_a, norm_b = 0.0, 0.0, 0.0
    for rows in _row_blocks(a.shape[0]):
        block_a = _f64(a[rows])
        block_b = _f64(b[rows]).to(block_a.device)
        dot += (block_a * block_b).sum().item()
        norm_a += block_a.pow(2).sum().item()
        norm_b += block_b.pow(2).sum().item()
    denom = math.sqrt(norm_a * norm_b)
    return max(0.0, 1.0 - dot / denom) if denom > 0 else float("nan")


def kernel_velocity(theta_t: Tensor, theta_prev: Tensor, dt: float) -> float:
    """kernel_distance(Θ_t, Θ_prev) / dt (Fort et al. 2020, "kernel velocity").

    Args:
        theta_t, theta_prev: (N, N) kernels at two consecutive checkpoints.
        dt: their time difference t − s (time = η·step), > 0.
    """
    if not dt > 0:
        raise ValueError(f"kernel_velocity needs a positive time difference, got {dt}")
    return cosine_distance(theta_t, theta_prev) / dt


def kappa(theta_t: Tensor, theta_0: Tensor) -> float:
    """Relative kernel change κ = ‖Θ_t − Θ_0‖_F / ‖Θ_0‖_F (NaN when Θ_0 = 0)."""
    return relative_distance(theta_t, theta_0)


def kernel_distance(theta_t: Tensor, theta_0: Tensor) -> float:
    """1 − ⟨Θ_t, Θ_0⟩_F / (‖Θ_t‖_F ‖Θ_0‖_F) (Fort et al. 2020): change of the kernel's direction."""
    return cosine_distance(theta_t, theta_0)


def ntk_err_inf(theta_t: Tensor, theta_inf: Tensor) -> float:
    """Distance to the infinite-width kernel, ‖Θ_t − Θ_∞‖_F / ‖Θ_∞‖_F."""
    return relative_distance(theta_t, theta_inf)


def param_change(params_t: Mapping[str, Tensor], params_0: Mapping[str, Tensor]) -> float:
    """‖θ_t − θ_0‖ / ‖θ_0‖ over all the given parameter tensors together."""
    num = sum(squared_distances(params_t, params_0).values())
    den = sum(squared_norms(params_0).values())
    return (num / den) ** 0.5 if den > 0 else float("nan")


def squared_norms(params: Mapping[str, Tensor]) -> dict[str, float]:
    """‖p‖² of each tensor (float64 accumulation)."""
    return {k: v.detach().double().pow(2).sum().item() for k, v in params.items()}


def squared_distances(params_t: Mapping[str, Tensor], params_0: Mapping[str, Tensor]) -> dict[str, float]:
    """‖p_t − p_0‖² of each tensor named in ``params_0``, in one pass over the parameters.

    The difference is taken in the parameters' dtype (as the optimizer applied it) and squared
    in place; torch's pairwise (cascade) summation keeps the float32 sum's relative error near
    1e-7 (measured at 16M entries), far below any change worth reporting, at a quarter of the
    memory traffic of a float64 copy. This is the hot part of a checkpoint at large width.
    """
    out = {}
    with torch.no_grad():
        for k, p0 in params_0.items():
            d = params_t[k].detach() - p0
            out[k] = d.mul_(d).sum().item()
    return out


def relative_change(squared_distance: float, squared_norm: float) -> float:
    """√(‖Δ‖² / ‖θ_0‖²) from summed squares; NaN when θ_0 = 0."""
    return (squared_distance / squared_norm) ** 0.5 if squared_norm > 0 else float("nan")
