"""Θ_t and the Jacobian change on a fixed probe set, checkpoint after checkpoint, computed once.

A run measures, at every checkpoint t, the empirical NTK Θ_t on the probe inputs and
``jac_change`` = ‖J_t − J_0‖_F / ‖J_0‖_F (docs/conventions.md). Both come from the same per-layer
quantities when every layer of the network has the structured factorization (MLP, CNN, ResMLP,
or a user's module of Linear / Conv layers): the layer inputs or patches u and output
sensitivities δ on the probe set (:mod:`ntk_lab.kernels.structured`). So a checkpoint costs
ONE features pass of θ_t:

    Θ_t           = Σ_l Σ_{p,q} (m_W² u_t u_tᵀ + m_b²) ⊙ (δ_t δ_tᵀ)        (Gram or explicit form)
    ‖J_t − J_0‖²  = Σ_i Σ_l ‖m_W Σ_p (δ_t⊗u_t − δ_0⊗u_0)‖² + ‖m_b Σ_p (δ_t − δ_0)‖²

with the step-0 features (u_0, δ_0) kept from the first call. No frozen copy of θ_0 and no
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
    AffineFactors, factor_bytes_per_sample, fully_structured, jacobian_sq_distance_from_factors,
    jacobian_sq_norms, kernel_from_factors, model_factors,
)


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
        self.features_0: Optional[list[Optional[AffineFactors]]] = None
        self.model_0: Optional[nn.Module] = None
        self._started = False
        self.fused = not self.needs_initial_copy(model, x_probe, method, memory_budget_bytes)

    @staticmethod
    def needs_initial_copy(model: nn.Module, x_probe: Tensor, method: str,
                           memory_budget_bytes: int) -> bool:
        """Whether tracking ``jac_change`` keeps a frozen copy of θ_0 (the memory estimate's
        question): everywhere but the fused structured path."""
        if resolve_method(model, x_probe, None, method) != "structured" or not fully_structured(model):
            return True
        per_sample = factor_bytes_per_sample(model, x_probe)
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
        # the factors are captured on the whole module, so an α-scaled output's α is in δ
        with full_fp32_precision():
            feats = model_factors(model, self.x)
            if self.keep_layers:  # the same Gram products, kept per layer, then summed
                self.theta_layers = torch.stack(
                    [symmetric_kernel_from_features([f], self.budget // 2) for f in feats])
                theta = self.theta_layers.sum(0)
            else:
                theta = symmetric_kernel_from_features(feats, self.budget // 2)
            if not self.track_jacobian:
                return theta, None
            if first:
                self.features_0 = feats
                self.norms_0 = jacobian_sq_norms(feats)  # ‖J_0‖² per layer, once
                return theta, 0.0
            dist2, norm2 = jacobian_sq_distance_from_factors(feats, self.features_0, self.norms_0)
        return theta, (max(dist2, 0.0) / norm2) ** 0.5 if norm2 > 0 else float("nan")



def symmetric_kernel_from_features(feats: list[Optional[AffineFactors]], budget_bytes: int = 1 << 30) -> Tensor:
    """Θ(x, x) (N, N) in trace mode from one factor list. Each layer computes only what the
    symmetry needs: the Gram form its blocks on and above the diagonal
    (:data:`ntk_lab.kernels.structured_contraction.SYMMETRIC_BLOCK` rows, mirrored), the explicit form
    its J Jᵀ from the upper block triangle."""
    return kernel_from_factors(feats, feats, "trace", budget_bytes, same=True)
