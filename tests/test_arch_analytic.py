"""Θ_∞ and NNGP_∞ of conv nets and residual MLPs by composed layer maps.

Checks, from strongest to broadest:
(a) neural-tangents 0.6.5 float64 reference values (copied into tests/data; the shared file
    too when present), relu and erf, to 1e-7 relative Frobenius;
(b) an independent NumPy implementation of the CNN recursion (explicit P²×P² stencil
    operator, every position pair, closed forms written out) for both paddings and readouts;
(c) the composed MLP against the keyword form, every activation and parameterization;
(d) one code path for every activation: a closed-form activation stripped of its dual goes
    through the Hermite series and agrees;
(e) Monte-Carlo: the mean empirical NTK of wide random CNNs and ResMLPs;
(f) tiling, symmetry, budgets; (g) argument errors.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from ntk_lab.layers.activations import ACTIVATIONS, get_activation
from ntk_lab.kernels import empirical_ntk, infinite_width_kernels
from ntk_lab.kernels.composed import composed_kernels
from ntk_lab.layers import KernelState, Nonlinearity
from ntk_lab.models import CNN, MLP, PARAMETERIZATIONS, ResMLP

F64 = torch.float64
DATA_FILE = Path(__file__).resolve().parent / "data" / "nt_arch_reference.json"
SHARED_FILE = Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "nt_arch_kernels.json"

# The issue's target: neural-tangents' values to 1e-7 relative Frobenius. (ReLU: neural-
# tangents clips correlations just below 1, ~1e-8 relative; we measure ≤ 2e-9. erf: ~1e-15.)
REF_RTOL = 1e-7
# The same recursion evaluated two ways in float64 (stencil shifts vs an explicit operator
# matrix; the arc-cosine forms via atan2 vs arccos of a rounded ρ). Smooth closed forms agree
# to round-off. ReLU's E[φ'φ'] = (π − arccos ρ)/2π has infinite slope at ρ = 1 (every
# position with itself): a rounding ε in ρ moves it by √(2ε)/2π ≈ 3e-9, so ReLU gets 1e-8.
INDEPENDENT_RTOL = {"erf": 1e-12, "relu": 1e-8}
# Two tilings of the same inputs round the first covariances differently: as above, ReLU at
# ρ = 1 turns ~1e-16 into ~1e-9 at worst.
TILING_RTOL = 1e-8
# Series path vs closed form: the Hermite series is built to 1e-10 per layer (Parseval bound).
SERIES_RTOL = 1e-9
# Monte-Carlo: as tests/test_analytic.py — depth 1 has no finite-width bias, deeper networks
# are off by O(depth/width) (measured ≤ 0.4·depth/width there); 5 standard errors.
MC_SIGMAS = 5.0
MC_BIAS_CONST = 1.0


def rel_fro(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def build(case: dict, x: torch.Tensor) -> nn.Module:
    if case["arch"] == "cnn":
        return CNN(x.shape[1], 4, case["depth"], out_dim=1, activation=case["activation"], parameterization=case["parameterization"],
                   w_std=case["w_std"], b_std=case["b_std"], kernel_size=case["kernel_size"], padding=case["padding"], readout=case["readout"],
                   spatial_shape=x.shape[2:])
    return ResMLP(x.shape[1], 4, case["depth"], out_dim=1, activation=case["activation"], parameterization=case["parameterization"],
                  w_std=case["w_std"], b_std=case["b_std"], branch_scale=case["branch_scale"])


def check_cases(cases, inputs_of) -> None:
    assert cases, "no reference cases"
    for case in cases:
        x = torch.tensor(inputs_of(case), dtype=F64)
        nngp, ntk = infinite_width_kernels(x, model=build(case, x))
        label = {k: v for k, v in case.items() if k not in ("nngp", "ntk", "inputs")}
        assert rel_fro(nngp, torch.tensor(case["nngp"], dtype=F64)) < REF_RTOL, label
        assert rel_fro(ntk, torch.tensor(case["ntk"], dtype=F64)) < REF_RTOL, label


# --------------------------------------------------------------------------- (a) reference
def test_reference_values_copied_into_the_tests():
    data = json.loads(DATA_FILE.read_text())
    assert {c["arch"] for c in data["cases"]} == {"cnn", "resmlp"}
    assert {c["activation"] for c in data["cases"]} == {"relu", "erf"}
    check_cases(data["cases"], lambda c: data["inputs"][c["inputs_name"]])


@pytest.mark.skipif(not SHARED_FILE.is_file(), reason=f"{SHARED_FILE} not present")
def test_shared_reference_file_all_cases():
    data = json.loads(SHARED_FILE.read_text())
    check_cases(data["cases"], lambda c: c["inputs"])


# --------------------------------------------------------------------------- (b) independent
def numpy_cnn_kernels(x: np.ndarray, act: str, depth: int, w_std: float, b_std: float, k: int,
                      padding: str, readout: str) -> tuple[np.ndarray, np.ndarray]:
    """The CNN recursion of Novak et al. 2019 / Arora et al. 2019 with nothing shared with the
    library: the stencil as an explicit (P², P²) matrix, all position pairs, all input pairs."""
    n, c, h, w = x.shape
    p = h * w
    op = np.zeros((p * p, p * p))
    r = k // 2
    for (h1, w1), (h2, w2) in itertools.product(itertools.product(range(h), range(w)), repeat=2):
        for oh, ow in itertools.product(range(-r, r + 1), repeat=2):
            a, b, a2, b2 = h1 + oh, w1 + ow, h2 + oh, w2 + ow
            if padding == "circular":
                a, b, a2, b2 = a % h, b % w, a2 % h, b2 % w
            elif not (0 <= a < h and 0 <= b < w and 0 <= a2 < h and 0 <= b2 < w):
                continue
            op[(h1 * w + w1) * p + h2 * w + w2, (a * w + b) * p + a2 * w + b2] += 1.0 / k ** 2
    flat = x.reshape(n, c, p)
    cov = np.einsum("icp,jcq->ijpq", flat, flat).reshape(n * n, p * p) / c
    ntk = np.zeros_like(cov)
    w2, b2 = w_std ** 2, b_std ** 2
    for layer in range(depth):
        sigma = w2 * cov @ op.T + b2
        ntk = sigma + w2 * ntk @ op.T
        s4 = sigma.reshape(n, n, p, p)
        var = np.stack([np.diag(s4[i, i]) for i in range(n)])  # (n, p)
        q1 = var[:, None, :, None]
        q2 = var[None, :, None, :]
        if act == "relu":
            rho = np.clip(s4 / np.sqrt(q1 * q2), -1.0, 1.0)
            theta = np.arccos(rho)
            e_phi = np.sqrt(q1 * q2) * (np.sqrt(1 - rho ** 2) + (np.pi - theta) * rho) / (2 * np.pi)
            e_dphi = (np.pi - theta) / (2 * np.pi)
        else:  # erf (Williams 1997)
            denom = (1 + 2 * q1) * (1 + 2 * q2)
            e_phi = 2 / np.pi * np.arcsin(2 * s4 / np.sqrt(denom))
            e_dphi = 4 / np.pi / np.sqrt(denom - 4 * s4 ** 2)
        cov = e_phi.reshape(n * n, p * p)
        ntk = (e_dphi * ntk.reshape(n, n, p, p)).reshape(n * n, p * p)
    cov4, ntk4 = cov.reshape(n, n, p, p), ntk.reshape(n, n, p, p)
    if readout == "gap":
        k_r, t_r = cov4.mean((2, 3)), ntk4.mean((2, 3))
    else:
        k_r, t_r = np.einsum("ijpp->ij", cov4) / p, np.einsum("ijpp->ij", ntk4) / p
    nngp = w2 * k_r + b2
    return nngp, nngp + w2 * t_r


@pytest.mark.parametrize("act,padding,readout,k", [
    ("relu", "same", "gap", 3), ("relu", "circular", "gap", 3), ("erf", "circular", "flatten", 3),
    ("relu", "same", "flatten", 3), ("erf", "same", "gap", 5),
])
def test_cnn_against_an_independent_numpy_implementation(act, padding, readout, k):
    x = torch.randn(3, 2, 4, 3, generator=torch.Generator().manual_seed(0), dtype=F64)
    model = CNN(2, 4, 2, out_dim=1, activation=act, parameterization="ntk", w_std=1.3, b_std=0.2, kernel_size=k, padding=padding, readout=readout, spatial_shape=(4, 3))
    nngp, ntk = infinite_width_kernels(x, model=model)
    want_nngp, want_ntk = numpy_cnn_kernels(x.numpy(), act, 2, 1.3, 0.2, k, padding, readout)
    assert rel_fro(nngp, torch.from_numpy(want_nngp)) < INDEPENDENT_RTOL[act]
    assert rel_fro(ntk, torch.from_numpy(want_ntk)) < INDEPENDENT_RTOL[act]


# --------------------------------------------------------------------------- (c) MLP
@pytest.mark.parametrize("act", [a if a in ("relu", "erf", "tanh", "leaky_relu") else
                                 pytest.param(a, marks=pytest.mark.slow) for a in sorted(ACTIVATIONS)])
def test_composed_mlp_equals_the_keyword_form(act):
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(1), dtype=F64)
    x2 = torch.randn(4, 3, generator=torch.Generator().manual_seed(2), dtype=F64)
    for parameterization in PARAMETERIZATIONS:
        net = MLP(3, 16, 3, out_dim=1, activation=act, parameterization=parameterization, w_std=1.3, b_std=0.2)
        got = infinite_width_kernels(x, x2, model=net)
        want = infinite_width_kernels(x, x2, activation=act, depth=3, w_std=1.3, b_std=0.2,
                                      parameterization=parameterization, width=16)
        tol = 1e-12 if ACTIVATIONS[act].dual is not None else SERIES_RTOL
        for g, w in zip(got, want):
            assert rel_fro(g, w) < tol, (act, parameterization)


# --------------------------------------------------------------------------- (d) one code path
@pytest.mark.parametrize("make,x", [
    (lambda a: CNN(2, 4, 2, out_dim=1, activation=a, parameterization="ntk", w_std=1.2, b_std=0.1), torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(7), dtype=F64)),
    (lambda a: CNN(2, 4, 2, out_dim=1, activation=a, parameterization="ntk", w_std=1.2, b_std=0.1, readout="flatten", padding="circular",
                   spatial_shape=(4, 4)), torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(8), dtype=F64)),
    (lambda a: ResMLP(3, 4, 2, out_dim=1, activation=a, parameterization="ntk", w_std=1.2, b_std=0.1, branch_scale=0.7), torch.randn(4, 3, generator=torch.Generator().manual_seed(9), dtype=F64)),
])  # seeded: unseeded inputs drew from the global generator at collection, a different draw per suite
def test_series_path_matches_the_closed_form_inside_conv_and_residual_nets(make, x):
    """erf without its dual goes through the Hermite series (the path of tanh, gelu, …)."""
    erf = get_activation("erf")
    series_erf = dataclasses.replace(erf, name="erf_series", dual=None)
    closed = infinite_width_kernels(x, model=make(erf))
    series = infinite_width_kernels(x, model=make(series_erf))
    for a, b in zip(series, closed):
        assert rel_fro(a, b) < SERIES_RTOL


@pytest.mark.parametrize("act", sorted(ACTIVATIONS))
def test_every_activation_gives_finite_symmetric_psd_kernels_for_a_cnn(act):
    x = torch.randn(4, 1, 4, 4, generator=torch.Generator().manual_seed(3), dtype=F64)
    x = torch.cat([x, torch.zeros(1, 1, 4, 4, dtype=F64)])  # a zero image: zero variances
    nngp, ntk = infinite_width_kernels(x, model=CNN(1, 4, 2, out_dim=1, activation=act, parameterization="ntk", w_std=1.1, b_std=0.0))
    for k in (nngp, ntk):
        assert torch.isfinite(k).all() and torch.equal(k, k.T)
        assert torch.linalg.eigvalsh(k).min() > -1e-10 * k.abs().max()


# --------------------------------------------------------------------------- (e) Monte-Carlo
def mc_check(models, x, theta_inf, depth, width):
    thetas = torch.stack([empirical_ntk(m, x, mode="trace") for m in models])
    mean, se = thetas.mean(0), thetas.std(0) / math.sqrt(len(thetas))
    bias = 0.0 if depth == 1 else MC_BIAS_CONST * depth / width * theta_inf.abs().max()
    tol = MC_SIGMAS * se + bias + 1e-12 * theta_inf.abs().max()
    assert tol.max() < 0.15 * theta_inf.abs().max(), "test has lost its power"
    assert ((mean - theta_inf).abs() <= tol).all(), ((mean - theta_inf) / se)


SLOW_PHYSICS = (pytest.mark.slow, pytest.mark.physics)
MC_CASES = [  # (kind, activation, depth, width, networks, settings); one fast, all in the physics tier
    pytest.param("cnn", "relu", 1, 64, 48, dict(padding="same", readout="gap"), marks=SLOW_PHYSICS),
    pytest.param("cnn", "erf", 2, 256, 48, dict(padding="circular", readout="flatten"), marks=SLOW_PHYSICS),
    pytest.param("cnn", "tanh", 2, 256, 48, dict(padding="same", readout="gap"), marks=SLOW_PHYSICS),
    pytest.param("resmlp", "relu", 1, 512, 48, dict(branch_scale=0.8), marks=pytest.mark.physics),
    pytest.param("resmlp", "tanh", 3, 512, 64, dict(branch_scale=1.0), marks=SLOW_PHYSICS),
]


@pytest.mark.parametrize("kind,act,depth,width,n_nets,settings", MC_CASES)
def test_mean_empirical_ntk_converges_to_theta_inf(kind, act, depth, width, n_nets, settings):
    g = torch.Generator().manual_seed(5)
    if kind == "cnn":
        x = torch.randn(3, 1, 4, 4, generator=g, dtype=F64)
        make = lambda s: CNN(1, width, depth, out_dim=1, activation=act, parameterization="ntk", w_std=1.4, b_std=0.3, spatial_shape=(4, 4),  # noqa: E731
                             seed=s, dtype=F64, **settings)
    else:
        x = torch.randn(4, 3, generator=g, dtype=F64)
        make = lambda s: ResMLP(3, width, depth, out_dim=1, activation=act, parameterization="ntk", w_std=1.4, b_std=0.3, seed=s, dtype=F64, **settings)  # noqa: E731
    _, theta_inf = infinite_width_kernels(x, model=make(0))
    mc_check([make(1000 + s) for s in range(n_nets)], x, theta_inf, depth, width)


@pytest.mark.slow
@pytest.mark.physics
def test_standard_parameterization_cnn_mean_ntk():
    """Depth 1 has no finite-width bias: E[Θ] of finite ``standard`` CNNs equals Θ_∞
    (g_w = fan_in = C_in·k², g_b = 1 in the conv and the readout)."""
    x = torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(6), dtype=F64)
    make = lambda s: CNN(2, 32, 1, out_dim=1, activation="relu", parameterization="standard", w_std=1.3, b_std=0.2, seed=s, dtype=F64)  # noqa: E731
    _, theta_inf = infinite_width_kernels(x, model=make(0))
    mc_check([make(2000 + s) for s in range(48)], x, theta_inf, 1, 32)


# --------------------------------------------------------------------------- (f) tiling
def test_tiles_symmetry_and_budget_change_nothing():
    x1 = torch.randn(7, 2, 5, 4, generator=torch.Generator().manual_seed(7), dtype=F64)
    x2 = torch.randn(4, 2, 5, 4, generator=torch.Generator().manual_seed(8), dtype=F64)
    model = CNN(2, 3, 2, out_dim=1, activation="relu", parameterization="ntk", w_std=1.2, b_std=0.1)
    layers = model.kernel_layers()
    whole = composed_kernels(layers, torch.cat([x1, x2]), tile_bytes=1 << 30)
    for tile in (8 * 400, 3 * 8 * 400, 1 << 30):  # one input pair, a few, everything
        nngp, ntk = composed_kernels(layers, x1, x2, tile_bytes=tile)
        assert rel_fro(ntk, whole[1][:7, 7:]) < TILING_RTOL and rel_fro(nngp, whole[0][:7, 7:]) < TILING_RTOL
        sym = composed_kernels(layers, x1, tile_bytes=tile)
        assert torch.equal(sym[1], sym[1].T) and rel_fro(sym[1], whole[1][:7, :7]) < TILING_RTOL
    budgeted = infinite_width_kernels(x1, x2, model=model, memory_budget_bytes=16 * 8 * 400)
    assert rel_fro(budgeted[1], whole[1][:7, 7:]) < TILING_RTOL


def test_flatten_on_the_full_state_equals_the_same_position_state():
    x = torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(9), dtype=F64)
    model = CNN(2, 3, 2, out_dim=1, activation="erf", parameterization="ntk", w_std=1.2, b_std=0.1, readout="flatten", spatial_shape=(4, 4))
    layers = model.kernel_layers()
    lean = composed_kernels(layers, x)
    full_state = KernelState.from_inputs(x, x, full=True)
    for layer in layers:
        full_state = layer.kernel_map(full_state)
    # erf is smooth: the two layouts agree to round-off
    assert rel_fro(full_state.ntk, lean[1]) < 1e-13 and rel_fro(full_state.nngp, lean[0]) < 1e-13


# --------------------------------------------------------------------------- (g) errors
def test_argument_errors():
    x = torch.randn(2, 1, 4, 4, dtype=F64)
    cnn = CNN(1, 2, 1, out_dim=1)
    with pytest.raises(ValueError, match="not both"):
        infinite_width_kernels(x, model=cnn, activation="relu", depth=1)
    with pytest.raises(ValueError, match="activation= and depth="):
        infinite_width_kernels(torch.randn(2, 3))
    with pytest.raises(ValueError, match="no known infinite-width limit"):
        infinite_width_kernels(x, model=nn.Sequential(nn.Flatten(), nn.Linear(16, 1)))
    with pytest.raises(ValueError, match="does not fit CNN"):
        infinite_width_kernels(torch.randn(2, 3, 4, 4), model=cnn)
    with pytest.raises(ValueError, match="same input shape"):
        infinite_width_kernels(x, torch.randn(2, 1, 5, 5), model=cnn)
    with pytest.raises(ValueError, match="readout='flatten' needs spatial_shape"):
        CNN(1, 2, 1, readout="flatten")
    with pytest.raises(ValueError, match="odd"):
        CNN(1, 2, 1, kernel_size=2)
    after_gap = [*cnn.kernel_layers()[:-1], Nonlinearity("relu")]
    with pytest.raises(ValueError, match="global average pooling"):
        composed_kernels(after_gap, x)


def test_the_known_zero_ntk_of_the_inputs_is_forgotten_once_ntk_changes():
    """A conv layer skips its stencil on Θ when the state says Θ = 0 (the inputs' state); any
    layer that replaces Θ must drop that claim, or the next conv layer would lose its Θ."""
    from ntk_lab.layers.state import KernelState

    x = torch.randn(2, 3, 5, 5, dtype=torch.float64)
    state = KernelState.from_inputs(x, x, full=True)
    assert state.zero_ntk and not state.ntk.any()
    assert not state.replace(ntk=state.ntk + 1.0).zero_ntk
    assert state.replace(nngp=state.nngp * 2.0).zero_ntk  # Θ untouched: still 0
