"""Activation functions: one entry per name, shared by the finite network and by Θ_∞.

Each entry holds the torch function φ, its derivative φ' (used by the structured NTK and by
the Gaussian-quadrature kernels) and, where one exists, a closed-form *dual*: the pair of
Gaussian expectations the infinite-width recursion needs (DESIGN.md §2),

    (u, v) ~ N(0, [[q11, q12], [q12, q22]])
    dual(q11, q12, q22) = (E[φ(u) φ(v)], E[φ'(u) φ'(v)]).

Adding an activation touches this file alone (the way neural-tangents keeps a layer's finite
function and its kernel together). Names follow DESIGN.md §6.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional, Tuple

import torch
from torch import Tensor

DualFn = Callable[[Tensor, Tensor, Tensor], Tuple[Tensor, Tensor]]

LEAKY_RELU_SLOPE = 0.01  # torch.nn.LeakyReLU's default negative slope (DESIGN.md §6)


@dataclass(frozen=True)
class Activation:
    """An elementwise nonlinearity with what both the network and Θ_∞ need.

    Attributes:
        name: the config name (``model.activation``).
        fn: φ, elementwise on a tensor of any shape.
        derivative: φ', elementwise; at a kink it matches what autograd returns for ``fn``.
        dual: closed-form ``(q11, q12, q22) -> (E[φ(u)φ(v)], E[φ'(u)φ'(v)])`` or ``None``,
            in which case Θ_∞ uses Gauss–Hermite quadrature of ``fn`` and ``derivative``.
    """

    name: str
    fn: Callable[[Tensor], Tensor]
    derivative: Callable[[Tensor], Tensor]
    dual: Optional[DualFn] = None


# --------------------------------------------------------------------------- derivatives
def _relu_derivative(x: Tensor) -> Tensor:
    return (x > 0).to(x.dtype)


def _leaky_relu_derivative(x: Tensor) -> Tensor:
    return torch.where(x > 0, torch.ones_like(x), torch.full_like(x, LEAKY_RELU_SLOPE))


def _erf_derivative(x: Tensor) -> Tensor:
    return (2.0 / math.sqrt(math.pi)) * torch.exp(-x * x)


def _tanh_derivative(x: Tensor) -> Tensor:
    return 1.0 - torch.tanh(x) ** 2


def _gelu_derivative(x: Tensor) -> Tensor:
    # d/dx [x Φ(x)] = Φ(x) + x φ(x), with Φ, φ the standard normal cdf and density.
    cdf = 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0)))
    pdf = torch.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)
    return cdf + x * pdf


def _sigmoid_derivative(x: Tensor) -> Tensor:
    s = torch.sigmoid(x)
    return s * (1.0 - s)


def _identity(x: Tensor) -> Tensor:
    return x


def _leaky_relu(x: Tensor) -> Tensor:
    return torch.nn.functional.leaky_relu(x, LEAKY_RELU_SLOPE)


def _gelu(x: Tensor) -> Tensor:
    return torch.nn.functional.gelu(x)  # exact, erf-based, as torch.nn.GELU()


ACTIVATIONS: dict[str, Activation] = {
    a.name: a
    for a in (
        Activation("relu", torch.relu, _relu_derivative),
        Activation("leaky_relu", _leaky_relu, _leaky_relu_derivative),
        Activation("abs", torch.abs, torch.sign),
        Activation("erf", torch.erf, _erf_derivative),
        Activation("tanh", torch.tanh, _tanh_derivative),
        Activation("gelu", _gelu, _gelu_derivative),
        Activation("sigmoid", torch.sigmoid, _sigmoid_derivative),
        Activation("softplus", torch.nn.functional.softplus, torch.sigmoid),
        Activation("identity", _identity, torch.ones_like),
    )
}


def get_activation(activation: str | Activation) -> Activation:
    """Look an activation up by name (an :class:`Activation` passes through).

    Raises:
        ValueError: for an unknown name, listing the known ones.
    """
    if isinstance(activation, Activation):
        return activation
    try:
        return ACTIVATIONS[activation]
    except (KeyError, TypeError):
        known = ", ".join(ACTIVATIONS)
        raise ValueError(f"unknown activation {activation!r}; known: {known}") from None
