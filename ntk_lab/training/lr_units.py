"""Learning rates in units of the kernel's critical rate (``train.lr_unit``).

For full-batch gradient descent on L = 1/(2N) Σ_i ‖f(x_i) − y_i‖², linearized in function space,

    f_{t+1} − y = (I − η·s·Θ/N)(f_t − y),        s = the loss scale (1/α² for an α-scaled output),

so the dynamics are stable along every kernel eigendirection iff η < η_crit = 2/(s·λ_max(Θ_0/N)),
Θ_0 the empirical NTK on the training set at initialization. NTK papers quote learning rates in
this unit; Lewkowycz et al. 2020 ("The large learning rate phase of deep learning: the catapult
mechanism") find three phases in it: lazy below η_crit, the catapult between η_crit and η_max
(the loss spikes and λ_max falls until η·λ_max/N < 2), divergence above η_max (≈ 4/λ for a
wide linear two-layer net, about 12/λ for ReLU nets).

``lr_unit=crit`` reads ``lr`` as a multiple of η_crit; λ_max comes from power iteration with
NTK-vector products (:mod:`ntk_lab.measures.kernel_curvature`), never forming the N×N kernel.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ntk_lab.measures.kernel_curvature import top_kernel_eigenvalue

LR_UNITS = ("absolute", "crit")


def absolute_learning_rate(unit: str, lr: float, model: nn.Module, x_train: Tensor,
                           loss_scale: float = 1.0) -> tuple[float, dict[str, Any]]:
    """The learning rate the optimizer gets, and what summary.json records about it.

    Args:
        unit: ``absolute`` (``lr`` is used as it is) or ``crit`` (``lr`` × η_crit).
        lr: the configured learning rate (a multiple of η_crit under ``crit``).
        model: the network at initialization; x_train: (N, …) the full training set.
        loss_scale: s, the factor on the loss (1/α² under ``model.output_scale``=α).

    Returns:
        (η, notes): notes are empty for ``absolute``; for ``crit`` they hold ``eta_crit``,
        ``lambda_max_train_0`` = λ_max(Θ_0/N), ``lr_absolute`` = η and the power iteration's
        ``lambda_max_iterations`` and ``lambda_max_converged``.
    """
    if unit == "absolute":
        return lr, {}
    if unit != "crit":
        raise ValueError(f"unknown learning-rate unit {unit!r}; known: {', '.join(LR_UNITS)}")
    top = top_kernel_eigenvalue(model, x_train)
    eta_crit = 2.0 / (loss_scale * top.value)
    return lr * eta_crit, {
        "lr_unit": "crit", "eta_crit": eta_crit, "lambda_max_train_0": top.value,
        "lr_absolute": lr * eta_crit, "lambda_max_iterations": top.iterations,
        "lambda_max_converged": top.converged,
    }


def lambda_max_columns(model: nn.Module, x_train: Tensor, lr: float,
                       loss_scale: float = 1.0) -> dict[str, float]:
    """The checkpoint columns of the kernel's curvature on the training set:
    ``lambda_max_train`` = λ_max(Θ_t/N) and ``eta_lambda`` = η·s·λ_max(Θ_t/N), the number the
    catapult drives below 2."""
    with torch.enable_grad():
        top = top_kernel_eigenvalue(model, x_train)
    return {"lambda_max_train": top.value, "eta_lambda": lr * loss_scale * top.value}
