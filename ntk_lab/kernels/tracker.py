"""Θ_t and the Jacobian change on a fixed probe set, checkpoint after checkpoint, computed once.

A run measures, at every checkpoint t, the empirical NTK Θ_t on the probe inputs and
``jac_change`` = ‖J_t − J_0‖_F / ‖J_0‖_F (DESIGN.md §2). Both come from the same per-layer
quantities when the network has the structured factorization (an MLP): the layer inputs h and
output sensitivities δ on the probe set. So a checkpoint costs ONE features pass of θ_t:

    Θ_t           = Σ_l (m_W² h_t h_tᵀ + m_b²) ⊙ (δ_t δ_tᵀ)          (Gram products)
    ‖J_t − J_0‖²  = Σ_i Σ_l ‖m_W(δ_t⊗h_t − δ_0⊗h_0)‖² + ‖m_b(δ_t − δ_0)‖²

with the step-0 features (h_0, δ_0) kept from the first call. No frozen copy of θ_0 and no
second features pass are needed. When the features of the whole probe set do not fit in half
the memory budget, Θ_t is computed in chunks (:func:`structured_ntk`) and the Jacobian change
recomputes the step-0 features chunk by chunk from a frozen copy of θ_0. Modules without the
factorization use :func:`empirical_ntk` and per-sample Jacobians against that frozen copy.
"""

from __future__ import annotations

import copy
from typing import Optional

import torch
from torch import Tensor, nn

from ntk_lab.kernels._common import DEFAULT_MEMORY_BUDGET_BYTES, full_fp32_precision
from ntk_lab.kernels.empirical import empirical_ntk, jacobian_change, resolve_method
from ntk_lab.kernels.structured import (
    LayerFeatures, feature_bytes_per_sample, jacobian_sq_distance_from_features,
    kernel_from_features, mlp_features,
)
from ntk_lab.models import unwrap_mlp


class ProbeKernelTracker:
    """Computes (Θ_t, jac_change) on ``x_probe`` for successive states of one network.

    The first call defines θ_0: its Θ is returned with ``jac_change`` 0, and what later calls
    need of it (features, or a frozen copy) is kept.

    Args:
        model: the network as it is at step 0 (later calls pass the same module, trained).
        x_probe: (N, …) probe inputs, on the model's device and dtype.
        method: empirical NTK method ("auto", "structured", "jacrev", "ntvp").
        memory_budget_bytes: cap on Jacobian-sized intermediates (features, per-sample
            Jacobians) held at once.
        jac_change: also compute ``jac_change``; False returns None for it and keeps nothing
            of θ_0.
        layers: on the fused structured path, also keep the last call's per-layer kernels
            ``theta_layers`` (L, N, N), whose sum is Θ — what the checkpoint geometry needs,
            without a second features pass (None on the other paths).
    """

    def __init__(self, model: nn.Module, x_probe: Tensor, *, method: str = "auto",
                 memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET_BYTES, jac_change: bool = True,
                 layers: bool = False):
        self.x = x_probe
        self.keep_layers = layers
        self.theta_layers: Optional[Tensor] = None
        self.method = resolve_method(model, x_probe, None, method)
        self.budget = memory_budget_bytes
        self.track_jacobian = jac_change
        self.features_0: Optional[list[LayerFeatures]] = None
        self.model_0: Optional[nn.Module] = None
        self._started = False
        mlp, _ = unwrap_mlp(model)
        self.fused = (self.method == "structured" and mlp is not None and
                      feature_bytes_per_sample(mlp, x_probe.element_size()) * len(x_probe)
                      <= memory_budget_bytes // 2)

    @staticmethod
    def needs_initial_copy(model: nn.Module, x_probe: Tensor, method: str,
                           memory_budget_bytes: int) -> bool:
        """Whether tracking ``jac_change`` keeps a frozen copy of θ_0 (the memory estimate's
        question): everywhere but the fused structured path."""
        mlp, _ = unwrap_mlp(model)
        if resolve_method(model, x_probe, None, method) != "structured" or mlp is None:
            return True
        per_sample = feature_bytes_per_sample(mlp, x_probe.element_size())
        return per_sample * len(x_probe) > memory_budget_bytes // 2

    def __call__(self, model: nn.Module) -> tuple[Tensor, Optional[float]]:
        """(Θ_t (N, N) trace mode in the model's dtype, jac_change or None)."""
        first = not self._started
        self._started = True
        if self.fused:
            return self._fused(model, first)
        theta = empirical_ntk(model, self.x, method=self.method, mode="trace",
                              memory_budget_bytes=self.budget)
        if not self.track_jacobian:
            return theta, None
        if first:
            self.model_0 = copy.deepcopy(model).requires_grad_(False)
            return theta, 0.0
        change = jacobian_change(model, self.model_0, self.x, method=self.method,
                                 memory_budget_bytes=self.budget)
        return theta, change

    def _fused(self, model: nn.Module, first: bool) -> tuple[Tensor, Optional[float]]:
        mlp, alpha = unwrap_mlp(model)
        with full_fp32_precision():
            feats = mlp_features(mlp, self.x)
            if self.keep_layers:  # the same Gram products, kept per layer, then summed
                self.theta_layers = torch.stack(
                    [symmetric_kernel_from_features([f]) for f in feats]).mul_(alpha**2)
                theta = self.theta_layers.sum(0)
            else:
                theta = symmetric_kernel_from_features(feats) * alpha**2
            if not self.track_jacobian:
                return theta, None
            if first:
                self.features_0 = feats
                return theta, 0.0
            dist2, norm2 = jacobian_sq_distance_from_features(feats, self.features_0)
        # α² multiplies both terms and cancels in the ratio
        return theta, (max(dist2, 0.0) / norm2) ** 0.5 if norm2 > 0 else float("nan")



SYMMETRIC_BLOCK = 512
"""Rows per block when Θ(x, x) is assembled from its upper-triangular blocks. The Gram
products cost N²·Σ(fan_in + O·fan_out) multiply-adds — at N = 4096 nearly all of a
checkpoint — and the blocks on and above the diagonal are 1/2 + 1/(2·blocks) of them
(56% at 8 blocks). 512 rows keep each block's matmuls large enough to run at full speed."""


def symmetric_kernel_from_features(feats: list[LayerFeatures]) -> Tensor:
    """Θ(x, x) (N, N) in trace mode from one features list, computing only the blocks on and
    above the diagonal and mirroring them (Θ is symmetric)."""
    n = feats[0].h.shape[0]
    if n < 2 * SYMMETRIC_BLOCK:
        return kernel_from_features(feats, feats, "trace")
    blocks = [slice(i, min(i + SYMMETRIC_BLOCK, n)) for i in range(0, n, SYMMETRIC_BLOCK)]
    part = lambda s: [LayerFeatures(f.h[s], f.delta[s], f.weight_multiplier,  # noqa: E731
                                    f.bias_multiplier) for f in feats]
    theta = feats[0].h.new_empty(n, n)
    for i, rows in enumerate(blocks):
        left = part(rows)
        for cols in blocks[i:]:
            block = kernel_from_features(left, left if cols == rows else part(cols), "trace")
            theta[rows, cols] = block
            if cols != rows:
                theta[cols, rows] = block.T
    return theta
