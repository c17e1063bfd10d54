"""The one-hidden-layer MLP's NTK velocity at initialization against brute-force ensembles: the
networks' dΘ/dt from autograd (a forward-mode derivative of their NTK along −∇L), with the
NTK checked against the lab's empirical NTK of the same weights."""

from __future__ import annotations

import math

import pytest
import torch
from torch.func import jvp

from ntk_lab.kernels import empirical_ntk
from ntk_lab.kernels import mlp_kernel_velocity
from ntk_lab.kernels.kernel_velocity import predicted_kappa
from ntk_lab.layers import Dense
from ntk_lab.layers.activations import get_activation
from ntk_lab.models import MLP

D = 3
X = torch.tensor([[0.9, -0.4, 0.3], [-0.2, 1.1, 0.5], [0.6, 0.7, -1.3]], dtype=torch.float64)
X_TRAIN = torch.tensor([[1.2, 0.1, -0.5], [-0.8, -0.6, 0.4], [0.3, -1.0, -0.2], [0.0, 0.5, 1.1]],
                       dtype=torch.float64)
Y_TRAIN = torch.tensor([0.7, -1.1, 0.4, 0.9], dtype=torch.float64)
W_STD, B_STD = 1.2, 0.3

ROUNDING_RTOL = 1e-12
"""The ensemble's NTK against the lab's empirical NTK of the same weights: rounding only."""
RUN_DATA_RTOL = 1e-6
"""A run's kappa_pred against the rate recomputed from the same data: the run holds its inputs in
the model's float32 (measured 1e-8 relative)."""
USER_RTOL = 1e-10
"""A user's copy of erf against the built-in erf on the same quasi-Monte-Carlo points: the copy's
φ and φ'' come from autograd, the built-in's φ' from its closed form; measured 1e-14."""
Z_TOL = 4.0
"""Standard errors allowed between a prediction and an ensemble (9 entries per check)."""
WIDTH_BIAS_RTOL = 0.05
"""n²E[(dΘ/dt)²] at width 128 against its n → ∞ limit: the O(1/n) term, measured ≤ 2.3 % (erf,
tanh; 40 000 networks), and 2.5–4.5 % at width 32."""
QMC_RTOL = 3e-3
"""Two scramblings of the quasi-Monte-Carlo rule, relative to the largest entry: measured 1.0e-3
(erf) and 9.6e-4 (tanh) for n²E[(dΘ/dt)²], 5.5e-4 for the mean."""
MEAN_SHARE_MAX = 0.5
"""‖n·E[dΘ/dt]‖² ÷ Σ n²E[(dΘ/dt)²]: the mean's share of the velocity's square. Measured 0.125 (erf)
and 0.137 (tanh) on these inputs, 0.15 on the default circle data; a velocity that were its mean
(no zero-mean part from the targets) would give 1."""


def _network_kernels(act, width, params):
    """(Θ (B, P, P), dΘ/dt (B, P, P)) at initialization of B explicit networks with parameters
    (W (B, n, d), b (B, n), a (B, n), b_o (B,)); dΘ/dt by jvp of their NTK along −∇L
    (L = 1/(2N) Σ (f − y)², time in summed learning rate)."""
    def features(w, b, x):
        return W_STD * torch.einsum("bnd,pd->bnp", w, x) / math.sqrt(D) + B_STD * b[..., None]

    def ntk(w, b, a, b_out):
        h = features(w, b, X)
        s1 = W_STD ** 2 * X @ X.T / D + B_STD ** 2
        f, g = act.fn(h), act.derivative(h)
        return B_STD ** 2 + W_STD ** 2 / width * (torch.einsum("bnp,bnq->bpq", f, f)
                                                  + torch.einsum("bn,bnp,bnq->bpq", a * a, g, g) * s1)

    def loss(w, b, a, b_out):
        out = W_STD / math.sqrt(width) * torch.einsum("bn,bnp->bp", a, act.fn(features(w, b, X_TRAIN)))
        return (((out + B_STD * b_out[:, None]) - Y_TRAIN) ** 2).sum() / (2 * len(X_TRAIN))

    leaves = [p.clone().requires_grad_(True) for p in params]
    grads = torch.autograd.grad(loss(*leaves), leaves)  # networks are independent: per-network gradients
    return jvp(ntk, tuple(params), tuple(-g for g in grads))


def _ensemble(act, width, n_networks, seed, chunk=5000):
    """dΘ/dt (n_networks, P, P) of independently drawn networks."""
    generator, parts = torch.Generator().manual_seed(seed), []
    for start in range(0, n_networks, chunk):
        b = min(chunk, n_networks - start)
        normal = lambda *shape: torch.randn(b, *shape, generator=generator, dtype=torch.float64)  # noqa: E731
        parts.append(_network_kernels(act, width, (normal(width, D), normal(width), normal(width), normal()))[1])
    return torch.cat(parts)


def test_the_ensemble_is_the_lab_mlp():
    """The ensemble's NTK is the lab's empirical NTK of an MLP(depth=1) with the same weights."""
    model = MLP(D, 16, 1, activation="erf", w_std=W_STD, b_std=B_STD, dtype=torch.float64, seed=3)
    first, readout = [m for m in model.modules() if isinstance(m, Dense)]
    params = (first.weight.detach()[None], first.bias.detach()[None], readout.weight.detach()[0][None],
              readout.bias.detach())
    theta = _network_kernels(get_activation("erf"), 16, params)[0]
    assert torch.allclose(theta[0], empirical_ntk(model, X).double(), rtol=ROUNDING_RTOL, atol=ROUNDING_RTOL)


@pytest.mark.parametrize("activation", ["erf", "tanh"])
def test_mean_velocity_is_exact_at_any_width(activation):
    """n·E[dΘ/dt] = −(1/N) Σ_j M_jj holds at every width (the output's correlation with its own
    dNTK is one unit's): 40 000 width-16 networks agree within Z_TOL SE."""
    act = get_activation(activation)
    pred = mlp_kernel_velocity(X, X_TRAIN, Y_TRAIN, activation=act, w_std=W_STD, b_std=B_STD)
    velocity = 16 * _ensemble(act, 16, 40000, seed=1)
    est, se = velocity.mean(0), velocity.std(0) / math.sqrt(len(velocity))
    assert ((est - pred["velocity_mean"]).abs() <= Z_TOL * se).all(), (est, pred["velocity_mean"], se)


def test_mean_square_velocity_against_an_ensemble():
    """n²E[(dΘ/dt)²] of 40 000 width-128 networks (erf) against its limit: within Z_TOL SE plus the
    O(1/n) term; the velocity's mean alone (‖E dΘ/dt‖², what κ would be without the targets'
    zero-mean part) is far below it."""
    act = get_activation("erf")
    pred = mlp_kernel_velocity(X, X_TRAIN, Y_TRAIN, activation=act, w_std=W_STD, b_std=B_STD)
    square = (128 * _ensemble(act, 128, 40000, seed=2)) ** 2
    est, se = square.mean(0), square.std(0) / math.sqrt(len(square))
    allowed = Z_TOL * se + WIDTH_BIAS_RTOL * pred["velocity_mean_square"]
    assert ((est - pred["velocity_mean_square"]).abs() <= allowed).all(), (est, pred["velocity_mean_square"], se)
    assert (pred["velocity_mean"] ** 2).sum() < MEAN_SHARE_MAX * pred["velocity_mean_square"].sum()


def test_quadrature_is_converged_and_inputs_are_checked():
    a = mlp_kernel_velocity(X, X_TRAIN, Y_TRAIN, activation="tanh", w_std=W_STD, b_std=B_STD, seed=0)
    b = mlp_kernel_velocity(X, X_TRAIN, Y_TRAIN, activation="tanh", w_std=W_STD, b_std=B_STD, seed=1)
    for key in ("velocity_mean", "velocity_mean_square"):
        assert torch.allclose(a[key], b[key], rtol=0.0, atol=QMC_RTOL * a[key].abs().max())
    with pytest.raises(ValueError, match="twice-differentiable"):
        mlp_kernel_velocity(X, X_TRAIN, Y_TRAIN, activation="relu")
    kappa = predicted_kappa(X, X_TRAIN, Y_TRAIN, t=0.5, width=64, activation="tanh", w_std=W_STD, b_std=B_STD)
    assert kappa == pytest.approx(0.5 * math.sqrt(a["velocity_mean_square"].sum().item())
                                  / (64 * a["ntk"].norm().item()), rel=QMC_RTOL)


# --------------------------------------------------------------------------- in runs
def _run(tmp_path, overrides):
    import json

    import pandas as pd

    from ntk_lab.config import validate
    from ntk_lab.experiment import run_experiment
    from tests.test_configs import composed
    run_experiment(validate(composed(["progress=false", "lazy.infinite_width=false", *overrides])), tmp_path)
    return pd.read_csv(tmp_path / "metrics.csv"), json.loads((tmp_path / "summary.json").read_text())


def test_runs_carry_the_predicted_kappa(tmp_path):
    """A one-hidden-layer erf MLP's run has kappa_pred = rate × time, the rate recomputed here from
    the run's own probe set, training set and Θ_∞; a deeper or relu network says why it has none."""
    from ntk_lab.data import make_dataset
    metrics, summary = _run(tmp_path / "a", ["depth=1", "width=64", "model.activation=erf", "train.steps=2",
                                             "ntk.checkpoints=3", "data.n_probe=8"])
    data = make_dataset("circle", n_train=4, n_test=256, n_probe=8, seed=0)
    rate = predicted_kappa(data.x_probe, data.x_train, data.y_train, t=1.0, width=64, activation="erf",
                           w_std=1.0, b_std=0.1)
    assert metrics["kappa_pred"].tolist() == pytest.approx((rate * metrics["time"]).tolist(), rel=RUN_DATA_RTOL)
    assert summary["kappa_pred"].endswith("× time")
    metrics, summary = _run(tmp_path / "b", ["depth=2", "width=64", "train.steps=1", "ntk.checkpoints=2",
                                             "data.n_probe=8"])
    assert "kappa_pred" not in metrics and "depth=1" in summary["kappa_pred"] and "relu" in summary["kappa_pred"]


def _one_step_kappa_squares(act, width, params, x, x_train, y_train, lr):
    """κ² after one gradient-descent step of rate lr from the explicit networks' parameters
    (W, b, a, b_o) over their probe inputs x (d = x.shape[1]): ‖Θ_1 − Θ_0‖²/‖Θ_0‖²."""
    d = x.shape[1]

    def features(w, b, inputs):
        return torch.einsum("bnd,pd->bnp", w, inputs) / math.sqrt(d) + STUDY_B_STD * b[..., None]

    def ntk(w, b, a, b_out):
        h, s1 = features(w, b, x), x @ x.T / d + STUDY_B_STD ** 2
        f, g = act.fn(h), act.derivative(h)
        return STUDY_B_STD ** 2 + (torch.einsum("bnp,bnq->bpq", f, f)
                                   + torch.einsum("bn,bnp,bnq->bpq", a * a, g, g) * s1) / width

    def loss(w, b, a, b_out):
        out = torch.einsum("bn,bnp->bp", a, act.fn(features(w, b, x_train))) / math.sqrt(width)
        return ((out + STUDY_B_STD * b_out[:, None] - y_train) ** 2).sum() / (2 * len(x_train))

    leaves = [p.clone().requires_grad_(True) for p in params]
    grads = torch.autograd.grad(loss(*leaves), leaves)
    before, after = ntk(*params), ntk(*[p - lr * g for p, g in zip(params, grads)])
    return ((after - before) ** 2).sum((1, 2)) / (before ** 2).sum((1, 2))


STUDY_B_STD = 0.1
"""The default runs' σ_b (σ_w = 1) on the default circle data."""
KAPPA_RTOL = 0.1
"""E[κ²] after one step (η = 0.1) against kappa_pred² at widths 64 and 256: the O(1/n) and O(η)
terms, measured at 0.93 and 0.98 (20 000 networks each; 0.934 at η = 0.02, so the step adds
nothing visible)."""
RUN_KAPPA_RTOL = 1e-9
"""A float64 run's κ against the explicit networks' on the same weights: rounding only."""


@pytest.mark.slow
@pytest.mark.physics
@pytest.mark.parametrize("width", [64, 256])
def test_kappa_after_one_step_is_the_prediction(tmp_path, width):
    """The question a run answers, "how far should Θ move in its first step?": a float64 run's κ
    at step 1 equals the explicit network's with the run's own initial weights; over 20 000
    such networks the mean κ² after one step (η = 0.1) is kappa_pred² within KAPPA_RTOL; and the
    velocity's mean alone would predict only a fraction of it (the targets' zero-mean part)."""
    from ntk_lab.data import make_dataset
    from ntk_lab.models import NetworkSpec, build_network
    torch.set_num_threads(1)
    act, lr = get_activation("erf"), 0.1
    data = make_dataset("circle", n_train=4, n_test=256, n_probe=16, seed=0)
    x, x_train, y_train = data.x_probe.double(), data.x_train.double(), data.y_train.double().reshape(1, -1)
    metrics, _ = _run(tmp_path, ["depth=1", f"width={width}", "model.activation=erf", f"lr={lr}",
                                       "train.steps=1", "ntk.checkpoints=2", "data.n_probe=16", "precision=float64",
                                       "seed=5"])
    spec = NetworkSpec("mlp", width, 1, activation="erf", b_std=STUDY_B_STD)  # the run's network
    net = build_network(spec, (2,), 1, seed=5, dtype=torch.float64)
    first, readout = [m for m in net.modules() if isinstance(m, Dense)]
    own = (first.weight.detach()[None], first.bias.detach()[None], readout.weight.detach()[0][None],
           readout.bias.detach())
    assert metrics["kappa"].iloc[-1] ** 2 == pytest.approx(
        _one_step_kappa_squares(act, width, own, x, x_train, y_train, lr).item(), rel=RUN_KAPPA_RTOL)
    generator, squares = torch.Generator().manual_seed(3), []
    for _ in range(4):
        normal = lambda *shape: torch.randn(5000, *shape, generator=generator, dtype=torch.float64)  # noqa: E731
        squares.append(_one_step_kappa_squares(act, width, (normal(width, 2), normal(width), normal(width), normal()),
                                               x, x_train, y_train, lr))
    squares = torch.cat(squares)
    predicted = metrics["kappa_pred"].iloc[-1] ** 2
    print(f"width {width}: E[κ²]/kappa_pred² = {squares.mean().item() / predicted:.3f} "
          f"± {squares.std().item() / math.sqrt(len(squares)) / predicted:.3f}")
    assert abs(squares.mean().item() / predicted - 1.0) <= KAPPA_RTOL
    velocity = mlp_kernel_velocity(x, x_train, y_train.reshape(-1), activation=act, b_std=STUDY_B_STD)
    mean_only = lr ** 2 * (velocity["velocity_mean"] ** 2).sum().item() / (width * velocity["ntk"].norm().item()) ** 2
    assert mean_only < MEAN_SHARE_MAX * predicted


def test_a_user_activation_takes_its_second_derivative_from_autograd():
    """A user's activation (its φ' is autograd's, with no graph of its own) gets φ'' by autograd
    twice: the example module's copy of erf gives erf's closed form φ''(h) = −(4/√π) h e^{−h²},
    and the same velocity as the built-in erf."""
    from ntk_lab.kernels.kernel_velocity import _second_derivative
    user = get_activation("ntk_lab.examples.activations:erf_copy")
    h = torch.linspace(-3.0, 3.0, 13, dtype=torch.float64)
    expected = -4.0 / math.sqrt(math.pi) * h * torch.exp(-h * h)
    assert torch.allclose(_second_derivative(user, h), expected, rtol=ROUNDING_RTOL, atol=ROUNDING_RTOL)
    mine = mlp_kernel_velocity(X, X_TRAIN, Y_TRAIN, activation=user, w_std=W_STD, b_std=B_STD, samples=2 ** 12)
    builtin = mlp_kernel_velocity(X, X_TRAIN, Y_TRAIN, activation="erf", w_std=W_STD, b_std=B_STD, samples=2 ** 12)
    assert torch.allclose(mine["velocity_mean_square"], builtin["velocity_mean_square"], rtol=USER_RTOL, atol=0.0)
