"""The unit moments behind V_Θ and Θ^(1) against closed forms and adaptive quadrature, at the
large variances that deep residual MLPs reach (a fixed rule in z = u/√k loses the derivative's
own scale there)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import integrate

from ntk_lab.kernels.finite_width_moments import derivative_gradient, unit_moments
from ntk_lab.layers.activations import get_activation

MOMENT_RTOL = 1e-9
"""The scaled midpoint rule against erf's closed forms: measured < 1e-14 relative; 1e-9 leaves
room for other CPUs' exp/erf while failing the old fixed 48-node rule (19 % off at k = 5)."""
GRADIENT_RTOL = 1e-7
"""Central differences of step 1e-5 (relative) against autograd of the closed form: truncation
~1e-10, rounding ~1e-16/1e-5 = 1e-11, measured 2e-10."""
QUAD_RTOL = 1e-8
"""tanh's E[φ'(u)⁴] against scipy's adaptive quad (its own error < 1e-14): the rule's aliasing
error for sech⁸ (a pole of order 8 at u = iπ/2) is ~3e-10 at the rule's spacing."""

STATES = torch.tensor([[5.0, 2.0, 3.0], [20.0, -4.0, 9.0], [0.3, 0.1, 0.2]], dtype=torch.float64)


def _erf_slopes(k11, k12, k22, power):
    """E[φ'(u)^p φ'(v)^p] for erf (φ' = (2/√π) e^{−u²}): (4/π)^p / √det(I + 2pK)."""
    c = 2.0 * power
    return (4.0 / math.pi) ** power / torch.sqrt((1 + c * k11) * (1 + c * k22) - c * c * k12 * k12)


@pytest.mark.parametrize("variance", [1.0, 5.0, 20.0])
def test_erf_one_input_moments_are_the_closed_forms(variance):
    k = torch.tensor([[variance]], dtype=torch.float64)
    mean, _, e4, b11, _ = unit_moments(get_activation("erf"), k, 1.0, 0.0)
    assert mean[0, 1].item() == pytest.approx((4 / math.pi) / math.sqrt(1 + 4 * variance), rel=MOMENT_RTOL)
    assert e4.item() == pytest.approx((16 / math.pi ** 2) / math.sqrt(1 + 8 * variance), rel=MOMENT_RTOL)
    assert b11.item() == pytest.approx(mean[0, 1].item(), rel=MOMENT_RTOL)


def test_erf_pair_moments_are_the_closed_forms():
    mean, _, e4, b11, b22 = unit_moments(get_activation("erf"), STATES, 1.0, 0.0)
    k11, k12, k22 = STATES.unbind(1)
    assert torch.allclose(mean[:, 3], _erf_slopes(k11, k12, k22, 1), rtol=MOMENT_RTOL, atol=0.0)
    assert torch.allclose(e4, _erf_slopes(k11, k12, k22, 2), rtol=MOMENT_RTOL, atol=0.0)
    assert torch.allclose(b11, _erf_slopes(k11, k11, k11, 1), rtol=MOMENT_RTOL, atol=0.0)
    assert torch.allclose(b22, _erf_slopes(k22, k22, k22, 1), rtol=MOMENT_RTOL, atol=0.0)


def test_gradient_of_the_slope_kernel_is_the_closed_form():
    """∇Ḃ by central differences of the tensor-product rule (the path of activations without a
    closed form, forced here by dropping erf's dual) against autograd of erf's closed form."""
    erf = get_activation("erf")
    ruled = type(erf)(erf.name + "_ruled", erf.fn, erf.derivative, None)
    got = derivative_gradient(ruled, STATES)
    k = STATES.clone().requires_grad_(True)
    _erf_slopes(k[:, 0], k[:, 1], k[:, 2], 1).sum().backward()
    assert torch.allclose(got, k.grad, rtol=GRADIENT_RTOL, atol=0.0)


def test_tanh_fourth_slope_moment_against_adaptive_quadrature():
    variance = 5.0
    _, _, e4, _, _ = unit_moments(get_activation("tanh"), torch.tensor([[variance]], dtype=torch.float64), 1.0, 0.0)
    density = lambda u: np.cosh(u) ** -8 * np.exp(-u * u / (2 * variance)) / math.sqrt(2 * math.pi * variance)  # noqa: E731
    reference, _ = integrate.quad(density, -40, 40, epsabs=1e-15, limit=400)
    assert e4.item() == pytest.approx(reference, rel=QUAD_RTOL)
