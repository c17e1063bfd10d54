"""The fully connected network and its parameterizations (DESIGN.md §2).

Every layer computes ``z = weight_multiplier · W h + bias_multiplier · b`` with trainable
``W`` (out, in) and ``b`` (out,) drawn from N(0, init_std²). The parameterization only sets
the four numbers per layer (:func:`layer_scales`), so the structured NTK and the μP tests read
them from one place.

| parameterization | W init std | weight_multiplier | b init std | bias_multiplier |
| ---------------- | ---------- | ----------------- | ---------- | --------------- |
| ``ntk``          | 1          | w_std/√fan_in     | 1          | b_std           |
| ``standard``     | w_std/√fan_in | 1              | b_std      | 1               |
| ``mup``          | see :func:`layer_scales` (Yang & Hu 2021, Table 3, μP for SGD)        |

``ntk`` and ``standard`` match neural-tangents' ``stax.Dense(parameterization=...)``.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor, nn

from ntk_lab.activations import Activation, get_activation

PARAMETERIZATIONS = ("ntk", "standard", "mup")


@dataclass(frozen=True)
class LayerScales:
    """How one dense layer is initialised and scaled in the forward pass."""

    weight_init_std: float
    weight_multiplier: float
    bias_init_std: float
    bias_multiplier: float


def layer_scales(
    parameterization: str, kind: str, fan_in: int, width: int, w_std: float, b_std: float
) -> LayerScales:
    """The four scale factors of one layer.

    Args:
        parameterization: ``"ntk"``, ``"standard"`` or ``"mup"``.
        kind: ``"input"`` (first layer), ``"hidden"`` or ``"output"`` (readout).
        fan_in: the layer's input dimension.
        width: the network's hidden width n (the μP scaling variable).
        w_std, b_std: σ_w and σ_b, the same for every layer.

    μP (Yang & Hu 2021, "Tensor Programs IV", Table 3, abc-form for SGD, c = 0 so the learning
    rate is not rescaled): W = n^(-a) w with w ~ N(0, n^(-2b)) and, with the σ's folded in,

        input  (a=-1/2, b=1/2):  W_eff = (σ_w/√d)·√n · w,  w ~ N(0, 1/n)
        hidden (a=0,    b=1/2):  W_eff = σ_w · w,           w ~ N(0, 1/n)
        output (a=1/2,  b=1/2):  W_eff = (σ_w/√n) · w,      w ~ N(0, 1/n)

    Input and hidden biases are input-like weights (fan_in 1): β_eff = σ_b·√n·β, β ~ N(0, 1/n).
    The readout bias uses a=0, b=1/2 (β_eff = σ_b·β, β ~ N(0, 1/n)) so that its NTK
    contribution stays σ_b², as in ``ntk``. With these choices the μP network's hidden
    pre-activations and its NTK at initialization have exactly the distribution of the ``ntk``
    network's (so Θ_∞ is the same), while its output is n^(-1/2) smaller and its features move
    by Θ(1) during training: the feature-learning limit.
    """
    if parameterization == "ntk":
        return LayerScales(1.0, w_std / math.sqrt(fan_in), 1.0, b_std)
    if parameterization == "standard":
        return LayerScales(w_std / math.sqrt(fan_in), 1.0, b_std, 1.0)
    if parameterization == "mup":
        root_n = math.sqrt(width)
        if kind == "input":
            return LayerScales(1 / root_n, w_std / math.sqrt(fan_in) * root_n, 1 / root_n, b_std * root_n)
        if kind == "hidden":
            return LayerScales(1 / root_n, w_std, 1 / root_n, b_std * root_n)
        if kind == "output":
            return LayerScales(1 / root_n, w_std / root_n, 1 / root_n, b_std)
        raise ValueError(f"unknown layer kind {kind!r}; known: input, hidden, output")
    known = ", ".join(PARAMETERIZATIONS)
    raise ValueError(f"unknown parameterization {parameterization!r}; known: {known}")


class Dense(nn.Module):
    """z = weight_multiplier · h Wᵀ + bias_multiplier · b.

    Shapes: input (N, in_features) -> output (N, out_features).
    """

    def __init__(self, in_features: int, out_features: int, scales: LayerScales):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.scales = scales
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.bias = nn.Parameter(torch.empty(out_features))

    @property
    def weight_multiplier(self) -> float:
        return self.scales.weight_multiplier

    @property
    def bias_multiplier(self) -> float:
        return self.scales.bias_multiplier

    def reset_parameters(self, generator: Optional[torch.Generator] = None) -> None:
        with torch.no_grad():
            self.weight.normal_(0.0, 1.0, generator=generator).mul_(self.scales.weight_init_std)
            self.bias.normal_(0.0, 1.0, generator=generator).mul_(self.scales.bias_init_std)

    def forward(self, h: Tensor) -> Tensor:
        z = (h @ self.weight.T) * self.scales.weight_multiplier
        return z + self.bias * self.scales.bias_multiplier

    def extra_repr(self) -> str:
        s = self.scales
        return (f"{self.in_features} -> {self.out_features}, W_mult={s.weight_multiplier:.4g}, "
                f"b_mult={s.bias_multiplier:.4g}")


class MLP(nn.Module):
    """``depth`` hidden layers of ``width`` units and a linear readout (DESIGN.md §2).

    h⁰ = x, z^l = layer_l(h^{l-1}), h^l = φ(z^l), f = z^{depth+1}.

    Args:
        in_dim: input dimension d.
        width: hidden width n.
        depth: number of hidden layers (≥ 1).
        out_dim: number of outputs O.
        activation: a name from :mod:`ntk_lab.activations` or an ``Activation``.
        parameterization: ``"ntk"`` (default), ``"standard"`` or ``"mup"``.
        w_std, b_std: σ_w, σ_b for every layer, the first and the readout included.
        seed: if given, the initial parameters are drawn from a generator seeded with it
            (on the CPU, so the same seed gives the same network on every device).
        dtype, device: where the parameters live.

    Shapes: forward maps (N, in_dim) -> (N, out_dim); samples do not interact.
    """

    def __init__(
        self,
        in_dim: int,
        width: int,
        depth: int,
        out_dim: int = 1,
        activation: str | Activation = "relu",
        parameterization: str = "ntk",
        w_std: float = 1.0,
        b_std: float = 0.0,
        *,
        seed: Optional[int] = None,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ):
        super().__init__()
        if depth < 1 or width < 1 or in_dim < 1 or out_dim < 1:
            raise ValueError(f"MLP needs in_dim, width, depth, out_dim >= 1, got "
                             f"{in_dim}, {width}, {depth}, {out_dim}")
        self.in_dim, self.width, self.depth, self.out_dim = in_dim, width, depth, out_dim
        self.activation = get_activation(activation)
        self.parameterization = parameterization
        self.w_std, self.b_std = float(w_std), float(b_std)
        dims = [in_dim] + [width] * depth + [out_dim]
        kinds = ["input"] + ["hidden"] * (depth - 1) + ["output"]
        self.layers = nn.ModuleList(
            Dense(dims[i], dims[i + 1],
                  layer_scales(parameterization, kinds[i], dims[i], width, w_std, b_std))
            for i in range(depth + 1)
        )
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        for layer in self.layers:  # drawn in float32 on the CPU: identical across devices
            layer.reset_parameters(generator)
        self.to(dtype=dtype, device=device)

    def forward(self, x: Tensor) -> Tensor:
        h = x
        for layer in self.layers[:-1]:
            h = self.activation.fn(layer(h))
        return self.layers[-1](h)


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
