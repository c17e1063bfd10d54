"""Networks composed from the lab's layers: ``Serial``, the lab's ``stax.serial``.

    from ntk_lab.models.serial import Dense, Relu, SelfAttention, Serial, TokenReadout
    net = Serial(Dense(3, 64), SelfAttention(64, 64, mechanism="softmax"),
                 TokenReadout("gap"), Relu(), Dense(64, 1), parameterization="ntk")
    nngp, ntk = infinite_width_kernels(x1, x2, model=net)     # x: (N, T, 3) token sequences

Any sequence of the lab's layers is a network that trains, has an empirical NTK, and has Θ_∞
(its layers' kernel maps composed, :mod:`ntk_lab.kernels.composed`). The layers with weights
are given here by their shapes and σ's only — :func:`Dense`, :func:`Conv`,
:func:`SelfAttention`, and :func:`Residual` around other layers; ``Serial`` resolves how the
parameterization scales each from its position, as the built-in networks do
(:func:`~ntk_lab.layers.scales.layer_scales`): the first weighted layer is the input layer,
the last the readout, every other one (inside residual branches too) a hidden layer, and μP's
width n is the first weighted layer's output width. Layers without weights (``Relu()``,
``Nonlinearity(name)``, ``LayerNorm(C)``, ``TokenReadout``, ``GlobalAvgPool``, ``Flatten``,
``PatchTokens``) are passed as modules.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Union

import torch
from torch import Tensor, nn

from ntk_lab.layers import Conv as ConvLayer
from ntk_lab.layers import Dense as DenseLayer
from ntk_lab.layers import (
    Flatten, GlobalAvgPool, Nonlinearity, PARAMETERIZATIONS, kernel_coefficients, layer_scales,
)
from ntk_lab.layers import Residual as ResidualLayer
from ntk_lab.layers.attention import SelfAttention as AttentionLayer
from ntk_lab.layers.layer_norm import LayerNorm
from ntk_lab.layers.tokens import PatchTokens, TokenReadout

__all__ = ["Conv", "Dense", "Flatten", "GlobalAvgPool", "LayerNorm", "Nonlinearity", "PatchTokens",
           "Relu", "Residual", "SelfAttention", "Serial", "TokenReadout"]


@dataclass(frozen=True)
class _Weighted:
    """A layer with weights, its scales to be resolved by :class:`Serial`."""

    kind: str  # dense | conv | attention
    fan_in: int
    units: int
    options: dict = field(default_factory=dict)

    def build(self, role: str, parameterization: str, width: int) -> nn.Module:
        o = self.options
        if self.kind == "attention":
            return AttentionLayer(self.fan_in, self.units, parameterization=parameterization,
                                  network_width=width, **o)
        w_std, b_std = o["w_std"], o["b_std"]
        fan_in = self.fan_in * (o["kernel_size"] ** 2 if self.kind == "conv" else 1)
        scales = layer_scales(parameterization, role, fan_in, width, w_std, b_std)
        coefficients = kernel_coefficients(parameterization, fan_in, w_std, b_std)
        if self.kind == "conv":
            return ConvLayer(self.fan_in, self.units, o["kernel_size"], scales, coefficients,
                             padding=o["padding"])
        return DenseLayer(self.fan_in, self.units, scales, coefficients)


@dataclass(frozen=True)
class _Residual:
    """h + β·branch(h), its branch's weighted layers to be resolved as hidden layers."""

    branch: tuple
    beta: float


def Dense(in_features: int, out_features: int, *, w_std: float = 1.0, b_std: float = 0.0) -> _Weighted:
    """A dense layer (per token on (N, T, C)): z = σ_w/√fan_in · W h + σ_b · b under ``ntk``."""
    return _Weighted("dense", int(in_features), int(out_features), {"w_std": w_std, "b_std": b_std})


def Conv(in_channels: int, out_channels: int, kernel_size: int = 3, *, w_std: float = 1.0,
         b_std: float = 0.0, padding: str = "same") -> _Weighted:
    """A k × k convolution of images (N, C, H, W), stride 1, ``same`` or ``circular`` padding."""
    return _Weighted("conv", int(in_channels), int(out_channels),
                     {"w_std": w_std, "b_std": b_std, "kernel_size": int(kernel_size), "padding": padding})


def SelfAttention(in_features: int, width: int, **options: Any) -> _Weighted:
    """Self-attention over tokens; ``options`` as :class:`ntk_lab.layers.attention.SelfAttention`
    (heads, head_dim, scaling, mechanism, qk_std, w_std, b_std, pos_emb, pos_std, n_tokens)."""
    return _Weighted("attention", int(in_features), int(width), dict(options))


def Residual(*branch: Union[_Weighted, nn.Module], beta: float = 1.0) -> _Residual:
    """h + β·branch(h), the branch given as layers in order."""
    return _Residual(tuple(branch), float(beta))


def Relu() -> Nonlinearity:
    """φ = max(0, ·); any other activation: ``Nonlinearity(name)``."""
    return Nonlinearity("relu")


class Serial(nn.Module):
    """The layers in order, as one network (see the module docstring).

    Args:
        layers: :func:`Dense`, :func:`Conv`, :func:`SelfAttention`, :func:`Residual`, or
            modules with a ``kernel_map`` (layers without weights).
        parameterization: ``ntk``, ``standard`` or ``mup``.
        seed: if given, parameters are drawn from a CPU generator seeded with it, in forward order.
        dtype, device: where the parameters live.

    Shapes: whatever the layers take; the last layer must return (N, out) vectors.
    """

    def __init__(self, *layers: Union[_Weighted, _Residual, nn.Module], parameterization: str = "ntk",
                 seed: Optional[int] = None, dtype: torch.dtype = torch.float32,
                 device: torch.device | str = "cpu"):
        super().__init__()
        if parameterization not in PARAMETERIZATIONS:
            raise ValueError(f"parameterization={parameterization!r} is invalid: allowed: "
                             f"{', '.join(PARAMETERIZATIONS)}")
        weighted = [w for w in _weighted(layers)]
        if not weighted:
            raise ValueError("Serial needs at least one layer with weights (Dense, Conv, SelfAttention)")
        self.parameterization = parameterization
        self.width = weighted[0].units  # μP's n
        roles = {id(w): ("input" if i == 0 else "output" if i == len(weighted) - 1 else "hidden")
                 for i, w in enumerate(weighted)}
        if len(weighted) == 1:
            roles[id(weighted[0])] = "output"
        self.layers = nn.Sequential(*[self._build(layer, roles) for layer in layers])
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        for module in self.layers.modules():  # forward order
            if isinstance(module, (DenseLayer, ConvLayer, AttentionLayer)) and not _owned_by_attention(self, module):
                module.reset_parameters(generator)
        self.to(dtype=dtype, device=device)

    def _build(self, layer, roles: dict) -> nn.Module:
        if isinstance(layer, _Weighted):
            return layer.build(roles[id(layer)], self.parameterization, self.width)
        if isinstance(layer, _Residual):
            return ResidualLayer([self._build(inner, roles) for inner in layer.branch], layer.beta)
        if isinstance(layer, nn.Module):
            if isinstance(layer, (DenseLayer, ConvLayer, AttentionLayer)):
                raise TypeError(f"pass {type(layer).__name__} through ntk_lab.models.serial."
                                f"{type(layer).__name__}(...), whose scales Serial resolves")
            return layer
        raise TypeError(f"Serial takes the layers of ntk_lab.models.serial or modules; got {layer!r}")

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)

    def kernel_layers(self) -> list[nn.Module]:
        """The layers whose kernel maps compose to Θ_∞, in forward order."""
        return list(self.layers)


def _weighted(layers) -> list[_Weighted]:
    out = []
    for layer in layers:
        if isinstance(layer, _Weighted):
            out.append(layer)
        elif isinstance(layer, _Residual):
            out += _weighted(layer.branch)
    return out


def _owned_by_attention(net: nn.Module, module: nn.Module) -> bool:
    return isinstance(module, DenseLayer) and any(
        module in (a.key, a.query, a.value, a.out) for a in net.modules() if isinstance(a, AttentionLayer))
