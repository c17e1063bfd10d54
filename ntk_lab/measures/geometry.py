"""Kernel geometry: how a kernel lines up with the task and how its eigenspaces move.

Pure functions: tensors in, floats (or float64 tensors) out. Every reduction is done in
float64, in row blocks, as in :mod:`ntk_lab.measures.drift`, so that small changes of a
float32 kernel survive and a large probe kernel is never copied whole to float64.

| name | definition |
| --- | --- |
| ``alignment`` | A(K, Y) = ⟨HKH, HYH⟩_F / (‖HKH‖_F ‖HYH‖_F), H = I − 11ᵀ/N, Y = y yᵀ (Cortes, Mohri & Rostamizadeh 2012) |
| ``eff_rank`` | exp(−Σ p_i log p_i), p = λ/Σλ (Roy & Vetterli 2007) |
| ``top_eig_share`` | λ_max / Σλ |
| ``eig_overlap`` | ‖U_aᵀ U_b‖²_F / k for the top-k eigenvectors U (N, k) of two kernels |
| ``target_power_topk`` | ‖U_kᵀ y‖²_F / ‖y‖²_F: the share of the targets in the top-k eigenspace |
| ``kernel_velocity`` | kernel_distance(Θ_t, Θ_s) / (t − s) between consecutive checkpoints (Fort et al. 2020) |
| ``conjugate_kernel`` | σ_w² Φ Φᵀ / n + σ_b², Φ (N, n) the readout's input features |

``relative_distance``, ``cosine_distance`` and ``kernel_velocity`` live in
:mod:`ntk_lab.measures.drift` (κ and the kernel distance) and are importable from here too.

Eigenvalues are sorted in decreasing order. The top-k eigenspace is well defined only when
λ_k > λ_{k+1}; with a tie at the boundary the overlaps depend on which of the tied vectors
``torch.linalg.eigh`` returns (a finite network's kernel has no exact ties).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

# The drift measures are part of the geometry's vocabulary (kernel_velocity is a column of it).
from ntk_lab.measures.drift import (  # noqa: F401
    ROW_BLOCK, _f64, _row_blocks, cosine_distance, frobenius_norm, kernel_velocity,
    relative_distance,
)


def _as_targets(y: Tensor) -> Tensor:
    """Targets as a float64 matrix (N, O); a vector (N,) is one column."""
    y = _f64(y)
    return y.unsqueeze(1) if y.dim() == 1 else y


def center_kernel(kernel: Tensor) -> Tensor:
    """HKH with H = I − 11ᵀ/N, in float64: K minus its row and column means plus its mean.

    Args:
        kernel: (N, N).

    Returns:
        (N, N) float64, a new tensor.
    """
    k = kernel.detach().to(torch.float64, copy=True)
    rows, cols, mean = k.mean(dim=1, keepdim=True), k.mean(dim=0, keepdim=True), k.mean()
    return k.sub_(rows).sub_(cols).add_(mean)


def centered_alignment(kernel: Tensor, targets: Tensor) -> float:
    """Centered kernel-target alignment (Cortes, Mohri & Rostamizadeh 2012, Def. 4).

        A(K, Y) = ⟨HKH, HYH⟩_F / (‖HKH‖_F ‖HYH‖_F),   Y = y yᵀ,   H = I − 11ᵀ/N.

    Computed without forming HKH, in one blockwise float64 pass over K. With y_c = Hy,
    r = K1, c = Kᵀ1 and s = 1ᵀK1 (H is a projection, ‖AH‖² = ‖A‖² − ‖A1‖²/N):

        ⟨HKH, HYH⟩_F = tr(y_cᵀ K y_c),   ‖HYH‖_F = ‖y_cᵀ y_c‖_F  (O × O),
        ‖HKH‖²_F = ‖K‖²_F − ‖r‖²/N − ‖c‖²/N + s²/N².

    The subtraction loses ~‖K‖²/‖HKH‖² ulps of float64 — 1e-14 relative when the constant
    part of K is a hundred times its centered part. A lies in [−1, 1] (in [0, 1] for a
    positive semi-definite K).

    Args:
        kernel: (N, N) kernel on the probe inputs.
        targets: (N,) or (N, O) targets of the same inputs; with several outputs
            Y = y yᵀ = Σ_o y_o y_oᵀ.

    Returns:
        A, or NaN when HKH or HYH vanishes (a constant kernel or constant targets).
    """
    n = kernel.shape[0]
    y = _as_targets(targets).to(kernel.device)
    if y.shape[0] != n or kernel.shape != (n, n):
        raise ValueError(f"targets have {y.shape[0]} rows, the kernel is {tuple(kernel.shape)}")
    yc = y - y.mean(dim=0, keepdim=True)  # H y
    square, inner = 0.0, 0.0
    row_sums, col_sums = [], torch.zeros(n, dtype=torch.float64, device=kernel.device)
    for rows in _row_blocks(n):
        block = _f64(kernel[rows])
        square += block.pow(2).sum().item()
        row_sums.append(block.sum(dim=1))
        col_sums += block.sum(dim=0)
        inner += (yc[rows] * (block @ yc)).sum().item()
    r = torch.cat(row_sums)
    total = r.sum().item()
    centered_sq = square - (r @ r).item() / n - (col_sums @ col_sums).item() / n + total**2 / n**2
    denom = math.sqrt(max(centered_sq, 0.0)) * torch.linalg.norm(yc.T @ yc).item()
    return inner / denom if denom > 0 else float("nan")


@dataclass(frozen=True)
class Spectrum:
    """Eigen-decomposition of a symmetric kernel, eigenvalues in decreasing order.

    Attributes:
        eigvals: (N,) float64, λ_1 ≥ … ≥ λ_N.
        eigvecs: (N, N) float64, column i the unit eigenvector of λ_i.
    """

    eigvals: Tensor
    eigvecs: Tensor

    def top(self, k: int) -> Tensor:
        """The top-k eigenvectors U_k (N, min(k, N))."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        return self.eigvecs[:, :k]


def spectrum(kernel: Tensor) -> Spectrum:
    """The eigen-decomposition of the symmetric part (K + Kᵀ)/2 of ``kernel`` in float64.

    Args:
        kernel: (N, N); symmetric up to round-off.
    """
    k = _f64(kernel)
    vals, vecs = torch.linalg.eigh(0.5 * (k + k.T))
    return Spectrum(vals.flip(0), vecs.flip(1))


def _distribution(eigvals: Tensor) -> Tensor:
    """p = λ⁺/Σλ⁺ with negative round-off eigenvalues clamped to 0; empty when Σλ⁺ = 0."""
    lam = _f64(eigvals).clamp_min(0.0)
    total = lam.sum()
    return lam / total if total > 0 else lam[:0]


def effective_rank(eigvals: Tensor) -> float:
    """exp of the Shannon entropy of p = λ/Σλ (Roy & Vetterli 2007).

    Equals r for r equal non-zero eigenvalues and 1 for a rank-one kernel. Eigenvalues below
    0 (round-off of a positive semi-definite kernel) count as 0, and 0·log 0 = 0.

    Args:
        eigvals: (N,) eigenvalues, any order.

    Returns:
        The effective rank in [1, N], NaN when every eigenvalue is ≤ 0.
    """
    p = _distribution(eigvals)
    if not len(p):
        return float("nan")
    p = p[p > 0]
    return math.exp(-(p * p.log()).sum().item())


def top_eig_share(eigvals: Tensor) -> float:
    """λ_max / Σλ (negative round-off eigenvalues counted as 0); NaN when Σλ⁺ = 0.

    Args:
        eigvals: (N,) eigenvalues, any order.
    """
    p = _distribution(eigvals)
    return p.max().item() if len(p) else float("nan")


def eigenspace_overlap(u_a: Tensor, u_b: Tensor) -> float:
    """‖U_aᵀ U_b‖²_F / k for two orthonormal bases of k-dimensional subspaces.

    The mean squared cosine of the principal angles between the subspaces: 1 when they
    coincide, 0 when they are orthogonal, k/N on average for random subspaces of R^N.

    Args:
        u_a, u_b: (N, k) with orthonormal columns (e.g. :meth:`Spectrum.top`).
    """
    if u_a.shape != u_b.shape:
        raise ValueError(f"subspace bases differ in shape: {tuple(u_a.shape)} vs {tuple(u_b.shape)}")
    a, b = _f64(u_a), _f64(u_b).to(u_a.device)
    return (a.T @ b).pow(2).sum().item() / a.shape[1]


def top_eigenspace_overlap(kernel_a: Tensor, kernel_b: Tensor, k: int) -> float:
    """:func:`eigenspace_overlap` of the top-k eigenvectors of two (N, N) kernels (k ≤ N used)."""
    return eigenspace_overlap(spectrum(kernel_a).top(k), spectrum(kernel_b).top(k))


def target_power_topk(u_k: Tensor, targets: Tensor) -> float:
    """‖U_kᵀ y‖²_F / ‖y‖²_F: the share of the targets' squared norm in span(U_k).

    Args:
        u_k: (N, k) orthonormal columns, the kernel's top-k eigenvectors.
        targets: (N,) or (N, O), not centered.

    Returns:
        A share in [0, 1]; NaN for zero targets.
    """
    y = _as_targets(targets).to(u_k.device)
    total = y.pow(2).sum().item()
    return (_f64(u_k).T @ y).pow(2).sum().item() / total if total > 0 else float("nan")


def conjugate_kernel(features: Tensor, w_std: float, b_std: float) -> Tensor:
    """The conjugate kernel σ_w² Φ Φᵀ / n + σ_b² of the readout's input features.

    This is the covariance of the readout's output over a fresh draw of its weights and
    bias, given the features, in the NTK parameterization. Its infinite-width limit is the
    NNGP Σ^{depth+1} of docs/conventions.md in every parameterization of the repo (their hidden
    layers have one distribution), so ‖CK_0 − NNGP_∞‖/‖NNGP_∞‖ measures the finite-width
    fluctuation of the features (Lee et al. 2018).

    Args:
        features: Φ (N, n), the last hidden layer's activations on N inputs.
        w_std, b_std: σ_w and σ_b of the network.

    Returns:
        (N, N) float64. The Gram product is taken in the features' dtype (the precision the
        NTK itself is computed in; a float64 product of float32 features would cost 2–4× as
        much at large N for no accuracy the features have) and then converted.
    """
    phi = features.detach()
    gram = _f64(phi @ phi.T)
    return float(w_std) ** 2 * gram / phi.shape[1] + float(b_std) ** 2


def trace_shares(theta_layers: Tensor) -> Tensor:
    """tr Θ_l / Σ_l tr Θ_l for per-layer kernels (L, N, N) -> (L,) float64 (NaN for 0)."""
    traces = _f64(theta_layers.diagonal(dim1=-2, dim2=-1)).sum(-1)
    total = traces.sum()
    return traces / total if total != 0 else torch.full_like(traces, float("nan"))
