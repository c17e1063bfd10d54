"""Θ_∞ of a network described by its settings: the question "what is this network's
infinite-width kernel?" answered next to the kernels (models never import kernels).
"""

from __future__ import annotations

from typing import Optional

import torch

from ntk_lab.kernels.analytic import infinite_width_kernels
from ntk_lab.models import NetworkSpec, build_network

NO_LIMIT_REASON = ("model=custom: a user's module has no known infinite-width limit, so Θ_∞ is NaN "
                   "and the metrics built on it (ntk_err_inf; inf_gap, test_loss_inf, "
                   "test_loss_kernel_regression with lazy.infinite_width) are NaN or not recorded")


def infinite_width_of(spec: NetworkSpec, x1: torch.Tensor, x2: Optional[torch.Tensor] = None):
    """(NNGP_∞, Θ_∞) float64 of the network ``spec`` describes between x1 and x2, or None for
    a custom module (no known limit: :data:`NO_LIMIT_REASON`).

    The MLP uses the keyword form of :func:`ntk_lab.kernels.infinite_width_kernels`; CNN and
    ResMLP are built on the ``meta`` device (no storage: their kernel maps need only the
    layers' coefficients) and their maps composed.
    """
    if spec.name == "custom":
        return None
    if spec.name == "mlp":
        return infinite_width_kernels(x1, x2, activation=spec.activation, depth=spec.depth,
                                      w_std=spec.w_std, b_std=spec.b_std,
                                      parameterization=spec.parameterization, width=spec.width)
    meta = torch.device("meta")
    with meta:
        net = build_network(spec, tuple(x1.shape[1:]), 1, seed=None, dtype=torch.float64, device=meta)
    return infinite_width_kernels(x1, x2, model=net)
