"""The compiled full-state maps (ntk_lab.layers.fused_pairs) against the eager maps they replace.

Both compute the pooled conv net's Θ_∞ from the same formulas; only the order of the stencil's
sums and the operations' fusion differ. Where two positions' local inputs are exactly parallel
(ρ = ±1: the same image's p = p', or patches holding one pixel each), arccos has an infinite
slope and either path carries an O(√ε) ≈ 1e-8 rounding in E[φ'φ'] there; the pooling average
dilutes it to ~1e-12 of the kernel. Hence the tolerance below.
"""

from __future__ import annotations

import warnings

import pytest
import torch

from ntk_lab.kernels.composed import composed_kernels
from ntk_lab.layers import fused_pairs
from ntk_lab.models import NetworkSpec, build_network
from ntk_lab.models.layer_groups import kernel_layers

FUSED_RTOL = 1e-10
"""Relative Frobenius agreement of the compiled and the eager kernels: measured 1.3e-12 (NTK)
and 1.3e-16 (NNGP) on 32 Fashion-MNIST images, the NTK's from the ρ = ±1 points (module
docstring); a wrong mask, offset or coefficient moves the kernel by ≥ 1e-3."""


def _layers(spec: NetworkSpec, shape):
    net = build_network(spec, shape, 1, seed=None, dtype=torch.float64, device=torch.device("meta"))
    return kernel_layers(net)


def _images(n: int, size: int, channels: int = 2, seed: int = 0) -> torch.Tensor:
    x = torch.randn(n, channels, size, size, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    x[:, :, :2, :] = 0.0  # a zero band: zero-variance positions, and one-pixel patches at its edge
    return x


def _compiled_or_skip(layers, x1, x2=None):
    got = composed_kernels(layers, x1, x2, fused=True)
    if not fused_pairs.available():
        pytest.skip("torch.compile cannot build C++ kernels here (no compiler): the eager maps ran")
    return got


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("b_std, kernel_size", [(0.0, 3), (0.3, 3), (0.1, 5)])
def test_compiled_maps_agree_with_the_eager_maps(b_std, kernel_size):
    spec = NetworkSpec("cnn", 8, 3, b_std=b_std, kernel_size=kernel_size)
    x = _images(5, 8)
    layers = _layers(spec, tuple(x.shape[1:]))
    nngp, ntk = _compiled_or_skip(layers, x)
    ref_nngp, ref_ntk = composed_kernels(layers, x, fused=False)
    assert _rel(nngp, ref_nngp) <= FUSED_RTOL and _rel(ntk, ref_ntk) <= FUSED_RTOL
    # a rectangular kernel takes the same path
    x2 = _images(5, 8, seed=1)
    got = _compiled_or_skip(layers, x, x2)[1]
    assert _rel(got, composed_kernels(layers, x, x2, fused=False)[1]) <= FUSED_RTOL


def test_the_compiled_maps_are_used_and_a_wrong_stencil_would_show():
    """The flag reaches the layers (the compiled conv map runs), and the check above has power:
    a stencil plan shifted by one position moves the kernel far outside the tolerance."""
    spec = NetworkSpec("cnn", 8, 2)
    x = _images(5, 8)
    layers = _layers(spec, tuple(x.shape[1:]))
    ref = composed_kernels(layers, x, fused=False)[1]
    _compiled_or_skip(layers, x)
    calls = []
    original = fused_pairs.conv_pair_map

    def spy(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    plan = fused_pairs._stencil_plan
    try:
        fused_pairs.conv_pair_map = spy
        composed_kernels(layers, x, fused=True)
        assert len(calls) == 2  # both convolutions
        fused_pairs._stencil_plan = lambda spatial, k, dtype, device: _shifted(plan(spatial, k, dtype, device))
        wrong = composed_kernels(layers, x, fused=True)[1]
    finally:
        fused_pairs.conv_pair_map = original
        fused_pairs._stencil_plan = plan
    assert _rel(wrong, ref) > 1e-3


def _shifted(plan):
    masks, offsets, pad = plan
    return masks, [[o + 1 for o in axis] for axis in offsets], pad + 1


def test_a_failed_compile_falls_back_to_the_eager_maps_with_one_warning(monkeypatch):
    spec = NetworkSpec("cnn", 8, 2)
    x = _images(5, 8)
    layers = _layers(spec, tuple(x.shape[1:]))
    ref = composed_kernels(layers, x, fused=False)

    def no_compiler(*_args, **_kwargs):
        raise RuntimeError("no working C++ compiler found")

    monkeypatch.setattr(torch, "compile", no_compiler)
    monkeypatch.setattr(fused_pairs, "_FAILED", [])
    monkeypatch.setattr(fused_pairs, "_COMPILED", {})
    with pytest.warns(RuntimeWarning, match="no working C\\+\\+ compiler"):
        got = composed_kernels(layers, x, fused=True)
    assert not fused_pairs.available()
    assert torch.equal(got[0], ref[0]) and torch.equal(got[1], ref[1])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # one warning per process, not per tile
        composed_kernels(layers, x, fused=True)


def test_automatic_choice_compiles_only_long_cpu_computations(monkeypatch):
    """fused=None compiles when input pairs × position pairs × layer maps reach
    composed.FUSE_MIN_UPDATES, and never for small work (where a compile would cost more than
    it saves)."""
    seen = []
    original = fused_pairs.conv_pair_map
    monkeypatch.setattr(fused_pairs, "conv_pair_map", lambda *a, **k: seen.append(1) or original(*a, **k))
    spec = NetworkSpec("cnn", 8, 2)
    x = _images(5, 8)
    layers = _layers(spec, tuple(x.shape[1:]))
    composed_kernels(layers, x)
    assert not seen  # 15 pairs × 64² × 6 maps ≪ FUSE_MIN_UPDATES
    monkeypatch.setattr("ntk_lab.kernels.composed.FUSE_MIN_UPDATES", 15 * 64 ** 2 * len(layers))
    composed_kernels(layers, x)
    assert seen
