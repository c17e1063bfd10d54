"""Θ_∞ and the NNGP (ntk_lab.kernels.analytic) and the closed-form duals (ntk_lab.layers.activations).

Checks, from strongest to broadest:
(a) neural-tangents 0.6.5 float64 reference values (the whole shared file, and a few copied here);
(b) each closed-form dual against independent 1-D adaptive quadrature (scipy), at ρ = ±1 and
    zero variance, against Price's theorem, and against the Hermite-series path;
(c) the Hermite-series path for tanh / sigmoid / softplus (and gelu without its closed form): default degree vs the
    largest one, and against brute-force 2-D quadrature;
(d) Monte-Carlo: mean empirical NTK and output covariance of random finite networks;
(e) numerical safety (zero inputs, duplicates, x2 = −x1, depth 20), symmetry, device, dtype;
(f) the ``standard`` parameterization against finite ``standard`` networks;
(g) argument errors.
"""

from __future__ import annotations

import dataclasses
import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import integrate
from scipy.special import erf as sp_erf, ndtr

from ntk_lab.layers.activations import ACTIVATIONS, LEAKY_RELU_SLOPE, get_activation
from ntk_lab.kernels import empirical_ntk, infinite_width_kernels
from ntk_lab.kernels.analytic import SERIES_MAX_DEGREE, _hermite_table
from ntk_lab.models import MLP

F64 = torch.float64
REFERENCE_FILE = Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "nt_kernels.json"

# neural-tangents evaluates erf's arcsin closed form in float64: agreement is ~1e-15; the
# bound leaves room for summation order only.
ERF_REF_RTOL = 1e-8
# neural-tangents clips ReLU correlations just below 1 (its header: relative errors up to
# ~1e-8 against the exact closed form; we measure ≤ 8e-9 on its NTK diagonals).
RELU_REF_RTOL = 1e-7
REF_RTOL = {"relu": RELU_REF_RTOL, "erf": ERF_REF_RTOL}

# Closed forms against scipy's adaptive quadrature of the 1-D conditional expectation
# (quad's own accuracy, epsrel 1e-12, dominates).
DUAL_QUAD_RTOL = 1e-9
# Smooth closed forms (erf, identity) against the Hermite-series path: the series is built to
# 1e-10 per layer (Parseval bound), so 1e-9 across depth 3 is safe.
SMOOTH_SERIES_RTOL = 1e-9
# Kinked activations through the series path (dual=None): Hermite coefficients of a step
# decay only like k^(-3/4), so the tail mass at degree 320 is a few percent near ρ = ±1 (the
# exact diagonal is restored, off-diagonal errors measured ≤ 5e-3). This only shows the
# series is right to leading order; the closed forms are what the library uses.
KINK_SERIES_RTOL = 2e-2
# Default (adaptive) degree vs the largest degree, and vs brute-force 2-D quadrature.
SERIES_RTOL = 1e-8


def circle16() -> torch.Tensor:
    g = 2 * np.pi * np.arange(16) / 16
    return torch.tensor(np.stack([np.cos(g), np.sin(g)], axis=1), dtype=F64)


def rel_fro(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def random_inputs(n: int, d: int, seed: int) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=F64)


# --------------------------------------------------------------------------- (a) reference
# Reference values computed with neural-tangents 0.6.5 in float64 (copied here so the test is
# self-contained):
# (activation, depth, W_std, b_std) on circle16, entries (0,0), (0,1), (0,5), (0,7), (3,6).
EMBEDDED_REFERENCE = [
    ("relu", 3, 1.5, 0.1,
     [1.649951171875, 1.5547092175071957, 0.9100656441516064, 0.8323954827575148, 1.1662969883482035],
     [6.534648420728212, 5.124774896846734, 1.3461288031018648, 1.1080991066313348, 2.546188482520995]),
    ("erf", 5, 1.5, 0.1,
     [1.093530391536485, 0.9008946967205228, -0.20436826742273684, -0.7475337847504742, 0.3014538978822297],
     [11.941995232282078, 8.025027731681538, -1.4006839471942372, -6.498777951429247, 1.7480347043965971]),
]
EMBEDDED_ENTRIES = ([0, 0, 0, 0, 3], [0, 1, 5, 7, 6])


@pytest.mark.parametrize("act, depth, w_std, b_std, nngp_ref, ntk_ref", EMBEDDED_REFERENCE)
def test_embedded_reference_values(act, depth, w_std, b_std, nngp_ref, ntk_ref):
    nngp, ntk = infinite_width_kernels(circle16(), activation=act, depth=depth, w_std=w_std, b_std=b_std)
    rows, cols = EMBEDDED_ENTRIES
    np.testing.assert_allclose(nngp[rows, cols].numpy(), nngp_ref, rtol=REF_RTOL[act], atol=0)
    np.testing.assert_allclose(ntk[rows, cols].numpy(), ntk_ref, rtol=REF_RTOL[act], atol=0)


@pytest.mark.skipif(not REFERENCE_FILE.is_file(), reason=f"{REFERENCE_FILE} not present")
def test_reference_file_all_cases():
    data = json.loads(REFERENCE_FILE.read_text())
    assert data["cases"], "no cases in the reference file"
    worst = {}
    for case in data["cases"]:
        x = torch.tensor(case["inputs"], dtype=F64)
        if case["inputs_name"] == "circle16":
            assert torch.equal(x, circle16())
        nngp, ntk = infinite_width_kernels(x, activation=case["activation"], depth=case["depth"],
                                           w_std=case["W_std"], b_std=case["b_std"])
        errors = (rel_fro(nngp, torch.tensor(case["nngp"], dtype=F64)),
                  rel_fro(ntk, torch.tensor(case["ntk"], dtype=F64)))
        label = f"{case['activation']} depth={case['depth']} W={case['W_std']} b={case['b_std']} {case['inputs_name']}"
        assert max(errors) <= REF_RTOL[case["activation"]], f"{label}: relative errors {errors}"
        worst[case["activation"]] = max(worst.get(case["activation"], 0.0), *errors)
    assert set(worst) == {"relu", "erf"}


# --------------------------------------------------------------------------- (b) closed forms
def _relu_mean(m, s):  # E[relu(m + sZ)]
    return m * ndtr(m / s) + s * math.exp(-0.5 * (m / s) ** 2) / math.sqrt(2 * math.pi)


# E[φ(m + sZ)] and E[φ'(m + sZ)] in closed form, Z ~ N(0, 1), s > 0.
CONDITIONAL = {
    "relu": (_relu_mean, lambda m, s: ndtr(m / s)),
    "leaky_relu": (lambda m, s: _relu_mean(m, s) - LEAKY_RELU_SLOPE * _relu_mean(-m, s),
                   lambda m, s: ndtr(m / s) + LEAKY_RELU_SLOPE * ndtr(-m / s)),
    "abs": (lambda m, s: _relu_mean(m, s) + _relu_mean(-m, s),
            lambda m, s: ndtr(m / s) - ndtr(-m / s)),
    "erf": (lambda m, s: sp_erf(m / math.sqrt(1 + 2 * s * s)),
            lambda m, s: 2 / math.sqrt(math.pi) * math.exp(-m * m / (1 + 2 * s * s)) / math.sqrt(1 + 2 * s * s)),
    "identity": (lambda m, s: m, lambda m, s: 1.0),
}
NUMPY_FN = {
    "relu": (lambda x: np.maximum(x, 0), lambda x: (x > 0) * 1.0),
    "leaky_relu": (lambda x: np.where(x > 0, x, LEAKY_RELU_SLOPE * x),
                   lambda x: np.where(x > 0, 1.0, LEAKY_RELU_SLOPE)),
    "abs": (np.abs, np.sign),
    "erf": (sp_erf, lambda x: 2 / np.sqrt(np.pi) * np.exp(-x * x)),
    "identity": (lambda x: x, lambda x: 1.0),
}
CLOSED_FORMS = sorted(CONDITIONAL)


def quad_dual(name, q11, q22, rho):
    """(E[φ(u)φ(v)], E[φ'(u)φ'(v)]) by adaptive 1-D quadrature over u of E[·(v) | u]."""
    fn, dfn = NUMPY_FN[name]
    cond, dcond = CONDITIONAL[name]
    s = math.sqrt(q22 * (1 - rho * rho))
    results = []
    for outer, inner in ((fn, cond), (dfn, dcond)):
        def integrand(z):
            return float(outer(math.sqrt(q11) * z)) * inner(math.sqrt(q22) * rho * z, s) \
                * math.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
        total = sum(integrate.quad(integrand, a, b, epsabs=1e-15, epsrel=1e-12, limit=200)[0]
                    for a, b in ((-np.inf, 0.0), (0.0, np.inf)))  # the kink is at 0
        results.append(total)
    return results


TRIPLES = [(q11, q22, rho) for q11, q22 in ((0.5, 2.0), (1.3, 1.3)) for rho in (-0.95, -0.3, 0.0, 0.6, 0.99)]


@pytest.mark.parametrize("name", CLOSED_FORMS)
def test_closed_form_duals_against_quadrature(name):
    dual = ACTIVATIONS[name].dual
    for q11, q22, rho in TRIPLES:
        q12 = rho * math.sqrt(q11 * q22)
        got = dual(torch.tensor(q11, dtype=F64), torch.tensor(q12, dtype=F64), torch.tensor(q22, dtype=F64))
        want = quad_dual(name, q11, q22, rho)
        for g, w in zip(got, want):
            assert abs(g.item() - w) <= DUAL_QUAD_RTOL * max(abs(w), math.sqrt(q11 * q22) * 1e-3), \
                (name, q11, q22, rho, g.item(), w)


@pytest.mark.parametrize("name", CLOSED_FORMS)
def test_closed_form_duals_satisfy_price_theorem(name):
    """d E[φ(u)φ(v)] / d q12 = E[φ'(u)φ'(v)] (Price 1958), by central differences."""
    dual = ACTIVATIONS[name].dual
    q11, q22 = torch.tensor(0.7, dtype=F64), torch.tensor(1.9, dtype=F64)
    for rho in (-0.8, -0.2, 0.0, 0.5, 0.9):
        q12 = rho * math.sqrt(0.7 * 1.9)
        h = 1e-5
        up = dual(q11, torch.tensor(q12 + h, dtype=F64), q22)[0]
        down = dual(q11, torch.tensor(q12 - h, dtype=F64), q22)[0]
        slope = ((up - down) / (2 * h)).item()
        assert slope == pytest.approx(dual(q11, torch.tensor(q12, dtype=F64), q22)[1].item(), rel=1e-7, abs=1e-9)


def test_closed_form_duals_at_correlation_one_minus_one_and_zero_variance():
    a = LEAKY_RELU_SLOPE
    q1, q2 = 0.8, 1.8
    s = math.sqrt(q1 * q2)
    expected = {  # name: ((ρ = 1), (ρ = −1), (q11 = 0, q22 = q2)), each (E[φφ], E[φ'φ'])
        "relu": ((s / 2, 0.5), (0.0, 0.0), (0.0, 0.0)),
        "leaky_relu": (((1 + a * a) * s / 2, (1 + a * a) / 2), (-a * s, a), (0.0, a * (1 + a) / 2)),
        "abs": ((s, 1.0), (s, -1.0), (0.0, 0.0)),  # |u||−cu| = c u²
        "identity": ((s, 1.0), (-s, 1.0), (0.0, 1.0)),
        "erf": ((2 / math.pi * math.asin(2 * s / math.sqrt((1 + 2 * q1) * (1 + 2 * q2))),
                 4 / math.pi / math.sqrt(1 + 2 * q1 + 2 * q2)),
                (-2 / math.pi * math.asin(2 * s / math.sqrt((1 + 2 * q1) * (1 + 2 * q2))),
                 4 / math.pi / math.sqrt(1 + 2 * q1 + 2 * q2)),
                (0.0, 4 / math.pi / math.sqrt(1 + 2 * q2))),
    }
    t = lambda v: torch.tensor(v, dtype=F64)  # noqa: E731
    for name, (at_one, at_minus_one, degenerate) in expected.items():
        dual = ACTIVATIONS[name].dual
        # rounding pushes |q12| past s: the clamp must absorb it
        for q12, want in ((s * (1 + 1e-15), at_one), (-s * (1 + 1e-15), at_minus_one)):
            got = dual(t(q1), t(q12), t(q2))
            assert [g.item() for g in got] == pytest.approx(want, rel=1e-12, abs=1e-15), (name, q12)
        got = dual(t(0.0), t(0.0), t(q2))
        assert [g.item() for g in got] == pytest.approx(degenerate, abs=1e-15), name
        got_both = dual(t(0.0), t(0.0), t(0.0))
        assert all(torch.isfinite(g).all() for g in got_both), name


@pytest.mark.filterwarnings("ignore:infinite_width_kernels.*Hermite:RuntimeWarning")
@pytest.mark.parametrize("name", CLOSED_FORMS)
def test_closed_forms_against_the_series_path(name):
    act = get_activation(name)
    as_series = dataclasses.replace(act, dual=None)
    x = random_inputs(12, 3, seed=3)
    rtol = SMOOTH_SERIES_RTOL if name in ("erf", "identity") else KINK_SERIES_RTOL
    for depth, w_std, b_std in ((1, 1.0, 0.0), (3, 1.4, 0.3)):
        exact = infinite_width_kernels(x, activation=act, depth=depth, w_std=w_std, b_std=b_std)
        series = infinite_width_kernels(x, activation=as_series, depth=depth, w_std=w_std, b_std=b_std)
        for e, s in zip(exact, series):
            assert rel_fro(s, e) <= rtol, (name, depth)


# --------------------------------------------------------------------------- (c) series path
SMOOTH = ("tanh", "gelu", "sigmoid", "softplus")


def series_activation(name):
    """The activation with its closed form (gelu's) removed, so that the series path is tested."""
    return dataclasses.replace(ACTIVATIONS[name], dual=None)


def test_hermite_table_is_orthonormal():
    _, _, table = _hermite_table("cpu")
    assert table.shape[0] == SERIES_MAX_DEGREE + 1
    gram = table @ table.T
    assert torch.allclose(gram, torch.eye(gram.shape[0], dtype=F64), atol=1e-12, rtol=0)


@pytest.mark.parametrize("name", SMOOTH)
def test_series_default_degree_matches_highest_degree(name):
    x = random_inputs(10, 4, seed=5)
    x = x / x.norm(dim=1, keepdim=True) * 2.0  # Σ¹(x, x) = w_std² + b_std²
    for depth, w_std, b_std in ((1, 1.0, 0.0), (3, 1.5, 0.2)):
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # moderate variances: the default meets its tolerance
            default = infinite_width_kernels(x, activation=series_activation(name), depth=depth,
                                             w_std=w_std, b_std=b_std)
        highest = infinite_width_kernels(x, activation=series_activation(name), depth=depth,
                                         w_std=w_std, b_std=b_std, quadrature_degree=SERIES_MAX_DEGREE)
        for a, b in zip(default, highest):
            assert rel_fro(a, b) <= SERIES_RTOL, (name, depth)


def brute_force_dual(name, q11, q22, rho, h=0.02, half_width=9.0):
    """2-D midpoint rule in (z1, z2) on [−9, 9]²: for integrands analytic in a strip the error
    is exp(−2π·strip/h), far below 1e-12 here; Gaussian tails beyond 9 are < 1e-17."""
    act = ACTIVATIONS[name]
    z = torch.arange(-half_width + h / 2, half_width, h, dtype=F64)
    w = h * torch.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
    z1, z2 = z[:, None], z[None, :]
    u = math.sqrt(q11) * z1
    v = math.sqrt(q22) * (rho * z1 + math.sqrt(max(1 - rho * rho, 0.0)) * z2)
    ww = w[:, None] * w[None, :]
    return ((ww * act.fn(u) * act.fn(v)).sum().item(),
            (ww * act.derivative(u) * act.derivative(v)).sum().item())


@pytest.mark.parametrize("name", SMOOTH)
def test_series_against_brute_force_2d_quadrature(name):
    # depth 1, w_std 1, b_std 0: nngp(x1, x2) = E[φ(u)φ(v)] and ntk = nngp + E[φ'(u)φ'(v)]·q12,
    # with (q11, q12, q22) set by x1, x2 ∈ R² (Σ¹ = x·x'/2).
    for q11, q22, rho in ((0.4, 1.6, 0.3), (1.2, 0.9, -0.7), (1.0, 2.0, 0.999), (0.7, 1.1, 1.0)):
        x1 = torch.tensor([[math.sqrt(2 * q11), 0.0]], dtype=F64)
        x2 = math.sqrt(2 * q22) * torch.tensor([[rho, math.sqrt(1 - rho * rho)]], dtype=F64)
        nngp, ntk = infinite_width_kernels(x1, x2, activation=series_activation(name), depth=1)
        q12 = rho * math.sqrt(q11 * q22)
        e_phi, e_dphi = brute_force_dual(name, q11, q22, rho)
        assert nngp.item() == pytest.approx(e_phi, rel=SERIES_RTOL, abs=1e-12), (name, rho)
        assert ntk.item() == pytest.approx(e_phi + e_dphi * q12, rel=SERIES_RTOL, abs=1e-12), (name, rho)


def test_user_supplied_activation_without_dual():
    from ntk_lab.layers.activations import Activation

    def swish(x):
        return x * torch.sigmoid(x)

    def swish_derivative(x):
        s = torch.sigmoid(x)
        return s + x * s * (1 - s)

    act = Activation("swish", swish, swish_derivative)
    x = random_inputs(6, 3, seed=8)
    nngp, ntk = infinite_width_kernels(x, activation=act, depth=2, w_std=1.2, b_std=0.1)
    assert torch.isfinite(ntk).all() and torch.equal(ntk, ntk.T)
    # depth 1 against brute force, one pair
    x1, x2 = x[:1] / x[:1].norm() * math.sqrt(6.0), x[1:2] / x[1:2].norm() * math.sqrt(3.0)  # q = 2, 1
    nngp, _ = infinite_width_kernels(x1, x2, activation=act, depth=1)
    rho = float((x1 @ x2.T) / (x1.norm() * x2.norm()))
    z = torch.arange(-9 + 0.01, 9, 0.02, dtype=F64)
    w = 0.02 * torch.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
    u = math.sqrt(2.0) * z[:, None]
    v = math.sqrt(1.0) * (rho * z[:, None] + math.sqrt(1 - rho * rho) * z[None, :])
    want = (w[:, None] * w[None, :] * swish(u) * swish(v)).sum().item()
    assert nngp.item() == pytest.approx(want, rel=SERIES_RTOL)


# --------------------------------------------------------------------------- (d) Monte-Carlo
# For depth 1 the expectation over initializations of the finite network's NTK (and of its
# output covariance) equals the infinite-width value EXACTLY at any width: the first layer's
# pre-activations are exactly Gaussian with covariance Σ¹ and the readout is independent of
# them. For depth ≥ 2 the hidden pre-activations are only Gaussian as n → ∞ and the mean is
# off by O(depth/width) (Hanin & Nica 2019; Dyer & Gur-Ari 2019). We allow
# MC_BIAS_CONST · depth/width · max|Θ_∞|; measured biases are ≤ 0.4 · depth/width (relu,
# σ_w = 1.5, width 64, 2000 networks), so MC_BIAS_CONST = 1 leaves a margin of 2.5.
MC_SIGMAS = 5.0
MC_BIAS_CONST = 1.0


def mc_inputs() -> torch.Tensor:
    x = random_inputs(4, 3, seed=11)
    near_duplicate = x[:1] + 0.05 * random_inputs(1, 3, seed=12)
    return torch.cat([x, near_duplicate])


def mc_tolerance(se, depth, width, reference):
    bias = 0.0 if depth == 1 else MC_BIAS_CONST * depth / width * reference.abs().max()
    rounding = 1e-12 * reference.abs().max()  # entries that are deterministic (se = 0)
    return MC_SIGMAS * se + bias + rounding


def sample_ntks(x, act, depth, w_std, b_std, width, n_nets, parameterization="ntk"):
    thetas = torch.stack([
        empirical_ntk(MLP(x.shape[1], width, depth, out_dim=1, activation=act, parameterization=parameterization, w_std=w_std, b_std=b_std,
                          seed=1000 + s, dtype=F64), x, method="structured", mode="trace")
        for s in range(n_nets)])
    return thetas.mean(0), thetas.std(0) / math.sqrt(n_nets)


MC_NTK_CASES = [  # (activation, depth, w_std, b_std, width, networks)
    ("relu", 1, 1.0, 0.0, 8192, 32),
    ("erf", 1, 1.5, 0.3, 8192, 32),
    ("tanh", 1, 1.2, 0.1, 8192, 32),
    ("relu", 3, 1.5, 0.3, 256, 160),
    ("erf", 3, 1.0, 0.0, 256, 160),
    ("tanh", 3, 1.5, 0.3, 256, 160),
]


@pytest.mark.physics
@pytest.mark.parametrize("act, depth, w_std, b_std, width, n_nets", MC_NTK_CASES)
def test_mean_empirical_ntk_converges_to_theta_inf(act, depth, w_std, b_std, width, n_nets):
    x = mc_inputs()
    _, theta_inf = infinite_width_kernels(x, activation=act, depth=depth, w_std=w_std, b_std=b_std)
    mean, se = sample_ntks(x, act, depth, w_std, b_std, width, n_nets)
    tol = mc_tolerance(se, depth, width, theta_inf)
    assert tol.max() < 0.1 * theta_inf.abs().max(), "test has lost its power"
    assert ((mean - theta_inf).abs() <= tol).all(), ((mean - theta_inf) / se)


@pytest.mark.physics
@pytest.mark.parametrize("act, depth, w_std, b_std, width", [
    ("tanh", 1, 1.3, 0.2, 1024), ("relu", 2, 1.2, 0.1, 512), ("erf", 3, 1.0, 0.0, 256)])
def test_output_covariance_converges_to_nngp(act, depth, w_std, b_std, width):
    """E[f_o(x) f_o(x')] = NNGP: many outputs per network (independent given the features),
    the per-network average as one sample, the spread across networks as its error."""
    x = mc_inputs()
    nngp, _ = infinite_width_kernels(x, activation=act, depth=depth, w_std=w_std, b_std=b_std)
    samples = []
    with torch.no_grad():
        for s in range(96):
            f = MLP(3, width, depth, out_dim=256, activation=act, parameterization="ntk", w_std=w_std, b_std=b_std, seed=2000 + s, dtype=F64)(x)
            samples.append(f @ f.T / f.shape[1])
    samples = torch.stack(samples)
    mean, se = samples.mean(0), samples.std(0) / math.sqrt(samples.shape[0])
    tol = mc_tolerance(se, depth, width, nngp)
    assert tol.max() < 0.1 * nngp.abs().max(), "test has lost its power"
    assert ((mean - nngp).abs() <= tol).all(), ((mean - nngp) / se)


# --------------------------------------------------------------------------- (e) safety
SAFETY_DEPTHS = (1, 20)


def awkward_inputs() -> torch.Tensor:
    x = random_inputs(5, 4, seed=21)
    return torch.cat([x, torch.zeros(1, 4), x[:1], 3.0 * x[1:2], -x[2:3]])  # zero, duplicate, ρ = 1, ρ = −1


@pytest.mark.filterwarnings("ignore:infinite_width_kernels.*Hermite:RuntimeWarning")
@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_numerical_safety(name):
    x = awkward_inputs()
    for depth in SAFETY_DEPTHS:
        for b_std in (0.0, 0.1):
            nngp, ntk = infinite_width_kernels(x, activation=name, depth=depth, w_std=1.0, b_std=b_std)
            for k in (nngp, ntk):
                assert k.dtype == F64 and k.shape == (9, 9)
                assert torch.isfinite(k).all(), (name, depth, b_std)
                assert torch.equal(k, k.T)
                assert (k.diagonal() >= 0).all()
                if b_std > 0:
                    assert (k.diagonal() > 0).all()
                eig = torch.linalg.eigvalsh(k)
                assert eig.min() >= -1e-9 * eig.max().clamp_min(1e-300), (name, depth, b_std)
            assert (ntk.diagonal() >= nngp.diagonal() * (1 - 1e-12)).all()
            # the duplicate row equals the original's (exactly for closed forms; for the
            # series the diagonal is the exact moment and the duplicate pair the series at ρ = 1)
            scale = nngp.abs().max()
            assert torch.allclose(nngp[6], nngp[0], rtol=0, atol=1e-8 * scale)
            cross_nngp, cross_ntk = infinite_width_kernels(x, -x, activation=name, depth=depth, b_std=b_std)
            assert torch.isfinite(cross_nngp).all() and torch.isfinite(cross_ntk).all()
            if name in ("erf", "tanh", "identity") and b_std == 0.0:  # odd φ: K(x, −x') = −K(x, x')
                same_nngp, same_ntk = infinite_width_kernels(x, x.clone(), activation=name, depth=depth)
                assert torch.allclose(cross_nngp, -same_nngp, rtol=1e-12, atol=1e-14 * scale)
                assert torch.allclose(cross_ntk, -same_ntk, rtol=1e-12, atol=1e-14 * ntk.abs().max())


def test_zero_input_gives_the_degenerate_values():
    x = awkward_inputs()
    for name in ("relu", "abs"):  # φ(0) = φ'(0) = 0 and b_std = 0: the zero point's row is 0
        nngp, ntk = infinite_width_kernels(x, activation=name, depth=3)
        assert torch.equal(nngp[5], torch.zeros(9, dtype=F64)) and torch.equal(ntk[5], torch.zeros(9, dtype=F64))
    nngp, ntk = infinite_width_kernels(x, activation="sigmoid", depth=2)  # φ(0) ≠ 0: not zero
    assert (nngp[5] > 0).all()


def test_device_and_dtype_of_inputs_are_kept():
    x = random_inputs(4, 3, seed=1).float()
    nngp, ntk = infinite_width_kernels(x, activation="tanh", depth=2)
    assert nngp.dtype == ntk.dtype == F64 and nngp.device == x.device


def test_empty_inputs_and_inputs_that_require_grad():
    for name in ("relu", "tanh"):
        assert infinite_width_kernels(torch.zeros(0, 3), activation=name, depth=2)[1].shape == (0, 0)
        assert infinite_width_kernels(torch.zeros(0, 3), torch.ones(4, 3), activation=name, depth=2)[1].shape == (0, 4)
        x = random_inputs(4, 3, seed=1).requires_grad_()
        nngp, ntk = infinite_width_kernels(x, activation=name, depth=2)
        assert not ntk.requires_grad and torch.isfinite(ntk).all()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    x = random_inputs(300, 5, seed=2)
    for name in ("relu", "erf", "tanh"):
        cpu = infinite_width_kernels(x, activation=name, depth=3, w_std=1.3, b_std=0.2)
        gpu = infinite_width_kernels(x.cuda(), activation=name, depth=3, w_std=1.3, b_std=0.2)
        for c, g in zip(cpu, gpu):
            assert g.device.type == "cuda" and g.dtype == F64
            assert rel_fro(g.cpu(), c) <= 1e-12


def test_x2_none_equals_x2_x1():
    x = random_inputs(7, 3, seed=4)
    implicit = infinite_width_kernels(x, activation="tanh", depth=2, w_std=1.2, b_std=0.1)
    explicit = infinite_width_kernels(x, x.clone(), activation="tanh", depth=2, w_std=1.2, b_std=0.1)
    for a, c in zip(implicit, explicit):
        assert torch.allclose(a, c, rtol=0, atol=1e-9 * a.abs().max())  # series bound, not bitwise


@pytest.mark.physics
@pytest.mark.parametrize("act, depth, w_std, b_std, width, n_nets", [
    ("relu", 1, 1.3, 0.2, 4096, 48), ("tanh", 2, 1.2, 0.1, 512, 96)])
def test_mup_theta_inf_is_the_mean_of_finite_mup_networks(act, depth, w_std, b_std, width, n_nets):
    """μP's Θ_∞ (the kernel of ``parameterization="mup"``) against the Monte-Carlo mean of
    finite μP networks' empirical NTKs: μP moves width factors between the initialization and
    the multipliers, and only an independent sample shows the kernel at init is unchanged."""
    x = mc_inputs()
    _, theta_inf = infinite_width_kernels(x, activation=act, depth=depth, w_std=w_std, b_std=b_std,
                                          parameterization="mup")
    mean, se = sample_ntks(x, act, depth, w_std, b_std, width, n_nets, parameterization="mup")
    tol = mc_tolerance(se, depth, width, theta_inf)
    assert tol.max() < 0.1 * theta_inf.abs().max(), "test has lost its power"
    assert ((mean - theta_inf).abs() <= tol).all(), ((mean - theta_inf) / se)


def test_tiles_cover_large_inputs():
    """More points than one 256 × 256 tile, symmetric and not: every entry is written."""
    x = random_inputs(600, 3, seed=6)
    y = random_inputs(300, 3, seed=7)
    for name in ("relu", "tanh"):
        full = infinite_width_kernels(x, activation=name, depth=2, b_std=0.1)
        cross = infinite_width_kernels(x, y, activation=name, depth=2, b_std=0.1)
        small = infinite_width_kernels(x[:40], y[:30], activation=name, depth=2, b_std=0.1)
        for f, c, s in zip(full, cross, small):
            assert torch.isfinite(f).all() and torch.equal(f, f.T)
            # tiles differ between calls, so do the series degrees: equal within the series bound
            assert torch.allclose(c[:40, :30], s, rtol=0, atol=1e-9 * s.abs().max())
        blocks = infinite_width_kernels(x[:300], x[300:], activation=name, depth=2, b_std=0.1)
        assert torch.allclose(full[1][:300, 300:], blocks[1], rtol=0, atol=1e-9 * blocks[1].abs().max())


# --------------------------------------------------------------------------- (f) standard
STANDARD_CASES = [  # depth 1: exact expectation at any width; depth 2: O(1/width) bias
    ("relu", 1, 1.0, 0.0, 1024, 64),
    ("erf", 1, 1.5, 0.3, 1024, 64),
    ("relu", 2, 1.2, 0.1, 256, 160),
    ("tanh", 2, 1.3, 0.0, 256, 160),
]


@pytest.mark.physics
@pytest.mark.parametrize("act, depth, w_std, b_std, width, n_nets", STANDARD_CASES)
def test_standard_parameterization_against_finite_networks(act, depth, w_std, b_std, width, n_nets):
    """neural-tangents' 'standard' NTK, ntk = n_in·nngp_in + 1 + W_std²·ntk_in per layer, is the
    exact mean of the finite standard network's NTK for depth 1 and its leading order in 1/n
    for deeper ones. A zero input is included: with b_std = 0 its first-layer
    pre-activations are exactly 0, which checks the degenerate convention φ'(0)."""
    x = torch.cat([mc_inputs(), torch.zeros(1, 3, dtype=F64)])
    nngp_std, theta_inf = infinite_width_kernels(x, activation=act, depth=depth, w_std=w_std, b_std=b_std,
                                                 parameterization="standard", width=width)
    nngp_ntk, _ = infinite_width_kernels(x, activation=act, depth=depth, w_std=w_std, b_std=b_std)
    assert torch.equal(nngp_std, nngp_ntk)  # the NNGP does not depend on the parameterization
    mean, se = sample_ntks(x, act, depth, w_std, b_std, width, n_nets, parameterization="standard")
    tol = mc_tolerance(se, depth, width, theta_inf)
    assert tol.max() < 0.1 * theta_inf.abs().max(), "test has lost its power"
    assert ((mean - theta_inf).abs() <= tol).all(), ((mean - theta_inf) / se)


# neural-tangents' kernel_fn of standard-parameterized MLPs in float64, made once by
# scripts/make_nt_standard_reference.py (its docstring has the command and the versions).
NT_STANDARD = json.loads((Path(__file__).parent / "data" / "nt_standard_reference.json").read_text())
# Smooth duals and identity: both sides evaluate the same float64 recursion; agreement is
# ~1e-15 (measured), 1e-12 leaves room for summation order. The arc-cosine family: as
# RELU_REF_RTOL (neural-tangents clips correlations just below 1; measured ≤ 4e-9 here).
NT_STANDARD_RTOL = {"erf": 1e-12, "identity": 1e-12, "relu": RELU_REF_RTOL,
                    "leaky_relu": RELU_REF_RTOL, "abs": RELU_REF_RTOL}


@pytest.mark.parametrize("case", NT_STANDARD["cases"],
                         ids=lambda c: f"{c['activation']}-d{c['depth']}-n{c['width']}")
def test_standard_parameterization_against_neural_tangents(case):
    """Θ_∞ and NNGP_∞ of ``parameterization="standard"`` MLPs (hidden fan-in = width) against
    neural-tangents. The last input is x = 0: with b_std = 0 its first pre-activations are
    exactly 0, where neural-tangents evaluates the arc-cosine formula (E[φ'φ'] = 1/4 for relu)
    while a finite network's autograd gives relu'(0) = 0; ntk_lab follows the finite network
    (test_standard_parameterization_against_finite_networks checks that point), so that
    point is compared only where b_std > 0 or the activation is smooth at 0."""
    x = torch.tensor(NT_STANDARD["x"], dtype=F64)
    act = case["activation"]
    nngp, ntk = infinite_width_kernels(x, activation=act, depth=case["depth"],
                                       w_std=case["w_std"], b_std=case["b_std"],
                                       parameterization="standard", width=case["width"])
    degenerate = case["b_std"] == 0 and act in ("relu", "leaky_relu", "abs")
    keep = slice(0, 4) if degenerate else slice(None)
    for ours, name in ((nngp, "nngp"), (ntk, "ntk")):
        ref = torch.tensor(case[name], dtype=F64)
        error = rel_fro(ours[keep, keep], ref[keep, keep])
        assert error <= NT_STANDARD_RTOL[act], (name, error)
    if degenerate and act == "relu" and case["depth"] == 1:  # the convention, stated
        ref = torch.tensor(case["ntk"], dtype=F64)
        assert ref[4, 4] - ntk[4, 4] == pytest.approx(case["w_std"] ** 2 / 4, rel=1e-12)


# --------------------------------------------------------------------------- (g) errors
def test_unknown_activation_lists_the_known_ones():
    with pytest.raises(ValueError) as info:
        infinite_width_kernels(random_inputs(2, 2, 0), activation="swishy", depth=1)
    for name in ACTIVATIONS:
        assert name in str(info.value)


@pytest.mark.parametrize("kwargs, match", [
    (dict(parameterization="mean_field"), "parameterization"),
    (dict(depth=0), "depth"),
    (dict(depth=2.0), "depth"),
    (dict(parameterization="standard"), "width"),
    (dict(parameterization="standard", width=0), "width"),
    (dict(quadrature_degree=SERIES_MAX_DEGREE + 1), "quadrature_degree"),
])
def test_bad_arguments(kwargs, match):
    args = dict(activation="tanh", depth=1) | kwargs
    with pytest.raises(ValueError, match=match):
        infinite_width_kernels(random_inputs(3, 2, 0), **args)


def test_bad_shapes():
    with pytest.raises(ValueError, match="shape"):
        infinite_width_kernels(torch.ones(3), activation="relu", depth=1)
    with pytest.raises(ValueError, match="dimension"):
        infinite_width_kernels(torch.ones(3, 2), torch.ones(3, 4), activation="relu", depth=1)
