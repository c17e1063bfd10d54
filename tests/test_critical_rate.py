"""λ_max(Θ/N) by matrix-free Lanczos / power iteration and η_crit = 2/λ_max, against the explicit kernel.

The reference kernel is built here, independently of ntk_lab.kernels: one torch.autograd.grad per
(point, output) pair gives the rows of the (N·O)×P Jacobian J, Θ = J Jᵀ, and
torch.linalg.eigvalsh(Θ/N) its spectrum (float64 throughout).
"""

from __future__ import annotations

import math

import pytest
import torch

from ntk_lab.measures.kernel_curvature import (
    EIG_TOL, KernelTop, critical_learning_rate, top_kernel_eigenvalue,
)
from ntk_lab.models import CNN, MLP, ResMLP

# Both methods stop once a step changes the estimate by ≤ EIG_TOL. Lanczos converges
# superlinearly: what is left is below that last change (measured ≤ 1e-8 here). Power iteration
# leaves the change over 1 − (λ₂/λ₁)², ≤ 3× for these spectra (λ₂/λ₁ ≤ 0.82; measured ≤ 2e-6).
RTOL = {"lanczos": EIG_TOL, "power": 10 * EIG_TOL}
EIG_RTOL = RTOL["lanczos"]

# chunk=2 and chunk=None apply the same operator with float64 sums in another order: the
# iterates agree to rounding, amplified over the ≤ 100 steps.
CHUNK_RTOL = 1e-10

# Exact statements up to float64 rounding of sums of a few dozen terms: a Rayleigh quotient
# never exceeds λ_max, and a Krylov space that is all of R^{N·O} gives λ_max itself.
ROUNDING_RTOL = 1e-12

# 2/λ·λ in float64: two roundings.
ULP_RTOL = 4 * 2.0**-52

# float32 passes on 8 points of a width-32 net: the kernel's sums carry ~1e-7 relative rounding,
# and the float32 parameters are the float64 ones rounded (same seed), ~1e-7 each.
FLOAT32_RTOL = 1e-4


@pytest.fixture(autouse=True)
def one_thread():
    """Tensors of a few hundred numbers: on a busy 2-core machine, OpenMP hand-offs between
    threads cost far more than they save (a tiny conv2d goes from ~0.02 ms to ~13 ms)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def explicit_kernel(model, x, names=None):
    """Θ/N, (N·O, N·O) with row (i, a) = i·O + a, from per-(point, output) gradients."""
    params = [p for k, p in model.named_parameters()
              if (k in names if names is not None else p.requires_grad)]
    out = model(x)  # (N, O)
    rows = []
    for i in range(out.shape[0]):
        for a in range(out.shape[1]):
            grads = torch.autograd.grad(out[i, a], params, retain_graph=True)
            rows.append(torch.cat([g.reshape(-1) for g in grads]))
    jac = torch.stack(rows).double()  # (N·O, P)
    return jac @ jac.T / x.shape[0]


def spectrum(model, x, names=None):
    """Eigenvalues (ascending) and eigenvectors of the explicit Θ/N."""
    return torch.linalg.eigh(explicit_kernel(model, x, names))


def f64(make, n, shape, seed=1):
    g = torch.Generator().manual_seed(seed)
    return make(), torch.randn((n, *shape), generator=g, dtype=torch.float64)


CASES = {
    "mlp-O1": lambda: f64(lambda: MLP(4, 32, 2, out_dim=1, b_std=0.1, seed=0,
                                      dtype=torch.float64), 8, (4,)),
    "mlp-O3": lambda: f64(lambda: MLP(4, 32, 2, out_dim=3, activation="tanh", seed=0,
                                      dtype=torch.float64), 8, (4,)),
    "cnn-O3": lambda: f64(lambda: CNN(2, 4, 2, out_dim=3, b_std=0.1, seed=0,
                                      dtype=torch.float64), 6, (2, 5, 5)),
    "resmlp-O1": lambda: f64(lambda: ResMLP(4, 16, 2, out_dim=1, seed=0,
                                            dtype=torch.float64), 8, (4,)),
}


@pytest.mark.parametrize("method", sorted(RTOL))
@pytest.mark.parametrize("case", sorted(CASES))
def test_top_eigenvalue_matches_explicit_kernel(case, method):
    model, x = CASES[case]()
    exact = spectrum(model, x).eigenvalues[-1].item()
    top = top_kernel_eigenvalue(model, x, method=method)
    assert isinstance(top, KernelTop) and isinstance(top.value, float)
    assert top.converged and top.relative_change <= EIG_TOL and top.iterations > 1
    assert abs(top.value - exact) <= RTOL[method] * exact, (top, exact)
    assert top.value <= exact * (1 + ROUNDING_RTOL)  # a Rayleigh quotient: a lower bound


@pytest.mark.parametrize("case", ["mlp-O3", "cnn-O3"])
def test_chunks_equal_one_pass(case):
    model, x = CASES[case]()
    x = x[:5]  # chunks of 2, 2, 1: the last one ragged
    whole = top_kernel_eigenvalue(model, x, seed=3)
    parts = top_kernel_eigenvalue(model, x, seed=3, chunk=2)
    assert parts.iterations == whole.iterations
    assert parts.value == pytest.approx(whole.value, rel=CHUNK_RTOL)
    assert abs(parts.value - spectrum(model, x).eigenvalues[-1].item()) <= EIG_RTOL * parts.value


def test_names_restrict_the_kernel_to_those_parameters():
    model, x = CASES["mlp-O1"]()
    readout = [k for k, _ in model.named_parameters() if k.startswith("layers.2.")]
    assert readout
    exact = spectrum(model, x, names=readout).eigenvalues[-1].item()
    full = spectrum(model, x).eigenvalues[-1].item()
    assert exact < 0.9 * full  # the readout-only kernel is a different operator
    top = top_kernel_eigenvalue(model, x, names=readout)
    assert abs(top.value - exact) <= EIG_RTOL * exact


def test_critical_rate_is_two_over_the_top_eigenvalue():
    model, x = CASES["mlp-O3"]()
    eta, top = critical_learning_rate(model, x, seed=5)
    assert eta * top.value == pytest.approx(2.0, rel=ULP_RTOL, abs=0)
    exact = spectrum(model, x).eigenvalues[-1].item()
    assert eta == pytest.approx(2.0 / exact, rel=EIG_RTOL)


@pytest.mark.parametrize("factor,contracts", [(0.9, True), (1.1, False)])
def test_linearized_gd_is_stable_below_the_critical_rate_only(factor, contracts):
    """r_{t+1} = (I − η Θ/N) r_t: along the top eigenvector u it is multiplied by 1 − η λ_max,
    |0.8| below η_crit and |−1.2| above it; the whole residual then never grows, or blows up."""
    model = MLP(8, 512, 2, out_dim=1, b_std=0.1, seed=0, dtype=torch.float64)
    x = torch.randn(16, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    eta_crit, _ = critical_learning_rate(model, x)
    eig = spectrum(model, x)
    kernel = eig.eigenvectors @ torch.diag(eig.eigenvalues) @ eig.eigenvectors.T
    u = eig.eigenvectors[:, -1]
    eta = factor * eta_crit
    r0 = torch.randn(16, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    r1 = r0 - eta * kernel @ r0
    ratio = abs((u @ r1) / (u @ r0)).item()
    assert ratio == pytest.approx(abs(1 - 2 * factor), rel=EIG_RTOL)
    assert (ratio < 1) == contracts
    norms = [r0.norm().item()]
    r = r0
    for _ in range(60):
        r = r - eta * kernel @ r
        norms.append(r.norm().item())
    if contracts:  # every mode has |1 − η λ_i| < 1: the residual never grows
        assert all(b <= a for a, b in zip(norms, norms[1:]))
    else:  # the top mode grows by 1.2 per step
        assert norms[-1] > 100 * norms[0]


def near_degenerate():
    """A wide NTK-parameterized MLP with O = 3: Θ ≈ K ⊗ I_3, so λ₁ ≈ λ₂ ≈ λ₃ (a slow case)."""
    model = MLP(4, 256, 1, out_dim=3, b_std=0.1, seed=0, dtype=torch.float64)
    x = torch.randn(8, 4, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    top = spectrum(model, x).eigenvalues[-2:].flip(0)
    assert (top[0] - top[1]) / top[0] < 0.02  # the case is what it claims
    return model, x, top[0].item()


@pytest.mark.parametrize("method", sorted(RTOL))
def test_convergence_flag(method):
    model, x, exact = near_degenerate()
    one = top_kernel_eigenvalue(model, x, iters=1, method=method)
    assert (one.iterations, one.converged, one.relative_change) == (1, False, math.inf)
    few = top_kernel_eigenvalue(model, x, iters=3, method=method)
    assert few.iterations == 3 and not few.converged and few.relative_change > EIG_TOL
    assert few.value < (1 - 0.01) * exact  # stopped early: still far below λ_max


def test_lanczos_converges_where_power_iteration_stalls():
    model, x, exact = near_degenerate()
    lanczos = top_kernel_eigenvalue(model, x, iters=30)
    assert lanczos.converged and abs(lanczos.value - exact) <= EIG_RTOL * exact
    power = top_kernel_eigenvalue(model, x, iters=30, method="power")
    assert not power.converged and power.relative_change > EIG_TOL
    assert power.value < (1 - 1e-4) * exact


def test_lanczos_is_exact_once_the_krylov_space_is_everything():
    model, x = CASES["mlp-O3"]()
    x = x[:2]  # N·O = 6: six products span R^6
    top = top_kernel_eigenvalue(model, x, tol=0.0)
    assert top.converged and top.iterations <= 6
    exact = spectrum(model, x).eigenvalues[-1].item()
    assert top.value == pytest.approx(exact, rel=ROUNDING_RTOL)


@pytest.mark.parametrize("method", sorted(RTOL))
def test_a_zero_kernel_gives_an_infinite_critical_rate(method):
    model, x = CASES["mlp-O1"]()
    with torch.no_grad():
        model.layers[-1].weight.zero_()  # the readout blocks every gradient below it
    eta, top = critical_learning_rate(model, x, names=["layers.0.weight"], method=method)
    assert (top.value, top.converged, eta) == (0.0, True, math.inf)


def test_model_is_left_untouched():
    model, x = CASES["cnn-O3"]()
    model.layers[0].weight.requires_grad_(False)  # a frozen parameter keeps its flag
    flags = {k: p.requires_grad for k, p in model.named_parameters()}
    assert not all(flags.values())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    critical_learning_rate(model, x, iters=5)
    top_kernel_eigenvalue(model, x, iters=5, chunk=2)
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert {k: p.requires_grad for k, p in model.named_parameters()} == flags
    assert all(p.grad is None for p in model.parameters())


def test_a_float32_model_gives_a_close_value():
    model64, x = CASES["mlp-O3"]()
    model32 = MLP(4, 32, 2, out_dim=3, activation="tanh", seed=0)
    top = top_kernel_eigenvalue(model32, x.float())
    exact = spectrum(model64, x).eigenvalues[-1].item()
    assert top.value == pytest.approx(exact, rel=FLOAT32_RTOL)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    model, x = CASES["mlp-O3"]()
    cpu = top_kernel_eigenvalue(model, x)
    cuda = top_kernel_eigenvalue(model.cuda(), x.cuda(), chunk=3)
    assert cuda.value == pytest.approx(cpu.value, rel=EIG_RTOL)
