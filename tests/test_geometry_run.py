"""The checkpoint geometry inside a run: its columns, their consistency with each other and
with an independent (non-structured) computation, and what kernels.pt keeps."""

from __future__ import annotations

import math

import pytest
import torch

from ntk_lab.measures import geometry
from ntk_lab.measures.checkpoint_geometry import (
    SPECTRAL_COLUMNS, CheckpointGeometry, layers_to_store, spectrum_note,
)
from ntk_lab.data import make_dataset
from ntk_lab.kernels import empirical_ntk, infinite_width_kernels
from ntk_lab.models import MLP
from ntk_lab.records import RunRecorder, load_kernels
from ntk_lab.training.loop import TrainSettings, train
from tests.test_geometry import per_layer_ntk_by_jacobians

F64 = torch.float64
# Two float64 computations of the same quantity (fused structured features vs jacrev and a
# forward hook): ~1e-15 relative round-off on each kernel; the derived metrics (ratios,
# eigen-decompositions of well-separated spectra) keep ~1e-12; 1e-9 catches any real
# difference (a wrong layer, a missing α², a stale step-0 reference).
PATH_AGREEMENT_ATOL = 1e-9
# Sums of per-layer kernels against Θ in float64 (the stated target is 1e-10).
LAYER_SUM_REL_TOL = 1e-10


def tiny_run(tmp_path, method: str, *, parameterization: str = "ntk", n_probe: int = 12,
             spectrum_max_probe: int = 1024):
    data = make_dataset("sphere_teacher", n_train=16, n_test=n_probe, n_probe=n_probe, in_dim=3)
    data = data.to(F64, "cpu")
    net = MLP(3, 24, 2, parameterization=parameterization, w_std=1.2, b_std=0.2, seed=0,
              dtype=F64)
    nngp, theta_inf = infinite_width_kernels(data.x_probe, activation="relu", depth=2,
                                             w_std=1.2, b_std=0.2)
    recorder = RunRecorder(tmp_path)
    settings = TrainSettings(steps=4, lr=0.5, checkpoints=3, ntk_method=method, progress=False,
                             top_k=3, spectrum_max_probe=spectrum_max_probe)
    outcome = train(net, data, settings, recorder, theta_inf=theta_inf, nngp_inf=nngp)
    assert outcome.status == "ok"
    recorder.finish({"status": "ok"})
    return outcome.rows, load_kernels(tmp_path), data


def test_columns_are_consistent_and_match_an_independent_path(tmp_path):
    rows, kernels, data = tiny_run(tmp_path / "fused", "structured")
    jac_rows, _, _ = tiny_run(tmp_path / "jacrev", "jacrev")
    names = ["alignment", "eff_rank", "top_eig_share", "eig_overlap_init", "eig_overlap_inf",
             "target_power_topk", "kernel_velocity", "ck_kappa", "nngp_err_inf",
             *[f"{m}_layer{i}" for m in ("kappa", "ntk_share", "alignment") for i in (1, 2, 3)]]
    for fused, general in zip(rows, jac_rows):  # fused tracker features vs jacrev + hooks
        for name in names:
            a, b = fused[name], general[name]
            assert (math.isnan(a) and math.isnan(b)) or abs(a - b) < PATH_AGREEMENT_ATOL, name
    first, last = rows[0], rows[-1]
    assert math.isnan(first["kernel_velocity"]) and last["kernel_velocity"] > 0
    assert first["eig_overlap_init"] == pytest.approx(1.0) and first["ck_kappa"] == 0.0
    assert first["kappa_layer1"] == 0.0 and last["kappa_layer1"] > 0
    for row in rows:
        assert sum(row[f"ntk_share_layer{i}"] for i in (1, 2, 3)) == pytest.approx(1.0)
        # ntk parameterization: the readout's NTK block is m_W² h·h' + m_b² = σ_w²h·h'/n + σ_b²,
        # exactly the conjugate kernel, so the two drifts coincide
        assert row["kappa_layer3"] == pytest.approx(row["ck_kappa"], abs=PATH_AGREEMENT_ATOL)
    # kernels.pt: per-layer kernels summing to Θ, eigenvalues of Θ, probe targets
    theta, layers = kernels["theta"], kernels["theta_layers"]
    assert layers.shape == (len(rows), 3, 12, 12)
    assert ((layers.sum(1) - theta).norm() / theta.norm()).item() < LAYER_SUM_REL_TOL
    assert torch.equal(kernels["layer_steps"], kernels["checkpoint_steps"])
    eig = torch.linalg.eigvalsh(theta[-1]).flip(0)
    torch.testing.assert_close(kernels["eigvals"][-1], eig, atol=PATH_AGREEMENT_ATOL, rtol=0)
    assert math.exp(-(p := eig / eig.sum()).mul(p.log()).sum()) == pytest.approx(last["eff_rank"])


def test_final_row_against_metrics_computed_from_scratch(tmp_path):
    """The last row of a mup run against the geometry functions applied to the stored Θ_0
    and Θ_T: the row uses step 0 as its reference and the probe targets."""
    rows, kernels, data = tiny_run(tmp_path, "structured", parameterization="mup")
    theta0, theta = kernels["theta"][0], kernels["theta"][-1]
    u0, ut = geometry.spectrum(theta0).top(3), geometry.spectrum(theta).top(3)
    last = rows[-1]
    assert last["eig_overlap_init"] == pytest.approx(geometry.eigenspace_overlap(ut, u0), abs=1e-12)
    assert last["alignment"] == pytest.approx(geometry.centered_alignment(theta, data.y_probe),
                                              abs=1e-12)
    assert last["target_power_topk"] == pytest.approx(
        geometry.target_power_topk(ut, data.y_probe), abs=1e-12)


def test_geometry_of_a_fresh_network_by_jacobians():
    """Step 0 of CheckpointGeometry on kernels from per-parameter Jacobians (torch.func)."""
    net = MLP(3, 10, 2, out_dim=2, activation="tanh", b_std=0.3, seed=2, dtype=F64)
    x = torch.randn(7, 3, generator=torch.Generator().manual_seed(3), dtype=F64)
    y = torch.randn(7, 2, generator=torch.Generator().manual_seed(4), dtype=F64)
    layers = per_layer_ntk_by_jacobians(net, x)
    theta = empirical_ntk(net, x, method="jacrev")
    geo = CheckpointGeometry(y, None, None, top_k=2)
    row, arrays = geo(theta, 0.0, theta_layers=layers)
    for i in range(3):
        assert row[f"ntk_share_layer{i + 1}"] == pytest.approx(
            (layers[i].trace() / theta.trace()).item(), abs=1e-12)
        assert row[f"alignment_layer{i + 1}"] == pytest.approx(
            geometry.centered_alignment(layers[i], y), abs=1e-12)
    assert math.isnan(row["eig_overlap_inf"])
    assert "ck_kappa" not in row and arrays["eigvals"].shape == (7,)


def test_spectral_columns_are_skipped_above_the_cap(tmp_path):
    rows, kernels, _ = tiny_run(tmp_path, "structured", spectrum_max_probe=8)
    assert all(math.isnan(rows[-1][name]) for name in SPECTRAL_COLUMNS)
    assert "eigvals" not in kernels and not math.isnan(rows[-1]["alignment"])
    assert "n_probe 12 > ntk.spectrum_max_probe 8" in spectrum_note(12, 8)
    assert spectrum_note(8, 8) is None


def test_per_layer_kernels_follow_the_storage_cap():
    mb = 10**6
    # N = 1000, L = 4, K = 21, float32: 16 MB per checkpoint, 336 MB for all of them
    assert layers_to_store("all", 1000, 4, 21, 4, 100 * mb, 1000, explicit=False) == "all"
    assert layers_to_store("all", 1000, 4, 21, 4, 100 * mb, 256, explicit=False) == "ends"
    assert layers_to_store("all", 1000, 4, 21, 4, 250 * mb, 256, explicit=False) == "none"
    assert layers_to_store("ends", 1000, 4, 21, 4, 100 * mb, 256, explicit=False) == "ends"
    assert layers_to_store("all", 1000, 4, 21, 4, 250 * mb, 256, explicit=True) == "all"
    assert layers_to_store("none", 10, 4, 21, 4, 0, 256, explicit=False) == "none"


@pytest.mark.parametrize("parameterization", ["ntk", "standard", "mup"])
@pytest.mark.parametrize("alpha", [1.0, 3.0])
def test_conjugate_kernel_from_the_readout_block_equals_the_features_gram(parameterization, alpha):
    """CK from Θ_{L+1} (readout_conjugate_kernel) against σ_w²ΦΦᵀ/n + σ_b² with Φ read by a
    forward hook: two independent routes to the same matrix."""
    from ntk_lab.measures.checkpoint_geometry import readout_conjugate_kernel
    from ntk_lab.models.layer_outputs import readout_features
    from ntk_lab.models import ScaledOutput

    net = MLP(3, 9, 2, out_dim=2, parameterization=parameterization, w_std=1.3, b_std=0.4,
              seed=5, dtype=F64)
    model = ScaledOutput(net, alpha, center=False) if alpha != 1.0 else net
    x = torch.randn(6, 3, generator=torch.Generator().manual_seed(6), dtype=F64)
    layers = per_layer_ntk_by_jacobians(model, x)
    expected = geometry.conjugate_kernel(readout_features(model, x), 1.3, 0.4)
    torch.testing.assert_close(readout_conjugate_kernel(model, layers[-1]), expected,
                               atol=PATH_AGREEMENT_ATOL, rtol=0)
