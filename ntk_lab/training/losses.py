"""Training losses and classification accuracy. Pure functions: tensors in, tensors / floats out.

Both losses are means over the N samples of a per-sample loss of the network's outputs (the
logits) f (N, O) and targets y (N, O) (docs/conventions.md):

| name            | per-sample loss ℓ(f, y)                 | ∇_f L                  |
| --------------- | --------------------------------------- | ---------------------- |
| ``mse``         | ½‖f − y‖²                               | (f − y)/N              |
| ``cross_entropy`` | −Σ_k y_k log softmax(f)_k (softmax over the O logits) | (softmax(f) − y)/N |

The empirical NTK is always that of the logits f; the losses only change ∇_f L
(:func:`ntk_lab.dynamics.kernel_flow.loss_gradient` is the same gradient in numpy, for the kernel flow).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor


LOSSES = ("mse", "cross_entropy")


def cross_entropy(pred: Tensor, target: Tensor) -> Tensor:
    """L = −1/N Σ_i Σ_k y_ik log softmax(f_i)_k; pred (logits), target (one-hot rows): (N, O)."""
    return -(target * torch.log_softmax(pred, dim=1)).sum() / pred.shape[0]


def loss_function(name: str) -> Callable[[Tensor, Tensor], Tensor]:
    """The loss called ``name`` (``mse`` or ``cross_entropy``)."""
    if name == "mse":
        return mse_loss
    if name == "cross_entropy":
        return cross_entropy
    raise ValueError(f"unknown loss {name!r}; known: {', '.join(LOSSES)}")


def predicted_class(out: Tensor) -> Tensor:
    """Class index per row of outputs or targets (N, O): argmax for O ≥ 2; for one ±1 column,
    1 where it is > 0 and 0 elsewhere."""
    if out.shape[1] == 1:
        return (out[:, 0] > 0).long()
    return out.argmax(dim=1)


def accuracy(pred: Tensor, target: Tensor) -> float:
    """Fraction of rows whose predicted class is the target's (see :func:`predicted_class`)."""
    return (predicted_class(pred) == predicted_class(target)).double().mean().item()


def mse_loss(pred: Tensor, target: Tensor) -> Tensor:
    """L = 1/(2N) Σ_i ‖f(x_i) − y_i‖² (docs/conventions.md). pred, target: (N, O)."""
    return 0.5 * (pred - target).pow(2).sum() / pred.shape[0]
