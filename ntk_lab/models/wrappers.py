"""Wrappers around a network: the α-scaled output of Chizat, Oyallon & Bach 2019."""

from __future__ import annotations

import copy
from typing import Optional

from torch import Tensor, nn

from ntk_lab.models.mlp import MLP


class ScaledOutput(nn.Module):
    """α·(f(x; θ) − f(x; θ₀)) (centered) or α·f(x; θ) — Chizat, Oyallon & Bach 2019.

    The initial network f(·; θ₀) is a frozen copy (``requires_grad=False``), so it is not
    trained and does not enter the NTK: Θ of the wrapper is α²·Θ of the network. Train it with
    the loss divided by α² (``train.py`` does) to keep the function-space dynamics fixed
    while laziness grows with α.

    Shapes: (N, in_dim) -> (N, out_dim).
    """

    def __init__(self, net: nn.Module, alpha: float, center: bool):
        super().__init__()
        self.net = net
        self.alpha = float(alpha)
        self.center = bool(center)
        self.initial = copy.deepcopy(net).requires_grad_(False) if center else None

    def forward(self, x: Tensor) -> Tensor:
        out = self.net(x)
        if self.initial is not None:
            out = out - self.initial(x)
        return self.alpha * out


def unwrap_mlp(model: nn.Module) -> tuple[Optional[MLP], float]:
    """(the MLP inside ``model``, the output factor α) or (None, 1.0) for other modules."""
    if isinstance(model, MLP):
        return model, 1.0
    if isinstance(model, ScaledOutput) and isinstance(model.net, MLP):
        return model.net, model.alpha
    return None, 1.0


def unwrap(model: nn.Module) -> tuple[nn.Module, float]:
    """(the network inside a :class:`ScaledOutput`, its factor α), or (model, 1.0)."""
    if isinstance(model, ScaledOutput):
        return model.net, model.alpha
    return model, 1.0
