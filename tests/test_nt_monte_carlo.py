"""ntk_lab's Monte-Carlo kernels against neural-tangents' ``monte_carlo_kernel_fn`` on the very
same networks.

tests/data/nt_monte_carlo_reference.json (scripts/make_nt_monte_carlo_reference.py, neural-tangents
0.6.5, float64) holds nt's Monte-Carlo NNGP and NTK (``trace_axes=(-1,)``) of three draws of a
depth-2, width-64 ReLU MLP with three outputs, the parameters of each draw and nt's empirical
kernels of each. Here ``build(s)`` is ntk_lab's MLP with draw s's parameters copied in (stax's W is
(in, out), torch's weight (out, in)), so both libraries average over identical networks and must
agree to rounding. nt's ``trace_axes=(-1,)`` averages over the outputs (the generator checks the
traced kernel is the trace of the full (O, O) kernel over O), as ntk_lab's ``mode="trace"`` does:
the relation checked is equality, not a factor of O.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ntk_lab.kernels import empirical_ntk
from ntk_lab.kernels.monte_carlo import monte_carlo_kernels
from ntk_lab.models import MLP

F64 = torch.float64
REFERENCE = json.loads((Path(__file__).parent / "data" / "nt_monte_carlo_reference.json").read_text())
N_SAMPLES = len(REFERENCE["samples"])
X = torch.tensor(REFERENCE["x"], dtype=F64)
NT_OUT_AVERAGE = 1.0
"""nt's traced kernel over ntk_lab's ``mode="trace"`` kernel: both average over the O outputs
(the reference header's ``trace_normalization``), so the factor is 1, not O."""
REL_TOL = 1e-10
"""Largest max|ntk_lab − nt| / max|nt| over a 4×4 kernel. Both are float64 computations of the same
sums over the same parameters in different orders (JAX vs torch matmuls, Jacobian contraction vs
ntk_lab's methods); rounding gives ~1e-15, so 1e-10 leaves five orders of margin while a wrong
parameter, scale or normalization is off by far more (see the discrimination test)."""
MIN_MISMATCH = 1e-3
"""The least relative difference a wrong network must make for the comparison to mean anything."""


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def nt_tensor(key: str, sample: int | None = None) -> torch.Tensor:
    source = REFERENCE["monte_carlo"] if sample is None else REFERENCE["per_sample"][sample]
    return torch.tensor(source[key], dtype=F64)


def build(seed: int) -> MLP:
    """ntk_lab's MLP(5, 64, 2, out_dim=3, w_std=1.5, b_std=0.1) with nt's draw ``seed``."""
    net = MLP(5, 64, 2, out_dim=3, w_std=1.5, b_std=0.1, dtype=F64)
    layers = REFERENCE["samples"][seed]
    assert len(layers) == len(net.layers)
    with torch.no_grad():
        for layer, params in zip(net.layers, layers):
            w = torch.tensor(params["W"], dtype=F64).T  # stax (in, out) -> torch (out, in)
            b = torch.tensor(params["b"], dtype=F64).reshape(-1)  # stax (1, out) -> (out,)
            assert w.shape == layer.weight.shape and b.shape == layer.bias.shape
            layer.weight.copy_(w)
            layer.bias.copy_(b)
    return net


def test_the_reference_is_the_case_described():
    assert N_SAMPLES == 3 and X.shape == (4, 5)
    assert "AVERAGES" in REFERENCE["header"]["trace_normalization"]
    # the scales the copied parameters meet: ntk parameterization, w_std/√fan_in and b_std
    net = build(0)
    assert [layer.weight_multiplier for layer in net.layers] == pytest.approx(
        [1.5 / 5 ** 0.5, 1.5 / 8, 1.5 / 8], rel=1e-15)
    assert [layer.bias_multiplier for layer in net.layers] == [0.1] * 3


@pytest.mark.parametrize("method", ["auto", "jacrev", "ntvp", "structured"])
def test_monte_carlo_kernels_equal_neural_tangents_on_the_same_networks(method):
    mc = monte_carlo_kernels(build, X, n_samples=N_SAMPLES, seed=0, method=method)
    for key in ("nngp", "ntk"):
        diff = rel_diff(NT_OUT_AVERAGE * mc[key], nt_tensor(key))
        assert diff < REL_TOL, (key, method, diff)


@pytest.mark.parametrize("sample", range(3))
def test_each_networks_kernels_equal_neural_tangents_empirical_kernels(sample):
    net = build(sample)
    with torch.no_grad():
        f = net(X)
    nngp = f @ f.T / f.shape[1]
    assert rel_diff(NT_OUT_AVERAGE * nngp, nt_tensor("nngp", sample)) < REL_TOL
    for method in ("jacrev", "ntvp", "structured"):
        ntk = empirical_ntk(net, X, method=method, mode="trace")
        diff = rel_diff(NT_OUT_AVERAGE * ntk, nt_tensor("ntk", sample))
        assert diff < REL_TOL, (method, diff)


def test_a_single_changed_parameter_breaks_the_agreement():
    """The comparison discriminates: one readout weight moved by 0.1 (of a N(0, 1) draw) shifts
    both Monte-Carlo kernels far beyond the tolerance."""
    def perturbed(seed: int) -> MLP:
        net = build(seed)
        if seed == 1:
            with torch.no_grad():
                net.layers[-1].weight[0, 0] += 0.1
        return net

    mc = monte_carlo_kernels(perturbed, X, n_samples=N_SAMPLES, seed=0)
    for key in ("nngp", "ntk"):
        assert rel_diff(mc[key], nt_tensor(key)) > 1e3 * REL_TOL, key
    # and a network drawn by ntk_lab itself is nowhere near nt's draws
    own = monte_carlo_kernels(lambda s: MLP(5, 64, 2, out_dim=3, w_std=1.5, b_std=0.1, seed=s, dtype=F64),
                              X, n_samples=N_SAMPLES, seed=0)
    assert rel_diff(own["ntk"], nt_tensor("ntk")) > MIN_MISMATCH
