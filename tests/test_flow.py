"""Kernel flow (ntk_lab.dynamics.kernel_flow): against the MSE closed form, against the discrete
gradient-descent and heavy-ball recursions of the kernel model (convergence order in the step),
and against tiny wide networks trained in float64 with cross-entropy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ntk_lab.kernels.analytic import infinite_width_kernels
from ntk_lab.dynamics.kernel_flow import KernelFlow, loss_gradient
from ntk_lab.dynamics.gradient_flow import gradient_flow
from ntk_lab.models import MLP

# The integrator runs at rtol 1e-10; against the exact MSE exponential the predictions agree
# to that order (measured ~1e-11), so 1e-8 leaves room and still catches any wrong factor.
CLOSED_FORM_TOL = 1e-8
# A network of width n differs from its kernel model by O(n^-1/2) (Θ_0 − Θ_∞ and the drift of
# Θ_t); measured relative gaps with cross-entropy: 0.06–0.08 at n = 512, 0.02–0.03 at n = 8192.
# At n = 4096 the gap must stay under 0.06; predicting with the MSE flow instead gives ~1.
NETWORK_GAP_TOL = 0.06


def _problem(n=8, m=5, d=4, o=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n + m, d, generator=g, dtype=torch.float64)
    _, theta = infinite_width_kernels(x, x[:n], activation="relu", depth=2, w_std=1.0, b_std=0.1)
    y = torch.nn.functional.one_hot(torch.arange(n) % o, o).double()
    f0 = 0.5 * torch.randn(n + m, o, generator=g, dtype=torch.float64)
    return theta[:n], theta[n:], y, f0[:n], f0[n:]


def test_mse_flow_matches_the_closed_form():
    th, th_star, y, f0, f0_star = _problem()
    flow = KernelFlow(th, th_star, y, loss="mse")
    flow.set_initial(f0, f0_star)
    for tau in (0.0, 0.3, 3.0, 30.0, 300.0):
        train, test = flow.at(tau)
        want_train, want_test = gradient_flow(th, th_star, f0, f0_star, y, tau)
        assert torch.allclose(train, want_train, rtol=0, atol=CLOSED_FORM_TOL)
        assert torch.allclose(test, want_test, rtol=0, atol=CLOSED_FORM_TOL)
    # an earlier time restarts the integration and gives the same answer
    assert torch.allclose(flow.at(3.0)[1], gradient_flow(th, th_star, f0, f0_star, y, 3.0)[1],
                          atol=CLOSED_FORM_TOL)


def test_loss_gradients_are_autograd_gradients():
    f = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    y = torch.nn.functional.one_hot(torch.tensor([0, 2, 1, 1, 0]), 3).double()
    ce = -(y * torch.log_softmax(f, 1)).sum(1).mean()
    mse = 0.5 * (f - y).pow(2).sum() / 5
    for name, loss in (("cross_entropy", ce), ("mse", mse)):
        (auto,) = torch.autograd.grad(loss, f)
        mine = loss_gradient(name, f.detach().numpy(), y.numpy())
        assert np.allclose(mine, auto.numpy(), rtol=0, atol=1e-15)


def _discrete(th, th_star, y, f0, f0_star, loss, lr, steps, momentum):
    """The kernel model's exact iterates: f_{k+1} = f_k + μ(f_k − f_{k−1}) − ηΘ g(f_k)."""
    f, f_star = f0.numpy().copy(), f0_star.numpy().copy()
    prev, prev_star = f.copy(), f_star.copy()
    th, th_star, y = th.numpy(), th_star.numpy(), y.numpy()
    for _ in range(steps):
        g = loss_gradient(loss, f, y)
        new = f + momentum * (f - prev) - lr * th @ g
        new_star = f_star + momentum * (f_star - prev_star) - lr * th_star @ g
        prev, prev_star, f, f_star = f, f_star, new, new_star
    return f, f_star


@pytest.mark.parametrize("loss", ["mse", "cross_entropy"])
@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_flow_converges_to_the_discrete_iterates_at_the_predicted_order(loss, momentum):
    """At fixed t = η·k the iterates approach the ODE like η (gradient flow) or η² (the
    second-order momentum equation): halving η halves / quarters the error."""
    th, th_star, y, f0, f0_star = _problem()
    t_end = 4.0
    flow = KernelFlow(th, th_star, y, loss=loss, momentum=momentum, lr=1.0)
    errors = []
    for lr in (0.02, 0.01, 0.005):
        flow.lr = lr
        flow.set_initial(f0, f0_star)
        _, test = flow.at(t_end)
        _, test_discrete = _discrete(th, th_star, y, f0, f0_star, loss, lr, round(t_end / lr), momentum)
        errors.append(np.abs(test.numpy() - test_discrete).max())
    ratios = [errors[0] / errors[1], errors[1] / errors[2]]
    order = 1 if momentum == 0.0 else 2
    for r in ratios:  # 2 or 4 up to the next order's contribution
        assert 2 ** order * 0.8 < r < 2 ** order * 1.25, (errors, ratios)


def test_momentum_equation_beats_the_first_order_limit():
    """The first-order limit df/dt = −Θg/(1 − μ) is O(η) off; the second-order equation is
    closer to the heavy-ball iterates at the same η."""
    th, th_star, y, f0, f0_star = _problem()
    mu, lr, t_end = 0.9, 0.05, 4.0
    _, exact = _discrete(th, th_star, y, f0, f0_star, "cross_entropy", lr, round(t_end / lr), mu)
    second = KernelFlow(th, th_star, y, loss="cross_entropy", momentum=mu, lr=lr)
    second.set_initial(f0, f0_star)
    first = KernelFlow(th / (1 - mu), th_star / (1 - mu), y, loss="cross_entropy")
    first.set_initial(f0, f0_star)
    err_second = np.abs(second.at(t_end)[1].numpy() - exact).max()
    err_first = np.abs(first.at(t_end)[1].numpy() - exact).max()
    assert err_second < 0.2 * err_first


def _train_network(width, x, y, n, lr, steps, momentum, seed=1):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # products of 6 rows: thread hand-offs cost more than they save
    try:
        return _train(width, x, y, n, lr, steps, momentum, seed)
    finally:
        torch.set_num_threads(threads)


def _train(width, x, y, n, lr, steps, momentum, seed):
    net = MLP(x.shape[1], width, 1, out_dim=y.shape[1], activation="relu", parameterization="ntk", w_std=1.0, b_std=0.1, seed=seed,
              dtype=torch.float64)
    with torch.no_grad():
        f0 = net(x)
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=momentum)
    for _ in range(steps):
        loss = -(y * torch.log_softmax(net(x[:n]), 1)).sum(1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return f0, net(x)


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_cross_entropy_flow_predicts_a_wide_network(momentum):
    """A width-4096 ReLU network trained with softmax cross-entropy in float64 at a small lr
    ends where the Θ_∞ flow started from its own f_0 says, on train and test inputs."""
    n, m, d, o = 6, 5, 3, 3
    x = torch.randn(n + m, d, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    y = torch.nn.functional.one_hot(torch.arange(n) % o, o).double()
    _, theta = infinite_width_kernels(x, x[:n], activation="relu", depth=1, w_std=1.0, b_std=0.1)
    lr, steps = (0.05, 200) if momentum == 0.0 else (0.01, 100)
    f0, f_net = _train_network(4096, x, y, n, lr, steps, momentum)
    gaps = {}
    for loss in ("cross_entropy", "mse"):
        flow = KernelFlow(theta[:n], theta[n:], y, loss=loss, momentum=momentum, lr=lr)
        flow.set_initial(f0[:n], f0[n:])
        pred = torch.cat(flow.at(lr * steps))
        gaps[loss] = ((f_net - pred).norm() / (f_net - f0).norm()).item()
    assert gaps["cross_entropy"] < NETWORK_GAP_TOL, gaps
    assert gaps["mse"] > 5 * NETWORK_GAP_TOL, gaps  # the test can tell the losses apart
