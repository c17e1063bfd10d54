"""A user's own activation, ``model.activation=module.path:function``
(ntk_lab.layers.user_activation; the examples in ntk_lab.examples.activations).

(a) copies of erf and gelu give the built-in closed forms' Θ_∞ (through the Hermite series),
    and the finite network calls the user's function;
(b) a new activation: sin's Gaussian expectations against their closed form, swish's against
    scipy's 2-D adaptive quadrature, and swish's Θ_∞ against the Monte-Carlo mean of the
    empirical NTK of random finite networks;
(c) the autograd derivative: exact, detached, under no_grad and inference_mode; the cache;
(d) every bad name is one ValueError line naming model.activation;
(e) the config: accepted by validation (Hydra composes the ':'), refused in one line; a run.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from scipy import integrate

from ntk_lab.cli import config_dir
from ntk_lab.config import ConfigError, validate
from ntk_lab.kernels import empirical_ntk, infinite_width_kernels
from ntk_lab.layers.activations import ACTIVATIONS, get_activation
from ntk_lab.layers.gaussian import gaussian_expectations
from ntk_lab.models import MLP, ResMLP
from tests.conftest import TINY, run_cli

F64 = torch.float64
EXAMPLES = "ntk_lab.examples.activations"
SWISH, SIN = f"{EXAMPLES}:swish", f"{EXAMPLES}:sin"

# A user copy goes through the Hermite series, built to 1e-10 per layer (Parseval bound); the
# built-in goes through its closed form. 1e-8 across depth 3 is the target with room.
COPY_RTOL = 1e-8
# The series path's Gaussian expectations against an exact closed form or scipy's dblquad
# (epsrel 1e-11): the series bound is 1e-10 relative.
EXPECTATION_RTOL = 1e-8
# Two series evaluations of the same kernel, each within the Parseval bound (1e-10 relative
# per layer) of the exact value.
SERIES_PATHS_RTOL = 1e-9
# Monte-Carlo: for one hidden layer the mean of the finite network's NTK over initializations
# equals Θ_∞ exactly at any width (first-layer pre-activations are exactly Gaussian), so only
# the standard error enters.
MC_SIGMAS = 4.0


def t(value) -> torch.Tensor:
    return torch.tensor(value, dtype=F64)


def rel_fro(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def inputs(n: int, d: int, seed: int) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=F64)


# --------------------------------------------------------------------------- (a) copies
@pytest.mark.parametrize("builtin", ["erf", "gelu"])
def test_a_user_copy_gives_the_builtin_closed_form_kernels(builtin):
    copy = get_activation(f"{EXAMPLES}:{builtin}_copy")
    assert copy.dual is None and ACTIVATIONS[builtin].dual is not None
    x = inputs(8, 3, seed=1)
    for depth, w_std, b_std in ((1, 1.0, 0.0), (3, 1.3, 0.2)):
        want = infinite_width_kernels(x, activation=builtin, depth=depth, w_std=w_std, b_std=b_std)
        got = infinite_width_kernels(x, activation=copy.name, depth=depth, w_std=w_std, b_std=b_std)
        for g, w in zip(got, want):
            assert rel_fro(g, w) <= COPY_RTOL, (builtin, depth)
    # the composed layer maps (Nonlinearity) take the name too
    nets = [ResMLP(3, 4, 2, activation=a, w_std=1.2, b_std=0.1) for a in (builtin, copy.name)]
    for g, w in zip(infinite_width_kernels(x, model=nets[1]), infinite_width_kernels(x, model=nets[0])):
        assert rel_fro(g, w) <= COPY_RTOL, builtin


def test_the_finite_network_calls_the_user_function():
    x = inputs(5, 3, seed=2)
    builtin = MLP(3, 32, 2, activation="gelu", seed=0, dtype=F64)
    user = MLP(3, 32, 2, activation=f"{EXAMPLES}:gelu_copy", seed=0, dtype=F64)
    assert user.activation.name == f"{EXAMPLES}:gelu_copy"
    assert torch.allclose(user(x), builtin(x), rtol=1e-13, atol=1e-15)
    other = MLP(3, 32, 2, activation=SWISH, seed=0, dtype=F64)
    assert not torch.allclose(other(x), builtin(x), rtol=1e-3)  # the name does select φ


# --------------------------------------------------------------------------- (b) new activations
TRIPLES = [(0.5, 2.0, -0.95), (1.3, 1.3, 0.0), (0.7, 3.0, 0.6), (2.0, 1.0, 1.0)]


def test_sin_expectations_against_the_closed_form():
    # (u, v) ~ N(0, [[a, c], [c, b]]): E[sin u sin v] = ½(E cos(u − v) − E cos(u + v)) and
    # E cos X = e^{−Var X/2}, so E[sin u sin v] = e^{−(a+b)/2} sinh c, E[cos u cos v] = e^{−(a+b)/2} cosh c
    act = get_activation(SIN)
    for a, b, rho in TRIPLES:
        c = rho * math.sqrt(a * b)
        e_phi, e_dphi = gaussian_expectations(act, t(a), t(c), t(b))
        damp = math.exp(-(a + b) / 2)
        assert e_phi.item() == pytest.approx(damp * math.sinh(c), rel=EXPECTATION_RTOL, abs=1e-15)
        assert e_dphi.item() == pytest.approx(damp * math.cosh(c), rel=EXPECTATION_RTOL)


def _swish(x: float) -> float:
    return x / (1.0 + math.exp(-x))


def _swish_prime(x: float) -> float:
    s = 1.0 / (1.0 + math.exp(-x))
    return s + x * s * (1.0 - s)


def test_swish_expectations_against_2d_adaptive_quadrature():
    act = get_activation(SWISH)
    for a, b, rho in TRIPLES[:3]:
        c = rho * math.sqrt(a * b)
        got = gaussian_expectations(act, t(a), t(c), t(b))
        w = math.sqrt(1 - rho * rho)
        for g, f in zip(got, (_swish, _swish_prime)):
            def integrand(z2, z1, f=f):
                dens = math.exp(-0.5 * (z1 * z1 + z2 * z2)) / (2 * math.pi)
                return dens * f(math.sqrt(a) * z1) * f(math.sqrt(b) * (rho * z1 + w * z2))
            want = integrate.dblquad(integrand, -12, 12, -12, 12, epsabs=1e-14, epsrel=1e-11)[0]
            assert g.item() == pytest.approx(want, rel=EXPECTATION_RTOL), (a, b, rho)


def test_swish_theta_inf_against_monte_carlo_of_finite_networks():
    x = inputs(4, 3, seed=11)
    x = torch.cat([x, x[:1] + 0.05 * inputs(1, 3, seed=12)])  # a near-duplicate pair
    w_std, b_std, width, n_nets = 1.3, 0.2, 1024, 200
    _, theta_inf = infinite_width_kernels(x, activation=SWISH, depth=1, w_std=w_std, b_std=b_std)
    thetas = torch.stack([
        empirical_ntk(MLP(3, width, 1, activation=SWISH, w_std=w_std, b_std=b_std, seed=500 + s,
                          dtype=F64), x, method="structured")
        for s in range(n_nets)])
    mean, se = thetas.mean(0), thetas.std(0) / math.sqrt(n_nets)
    tol = MC_SIGMAS * se
    assert tol.max() < 0.05 * theta_inf.abs().max(), "test has lost its power"
    assert ((mean - theta_inf).abs() <= tol).all(), (mean - theta_inf) / se


@pytest.mark.parametrize("name", [SIN, "tanh"])
def test_series_path_truncates_both_sides_at_one_degree(name):
    """x1 of small norm, x2 of large: the composed layer maps (gaussian_expectations) and the
    keyword form (per-tile coefficients) must agree. Cutting the small-variance side at its own
    lower degree left errors of √SERIES_TOL order (measured 4e-7 for sin, 1e-8 for tanh)."""
    g = torch.Generator().manual_seed(5)
    x1 = torch.randn(4, 3, generator=g, dtype=F64)
    x2 = torch.randn(5, 3, generator=g, dtype=F64)
    x1, x2 = 0.5 * x1 / x1.norm(dim=1, keepdim=True), 3.0 * x2 / x2.norm(dim=1, keepdim=True)
    composed_form = infinite_width_kernels(x1, x2, model=MLP(3, 8, 2, activation=name, w_std=1.3, b_std=0.1))
    keyword_form = infinite_width_kernels(x1, x2, activation=name, depth=2, w_std=1.3, b_std=0.1)
    for a, b in zip(composed_form, keyword_form):
        assert rel_fro(a, b) <= SERIES_PATHS_RTOL, name


# --------------------------------------------------------------------------- (c) derivative, cache
def test_autograd_derivative_is_exact_detached_and_works_without_grad():
    act = get_activation(SWISH)
    x = inputs(6, 2, seed=3).requires_grad_(True)
    s = torch.sigmoid(x.detach())
    want = s + x.detach() * s * (1 - s)
    for context in (torch.no_grad, torch.inference_mode, torch.enable_grad):
        with context():
            got = act.derivative(x * 1.0)
        assert not got.requires_grad and got.shape == x.shape
        assert torch.allclose(got, want, rtol=1e-14, atol=1e-15), context.__name__
    assert x.grad is None  # nothing accumulated in the caller's graph


def test_the_built_activation_is_cached_per_name():
    assert get_activation(SWISH) is get_activation(SWISH)
    assert get_activation(SWISH) is not get_activation(SIN)


# --------------------------------------------------------------------------- (d) errors
BAD_NAMES = [
    ("ntk_lab.examples.no_such_module:swish",
     ["cannot import module 'ntk_lab.examples.no_such_module'", "ModuleNotFoundError",
      ", ".join(ACTIVATIONS) + " or module.path:function"]),
    (f"{EXAMPLES}:no_such_function", [f"module '{EXAMPLES}' has no attribute 'no_such_function'"]),
    ("math:pi", ["math.pi is a float, not a callable"]),
    ("torch.nn.functional:normalize", ["not elementwise", "applied to each element alone"]),
    ("torch:sum", ["not elementwise: it maps a tensor of shape (3, 4) to shape ()"]),
    ("torch:softmax", ["fails on a float64 tensor of shape (3, 4)", "TypeError"]),
    ("torch:log", ["NaN or infinity"]),
    ("numpy:tanh", ["autograd cannot differentiate it"]),
    (":swish", ["write module.path:function"]),
]


@pytest.mark.filterwarnings("ignore:__array_wrap__:DeprecationWarning")  # numpy:tanh on a tensor
@pytest.mark.parametrize("name, fragments", BAD_NAMES, ids=[n for n, _ in BAD_NAMES])
def test_a_bad_name_is_one_line_naming_the_key(name, fragments):
    with pytest.raises(ValueError) as info:
        get_activation(name)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"model.activation={name!r} is invalid: ")
    for fragment in fragments:
        assert fragment in message
    with pytest.raises(ValueError):  # a failure is not cached
        get_activation(name)


def test_an_unknown_plain_name_mentions_the_user_form():
    with pytest.raises(ValueError, match="module.path:function"):
        get_activation("swishy")


# --------------------------------------------------------------------------- (e) config, run
def composed(overrides: list[str]) -> dict:
    with initialize_config_dir(config_dir=str(Path(config_dir())), version_base="1.3"):
        cfg = compose("config", overrides=overrides, return_hydra_config=False)
    return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)


def test_validation_accepts_a_user_activation_and_refuses_a_bad_one_in_one_line():
    assert validate(composed([f"model.activation={SWISH}"])).model.activation == SWISH
    for bad, fragments in (("torch:sum", ["not elementwise"]),
                           ("nope:fn", ["cannot import module 'nope'", "module.path:function"]),
                           ("swishy", ["allowed: relu, leaky_relu", "module.path:function"])):
        with pytest.raises(ConfigError) as info:
            validate(composed([f"model.activation={bad}"]))
        message = str(info.value)
        assert message.startswith(f"model.activation={bad!r} is invalid: ") and "\n" not in message
        for fragment in fragments:
            assert fragment in message, (bad, fragment)


def test_a_run_with_an_activation_from_the_working_folder(workdir):
    """As a user runs it: a module in the folder the command runs from, the finite network and
    the Θ_∞-based metrics both from it."""
    (workdir / "my_acts.py").write_text("import torch\n\n\ndef leaky_tanh(x):\n"
                                        "    return torch.tanh(x) + 0.1 * x\n")
    result = run_cli([*TINY, "model.activation=my_acts:leaky_tanh"], workdir)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Hermite" not in result.stderr, result.stderr[-2000:]  # a smooth φ: no truncation warning
    runs = list(workdir.glob("outputs/**/summary.json"))
    assert len(runs) == 1, runs
    summary = json.loads(runs[0].read_text())
    assert summary["status"] == "ok" and summary["activation"] == "my_acts:leaky_tanh"
    assert math.isfinite(summary["final"]["ntk_err_inf"])
