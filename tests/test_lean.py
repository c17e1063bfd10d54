"""Lean checkpoints: the fused probe-kernel tracker, one-pass parameter changes, the kernel
storage policy, ``ntk.enabled=false``, overflow as divergence, and the GPU assignment of jobs."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from ntk_lab.measures import drift as metrics
from ntk_lab.experiment import resolve_device, run_experiment
from ntk_lab.config import ConfigError
from ntk_lab.kernels import empirical_ntk, jacobian_change
from ntk_lab.kernels.tracker import ProbeKernelTracker
from ntk_lab.models import MLP, ScaledOutput
from ntk_lab.records import load_kernels, read_run
from ntk_lab.records.storage import plan_storage
from ntk_lab.training.loop import checkpoint_steps
from tests.test_train import tiny_config

# Kernel sums of a few hundred float64 products: agreement far above this would be a bug.
FLOAT64_ATOL = 1e-10
# Float32 squared sums over ~10⁵ entries with torch's cascade summation: measured ≲ 1e-7
# relative against float64; 1e-5 leaves room and still catches a wrong pairing of tensors.
FLOAT32_SUM_RTOL = 1e-5


def _train_a_little(model: nn.Module, x: torch.Tensor, steps: int = 3, lr: float = 0.5) -> None:
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr)
    y = torch.sin(x[:, :1] * 3)
    for _ in range(steps):
        opt.zero_grad()
        (0.5 * (model(x) - y).pow(2).sum() / len(x)).backward()
        opt.step()


@pytest.mark.parametrize("budget", [1 << 30, 2048], ids=["fused", "chunked"])
@pytest.mark.parametrize("wrap", [False, True], ids=["mlp", "scaled"])
def test_tracker_matches_independent_kernel_and_jacobian_change(budget, wrap):
    """The tracker's Θ_t and jac_change — from ONE features pass plus the kept step-0 features
    (fused), or chunked with a frozen θ_0 — equal jacrev's Θ and per-sample-Jacobian
    differences of an explicit θ_0 copy, in float64."""
    torch.manual_seed(0)
    net = MLP(3, 24, 2, out_dim=2, activation="tanh", b_std=0.3, seed=1, dtype=torch.float64)
    model = ScaledOutput(net, 2.5, center=True) if wrap else net
    x = torch.randn(10, 3, dtype=torch.float64)
    tracker = ProbeKernelTracker(model, x, method="auto", memory_budget_bytes=budget)
    assert tracker.fused == (budget == 1 << 30)
    theta_0, change_0 = tracker(model)
    initial = copy.deepcopy(model)
    assert change_0 == 0.0  # the first call returns a literal 0: the later step below is the check
    torch.testing.assert_close(theta_0, empirical_ntk(initial, x, method="jacrev"),
                               atol=FLOAT64_ATOL, rtol=0)
    _train_a_little(model, x)
    theta_t, change_t = tracker(model)
    torch.testing.assert_close(theta_t, empirical_ntk(model, x, method="jacrev"),
                               atol=FLOAT64_ATOL, rtol=0)
    expected = jacobian_change(model, initial, x, method="jacrev")
    assert expected > 1e-3  # training moved the Jacobian: the comparison is not 0 == 0
    assert change_t == pytest.approx(expected, rel=1e-9)


def _layer_kernel_by_jacrev(model: nn.Module, x: torch.Tensor, names: list[str]) -> torch.Tensor:
    """Θ_l(x, x) (N, N), trace mode, of the parameters ``names`` only: explicit per-sample
    Jacobians by torch.func.jacrev, the others held fixed (an independent computation)."""
    params = dict(model.named_parameters())
    chosen = {k: params[k].detach() for k in names}
    rest = {k: v.detach() for k, v in params.items() if k not in chosen}

    def f(p, xi):
        return torch.func.functional_call(model, {**rest, **p}, (xi[None],))[0]

    jac = torch.func.vmap(torch.func.jacrev(f), in_dims=(None, 0))(chosen, x)
    flat = torch.cat([j.reshape(len(x), j.shape[1], -1) for j in jac.values()], -1)  # (N, O, P_l)
    return torch.einsum("nop,mop->nm", flat, flat) / flat.shape[1]


@pytest.mark.parametrize("kind", ["cnn", "resmlp"])
def test_tracker_per_layer_kernels_of_conv_and_residual_nets(kind):
    """With ``layers=True`` the fused tracker keeps Θ_l for every parameterized layer of a CNN
    or a ResMLP; each equals the jacrev kernel of that layer's parameters alone and they sum
    to Θ (what kappa_layer{i}, ntk_share_layer{i} and alignment_layer{i} are built on)."""
    from ntk_lab.models import CNN, ResMLP, parameter_layers

    torch.manual_seed(0)
    if kind == "cnn":
        model = CNN(2, 6, 2, out_dim=3, activation="tanh", b_std=0.2, seed=1, dtype=torch.float64)
        x = torch.randn(5, 2, 5, 5, dtype=torch.float64)
    else:
        model = ResMLP(3, 8, 2, out_dim=3, activation="tanh", b_std=0.2, branch_scale=0.7, seed=1, dtype=torch.float64)
        x = torch.randn(7, 3, dtype=torch.float64)
    tracker = ProbeKernelTracker(model, x, method="structured", layers=True)
    assert tracker.fused
    theta, _ = tracker(model)
    groups = parameter_layers(model)
    assert tracker.theta_layers.shape == (len(groups), len(x), len(x))
    for names, layer in zip(groups, tracker.theta_layers):
        torch.testing.assert_close(layer, _layer_kernel_by_jacrev(model, x, names),
                                   atol=FLOAT64_ATOL, rtol=0)
    torch.testing.assert_close(tracker.theta_layers.sum(0), theta, atol=FLOAT64_ATOL, rtol=0)


class _Bilinear(nn.Module):
    """Layers the structured factorization does not know (nn.Linear it does)."""

    def __init__(self):
        super().__init__()
        self.first = nn.Bilinear(3, 3, 16)
        self.head = nn.Bilinear(16, 16, 1)

    def forward(self, x):
        h = torch.tanh(self.first(x, x))
        return self.head(h, h)


def test_tracker_general_path_for_a_module_without_the_factorization():
    torch.manual_seed(0)
    model = _Bilinear().double()
    x = torch.randn(6, 3, dtype=torch.float64)
    tracker = ProbeKernelTracker(model, x)
    assert not tracker.fused and tracker.method in ("jacrev", "ntvp")
    tracker(model)
    initial = copy.deepcopy(model)
    _train_a_little(model, x)
    theta, change = tracker(model)
    torch.testing.assert_close(theta, empirical_ntk(model, x, method="jacrev"), atol=FLOAT64_ATOL, rtol=0)
    assert change == pytest.approx(jacobian_change(model, initial, x, method="jacrev"), rel=1e-9)


def test_tracker_without_jacobian_change_keeps_nothing_of_theta_0():
    net = MLP(2, 8, 1, seed=0, dtype=torch.float64)
    tracker = ProbeKernelTracker(net, torch.randn(4, 2, dtype=torch.float64), jac_change=False)
    assert tracker(net)[1] is None and tracker.features_0 is None and tracker.model_0 is None


def test_one_pass_parameter_changes_equal_the_float64_definition():
    torch.manual_seed(0)
    net = MLP(5, 300, 2, seed=0)
    params_0 = {k: v.detach().clone() for k, v in net.named_parameters()}
    _train_a_little(net, torch.randn(8, 5), steps=2)
    params_t = dict(net.named_parameters())
    dist = metrics.squared_distances(params_t, params_0)
    for k in params_0:
        exact = (params_t[k].detach().double() - params_0[k].double()).pow(2).sum().item()
        assert dist[k] == pytest.approx(exact, rel=FLOAT32_SUM_RTOL), k
    total = (sum(dist.values()) / sum(metrics.squared_norms(params_0).values())) ** 0.5
    assert total == pytest.approx(metrics.param_change(params_t, params_0), rel=1e-12)
    assert metrics.relative_change(1.0, 0.0) != metrics.relative_change(1.0, 0.0)  # NaN


def test_storage_levels_and_sizes_by_hand():
    mb = 10**6
    # the default run: N = 64, 21 checkpoints, everything in the computed dtypes (0.4 MB)
    plan = plan_storage(64, 21, torch.float32)
    assert (plan.level, plan.theta_dtype, plan.limit_dtype) == ("all", None, None)
    assert plan.bytes == 64 * 64 * (21 * 4 + 2 * 8)
    # N = 4096, 21 float32 checkpoints: all = 1.4 GB, ends native = 2·67 + 134 MB = 403 MB,
    # ends in float32 = 3·67 MB = 201 MB -> the default keeps the ends in float32.
    plan = plan_storage(4096, 21, torch.float32)
    assert (plan.level, plan.theta_dtype, plan.limit_dtype) == ("ends", torch.float32, torch.float32)
    assert plan.bytes == 3 * 4096**2 * 4 and plan.bytes <= 256 * mb
    # N = 1024 float64: all native = 21·8 + 2·8 per entry = 193 MB fits
    plan = plan_storage(1024, 21, torch.float64)
    assert (plan.level, plan.theta_dtype) == ("all", None) and plan.bytes == 1024**2 * 8 * 23
    # a tiny cap leaves nothing
    assert plan_storage(4096, 21, torch.float32, max_mb=1).level == "none"
    # an explicit level is honoured whatever its size
    assert plan_storage(4096, 21, torch.float32, store="all").bytes == 4096**2 * (21 * 4 + 2 * 8)
    forced = plan_storage(64, 21, torch.float32, store_dtype="float64")
    assert forced.theta_dtype == forced.limit_dtype == torch.float64


@pytest.mark.parametrize("store", ["all", "ends", "none"])
def test_storage_policy_files(tmp_path, store):
    config = tiny_config(**{"ntk.store": store, "train.steps": 12, "ntk.checkpoints": 5})
    assert run_experiment(config, tmp_path).status == "ok"
    kernels = load_kernels(tmp_path)
    frame = read_run(tmp_path).metrics
    all_steps = checkpoint_steps(12, 5)
    assert kernels["checkpoint_steps"].tolist() == all_steps == frame["step"].tolist()
    assert kernels["store"] == store
    assert "probe_x" in kernels and kernels["probe_y"].shape == (8, 1)
    stored = {"all": all_steps, "ends": [0, 12], "none": []}[store]
    assert kernels["steps"].tolist() == stored
    if store == "none":
        assert "theta" not in kernels and "theta_inf" not in kernels
        return
    assert kernels["theta"].shape == (len(stored), 8, 8)
    assert ("nngp_inf" in kernels) == (store == "all") and "theta_inf" in kernels
    # the stored kernels are the ones the metrics came from: κ of the last one
    theta = kernels["theta"].double()
    kappa = (theta[-1] - theta[0]).norm() / theta[0].norm()
    assert kappa.item() == pytest.approx(frame["kappa"].iloc[-1], rel=1e-6)


def test_ntk_disabled_trains_the_same_with_no_kernels(tmp_path):
    on = run_experiment(tiny_config(), tmp_path / "on")
    off = run_experiment(tiny_config(**{"ntk.enabled": False}), tmp_path / "off")
    assert on.status == off.status == "ok"
    frame_on, frame_off = read_run(tmp_path / "on").metrics, read_run(tmp_path / "off").metrics
    # same data, steps and losses: the instrumentation does not touch training
    assert frame_off["train_loss"].tolist() == frame_on["train_loss"].tolist()
    assert frame_off["param_change"].tolist() == frame_on["param_change"].tolist()
    for column in ("kappa", "ntk_err_inf", "jac_change", "inf_gap"):
        assert column in frame_on.columns and column not in frame_off.columns
    kernels = load_kernels(tmp_path / "off")
    assert "theta" not in kernels and "theta_inf" not in kernels
    summary = read_run(tmp_path / "off").summary
    assert summary["ntk_enabled"] is False and "ntk.enabled=false" in summary["kernels"]


@pytest.mark.parametrize("lr", [1e308, 1e30])
def test_an_overflowing_update_is_a_divergence_with_its_step(tmp_path, lr):
    """lr=1e308 cannot be represented in float32 (torch raises in the update); lr=1e30 makes
    the parameters inf. Both are the run diverging, never failing."""
    outcome = run_experiment(tiny_config(**{"train.lr": lr}), tmp_path)
    assert outcome.status == "diverged" and outcome.diverged_step is not None
    summary = read_run(tmp_path).summary
    assert summary["status"] == "diverged" and summary["diverged_step"] == outcome.diverged_step
    assert "overflow" in summary["message"] or "non-finite" in summary["message"] \
        or "loss became" in summary["message"]


def test_jobs_spread_over_the_gpus_of_a_node():
    """device=auto in a sweep on a node with k GPUs puts job j on cuda:(j mod k)."""
    assert [str(resolve_device("auto", j, gpu_count=4)) for j in range(6)] == [
        "cuda:0", "cuda:1", "cuda:2", "cuda:3", "cuda:0", "cuda:1"]
    assert str(resolve_device("auto", 5, gpu_count=1)) == "cuda"  # Slurm: each job sees its own
    assert str(resolve_device("auto", None, gpu_count=4)) == "cuda"  # a single run
    assert str(resolve_device("auto", 3, gpu_count=0)) == "cpu"
    assert str(resolve_device("cuda:1", 0, gpu_count=2)) == "cuda:1"  # explicit wins
    with pytest.raises(ConfigError, match="has 2 GPU"):
        resolve_device("cuda:2", 0, gpu_count=2)
    with pytest.raises(ConfigError, match="CUDA is not available"):
        resolve_device("cuda", 0, gpu_count=0)


def test_symmetric_assembly_equals_the_full_gram_products(monkeypatch):
    """Θ(x, x) from its upper-triangular blocks, mirrored, is the full computation (blocks of
    5 rows over 23 points: uneven last block, off-diagonal blocks both ways)."""
    from ntk_lab.kernels import structured_contraction, tracker
    from ntk_lab.kernels.structured import kernel_from_features, mlp_features

    monkeypatch.setattr(structured_contraction, "SYMMETRIC_BLOCK", 5)  # read at call time
    net = MLP(3, 16, 2, out_dim=2, activation="gelu", b_std=0.2, seed=0, dtype=torch.float64)
    feats = mlp_features(net, torch.randn(23, 3, dtype=torch.float64))
    torch.testing.assert_close(tracker.symmetric_kernel_from_features(feats),
                               kernel_from_features(feats, feats, "trace"), atol=FLOAT64_ATOL, rtol=0)


def test_kernels_pt_is_the_stack_of_the_kept_kernels_and_reads_back_privately(tmp_path):
    """kernels.pt holds exactly torch.stack of the kept Θ_t and Θ_{l,t} (stacked in place, one
    copy held), the recorder's kernels are then views of the stacked tensor, and a reader's
    memory-mapped tensors can be written without changing the file."""
    from ntk_lab.records import RunRecorder

    recorder = RunRecorder(tmp_path, plan=plan_storage(3, 3, torch.float32, store="all"), layers_level="all")
    thetas = [torch.randn(3, 3) for _ in range(3)]
    layers = [torch.randn(2, 3, 3) for _ in range(3)]
    for step, (theta, per_layer) in enumerate(zip(thetas, layers)):
        recorder.checkpoint({"step": step}, theta.clone(), {"theta_layers": per_layer.clone()})
    recorder.finish({"status": "ok"})
    kernels = load_kernels(tmp_path)
    assert torch.equal(kernels["theta"], torch.stack(thetas))
    assert torch.equal(kernels["theta_layers"], torch.stack(layers))
    assert all(t.untyped_storage().data_ptr() == recorder.thetas[0].untyped_storage().data_ptr()
               for t in recorder.thetas)  # one stacked buffer, no second copy
    kernels["theta"].add_(1.0)
    assert torch.equal(load_kernels(tmp_path)["theta"], torch.stack(thetas))
