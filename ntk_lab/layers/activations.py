"""Activation functions: one entry per name, shared by the finite network and by Θ_∞.

Each entry holds the torch function φ, its derivative φ' (used by the structured NTK and by
the Gaussian-quadrature kernels) and, where one exists, a closed-form *dual*: the pair of
Gaussian expectations the infinite-width recursion needs (docs/conventions.md),

    (u, v) ~ N(0, [[q11, q12], [q12, q22]])
    dual(q11, q12, q22) = (E[φ(u) φ(v)], E[φ'(u) φ'(v)]).

Adding an activation touches this file alone (the way neural-tangents keeps a layer's finite
function and its kernel together). Names follow docs/conventions.md, *Kernel methods*. A name
``module.path:function`` is a user's own elementwise function
(:mod:`ntk_lab.layers.user_activation`): φ' by autograd, no dual.

Closed forms (float64 tensors that broadcast against each other in; both results have the
broadcast shape). Write s = √(q11 q22), ρ = q12/s clamped to [−1, 1] and θ = arccos ρ,
computed as π − θ = atan2(√(q11 q22 − q12²), −q12), so that no division appears and ρ = ±1
is exact:

    relu        E[φφ]   = (s sin θ + (π − θ) q12) / (2π)          (Cho & Saul 2009, arc-cosine
                E[φ'φ'] = (π − θ) / (2π)                           kernels of degree 1 and 0)
    leaky_relu  φ = relu(x) − a·relu(−x), a = LEAKY_RELU_SLOPE; (−u, −v) has correlation ρ and
                (u, −v) has −ρ, so with J(ρ) = E[relu(u)relu(v)], K(ρ) = E[1{u>0}1{v>0}]:
                E[φφ]   = (1 + a²) J(ρ) − 2a J(−ρ),   J(−ρ) = (s sin θ − θ q12) / (2π)
                E[φ'φ'] = (1 + a²) K(ρ) + 2a K(−ρ),   K(−ρ) = θ / (2π)
    abs         |x| = relu(x) + relu(−x), sign = 1{x>0} − 1{x<0}:
                E[φφ] = 2J(ρ) + 2J(−ρ) = (2 s sin θ + (π − 2θ) q12) / π,  E[φ'φ'] = 1 − 2θ/π
    erf         E[φφ]   = (2/π) arcsin(2 q12 / √((1 + 2q11)(1 + 2q22)))     (Williams 1997)
                E[φ'φ'] = (4/π) / √((1 + 2q11)(1 + 2q22) − 4 q12²)
    gelu        φ(x) = x Φ(x). With a = q11, b = q22, c = q12 clamped to [−s, s],
                P = (1 + a)(1 + b), Δ² = 1 + a + b + (s − c)(s + c) = P − c² (≥ 1) and
                A = atan2(Δ, −c) = π/2 + arcsin(c/√P) ∈ (0, π):
                E[φφ]   = (c A + (c² + a b Δ²)/(P Δ)) / (2π)
                E[φ'φ'] = (A + (c/Δ)(1/Δ² + (2 + a + b)/P)) / (2π)
                (neural-tangents' Gelu kernel, written with π/2 + atan2(c, Δ) = atan2(Δ, −c)
                and 1 + (1 − ab)/P = (2 + a + b)/P so that nothing cancels at ρ = −1 or at large
                variances. Derivation: Φ(u) = Pr(w₁ < u | u) with w₁ ~ N(0, 1) independent, so
                E[φ(u)φ(v)] = E[u v 1{u − w₁ > 0} 1{v − w₂ > 0}], a Gaussian orthant moment;
                (u − w₁, v − w₂) has covariance [[1 + a, c], [c, 1 + b]], determinant Δ².)
                At a = 0 the clamp gives c = 0, hence E[φφ] = 0 and E[φ'φ'] = 1/4 = φ'(0)·E[φ'(v)]
                with no special case; Δ ≥ 1 keeps every division finite.
    identity    E[φφ] = q12,  E[φ'φ'] = 1

Degenerate inputs: when q11 = 0 (or q22 = 0) the variable u is 0 almost surely and the
expectations are φ(0)·E[φ(v)] and φ'(0)·E[φ'(v)], with φ'(0) the value ``derivative`` (and
autograd) gives at the kink: 0 for relu and abs, a for leaky_relu (gelu, smooth, has 1/2).
The arc-cosine formulas would otherwise return the ρ = 0 value there; the duals select the
degenerate value instead. No branch produces NaN (no division by s), so ``torch.where`` is safe.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

from ntk_lab.layers.user_activation import user_activation

DualFn = Callable[[Tensor, Tensor, Tensor], Tuple[Tensor, Tensor]]

LEAKY_RELU_SLOPE = 0.01  # torch.nn.LeakyReLU's default negative slope (docs/conventions.md, *Kernel methods*)


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


# --------------------------------------------------------------------------- closed-form duals
def broadcast_shape(*shapes: Sequence[int]) -> torch.Size:
    """The broadcast of ``shapes``, by NumPy's rules on the shape tuples alone.

    ``torch.broadcast_shapes`` in torch 2.13 costs time in proportion to the broadcast numel
    (~1 µs per element: 0.14 s for a 130k-element pair tile, most of Θ_∞ of a flatten CNN);
    this is the same answer without touching any tensor.
    """
    return torch.Size(np.broadcast_shapes(*(tuple(s) for s in shapes)))


def _arccos_parts(q11: Tensor, q12: Tensor, q22: Tensor) -> Tuple[Tensor, Tensor, Tensor, Optional[Tensor]]:
    """(s sin θ, q12 clamped, π − θ, degenerate mask) for the arc-cosine family, NaN-free.

    s sin θ = √(q11 q22 − q12²) after clamping q12 to [−s, s] (|ρ| ≤ 1, so rounding never
    gives a negative radicand), and π − θ = atan2(s sin θ, −q12) ∈ [0, π] (θ = arccos ρ).
    At zero variance every term is finite (atan2(0, ±0) is 0 or π); the mask marks it, and is
    None when no variance is zero.

    Written for speed on pair tensors (Θ_∞ of a conv net evaluates it on (N, N, P, P)): s is
    the product of the square roots of the (small, broadcast) variance tensors, the clamp is a
    minimum and a maximum (torch's clamp with tensor bounds is ~10× slower), and the remaining
    pair-sized work is done in place.
    """
    root1, root2 = torch.sqrt(q11.clamp_min(0.0)), torch.sqrt(q22.clamp_min(0.0))
    shape = broadcast_shape(q11.shape, q12.shape, q22.shape)
    s = (root1 * root2).expand(shape)
    q12c = torch.minimum(q12, s)
    torch.maximum(q12c, (-root1) * root2, out=q12c)
    # s² − q12² as (s − q12)(s + q12): exactly 0 at ρ = ±1 (no fused-multiply-add residue)
    ssin = torch.sub(s, q12c).mul_(s + q12c).clamp_min_(0.0).sqrt_()
    pi_minus_theta = torch.atan2(ssin, torch.neg(q12c))
    zero1, zero2 = q11 <= 0.0, q22 <= 0.0
    degenerate = (zero1 | zero2).expand(shape) if bool(zero1.any() or zero2.any()) else None
    return ssin, q12c, pi_minus_theta, degenerate


def _relu_dual(q11: Tensor, q12: Tensor, q22: Tensor) -> Tuple[Tensor, Tensor]:
    """The arc-cosine pair of degree 1 and 0 with θ = atan2(s sin θ, q12) directly:

        E[φ'φ'] = (π − θ)/(2π) = 1/2 − θ/(2π),     E[φφ] = s sin θ/(2π) + E[φ'φ']·q12,

    written for Θ_∞ of a conv net, where it runs on (N, N, P, P) pair tensors and is a large
    share of the time: two pair-sized allocations and eight in-place passes (the shared
    :func:`_arccos_parts` needs eight allocations). No clamp of q12 to [−s, s] is needed: when
    rounding puts |q12| past s, s sin θ clamps to 0 and θ = atan2(0, ±|q12|) is 0 or π, so the
    result is q12/2 or 0 — the ρ = ±1 values to rounding.
    """
    root1, root2 = torch.sqrt(q11.clamp_min(0.0)), torch.sqrt(q22.clamp_min(0.0))
    shape = broadcast_shape(q11.shape, q12.shape, q22.shape)
    s = root1 * root2
    s = s.expand(shape).contiguous() if s.shape != shape else s  # owned: updated in place below
    ssin = torch.sub(s, q12)
    # s² − q12² as (s − q12)(s + q12): exactly 0 at ρ = ±1 (no fused-multiply-add residue)
    ssin.mul_(s.add_(q12)).clamp_min_(0.0).sqrt_()
    dot = torch.atan2(ssin, q12, out=s).mul_(-0.5 / math.pi).add_(0.5)  # (π − θ)/(2π), in s
    nngp = ssin.mul_(0.5 / math.pi).addcmul_(dot, q12)
    zero1, zero2 = q11 <= 0.0, q22 <= 0.0
    if bool(zero1.any() or zero2.any()):  # u = 0 a.s.: relu'(0) = 0 (E[φφ] = 0 already)
        dot.masked_fill_((zero1 | zero2).expand(shape), 0.0)
    return nngp, dot


def _leaky_relu_dual(q11: Tensor, q12: Tensor, q22: Tensor) -> Tuple[Tensor, Tensor]:
    a = LEAKY_RELU_SLOPE
    ssin, q12c, pmt, degenerate = _arccos_parts(q11, q12, q22)
    theta = math.pi - pmt
    j_plus = (ssin + pmt * q12c) * (0.5 / math.pi)    # J(ρ)
    j_minus = (ssin - theta * q12c) * (0.5 / math.pi)  # J(−ρ)
    nngp = (1.0 + a * a) * j_plus - 2.0 * a * j_minus
    dot = ((1.0 + a * a) * pmt + 2.0 * a * theta) * (0.5 / math.pi)
    if degenerate is not None:
        # u = 0 a.s. (or v): φ'(0) = a times E[φ'(v)] = (1 + a)/2 when Var v > 0, a when v = 0 too.
        both_zero = (q11 <= 0.0) & (q22 <= 0.0)
        degenerate_dot = torch.where(both_zero, dot.new_tensor(a * a), dot.new_tensor(a * (1.0 + a) / 2.0))
        dot = torch.where(degenerate, degenerate_dot, dot)
    return nngp, dot


def _abs_dual(q11: Tensor, q12: Tensor, q22: Tensor) -> Tuple[Tensor, Tensor]:
    ssin, q12c, pmt, degenerate = _arccos_parts(q11, q12, q22)
    theta = math.pi - pmt
    nngp = (2.0 * ssin + (pmt - theta) * q12c) * (1.0 / math.pi)
    dot = (pmt - theta) * (1.0 / math.pi)
    if degenerate is not None:
        dot = torch.where(degenerate, 0.0, dot)  # sign(0) = 0
    return nngp, dot


def _erf_dual(q11: Tensor, q12: Tensor, q22: Tensor) -> Tuple[Tensor, Tensor]:
    q11, q12, q22 = torch.broadcast_tensors(q11, q12, q22)
    s = torch.sqrt((q11 * q22).clamp_min(0.0))
    q12c = torch.maximum(torch.minimum(q12, s), -s)
    denom = (1.0 + 2.0 * q11) * (1.0 + 2.0 * q22)  # ≥ 1
    nngp = (2.0 / math.pi) * torch.asin((2.0 * q12c / torch.sqrt(denom)).clamp(-1.0, 1.0))
    # denom − 4 q12² ≥ 1 + 2 q11 + 2 q22 ≥ 1 once |q12| ≤ s: never 0.
    dot = (4.0 / math.pi) / torch.sqrt(denom - 4.0 * q12c * q12c)
    return nngp, dot


def _gelu_dual(q11: Tensor, q12: Tensor, q22: Tensor) -> Tuple[Tensor, Tensor]:
    a, b = q11.clamp_min(0.0), q22.clamp_min(0.0)
    root_a, root_b = torch.sqrt(a), torch.sqrt(b)
    s = (root_a * root_b).expand(broadcast_shape(q11.shape, q12.shape, q22.shape))
    c = torch.maximum(torch.minimum(q12, s), (-root_a) * root_b)  # |ρ| ≤ 1
    # per point (small tensors), each symmetric in (a, b) to the last bit: K(x, x') = K(x', x)
    ab, a_plus_b, p = a * b, a + b, (1.0 + a) * (1.0 + b)
    # Δ² = P − c² as 1 + a + b + (s − c)(s + c): both factors ≥ 0, exact at ρ = ±1
    delta2 = torch.sub(s, c).mul_(s + c).add_(a_plus_b + 1.0)
    delta = torch.sqrt(delta2)
    angle = torch.atan2(delta, torch.neg(c))
    nngp = torch.addcmul(ab * delta2, c, c).div_(p * delta).addcmul_(c, angle).mul_(0.5 / math.pi)
    dot = delta2.reciprocal_().add_((a_plus_b + 2.0) / p).mul_(c / delta).add_(angle).mul_(0.5 / math.pi)
    return nngp, dot


def _identity_dual(q11: Tensor, q12: Tensor, q22: Tensor) -> Tuple[Tensor, Tensor]:
    q11, q12, q22 = torch.broadcast_tensors(q11, q12, q22)
    return q12.clone(), torch.ones_like(q12)


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
        Activation("relu", torch.relu, _relu_derivative, _relu_dual),
        Activation("leaky_relu", _leaky_relu, _leaky_relu_derivative, _leaky_relu_dual),
        Activation("abs", torch.abs, torch.sign, _abs_dual),
        Activation("erf", torch.erf, _erf_derivative, _erf_dual),
        Activation("tanh", torch.tanh, _tanh_derivative),
        Activation("gelu", _gelu, _gelu_derivative, _gelu_dual),
        Activation("sigmoid", torch.sigmoid, _sigmoid_derivative),
        Activation("softplus", torch.nn.functional.softplus, torch.sigmoid),
        Activation("identity", _identity, torch.ones_like, _identity_dual),
    )
}


_USER_ACTIVATIONS: dict[str, Activation] = {}  # module.path:function -> its Activation, built once


def get_activation(activation: str | Activation) -> Activation:
    """Look an activation up by name (an :class:`Activation` passes through).

    A name containing ``:`` is a user's own elementwise function, ``module.path:function``:
    imported, probed and given its derivative by autograd, with no dual (Θ_∞ then uses the
    Hermite series); see :mod:`ntk_lab.layers.user_activation`.

    Raises:
        ValueError: for an unknown name, listing the known ones; for a ``module.path:function``
            that cannot be imported or is not an elementwise differentiable torch function, one
            line naming ``model.activation`` (an ``ActivationError``).
    """
    if isinstance(activation, Activation):
        return activation
    if isinstance(activation, str) and ":" in activation:
        if activation not in _USER_ACTIVATIONS:
            fn, derivative = user_activation(activation, tuple(ACTIVATIONS))
            _USER_ACTIVATIONS[activation] = Activation(activation, fn, derivative)
        return _USER_ACTIVATIONS[activation]
    try:
        return ACTIVATIONS[activation]
    except (KeyError, TypeError):
        known = ", ".join(ACTIVATIONS)
        raise ValueError(f"unknown activation {activation!r}; known: {known}, or "
                         f"module.path:function for an elementwise torch function of your own") from None
