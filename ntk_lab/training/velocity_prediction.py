"""A run's ``kappa_pred``: the relative kernel change κ(t) its network should show at small t.

For the settings the theory covers (:mod:`ntk_lab.kernels.kernel_velocity`: a one-hidden-layer
MLP, ``ntk`` parameterization, a twice-differentiable activation, one output, MSE on the whole
training set by plain gradient descent, no output scaling) the root-mean-square κ(t) is
t·rate at leading order in t and 1/n, rate = √(Σ n²E[(dΘ/dt)²])/(n‖Θ_∞‖_F) on the probe set; the
run records ``kappa_pred`` = rate·time beside ``kappa`` at every checkpoint (meaningful while κ is
small: the O(t²) terms and the discrete steps are not in it).
"""

from __future__ import annotations

from typing import Optional

from torch import Tensor

from ntk_lab.kernels.kernel_velocity import KINKED, MAX_POINTS, predicted_kappa
from ntk_lab.models import NetworkSpec
from ntk_lab.training.optimizers import OptimizerSettings


def kappa_rate(spec: NetworkSpec, x_probe: Tensor, x_train: Tensor, y_train: Tensor, *, out_dim: int,
               loss: str, optimizer: OptimizerSettings, batch_size: Optional[int], output_scale: float,
               center: bool, monte_carlo: bool) -> tuple[Optional[float], str]:
    """(rate, '') with ``kappa_pred`` = rate·t, or (None, why there is none)."""
    reasons = [
        (spec.name != "mlp" or spec.depth != 1, "a one-hidden-layer MLP (model=mlp depth=1)"),
        (spec.parameterization != "ntk", "model.parameterization=ntk"),
        (spec.activation in KINKED, f"a twice-differentiable activation (not {', '.join(KINKED)})"),
        (out_dim != 1 or loss != "mse", "one output and train.loss=mse"),
        (optimizer.name != "sgd" or optimizer.weight_decay > 0 or batch_size is not None,
         "plain full-batch gradient descent (train.optimizer=sgd, no weight decay, no batch_size)"),
        (output_scale != 1.0 or center, "model.output_scale=1 and model.center=false"),
        (monte_carlo, "the closed-form Θ_∞"),
        (len(x_probe) + len(x_train) > MAX_POINTS, f"data.n_probe + data.n_train <= {MAX_POINTS}"),
    ]
    missing = [need for failed, need in reasons if failed]
    if missing:
        return None, "kappa_pred: derived for " + "; ".join(missing)
    try:
        value = predicted_kappa(x_probe.flatten(1), x_train.flatten(1), y_train, t=1.0, width=spec.width,
                                activation=spec.activation, w_std=spec.w_std, b_std=spec.b_std)
    except (ValueError, RuntimeError) as err:  # the run goes on without the column
        return None, f"kappa_pred: {err}"
    return value, ""
