"""The NTK's finite-width variance V_Θ = lim n·Var[Θ̂_0(x, x')] against brute-force Monte Carlo.

The Monte Carlo is independent of the recursion: it draws S MLPs of width n (vectorized over
networks, float64), forms each one's NTK on a few inputs from its explicit per-layer gradients
(Θ̂ = Σ_l (σ_w² K̂^{l−1} + σ_b²)·(g^l·g^l′), g^l the backpropagated sensitivities), and
measures n·Var over the S networks. At finite n this is V_Θ + O(1/n); the slow tests fit
n·Var(n) = V + c/n over several widths and compare V with the prediction.

Checked: depth 1 (where the recursion has only the readout's and the first layer's terms),
depths 2–4 (the shared-average, readout and off-diagonal terms), relu / erf / tanh / gelu,
diagonal and off-diagonal pairs, several outputs; and the run column ntk_err_inf_pred.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ntk_lab.kernels import infinite_width_kernels
from ntk_lab.kernels.finite_width_ntk import ntk_finite_width_variance, predicted_ntk_error
from ntk_lab.layers.activations import get_activation

F64 = torch.float64
MC_SIGMAS = 3.0
"""The prediction within 3 standard errors of the Monte-Carlo estimate (the lab's stated bound)."""


def mc_ntk(x: torch.Tensor, activation: str, depth: int, width: int, samples: int, *, w_std=1.0,
           b_std=0.0, out_dim=1, seed=0, chunk=256, standard=False) -> torch.Tensor:
    """(S, N, N) trace-mode NTKs of S random ntk-parameterized MLPs, by explicit gradients
    (``standard``: the standard parameterization's NTK, whose layer terms are fan_in·K̂ + 1)."""
    act = get_activation(activation)
    gen = torch.Generator().manual_seed(seed)
    n_inputs, d = x.shape
    w, b, out = w_std, b_std, []
    for start in range(0, samples, chunk):
        s = min(chunk, samples - start)
        h, fan, feats, derivs, weights = x.T.expand(s, d, n_inputs), d, [], [], []
        for _ in range(depth):
            weight = torch.randn(s, width, fan, generator=gen, dtype=F64)
            bias = torch.randn(s, width, 1, generator=gen, dtype=F64)
            feats.append(h)
            z = w / math.sqrt(fan) * weight @ h + b * bias
            derivs.append(act.derivative(z))
            weights.append(weight)
            h, fan = act.fn(z), width
        readout = torch.randn(s, out_dim, width, generator=gen, dtype=F64)
        theta = (h.transpose(1, 2) @ h) + 1.0 if standard else w * w * (h.transpose(1, 2) @ h) / width + b * b
        sens = (w / math.sqrt(width)) * readout.unsqueeze(-1) * derivs[-1].unsqueeze(1)  # (s, O, n, N)
        for layer in range(depth - 1, -1, -1):
            fan_in = d if layer == 0 else width
            k_in = feats[layer].transpose(1, 2) @ feats[layer] / fan_in
            own = fan_in * k_in + 1.0 if standard else w * w * k_in + b * b  # this layer's parameters
            theta = theta + own * torch.einsum("soia,soib->sab", sens, sens) / out_dim
            if layer > 0:
                sens = (w / math.sqrt(width)) * torch.einsum("soia,sij->soja", sens, weights[layer]) \
                    * derivs[layer - 1].unsqueeze(1)
        out.append(theta)
    return torch.cat(out)


def _inputs() -> torch.Tensor:
    return torch.randn(3, 4, dtype=F64, generator=torch.Generator().manual_seed(1))


def test_the_monte_carlo_ntk_is_the_lab_s_empirical_ntk():
    """The brute-force ensemble has the statistics of the lab's own MLP and empirical NTK
    (different draws of the same distribution): means within 4 standard errors over 64
    networks each, and n·Var within 50 % (a variance from 64 draws is good to ~±35 %)."""
    from ntk_lab.kernels import empirical_ntk
    from ntk_lab.models import MLP
    x = _inputs()
    labs = torch.stack([empirical_ntk(MLP(4, 64, 2, out_dim=2, activation="erf", b_std=0.3, seed=s,
                                          dtype=F64), x) for s in range(64)])
    mine = mc_ntk(x, "erf", 2, 64, 64, b_std=0.3, out_dim=2, seed=7)
    se = torch.sqrt(labs.var(0) / 64 + mine.var(0) / 64)
    assert ((labs.mean(0) - mine.mean(0)).abs() <= 4 * se).all()
    assert ((labs.var(0) / mine.var(0) - 1).abs() <= 0.5).all()


@pytest.mark.parametrize("activation, depth, out_dim", [("relu", 1, 1), ("erf", 2, 1), ("relu", 2, 3)])
def test_variance_at_one_width_fast(activation, depth, out_dim):
    """One width (n = 64), 6000 networks: n·Var within 2·3 SE (the factor 2 covers the heavier
    than Gaussian tails of Θ̂, which the √(2/S) error of a variance assumes away) plus the O(1/n)
    drift of n·Var at finite width, allowed 10 % of V: measured with 8000 networks at n = 64 it
    was 0.5 % (relu, depth 1), 3 % (erf, depth 2) and ≤ 5.5 % (relu, depth 2, 3 outputs)."""
    x = _inputs()
    pred = ntk_finite_width_variance(x, activation=activation, depth=depth, b_std=0.1, out_dim=out_dim)
    width, samples = 64, 6000
    thetas = mc_ntk(x, activation, depth, width, samples, b_std=0.1, out_dim=out_dim, seed=11)
    measured = width * thetas.var(0)
    se = measured * math.sqrt(2.0 / (samples - 1))  # of a variance estimate (Gaussian-like tails)
    v = pred["ntk_variance"]
    assert ((measured - v).abs() <= MC_SIGMAS * 2 * se + 0.1 * v.abs()).all(), (measured, v)
    assert torch.allclose(pred["ntk"], infinite_width_kernels(x, activation=activation, depth=depth,
                                                              b_std=0.1)[1], rtol=1e-8)


@pytest.mark.slow
@pytest.mark.physics
@pytest.mark.parametrize("activation, depth", [
    ("relu", 1), ("relu", 2), ("relu", 3), ("relu", 4), ("erf", 1), ("erf", 2), ("erf", 3),
    ("erf", 4), ("tanh", 2), ("tanh", 3), ("gelu", 2), ("gelu", 3)])
def test_variance_extrapolated_in_one_over_width(activation, depth):
    """10⁴ networks at each of widths 32, 64, 128 (with 16 the 1/n² terms bias the linear
    extrapolation: gelu depth 3 then missed one small off-diagonal entry by 3.5 SE);
    n·Var(n) = V + c/n fitted by weighted least squares per entry; the fitted V within 3 of its standard errors of the prediction, for the
    diagonal and off-diagonal entries of three inputs."""
    x = _inputs()
    pred = ntk_finite_width_variance(x, activation=activation, depth=depth, b_std=0.1)["ntk_variance"]
    widths, samples = (32, 64, 128), 10_000
    values, errors = [], []
    for i, width in enumerate(widths):
        thetas = mc_ntk(x, activation, depth, width, samples, b_std=0.1, seed=100 + i)
        centered = thetas - thetas.mean(0)
        var = (centered ** 2).sum(0) / (samples - 1)
        # the standard error of a variance from the fourth central moment
        fourth = (centered ** 4).mean(0)
        values.append(width * var)
        errors.append(width * torch.sqrt((fourth - var ** 2) / samples))
    _assert_extrapolates_to(pred, torch.stack(values), torch.stack(errors), widths)


def _assert_extrapolates_to(pred: torch.Tensor, values: torch.Tensor, errors: torch.Tensor, widths) -> None:
    """values (W, N, N) = pred + c/n per entry, fitted by weighted least squares over the widths
    (errors: the standard errors): the intercept within MC_SIGMAS of its standard error of pred,
    for the diagonal and off-diagonal entries."""
    design = np.stack([np.ones(len(widths)), 1.0 / np.array(widths)], axis=1)
    for a in range(pred.shape[0]):
        for b in range(a, pred.shape[1]):
            y, s = values[:, a, b].numpy(), errors[:, a, b].numpy()
            weights = 1.0 / s ** 2
            cov = np.linalg.inv(design.T @ (design * weights[:, None]))
            intercept, se = (cov @ design.T @ (weights * y))[0], math.sqrt(cov[0, 0])
            assert abs(intercept - pred[a, b].item()) <= MC_SIGMAS * se, (a, b, intercept, se, pred[a, b].item())


def test_predicted_error_is_the_root_of_the_summed_variance_and_squared_mean():
    x = _inputs()
    theta_inf = infinite_width_kernels(x, activation="erf", depth=3, b_std=0.1)[1]
    got = ntk_finite_width_variance(x, activation="erf", depth=3, b_std=0.1)
    v, m = got["ntk_variance"], got["ntk_mean_correction"]
    assert (m ** 2).sum() > 0  # the mean term is present, so the check below can tell
    pred = predicted_ntk_error(x, theta_inf, width=16, activation="erf", depth=3, w_std=1.0, b_std=0.1)
    expected = math.sqrt(v.sum().item() / 16 + (m ** 2).sum().item() / 16 ** 2) / theta_inf.norm().item()
    assert pred == pytest.approx(expected, rel=1e-12)
    assert pred != pytest.approx(math.sqrt(v.sum().item() / 16) / theta_inf.norm().item(), rel=1e-6)


# --------------------------------------------------------------------------- the mean correction Θ^(1)
def mean_scaled_deviation(x, activation, depth, width, samples, seed):
    """n·(mean Θ̂ − Θ_∞) over ``samples`` networks and its standard error, (N, N) each."""
    theta_inf = infinite_width_kernels(x, activation=activation, depth=depth, b_std=0.1)[1]
    thetas = mc_ntk(x, activation, depth, width, samples, b_std=0.1, seed=seed)
    return width * (thetas.mean(0) - theta_inf), width * thetas.std(0) / math.sqrt(samples)


def test_mean_correction_vanishes_where_the_theory_says():
    """Θ^(1) = 0 at depth 1 (Θ̂ is then a mean of i.i.d. unit terms: E[Θ̂] = Θ_∞ at every width)
    and on the diagonal of a relu network at any depth (the known special case: Ḃ = ½ and F is
    linear there), but not off the diagonal or for a smooth activation."""
    x = _inputs()
    for activation in ("relu", "erf", "gelu"):
        assert ntk_finite_width_variance(x, activation=activation, depth=1, b_std=0.1)[
            "ntk_mean_correction"].abs().max() == 0.0
    for b_std in (0.0, 0.1):
        m = ntk_finite_width_variance(x, activation="relu", depth=3, b_std=b_std)["ntk_mean_correction"]
        assert m.diagonal().abs().max() < 1e-12 and m.abs().max() > 1e-2
    m = ntk_finite_width_variance(x, activation="erf", depth=3, b_std=0.1)["ntk_mean_correction"]
    assert m.diagonal().abs().min() > 1e-2


def test_mean_correction_at_one_width_fast():
    """gelu, depth 3, n = 32, 40 000 networks: n·(mean Θ̂ − Θ_∞) within 3 SE of Θ^(1) plus the
    O(1/n) drift of n·(mean − Θ_∞) at finite width, allowed 5 % of max|Θ^(1)| (measured with
    2·10⁵ networks at n = 32: ≤ 0.009 = 3 % of max|Θ^(1)| = 0.32). A smoke test of the whole
    recursion: dropping its Q_ΣT or its Stein term fails it (1.8× and 1.3× the tolerance); the
    finer terms (the off-diagonal g) are resolved only by the physics tier's extrapolation."""
    x = _inputs()
    pred = ntk_finite_width_variance(x, activation="gelu", depth=3, b_std=0.1)["ntk_mean_correction"]
    measured, se = mean_scaled_deviation(x, "gelu", 3, 32, 40_000, seed=21)
    tolerance = MC_SIGMAS * se + 0.05 * pred.abs().max()
    assert ((measured - pred).abs() <= tolerance).all(), (measured, pred, tolerance)


@pytest.mark.slow
@pytest.mark.physics
@pytest.mark.parametrize("activation, depth", [
    ("relu", 2), ("relu", 3), ("erf", 2), ("erf", 3), ("tanh", 4), ("gelu", 2), ("gelu", 3)])
def test_mean_correction_extrapolated_in_one_over_width(activation, depth):
    """10⁵ networks at each of widths 16, 32, 64; n·(mean Θ̂ − Θ_∞) = Θ^(1) + c/n fitted by
    weighted least squares per entry; the fitted Θ^(1) within 3 of its standard errors of the
    prediction, diagonal and off-diagonal entries of three inputs. Small widths: the standard
    error of n·mean grows like √n, so wider networks would need ~n× more samples for the same
    power; with 2·10⁵ networks every entry of these cases came within 2 SE."""
    x = _inputs()
    pred = ntk_finite_width_variance(x, activation=activation, depth=depth, b_std=0.1)["ntk_mean_correction"]
    widths, samples = (16, 32, 64), 100_000
    values, errors = zip(*(mean_scaled_deviation(x, activation, depth, n, samples, seed=300 + i)
                           for i, n in enumerate(widths)))
    _assert_extrapolates_to(pred, torch.stack(values), torch.stack(errors), widths)


def test_finite_width_corrections_of_a_model():
    """The model= form reads the MLP's own settings; a residual MLP gets its NNGP's corrections
    and its NTK's variance and mean correction; other networks and `standard` without a width
    are refused."""
    from ntk_lab.kernels import finite_width_corrections, nngp_finite_width_corrections
    from ntk_lab.models import MLP, ResMLP
    x = _inputs()
    got = finite_width_corrections(x, model=MLP(4, 128, 2, out_dim=2, activation="erf", b_std=0.1))
    assert set(got) == {"nngp", "nngp_mean_correction", "nngp_variance", "ntk", "ntk_variance",
                        "ntk_mean_correction"}
    ref = ntk_finite_width_variance(x, activation="erf", depth=2, b_std=0.1, out_dim=2)
    assert torch.equal(got["ntk_variance"], ref["ntk_variance"])
    nngp = nngp_finite_width_corrections(x, activation="erf", depth=2, b_std=0.1)
    assert torch.equal(got["nngp_variance"], nngp["nngp_variance"])
    with pytest.raises(ValueError, match="the MLP and the residual MLP"):
        finite_width_corrections(x, model=torch.nn.Linear(4, 1))
    residual = finite_width_corrections(x, model=ResMLP(4, 16, 1, activation="erf", b_std=0.1))
    assert set(residual) == set(got)
    assert all(torch.isfinite(value).all() for value in residual.values())
    standard = finite_width_corrections(x, model=MLP(4, 16, 1, parameterization="standard", b_std=0.1))
    assert torch.equal(standard["ntk_variance"], ntk_finite_width_variance(
        x, activation="relu", depth=1, b_std=0.1, parameterization="standard", width=16)["ntk_variance"])
    with pytest.raises(ValueError, match="needs the width"):
        ntk_finite_width_variance(x, activation="relu", depth=1, parameterization="standard")
    with pytest.raises(ValueError, match="allowed: ntk, mup, standard"):
        ntk_finite_width_variance(x, activation="relu", depth=1, parameterization="ntp")


def test_runs_carry_the_predicted_distance(tmp_path):
    """An MLP run's metrics.csv has ntk_err_inf_pred beside ntk_err_inf (the same value at every
    checkpoint: a prediction at initialization) and summary.json the value; a CNN run says why
    it has none."""
    import json

    import pandas as pd

    from ntk_lab.config import validate
    from ntk_lab.experiment import run_experiment
    from tests.test_configs import composed

    tiny = ["width=64", "depth=2", "train.steps=2", "ntk.checkpoints=2", "data.n_probe=8",
            "data.n_test=16", "progress=false"]
    run_experiment(validate(composed([*tiny, "model.activation=erf"])), tmp_path / "mlp")
    metrics = pd.read_csv(tmp_path / "mlp" / "metrics.csv")
    summary = json.loads((tmp_path / "mlp" / "summary.json").read_text())
    assert metrics["ntk_err_inf_pred"].nunique() == 1
    assert metrics["ntk_err_inf_pred"].iloc[0] == pytest.approx(summary["ntk_err_inf_pred"])
    assert 0.02 < summary["ntk_err_inf_pred"] < 1.0
    run_experiment(validate(composed([*tiny, "model=cnn", "data=digits", "width=4", "data.n_train=16"])),
                   tmp_path / "cnn")
    summary = json.loads((tmp_path / "cnn" / "summary.json").read_text())
    assert "derived for the MLP" in summary["ntk_err_inf_pred"]
    assert "ntk_err_inf_pred" not in pd.read_csv(tmp_path / "cnn" / "metrics.csv")


def test_the_prediction_is_skipped_with_a_reason_for_large_probe_sets_and_other_networks():
    from ntk_lab.models import NetworkSpec
    from ntk_lab.training.limit_source import MAX_PREDICTION_PROBE, LimitSource, fluctuation_prediction
    spec = NetworkSpec("mlp", 64, 2, activation="relu")
    x = torch.randn(MAX_PREDICTION_PROBE + 1, 3, dtype=F64)
    value, why = fluctuation_prediction(spec, x, torch.eye(len(x), dtype=F64), 1)
    assert value is None and f"data.n_probe <= {MAX_PREDICTION_PROBE}" in why
    value, why = fluctuation_prediction(spec, x[:4], torch.eye(4, dtype=F64), 1, LimitSource(monte_carlo=True))
    assert value is None and "closed-form" in why
    standard = NetworkSpec("mlp", 64, 2, activation="relu", parameterization="standard")
    theta_std = infinite_width_kernels(x[:4], activation="relu", depth=2, parameterization="standard",
                                       width=64)[1]
    value, why = fluctuation_prediction(standard, x[:4], theta_std, 1)
    assert why == "" and value == pytest.approx(predicted_ntk_error(
        x[:4], theta_std, width=64, activation="relu", depth=2, w_std=1.0, b_std=0.0,
        parameterization="standard"))
    theta_inf = infinite_width_kernels(x[:4], activation="relu", depth=2)[1]
    value, why = fluctuation_prediction(spec, x[:4], theta_inf, 1)
    assert why == "" and value == pytest.approx(
        predicted_ntk_error(x[:4], theta_inf, width=64, activation="relu", depth=2, w_std=1.0, b_std=0.0))


@pytest.mark.slow
@pytest.mark.physics
@pytest.mark.parametrize("activation", ["relu", "erf"])
def test_expected_distance_at_width_64_is_the_prediction(activation):
    """The fluctuation study's setting (MLP depth 3, σ_b = 0.1, the default data's 64 probe
    points on the circle) at its smallest width, n = 64: the mean of ntk_err_inf² over 3000
    brute-force networks within 15 % of ntk_err_inf_pred² (the lab's target for a sweep's seed
    mean; 40 seeds carry ±20–40 %, so the study alone cannot show it). Measured with 4000
    networks: 1.055 ± 0.017 (relu) and 0.977 ± 0.018 (erf); 1.039 and 1.005 at n = 256."""
    from ntk_lab.data import make_dataset
    x = make_dataset("circle", n_train=4, n_test=256, n_probe=64, seed=0).x_probe
    theta_inf = infinite_width_kernels(x, activation=activation, depth=3, b_std=0.1)[1]
    predicted = predicted_ntk_error(x, theta_inf, width=64, activation=activation, depth=3, w_std=1.0,
                                    b_std=0.1) ** 2
    thetas = mc_ntk(x, activation, 3, 64, 3000, b_std=0.1, seed=17)
    squares = ((thetas - theta_inf).flatten(1).norm(dim=1) / theta_inf.norm()) ** 2
    ratio = squares.mean().item() / predicted
    se = squares.std().item() / math.sqrt(len(squares)) / predicted
    assert abs(ratio - 1.0) <= 0.15 and se < 0.03, (ratio, se)


@pytest.mark.parametrize("activation, depth", [("erf", 2), ("relu", 2)])
def test_standard_parameterization_against_monte_carlo(activation, depth):
    """The standard parameterization (a layer's terms fan_in·K̂ + 1, Θ_∞ growing with n): at
    n = 32 its Θ_∞ is the lab's, n·Var[Θ̂] within 10 % of V_Θ(n) — measured ≤ 1.2 % (erf) and
    ≤ 6.3 % (relu) with these 20 000 networks, the O(1/n) drift that the ntk parameterization
    shows alike (relu at depth 3: 10–16 % at n = 32, 0.3–4.6 % at n = 128, both
    parameterizations) — and n·(mean − Θ_∞) within 3 SE + 10 % of max|Θ^(1)| of Θ^(1)(n)
    (measured |z| ≤ 1.1). Without the layer gains (the ntk recursion) V_Θ is off by a factor
    ≥ 50 here."""
    x = _inputs()
    width, samples = 32, 20_000
    pred = ntk_finite_width_variance(x, activation=activation, depth=depth, b_std=0.1,
                                     parameterization="standard", width=width)
    ref = infinite_width_kernels(x, activation=activation, depth=depth, b_std=0.1, parameterization="standard",
                                 width=width)[1]
    assert torch.allclose(pred["ntk"], ref, rtol=1e-8)
    thetas = mc_ntk(x, activation, depth, width, samples, b_std=0.1, seed=23, standard=True)
    ratio = width * thetas.var(0) / pred["ntk_variance"]
    assert ((ratio - 1).abs() <= 0.10).all(), ratio
    mean = width * (thetas.mean(0) - pred["ntk"])
    se = width * thetas.std(0) / math.sqrt(samples)
    m = pred["ntk_mean_correction"]
    assert ((mean - m).abs() <= MC_SIGMAS * se + 0.1 * m.abs().max()).all(), (mean, m, se)
    ntk_param = ntk_finite_width_variance(x, activation=activation, depth=depth, b_std=0.1)["ntk_variance"]
    assert (pred["ntk_variance"] / ntk_param).min() > 50
