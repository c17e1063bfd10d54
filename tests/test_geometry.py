"""Kernel geometry metrics against small matrices computed by hand, the conjugate kernel's
features against a forward pass by hand, and per-layer kernels against Θ."""

from __future__ import annotations

import math

import pytest
import torch
from torch.func import functional_call, jacrev

from ntk_lab.measures import geometry
from ntk_lab.models.layer_groups import trainable_layers
from ntk_lab.models.layer_outputs import layer_activations, readout_features
from ntk_lab.kernels import empirical_ntk, infinite_width_kernels
from ntk_lab.measures.drift import kernel_distance
from ntk_lab.models import MLP, ScaledOutput

F64 = torch.float64

# Hand values are exact rationals and square roots; float64 evaluation of these 3×3 and 4×4
# expressions errs by a few ulps (~1e-16), so 1e-12 catches any wrong term or factor.
HAND_ATOL = 1e-12
# eigh on a 4×4 matrix returns eigenvectors accurate to ~1e-15; overlaps are squares of them.
EIGEN_ATOL = 1e-12
# 1 − cos(K, K) in float64 is a few ulps of 1 (2.2e-16 each) away from 0.
SELF_DISTANCE_ROUNDOFF = 1e-14
# Per-layer kernels from per-parameter Jacobians against the full Θ in float64: sums of a few
# hundred O(1) products in different orders agree to ~1e-15 relative (the stated target is 1e-10).
LAYER_SUM_REL_TOL = 1e-10
# The conjugate kernel of a width-4096 ReLU net against NNGP_∞: the relative fluctuation of an
# average over n units is O(n^(-1/2)) ≈ 0.016; 0.1 is six of those and still far below the
# O(1) error of a wrong normalization (σ_w², 1/n or σ_b² missing).
CK_WIDE_REL_TOL = 0.1


def hadamard4() -> torch.Tensor:
    """An orthogonal 4×4 matrix (normalized Hadamard), to hide a known spectrum."""
    h = torch.tensor([[1, 1, 1, 1], [1, -1, 1, -1], [1, 1, -1, -1], [1, -1, -1, 1]], dtype=F64)
    return h / 2


# ------------------------------------------------------------------- alignment


def test_alignment_matches_a_hand_computation():
    """K = [[2,1,0],[1,2,0],[0,0,1]], y = (1, −1, 0). Row/column means (1, 1, 1/3), grand
    mean 7/9, so HKH = [[7,−2,−5],[−2,7,−5],[−5,−5,10]]/9 with ‖HKH‖² = 306/81. y is
    centered, HYH = yyᵀ with ‖yyᵀ‖ = 2 and ⟨HKH, yyᵀ⟩ = yᵀKy = 2. A = 2/(2·√306/9)."""
    k = torch.tensor([[2.0, 1.0, 0.0], [1.0, 2.0, 0.0], [0.0, 0.0, 1.0]], dtype=F64)
    y = torch.tensor([1.0, -1.0, 0.0], dtype=F64)
    assert geometry.centered_alignment(k, y) == pytest.approx(9 / math.sqrt(306), abs=HAND_ATOL)
    hkh = torch.tensor([[7, -2, -5], [-2, 7, -5], [-5, -5, 10]], dtype=F64) / 9
    torch.testing.assert_close(geometry.center_kernel(k), hkh, atol=HAND_ATOL, rtol=0)


def test_alignment_invariances_and_extremes():
    """A(yyᵀ, y) = 1; A is unchanged by K → aK + b·11ᵀ (a > 0) and y → cy + d (c ≠ 0);
    several outputs use Y = Σ_o y_o y_oᵀ."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(7, 3, generator=g, dtype=F64)
    k = x @ x.T
    y = torch.randn(7, generator=g, dtype=F64)
    a = geometry.centered_alignment(k, y)
    assert geometry.centered_alignment(torch.outer(y, y), y) == pytest.approx(1.0, abs=HAND_ATOL)
    assert geometry.centered_alignment(3.0 * k + 5.0, -2.0 * y + 4.0) == pytest.approx(a, abs=HAND_ATOL)
    y2 = torch.randn(7, 2, generator=g, dtype=F64)
    yc = y2 - y2.mean(0)
    kc = geometry.center_kernel(k)
    expected = (kc * (yc @ yc.T)).sum() / (kc.norm() * (yc @ yc.T).norm())
    assert geometry.centered_alignment(k, y2) == pytest.approx(expected.item(), abs=HAND_ATOL)
    assert math.isnan(geometry.centered_alignment(k, torch.ones(7, dtype=F64)))


# ------------------------------------------------------------------- spectrum


def test_effective_rank_and_top_share_of_a_known_spectrum():
    """Eigenvalues (2, 1, 1, 0): p = (1/2, 1/4, 1/4, 0), entropy = ½ln2 + ½ln4 = (3/2)ln2, so
    the effective rank is 2^(3/2) = 2√2 and the top share 1/2. The spectrum is hidden by an
    orthogonal change of basis, so eigh and the sort order are exercised too."""
    q = hadamard4()
    k = q @ torch.diag(torch.tensor([1.0, 0.0, 2.0, 1.0], dtype=F64)) @ q.T
    spec = geometry.spectrum(k)
    torch.testing.assert_close(spec.eigvals, torch.tensor([2.0, 1.0, 1.0, 0.0], dtype=F64),
                               atol=EIGEN_ATOL, rtol=0)
    assert geometry.effective_rank(spec.eigvals) == pytest.approx(2 * math.sqrt(2), abs=HAND_ATOL)
    assert geometry.top_eig_share(spec.eigvals) == pytest.approx(0.5, abs=HAND_ATOL)
    # r equal eigenvalues: rank r; round-off negatives count as zero
    assert geometry.effective_rank(torch.tensor([3.0, 3.0, 3.0, -1e-17])) == pytest.approx(3.0)
    assert math.isnan(geometry.effective_rank(torch.zeros(3)))


def test_eigenspace_overlap_and_target_power_by_hand():
    """K_a = diag(3, 2, 1, 0): top-2 space span(e1, e2). K_b = 3vvᵀ + 2e3e3ᵀ + wwᵀ with
    v = (e1+e2)/√2, w = (e1−e2)/√2: top-1 is v, top-2 span(v, e3), top-3 span(e1, e2, e3).
    U_aᵀU_b for k = 2 is [[1/√2, 0], [1/√2, 0]], squared norm 1, overlap 1/2; k = 1: 1/2;
    k = 3: the same space, 1. y = (1, 2, 2, 4): ‖y‖² = 25, 1 + 4 of it in span(e1, e2)."""
    e = torch.eye(4, dtype=F64)
    v, w = (e[0] + e[1]) / math.sqrt(2), (e[0] - e[1]) / math.sqrt(2)
    k_a = torch.diag(torch.tensor([3.0, 2.0, 1.0, 0.0], dtype=F64))
    k_b = 3 * torch.outer(v, v) + 2 * torch.outer(e[2], e[2]) + torch.outer(w, w)
    for k, expected in ((1, 0.5), (2, 0.5), (3, 1.0)):
        got = geometry.top_eigenspace_overlap(k_a, k_b, k)
        assert got == pytest.approx(expected, abs=EIGEN_ATOL), k
    y = torch.tensor([1.0, 2.0, 2.0, 4.0], dtype=F64)
    u2 = geometry.spectrum(k_a).top(2)
    assert geometry.target_power_topk(u2, y) == pytest.approx(5 / 25, abs=EIGEN_ATOL)
    assert geometry.target_power_topk(geometry.spectrum(k_a).top(4), y) == pytest.approx(1.0)


def test_kernel_velocity_and_distance_by_hand():
    """Θ_prev = I₂, Θ_t = 11ᵀ: ⟨Θ_t, Θ_prev⟩ = 2, norms √2 and 2, cosine 1/√2; over
    dt = 0.5 the velocity is 2(1 − 1/√2)."""
    eye, ones = torch.eye(2, dtype=F64), torch.ones(2, 2, dtype=F64)
    assert geometry.kernel_velocity(ones, eye, 0.5) == pytest.approx(2 * (1 - 1 / math.sqrt(2)),
                                                                     abs=HAND_ATOL)
    with pytest.raises(ValueError):
        geometry.kernel_velocity(ones, eye, 0.0)


def test_kernel_distance_of_a_kernel_to_itself_is_not_negative():
    """Unclamped, 1 − cos rounds below zero for some kernels (−1.6e-15 was seen); the
    loop checks such a kernel is among those tested, so the clamp is what the test checks.
    Rounding up (+2.2e-16) is left alone: a distance is ≥ 0, not exactly 0."""
    g = torch.Generator().manual_seed(0)
    saw_negative = False
    for _ in range(50):
        x = torch.randn(64, 3, generator=g)
        k = x @ x.T
        a = k.double()
        saw_negative |= 1.0 - (a * a).sum().item() / (a.norm() * a.norm()).item() < 0
        assert 0.0 <= kernel_distance(k, k) <= SELF_DISTANCE_ROUNDOFF
    assert saw_negative


def test_conjugate_kernel_and_trace_shares_by_hand():
    """Φ = [[1, 0], [1, 1]], n = 2, σ_w = 2, σ_b = 0.5: 4·ΦΦᵀ/2 + 0.25."""
    phi = torch.tensor([[1.0, 0.0], [1.0, 1.0]], dtype=F64)
    expected = torch.tensor([[2.25, 2.25], [2.25, 4.25]], dtype=F64)
    torch.testing.assert_close(geometry.conjugate_kernel(phi, 2.0, 0.5), expected,
                               atol=HAND_ATOL, rtol=0)
    layers = torch.stack([torch.eye(2, dtype=F64), torch.diag(torch.tensor([3.0, 0.0], dtype=F64))])
    torch.testing.assert_close(geometry.trace_shares(layers),
                               torch.tensor([0.4, 0.6], dtype=F64), atol=HAND_ATOL, rtol=0)


# ------------------------------------------------------------------- features


def hand_forward(net: MLP, x: torch.Tensor) -> list[torch.Tensor]:
    """h¹ … h^depth and f of an MLP, from its weights and docs/conventions.md by hand (relu)."""
    out, h = [], x
    for i, layer in enumerate(net.layers):
        z = layer.weight_multiplier * h @ layer.weight.T + layer.bias_multiplier * layer.bias
        h = torch.relu(z) if i < len(net.layers) - 1 else z
        out.append(h.detach())
    return out


@pytest.mark.parametrize("parameterization", ["ntk", "standard", "mup"])
def test_layer_activations_match_a_forward_pass_by_hand(parameterization):
    net = MLP(3, 6, 3, out_dim=2, parameterization=parameterization, b_std=0.4, seed=1, dtype=F64)
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(2), dtype=F64)
    got, expected = layer_activations(net, x), hand_forward(net, x)
    assert len(got) == len(expected) == 4
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, atol=HAND_ATOL, rtol=0)
    torch.testing.assert_close(readout_features(net, x), expected[-2], atol=HAND_ATOL, rtol=0)


def test_frozen_copy_of_a_centered_network_is_not_a_layer():
    net = MLP(3, 6, 2, seed=0, dtype=F64)
    wrapped = ScaledOutput(net, alpha=2.0, center=True)
    assert trainable_layers(wrapped) == list(net.layers)
    x = torch.randn(4, 3, dtype=F64)
    torch.testing.assert_close(readout_features(wrapped, x), hand_forward(net, x)[-2])


def test_conjugate_kernel_of_a_wide_network_approaches_the_nngp():
    """CK_0 = σ_w²ΦΦᵀ/n + σ_b² → NNGP_∞ = Σ^{depth+1} as n grows (every parameterization)."""
    x = torch.randn(6, 4, generator=torch.Generator().manual_seed(0), dtype=F64)
    nngp, _ = infinite_width_kernels(x, activation="relu", depth=2, w_std=1.3, b_std=0.2)
    for parameterization in ("ntk", "mup"):
        net = MLP(4, 4096, 2, parameterization=parameterization, w_std=1.3, b_std=0.2,
                  seed=3, dtype=F64)
        ck = geometry.conjugate_kernel(readout_features(net, x), 1.3, 0.2)
        assert ((ck - nngp).norm() / nngp.norm()).item() < CK_WIDE_REL_TOL


# ------------------------------------------------------------------- per-layer kernels


def per_layer_ntk_by_jacobians(net: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Θ_l = mean_o Σ_{p ∈ layer l} J_p J_pᵀ from torch.func.jacrev of each parameter.
    Returns (L, N, N): an independent reference for ntk_lab's per-layer kernels."""
    params = {k: v.detach() for k, v in net.named_parameters()}
    jac = jacrev(lambda p: functional_call(net, p, (x,)))(params)  # name -> (N, O, *shape)
    layers = []
    for layer in trainable_layers(net):
        names = [n for n, p in net.named_parameters() if any(p is q for q in layer.parameters())]
        flat = torch.cat([jac[n].reshape(x.shape[0], jac[n].shape[1], -1) for n in names], -1)
        layers.append(torch.einsum("aop,bop->ab", flat, flat) / flat.shape[1])
    return torch.stack(layers)


@pytest.mark.parametrize("parameterization", ["ntk", "standard", "mup"])
def test_per_layer_kernels_sum_to_theta(parameterization):
    net = MLP(3, 7, 3, out_dim=2, activation="tanh", parameterization=parameterization,
              b_std=0.3, seed=4, dtype=F64)
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(5), dtype=F64)
    layers = per_layer_ntk_by_jacobians(net, x)
    theta = empirical_ntk(net, x, method="jacrev", mode="trace")
    assert layers.shape == (4, 5, 5)
    assert ((layers.sum(0) - theta).norm() / theta.norm()).item() < LAYER_SUM_REL_TOL
    try:  # the structured per-layer NTK
        from ntk_lab.kernels import empirical_ntk_layers
    except ImportError:
        return
    got = empirical_ntk_layers(net, x)
    assert ((got - layers).norm() / layers.norm()).item() < LAYER_SUM_REL_TOL
    assert ((got.sum(0) - theta).norm() / theta.norm()).item() < LAYER_SUM_REL_TOL


# Blockwise float64 reductions against the direct float64 formulas on a kernel larger than one
# row block, with a constant part ten times its centered part (the subtraction in ‖HKH‖²
# loses ~100 ulps there: ~1e-14).
BLOCKWISE_REL_TOL = 1e-12
# 1 − cos for kernels this close (distance ~1e-6) keeps ~10 of float64's 16 digits: the two
# summation orders agree to ~1e-16 absolute, 1e-10 relative; 1e-9 leaves room.
COSINE_REL_TOL = 1e-9


def test_blockwise_reductions_match_the_direct_formulas():
    from ntk_lab.measures.drift import kappa, kernel_distance

    g = torch.Generator().manual_seed(7)
    n = geometry.ROW_BLOCK * 2 + 37
    x = torch.randn(n, 5, generator=g)
    k32 = (x @ x.T / 5 + 10.0).float()  # a float32 kernel, as a run computes it
    k2 = k32 + 0.01 * torch.randn(n, n, generator=g).float()
    y = torch.randn(n, 3, generator=g, dtype=F64)
    kc = geometry.center_kernel(k32)
    yc = y - y.mean(0)
    direct = ((kc * (yc @ yc.T)).sum() / (kc.norm() * (yc @ yc.T).norm())).item()
    assert geometry.centered_alignment(k32, y) == pytest.approx(direct, rel=BLOCKWISE_REL_TOL)
    a, b = k2.double(), k32.double()
    kappa_direct = ((a - b).norm() / b.norm()).item()
    distance_direct = 1 - ((a * b).sum() / (a.norm() * b.norm())).item()
    assert kappa(k2, k32) == pytest.approx(kappa_direct, rel=BLOCKWISE_REL_TOL)
    assert geometry.relative_distance(k2, k32, geometry.frobenius_norm(k32)) == pytest.approx(
        kappa_direct, rel=BLOCKWISE_REL_TOL)
    assert kernel_distance(k2, k32) == pytest.approx(distance_direct,
                                                              rel=COSINE_REL_TOL)
