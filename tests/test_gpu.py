"""CUDA checks (marked ``gpu``; skipped without a CUDA device). Run by scripts/gpu_check.sh."""

from __future__ import annotations

import pytest
import torch

from ntk_lab.kernels import empirical_ntk, infinite_width_kernels
from ntk_lab.models import CNN, MLP, ResMLP

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

# float32 on the GPU with TF32 off: Gram sums of ~1e3 terms agree with float64 to ~1e-6.
FLOAT32_REL_TOL = 1e-5
FLOAT64_REL_TOL = 1e-10  # the same float64 sums in another order


def rel_err(a, b):
    return ((a.double().cpu() - b.double().cpu()).norm() / b.double().cpu().norm()).item()


@pytest.mark.parametrize("method", ["structured", "jacrev", "ntvp"])
def test_cuda_kernels_match_cpu_float64(method):
    cpu = MLP(5, 256, 3, out_dim=2, activation="relu", b_std=0.1, seed=0, dtype=torch.float64)
    x = torch.randn(16, 5, dtype=torch.float64)
    reference = empirical_ntk(cpu, x, method="structured", mode="full")
    gpu64 = MLP(5, 256, 3, out_dim=2, activation="relu", b_std=0.1, seed=0, dtype=torch.float64, device="cuda")
    assert rel_err(empirical_ntk(gpu64, x.cuda(), method=method, mode="full"), reference) < FLOAT64_REL_TOL
    gpu32 = MLP(5, 256, 3, out_dim=2, activation="relu", b_std=0.1, seed=0, device="cuda")
    theta = empirical_ntk(gpu32, x.float().cuda(), method=method, mode="full")
    assert theta.device.type == "cuda"
    assert rel_err(theta, reference) < FLOAT32_REL_TOL


@pytest.mark.parametrize("make", [
    lambda **kw: CNN(2, 16, 2, out_dim=3, activation="relu", b_std=0.2, seed=0, **kw),                  # GAP
    lambda **kw: CNN(2, 16, 2, out_dim=3, activation="erf", padding="circular", readout="flatten",
                     spatial_shape=(6, 5), seed=0, **kw),
    lambda **kw: ResMLP(5, 32, 3, out_dim=2, activation="tanh", b_std=0.1, seed=0, **kw),
], ids=["cnn-gap", "cnn-flatten-circular", "resmlp"])
def test_cuda_conv_and_residual_kernels_match_cpu_float64(make):
    """The structured conv NTK (lazily gathered patches, feature blocks, symmetric strips at
    N ≥ 64) and Θ_∞ on the GPU against the same float64 computation on the CPU."""
    is_cnn = make().__class__ is CNN
    x = torch.randn(72, *((2, 6, 5) if is_cnn else (5,)), dtype=torch.float64)
    cpu = make(dtype=torch.float64)
    for mode in ("trace", "full"):
        reference = empirical_ntk(cpu, x, mode=mode)
        gpu64 = make(dtype=torch.float64, device="cuda")
        assert rel_err(empirical_ntk(gpu64, x.cuda(), mode=mode), reference) < FLOAT64_REL_TOL
        theta = empirical_ntk(make(device="cuda"), x.float().cuda(), mode=mode)
        assert theta.device.type == "cuda" and rel_err(theta, reference) < FLOAT32_REL_TOL
    _, ntk_cpu = infinite_width_kernels(x[:8], model=cpu)
    _, ntk_gpu = infinite_width_kernels(x[:8].cuda(), model=make(dtype=torch.float64, device="cuda"))
    assert ntk_gpu.device.type == "cuda" and rel_err(ntk_gpu, ntk_cpu) < FLOAT64_REL_TOL


def _tf32_settings():
    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    if hasattr(matmul, "fp32_precision"):  # torch >= 2.9
        return matmul.fp32_precision, cudnn.fp32_precision
    return matmul.allow_tf32, cudnn.allow_tf32


def test_tf32_is_restored_after_a_kernel():
    before = _tf32_settings()
    net = MLP(3, 32, 2, seed=0, device="cuda")
    empirical_ntk(net, torch.randn(4, 3, device="cuda"))
    assert _tf32_settings() == before


def test_infinite_width_kernels_stay_on_the_device():
    x = torch.randn(32, 4, dtype=torch.float64, device="cuda")
    nngp, ntk = infinite_width_kernels(x, activation="tanh", depth=3, w_std=1.2, b_std=0.1)
    cpu_nngp, cpu_ntk = infinite_width_kernels(x.cpu(), activation="tanh", depth=3, w_std=1.2, b_std=0.1)
    assert ntk.device.type == "cuda"
    assert rel_err(ntk, cpu_ntk) < FLOAT64_REL_TOL and rel_err(nngp, cpu_nngp) < FLOAT64_REL_TOL


def test_a_run_on_cuda_end_to_end(tmp_path):
    from ntk_lab.experiment import run_experiment
    from tests.test_train import tiny_config

    outcome = run_experiment(tiny_config(device="cuda"), tmp_path)
    assert outcome.status == "ok"


def test_preflight_estimate_against_cuda_peak(tmp_path):
    """On a GPU the estimate (no runtime part) against torch's own peak-allocation counter."""
    from ntk_lab import experiment as build
    from ntk_lab.training import preflight
    from ntk_lab.config import data_settings
    from ntk_lab.data import make_dataset
    from tests.test_preflight import ESTIMATE_FACTOR
    from tests.test_train import tiny_config

    config = tiny_config(device="cuda", **{"model.width": 4096, "model.depth": 3,
                                           "data.n_probe": 1024, "data.n_test": 1024})
    data = make_dataset(config.data.name, **data_settings(config.data))
    shape = preflight.run_shape(lambda dev: build.build_model(config, data, torch.float32, dev),
                                data.x_train[:1].float(), itemsize=4, n_train=len(data.x_train),
                                n_test=len(data.x_test), n_probe=len(data.x_probe), batch=None,
                                feature_bytes=lambda net: build._structured_feature_bytes(net, torch.float32))
    estimate = preflight.estimate_memory(shape, build.instrumentation(config), "cuda").total
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    assert build.run_experiment(config, tmp_path).status == "ok"
    measured = torch.cuda.max_memory_allocated() - base
    assert 1 / ESTIMATE_FACTOR <= estimate / measured <= ESTIMATE_FACTOR, (estimate, measured)
