"""Optimizers, μP Adam learning rates, schedules, losses and accuracy, against hand computations."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from ntk_lab.training.losses import accuracy, cross_entropy, loss_function, predicted_class
from ntk_lab.models import MLP
from ntk_lab.training.optimizers import (
    OptimizerSettings, build_optimizer, build_scheduler, elapsed_time, infinite_width_support,
    lr_factor, parameter_groups,
)

# float64 hand computations repeat torch's arithmetic up to the order of operations.
HAND_TOL = 1e-14


class _Vec(nn.Module):
    """One parameter vector θ, trained on L = ½‖θ − c‖², so ∇L = θ − c."""

    def __init__(self):
        super().__init__()
        self.theta = nn.Parameter(torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64))


_C = torch.tensor([0.0, 1.0, 3.0], dtype=torch.float64)


def _steps(settings: OptimizerSettings, k: int) -> list[torch.Tensor]:
    model = _Vec()
    opt = build_optimizer(model, settings)
    out = []
    for _ in range(k):
        loss = 0.5 * (model.theta - _C).pow(2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        out.append(model.theta.detach().clone())
    return out


def test_sgd_first_step_with_weight_decay():
    t0 = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    lr, wd = 0.1, 0.01
    (t1,) = _steps(OptimizerSettings("sgd", lr=lr, weight_decay=wd), 1)
    assert torch.allclose(t1, t0 - lr * ((t0 - _C) + wd * t0), rtol=0, atol=HAND_TOL)


def test_momentum_first_two_steps_are_the_heavy_ball():
    t0 = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    lr, mu = 0.1, 0.9
    t1, t2 = _steps(OptimizerSettings("momentum", lr=lr, momentum=mu), 2)
    v1 = t0 - _C  # v₀ = 0: the first step is a plain gradient step
    assert torch.allclose(t1, t0 - lr * v1, rtol=0, atol=HAND_TOL)
    v2 = mu * v1 + (t1 - _C)
    assert torch.allclose(t2, t1 - lr * v2, rtol=0, atol=HAND_TOL)


def test_adam_first_two_steps_by_hand():
    t0 = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    lr, b1, b2, eps = 0.01, 0.8, 0.99, 1e-3
    t1, t2 = _steps(OptimizerSettings("adam", lr=lr, betas=(b1, b2), eps=eps), 2)
    g1 = t0 - _C
    m, v = (1 - b1) * g1, (1 - b2) * g1**2
    want1 = t0 - lr * (m / (1 - b1)) / ((v / (1 - b2)).sqrt() + eps)
    assert torch.allclose(t1, want1, rtol=0, atol=HAND_TOL)
    g2 = t1 - _C
    m, v = b1 * m + (1 - b1) * g2, b2 * v + (1 - b2) * g2**2
    want2 = t1 - lr * (m / (1 - b1**2)) / ((v / (1 - b2**2)).sqrt() + eps)
    assert torch.allclose(t2, want2, rtol=0, atol=HAND_TOL)


def test_mup_adam_learning_rates_follow_table_3():
    width, lr = 64, 0.1
    net = MLP(5, width, 2, out_dim=3, activation="relu", parameterization="mup", w_std=1.0, b_std=0.1, seed=0)
    groups = parameter_groups(net, OptimizerSettings("adam", lr=lr), "mup")
    rate = {id(p): g["lr"] for g in groups for p in g["params"]}
    n = width
    want = {
        "layers.0.weight": lr / math.sqrt(n), "layers.0.bias": lr / math.sqrt(n),
        "layers.1.weight": lr / n, "layers.1.bias": lr / math.sqrt(n),
        "layers.2.weight": lr / math.sqrt(n), "layers.2.bias": lr,
    }
    for name, p in net.named_parameters():
        assert rate[id(p)] == pytest.approx(want[name], rel=1e-15), name
    # under ntk every tensor has η, and SGD under mup is not rescaled (c = 0)
    for param, opt in (("ntk", "adam"), ("mup", "sgd"), ("mup", "momentum")):
        groups = parameter_groups(net, OptimizerSettings(opt, lr=lr), param)
        assert [g["lr"] for g in groups] == [lr]


def test_mup_adam_moves_each_layer_by_its_rate():
    """Adam's first step moves every entry by η_group·g/(|g| + ε) ≈ η_group·sign(g)."""
    width, lr = 256, 0.1
    net = MLP(4, width, 2, out_dim=2, activation="relu", parameterization="mup", w_std=1.0, b_std=0.1, seed=0, dtype=torch.float64)
    before = {k: v.detach().clone() for k, v in net.named_parameters()}
    opt = build_optimizer(net, OptimizerSettings("adam", lr=lr, eps=1e-30), "mup")
    x = torch.randn(8, 4, dtype=torch.float64)
    net(x).pow(2).sum().backward()
    opt.step()
    hidden_step = (net.layers[1].weight - before["layers.1.weight"]).abs()
    input_step = (net.layers[0].weight - before["layers.0.weight"]).abs()
    moved = hidden_step[hidden_step > 0]
    assert torch.allclose(moved, torch.full_like(moved, lr / width), rtol=1e-12)
    moved = input_step[input_step > 0]
    assert torch.allclose(moved, torch.full_like(moved, lr / math.sqrt(width)), rtol=1e-12)


def test_cosine_schedule_matches_torch_and_the_clock():
    steps, lr = 10, 0.5
    model = _Vec()
    opt = build_optimizer(model, OptimizerSettings("sgd", lr=lr))
    sched = build_scheduler(opt, "cosine", steps)
    reference = torch.optim.lr_scheduler.CosineAnnealingLR(
        torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=lr), T_max=steps)
    for k in range(steps):
        assert opt.param_groups[0]["lr"] == pytest.approx(reference.get_last_lr()[0], abs=1e-15)
        assert opt.param_groups[0]["lr"] == pytest.approx(lr * lr_factor("cosine", k, steps))
        opt.step()
        sched.step()
        reference.optimizer.step()
        reference.step()
    assert elapsed_time("constant", lr, 7, steps) == pytest.approx(3.5)
    # Σ_k (1 + cos(πk/T))/2 over k < T is T/2 (the cosines cancel in pairs except k = 0)
    assert elapsed_time("cosine", lr, steps, steps) == pytest.approx(lr * (steps / 2 + 0.5))


def test_infinite_width_prediction_support():
    assert infinite_width_support(OptimizerSettings("sgd")) == ""
    assert infinite_width_support(OptimizerSettings("momentum")) == ""
    assert infinite_width_support(OptimizerSettings("sgd", schedule="cosine")) == ""
    assert "Adam" in infinite_width_support(OptimizerSettings("adam"))
    assert "weight decay" in infinite_width_support(OptimizerSettings("sgd", weight_decay=1e-4))


def test_cross_entropy_is_torchs():
    f = torch.randn(7, 4, dtype=torch.float64)
    labels = torch.tensor([0, 3, 1, 1, 2, 0, 3])
    y = torch.nn.functional.one_hot(labels, 4).double()
    want = torch.nn.functional.cross_entropy(f, labels)
    assert cross_entropy(f, y).item() == pytest.approx(want.item(), rel=1e-14)
    assert loss_function("cross_entropy") is cross_entropy
    with pytest.raises(ValueError, match="mse, cross_entropy"):
        loss_function("hinge")


def test_accuracy_on_a_separable_set_and_pm1_targets():
    """Points x ∈ R² labelled by the side of the line x₁ = x₂: the separating linear map
    classifies all of them; its negation none; argmax and ±1 encodings agree."""
    x = torch.randn(200, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x = x[(x[:, 0] - x[:, 1]).abs() > 0.1]  # a margin: no point on the line
    side = (x[:, 0] > x[:, 1]).long()
    one_hot = torch.nn.functional.one_hot(side, 2).double()
    pm1 = (2.0 * side - 1.0).unsqueeze(1).double()
    logits = torch.stack([x[:, 1] - x[:, 0], x[:, 0] - x[:, 1]], dim=1)
    assert accuracy(logits, one_hot) == 1.0 and accuracy(-logits, one_hot) == 0.0
    assert accuracy((x[:, 0] - x[:, 1]).unsqueeze(1), pm1) == 1.0
    assert torch.equal(predicted_class(pm1), side)
    half = logits.clone()
    half[::2] *= -1  # flip every other prediction
    assert accuracy(half, one_hot) == pytest.approx(0.5, abs=1 / len(x))
