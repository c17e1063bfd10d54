"""Monte-Carlo kernels against independent computations: the closed-form Θ_∞ and NNGP_∞ (within
their standard errors), the explicit mean and standard error of stacked per-network kernels, and
the 1/√S fall of the error. Networks with one hidden layer are used where the estimate must be
unbiased: their E[Θ_0] and E[f fᵀ] equal the infinite-width kernels at every width (sums of i.i.d.
terms over units), so only sampling error is left; deeper ones carry an O(1/width) bias."""

from __future__ import annotations

import math

import pytest
import torch

from ntk_lab.kernels import empirical_ntk, infinite_width_kernels
from ntk_lab.kernels.monte_carlo import monte_carlo_kernels
from ntk_lab.models import CNN, MLP, ResMLP

F64 = torch.float64
MAX_Z = 4.0
"""Largest |z| = |estimate − exact|/SE over the entries of one kernel (≤ 25). The entries'
errors are strongly correlated (one network's kernel shifts them together), so a mean of z²
scatters like a χ² with one degree of freedom and says little; each entry within 4 standard
errors is the stated "within 3" with room for the ≤ 25 entries looked at."""


def z_scores(mc: dict, exact: torch.Tensor, key: str) -> torch.Tensor:
    return (mc[key] - exact) / mc[f"{key}_se"]


def assert_agrees(mc: dict, nngp: torch.Tensor, ntk: torch.Tensor) -> None:
    for key, exact in (("nngp", nngp), ("ntk", ntk)):
        z = z_scores(mc, exact, key)
        assert z.abs().max() < MAX_Z, (key, z)


def test_a_one_hidden_layer_mlp_converges_to_its_closed_form_kernels():
    x = torch.randn(6, 4, dtype=F64, generator=torch.Generator().manual_seed(0))
    build = lambda s: MLP(4, 256, 1, activation="erf", w_std=1.3, b_std=0.2, seed=s, dtype=F64)  # noqa: E731
    mc = monte_carlo_kernels(build, x, n_samples=64)
    nngp, ntk = infinite_width_kernels(x, activation="erf", depth=1, w_std=1.3, b_std=0.2)
    assert_agrees(mc, nngp, ntk)
    assert torch.equal(mc["ntk"], mc["ntk"].T) and int(mc["n_samples"]) == 64


def test_the_mean_and_standard_error_are_those_of_the_stacked_samples():
    """Welford's running sums against torch.mean / torch.std of the explicitly stacked kernels."""
    x1 = torch.randn(3, 4, dtype=F64, generator=torch.Generator().manual_seed(1))
    x2 = torch.randn(5, 4, dtype=F64, generator=torch.Generator().manual_seed(2))
    build = lambda s: MLP(4, 16, 2, out_dim=3, activation="tanh", seed=s, dtype=F64)  # noqa: E731
    mc = monte_carlo_kernels(build, x1, x2, n_samples=7, seed=100)
    nets = [build(100 + s) for s in range(7)]  # the seeds the estimate drew
    ntks = torch.stack([empirical_ntk(n, x1, x2, method="jacrev") for n in nets])
    nngps = torch.stack([n(x1) @ n(x2).T / 3 for n in nets]).detach()
    for key, samples in (("ntk", ntks), ("nngp", nngps)):
        assert torch.allclose(mc[key], samples.mean(0), rtol=1e-12, atol=1e-14)
        assert torch.allclose(mc[f"{key}_se"], samples.std(0) / math.sqrt(7), rtol=1e-10, atol=1e-14)


def test_running_estimates_at_several_counts_and_their_error_fall_like_one_over_root_samples():
    x = torch.randn(4, 3, dtype=F64, generator=torch.Generator().manual_seed(3))
    build = lambda s: MLP(3, 64, 1, seed=s, dtype=F64)  # noqa: E731
    mc = monte_carlo_kernels(build, x, n_samples=[16, 64, 256])
    assert mc["ntk"].shape == (3, 4, 4) and mc["n_samples"].tolist() == [16, 64, 256]
    single = monte_carlo_kernels(build, x, n_samples=64)
    assert torch.equal(single["ntk"], mc["ntk"][1])  # the same networks, the same estimate
    se = mc["ntk_se"].mean(dim=(1, 2))
    # quadrupling the samples halves the error, up to the scatter of the SE estimate itself
    assert se[0] / se[1] == pytest.approx(2.0, rel=0.3) and se[1] / se[2] == pytest.approx(2.0, rel=0.3)


@pytest.mark.parametrize("bad", [0, [8, 4], [], -3])
def test_bad_sample_counts_are_refused(bad):
    with pytest.raises(ValueError, match="n_samples"):
        monte_carlo_kernels(lambda s: MLP(2, 4, 1, seed=s), torch.zeros(2, 2), n_samples=bad)


@pytest.mark.slow
@pytest.mark.physics
@pytest.mark.parametrize("readout", ["flatten", "gap"])
def test_a_one_layer_cnn_converges_to_its_closed_form_kernels(readout):
    x = torch.randn(4, 2, 5, 5, dtype=F64, generator=torch.Generator().manual_seed(4))

    settings = dict(readout=readout, w_std=1.2, b_std=0.1, spatial_shape=(5, 5), dtype=F64)

    def build(s):
        return CNN(2, 128, 1, seed=s, **settings)

    mc = monte_carlo_kernels(build, x, n_samples=48)
    limit_net = CNN(2, 128, 1, device="meta", **settings)
    nngp, ntk = infinite_width_kernels(x, model=limit_net)
    assert_agrees(mc, nngp, ntk)


@pytest.mark.slow
@pytest.mark.physics
def test_a_wide_residual_mlp_converges_to_its_closed_form_kernels():
    """Two hidden layers: biased by O(1/width); at width 4096 with 24 samples the bias is well
    under one standard error."""
    x = torch.randn(5, 3, dtype=F64, generator=torch.Generator().manual_seed(5))

    def build(s):
        return ResMLP(3, 4096, 1, w_std=1.0, b_std=0.1, branch_scale=0.5, seed=s, dtype=F64)

    mc = monte_carlo_kernels(build, x, n_samples=24)
    limit_net = ResMLP(3, 4096, 1, w_std=1.0, b_std=0.1, branch_scale=0.5, dtype=F64, device="meta")
    nngp, ntk = infinite_width_kernels(x, model=limit_net)
    assert_agrees(mc, nngp, ntk)


@pytest.mark.parametrize("second", [False, True])
def test_batched_inputs_give_the_same_estimates(second):
    """batch_size computes each network's kernels in (b, b) blocks of inputs (the symmetric
    kernel from the blocks on and above the diagonal): the same numbers as all at once, to
    float64 round-off (1e-13 absolute on O(1) kernels: a sum in another order)."""
    torch.manual_seed(0)
    x1 = torch.randn(7, 3, dtype=torch.float64)
    x2 = torch.randn(5, 3, dtype=torch.float64) if second else None
    build = lambda s: MLP(3, 32, 2, b_std=0.1, seed=s, dtype=torch.float64)  # noqa: E731
    whole = monte_carlo_kernels(build, x1, x2, n_samples=3)
    blocked = monte_carlo_kernels(build, x1, x2, n_samples=3, batch_size=2)
    for key in ("nngp", "ntk", "nngp_se", "ntk_se"):
        assert torch.allclose(blocked[key], whole[key], rtol=0, atol=1e-13), key
