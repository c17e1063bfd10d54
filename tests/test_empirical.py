"""The empirical NTK: every method against an explicit per-sample-gradient Gram matrix and
against each other, in float64."""

from __future__ import annotations

import copy
import itertools

import pytest
import torch
from torch import nn

from ntk_lab.layers.activations import ACTIVATIONS
from ntk_lab.kernels import empirical_ntk, jacobian_change
from ntk_lab.models import MLP, PARAMETERIZATIONS, ScaledOutput

# float64 sums of a few hundred products agree to ~1e-15 relative; 1e-10 leaves room for the
# different summation orders of the methods while catching any missing term or factor.
REL_TOL = 1e-10
# Entries of these tiny kernels are O(1): a sum of four of them differs by a few ulps (~1e-15).
ROUNDOFF_ATOL = 1e-14
# The structured path expands ‖J_t − J_0‖² = ‖J_t‖² + ‖J_0‖² − 2⟨J_t, J_0⟩ in float64; with
# jac_change ≈ 0.1 the cancellation costs ~2 of 16 digits, then the square root halves the
# relative error: 1e-8 is far above that and far below any real discrepancy.
JAC_CHANGE_REL_TOL = 1e-8
# For identical parameter sets the expansion leaves √(1e-16 relative) ≈ 1e-8 of round-off.
JAC_CHANGE_ZERO_TOL = 1e-7


def explicit_ntk(model: nn.Module, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
    """Θ_op(a, b) = ⟨∇_θ f_o(x1_a), ∇_θ f_p(x2_b)⟩ from torch.autograd.grad, one sample and
    one output at a time — no torch.func, no vmap. Returns (N1, N2, O, O)."""
    params = [p for p in model.parameters() if p.requires_grad]

    def grads(x: torch.Tensor) -> torch.Tensor:  # (N, O, P)
        rows = []
        for xi in x:
            out = model(xi.unsqueeze(0))[0]
            rows.append(torch.stack([
                torch.cat([g.reshape(-1) for g in torch.autograd.grad(out[o], params, retain_graph=True)])
                for o in range(out.shape[0])
            ]))
        return torch.stack(rows)

    g1, g2 = grads(x1), grads(x2)
    return torch.einsum("aop,bqp->aboq", g1, g2)


def reduce(full: torch.Tensor, mode: str) -> torch.Tensor:
    diag = torch.diagonal(full, dim1=-2, dim2=-1)
    return {"full": full, "diagonal": diag, "trace": diag.mean(-1)}[mode]


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


CASES = list(itertools.product(sorted(ACTIVATIONS), PARAMETERIZATIONS, (0.0, 0.3), (1, 3)))


@pytest.mark.parametrize("activation,parameterization,b_std,out_dim", CASES)
def test_every_method_equals_explicit_gram(activation, parameterization, b_std, out_dim):
    torch.manual_seed(0)
    model = MLP(3, 7, 2, out_dim=out_dim, activation=activation, parameterization=parameterization, w_std=1.4, b_std=b_std,
                seed=1, dtype=torch.float64)
    x1 = torch.randn(4, 3, dtype=torch.float64)
    x2 = torch.randn(3, 3, dtype=torch.float64)
    reference = explicit_ntk(model, x1, x2)
    for method, mode in itertools.product(("jacrev", "ntvp", "structured", "auto"),
                                          ("trace", "diagonal", "full")):
        theta = empirical_ntk(model, x1, x2, method=method, mode=mode)
        assert rel_err(theta, reduce(reference, mode)) < REL_TOL, (method, mode)
    # x2 = None means x1 against itself
    same = empirical_ntk(model, x1, method="structured", mode="full")
    assert rel_err(same, explicit_ntk(model, x1, x1)) < REL_TOL


def test_trace_mode_is_the_mean_over_outputs_not_the_sum():
    """neural-tangents' trace_axes=(-1,) convention (docs/conventions.md) divides by out_dim."""
    model = MLP(2, 5, 1, out_dim=4, seed=0, dtype=torch.float64)
    x = torch.randn(3, 2, dtype=torch.float64)
    full = empirical_ntk(model, x, method="jacrev", mode="full")
    trace = empirical_ntk(model, x, method="jacrev", mode="trace")
    assert torch.allclose(trace, torch.einsum("aboo->ab", full) / 4, rtol=0, atol=ROUNDOFF_ATOL)


@pytest.mark.parametrize("method", ["jacrev", "ntvp", "structured"])
def test_chunking_under_a_tiny_memory_budget_changes_nothing(method):
    model = MLP(3, 9, 2, out_dim=2, activation="tanh", b_std=0.2, seed=2, dtype=torch.float64)
    x1, x2 = torch.randn(7, 3, dtype=torch.float64), torch.randn(5, 3, dtype=torch.float64)
    for mode in ("trace", "full"):
        whole = empirical_ntk(model, x1, x2, method=method, mode=mode)
        chunked = empirical_ntk(model, x1, x2, method=method, mode=mode, memory_budget_bytes=2048)
        assert rel_err(chunked, whole) < REL_TOL
        sym = empirical_ntk(model, x1, method=method, mode=mode, memory_budget_bytes=2048)
        assert rel_err(sym, empirical_ntk(model, x1, x1, method=method, mode=mode)) < REL_TOL


class SmallConvNet(nn.Module):
    """A non-MLP module: conv -> relu -> pool -> linear, (N, 1, 6, 6) -> (N, 3)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        h = torch.relu(self.conv(x)).mean(dim=(-1, -2))
        return self.head(h)


def test_non_mlp_module_through_every_method():
    """torch.nn.Conv2d and Linear have structured factors (tests/test_arch_*)."""
    torch.manual_seed(0)
    model = SmallConvNet().double()
    x1, x2 = torch.randn(3, 1, 6, 6, dtype=torch.float64), torch.randn(2, 1, 6, 6, dtype=torch.float64)
    reference = explicit_ntk(model, x1, x2)
    for method in ("auto", "jacrev", "ntvp", "structured"):
        for mode in ("trace", "diagonal", "full"):
            assert rel_err(empirical_ntk(model, x1, x2, method=method, mode=mode),
                           reduce(reference, mode)) < REL_TOL


def test_structured_refuses_a_module_without_layers_it_can_factor():
    class Wrapped(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = nn.Bilinear(4, 4, 2)

        def forward(self, x):
            return self.inner(x, x)

    x = torch.randn(3, 4)
    with pytest.raises(ValueError, match="structured"):
        empirical_ntk(Wrapped(), x, method="structured")


def test_scaled_output_kernel_is_alpha_squared_times_the_network_kernel():
    net = MLP(2, 6, 2, seed=0, b_std=0.1, dtype=torch.float64)
    x = torch.randn(4, 2, dtype=torch.float64)
    wrapped = ScaledOutput(net, alpha=3.0, center=True)
    reference = explicit_ntk(wrapped, x, x)[..., 0, 0]
    assert rel_err(reference, 9.0 * empirical_ntk(net, x, method="jacrev")) < REL_TOL
    for method in ("structured", "jacrev", "ntvp"):
        assert rel_err(empirical_ntk(wrapped, x, method=method), reference) < REL_TOL


def test_unknown_method_and_mode_are_rejected_with_the_allowed_values():
    net = MLP(2, 4, 1, dtype=torch.float64)
    x = torch.randn(2, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="jacrev"):
        empirical_ntk(net, x, method="magic")
    with pytest.raises(ValueError, match="diagonal"):
        empirical_ntk(net, x, mode="sum")


@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_jacobian_change_methods_agree_with_explicit_gradients(activation):
    model = MLP(3, 8, 2, out_dim=2, activation=activation, b_std=0.2, seed=0, dtype=torch.float64)
    initial = copy.deepcopy(model).requires_grad_(False)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    x = torch.randn(5, 3, dtype=torch.float64)
    # explicit: per-sample gradients of both parameter sets, differenced
    probe = copy.deepcopy(initial).requires_grad_(True)

    def flat_grads(m):
        ps = list(m.parameters())
        return torch.stack([torch.cat([g.reshape(-1) for g in torch.autograd.grad(
            m(xi.unsqueeze(0))[0, o], ps)]) for xi in x for o in range(2)])

    jt, j0 = flat_grads(model), flat_grads(probe)
    expected = ((jt - j0).norm() / j0.norm()).item()
    for method in ("structured", "jacrev"):
        got = jacobian_change(model, initial, x, method=method)
        assert got == pytest.approx(expected, rel=JAC_CHANGE_REL_TOL), method
    assert jacobian_change(model, model, x) == pytest.approx(0.0, abs=JAC_CHANGE_ZERO_TOL)
