"""How a parameterization scales one affine layer (dense or conv), in the finite network and in
its infinite-width kernel map (docs/conventions.md).

Every affine layer computes ``z = weight_multiplier · (W ⋆ h) + bias_multiplier · b`` with
trainable ``W`` and ``b`` drawn from N(0, init_std²); ``⋆`` is a matrix product (dense) or a
convolution (conv). ``fan_in`` is the number of inputs one output unit sums over: ``in_features``
for a dense layer, ``C_in·k²`` for a k×k convolution, ``C·H·W`` for a readout after flatten.

| parameterization | W init std | weight_multiplier | b init std | bias_multiplier |
| ---------------- | ---------- | ----------------- | ---------- | --------------- |
| ``ntk``          | 1          | w_std/√fan_in     | 1          | b_std           |
| ``standard``     | w_std/√fan_in | 1              | b_std      | 1               |
| ``mup``          | see :func:`layer_scales` (Yang & Hu 2021, Table 3, μP for SGD)        |

``ntk`` and ``standard`` match neural-tangents' ``stax.Dense`` / ``stax.Conv``
``(parameterization=...)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

PARAMETERIZATIONS = ("ntk", "standard", "mup")
LAYER_KINDS = ("input", "hidden", "output")


@dataclass(frozen=True)
class LayerScales:
    """How one affine layer is initialised and scaled in the forward pass."""

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
        fan_in: inputs per output unit (``in_features``; ``C_in·k²`` for a conv layer).
        width: the network's width n, the μP scaling variable (hidden units; channels for a
            conv net).
        w_std, b_std: σ_w and σ_b, the same for every layer.

    μP (Yang & Hu 2021, "Tensor Programs IV", Table 3, abc-form for SGD, c = 0 so the learning
    rate is not rescaled): W = n^(-a) w with w ~ N(0, n^(-2b)) and, with the σ's folded in,

        input  (a=-1/2, b=1/2):  W_eff = (σ_w/√fan_in)·√n · w,      w ~ N(0, 1/n)
        hidden (a=0,    b=1/2):  W_eff = σ_w·√(n/fan_in) · w,       w ~ N(0, 1/n)
        output (a=1/2,  b=1/2):  W_eff = (σ_w/√fan_in) · w,         w ~ N(0, 1/n)

    For a dense network fan_in = n in the hidden and output layers, so these are σ_w·w and
    (σ_w/√n)·w. A conv layer's fan_in n·k² adds only the constant 1/k, and a readout after
    flatten has fan_in n·H·W: the powers of n (the channels) are those of the table.
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
            return LayerScales(1 / root_n, w_std * math.sqrt(width / fan_in), 1 / root_n, b_std * root_n)
        if kind == "output":
            return LayerScales(1 / root_n, w_std / math.sqrt(fan_in), 1 / root_n, b_std)
        raise ValueError(f"unknown layer kind {kind!r}; known: {', '.join(LAYER_KINDS)}")
    known = ", ".join(PARAMETERIZATIONS)
    raise ValueError(f"unknown parameterization {parameterization!r}; known: {known}")


@dataclass(frozen=True)
class KernelCoefficients:
    """The four numbers of an affine layer's infinite-width kernel map.

    With K the covariance of the layer's input per unit (its NNGP) and Θ its NTK,

        Σ_out = v_w · K + v_b,         Θ_out = g_w · K + g_b + v_w · Θ,

    (for a conv layer K and Θ are first averaged over the k×k stencil). ``v_*`` are the
    variances of the effective weights times fan_in (the forward map); ``g_*`` the squared
    multipliers times fan_in (the gradient w.r.t. the trainable parameters).
    """

    v_w: float
    v_b: float
    g_w: float
    g_b: float


def kernel_coefficients(parameterization: str, fan_in: int, w_std: float, b_std: float) -> KernelCoefficients:
    """The kernel-map coefficients of an affine layer, as neural-tangents' ``kernel_fn``.

    ``ntk``: v_w = g_w = σ_w², v_b = g_b = σ_b². ``standard`` (neural-tangents' Dense, 0.6.5):
    v_w = σ_w², v_b = σ_b², g_w = fan_in, g_b = 1 (the bias parameter exists even when σ_b = 0),
    so Θ grows with the width. ``mup``: the ``ntk`` coefficients — the μP network's NTK at
    initialization has the ``ntk`` network's distribution (see :func:`layer_scales`), and Θ_∞
    and NNGP_∞ are reported as the ``ntk`` ones, as :func:`ntk_lab.kernels.infinite_width_kernels`
    does.
    """
    w2, b2 = float(w_std) ** 2, float(b_std) ** 2
    if parameterization in ("ntk", "mup"):
        return KernelCoefficients(w2, b2, w2, b2)
    if parameterization == "standard":
        return KernelCoefficients(w2, b2, float(fan_in), 1.0)
    known = ", ".join(PARAMETERIZATIONS)
    raise ValueError(f"unknown parameterization {parameterization!r}; known: {known}")
