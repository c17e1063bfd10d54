"""Empirical NTK of conv nets, residual nets and user modules: every method against
an explicit per-sample-gradient Gram matrix in float64 (torch.autograd.grad, one sample and
one output at a time), biases on and off, out_dim 1 and 3, x1 ≠ x2; both forms of the conv
factorization; per-layer kernels; Jacobian change; the ``auto`` choice."""

from __future__ import annotations

import copy
import itertools
import math

import pytest
import torch
from torch import nn

from ntk_lab.kernels import empirical_ntk, empirical_ntk_layers, jacobian_change
from ntk_lab.kernels.empirical import resolve_method
from ntk_lab.kernels.structured import affine_kernel, capture_factors, structured_layers
from ntk_lab.models import CNN, MLP, ResMLP, ScaledOutput, parameter_layers
from tests.test_empirical import explicit_ntk, reduce, rel_err

F64 = torch.float64
# float64 sums of a few hundred products agree to ~1e-15 relative; 1e-10 (the stated target)
# leaves room for the methods' different summation orders and catches any missing term.
REL_TOL = 1e-10
# jac_change expands ‖J_t − J_0‖² in float64; with a change of ~0.1 the cancellation costs
# ~2 of 16 digits and the square root halves the relative error (as tests/test_empirical.py).
JAC_CHANGE_REL_TOL = 1e-8
METHODS = ("jacrev", "ntvp", "structured", "auto")
MODES = ("trace", "diagonal", "full")


def images(n: int, seed: int, shape=(2, 5, 4)) -> torch.Tensor:
    return torch.randn(n, *shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


def vectors(n: int, seed: int, d: int = 3) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=F64)


def assert_every_method_matches(model: nn.Module, x1: torch.Tensor, x2: torch.Tensor) -> None:
    reference = explicit_ntk(model, x1, x2)
    for method, mode in itertools.product(METHODS, MODES):
        theta = empirical_ntk(model, x1, x2, method=method, mode=mode)
        assert rel_err(theta, reduce(reference, mode)) < REL_TOL, (method, mode)
    same = empirical_ntk(model, x1, method="structured", mode="full")
    assert rel_err(same, explicit_ntk(model, x1, x1)) < REL_TOL


# Two cases of each grid run in the fast suite (together they cover every option); the full
# grids are marked slow.
_FAST_CNN = {("circular", "flatten", 0.3, 3), ("same", "gap", 0.0, 1)}
_FAST_RESMLP = {(0.3, 3, 0.5)}


def _grid(values, fast):
    return [pytest.param(*v, marks=() if v in fast else pytest.mark.slow) for v in itertools.product(*values)]


@pytest.mark.parametrize("padding,readout,b_std,out_dim", _grid(
    (("same", "circular"), ("gap", "flatten"), (0.0, 0.3), (1, 3)), _FAST_CNN))
def test_cnn_every_method_equals_explicit_gram(padding, readout, b_std, out_dim):
    model = CNN(2, 3, 2, out_dim=out_dim, activation="tanh", parameterization="ntk", w_std=1.3, b_std=b_std, padding=padding, readout=readout,
                spatial_shape=(4, 3), seed=0, dtype=F64)
    assert_every_method_matches(model, images(3, 1, (2, 4, 3)), images(2, 2, (2, 4, 3)))


@pytest.mark.parametrize("parameterization,activation", [("standard", "relu"), ("mup", "gelu")])
def test_cnn_other_parameterizations(parameterization, activation):
    model = CNN(1, 3, 2, out_dim=2, activation=activation, parameterization=parameterization, w_std=1.2, b_std=0.2, kernel_size=1, seed=3, dtype=F64)
    assert_every_method_matches(model, images(3, 1, (1, 4, 4)), images(2, 2, (1, 4, 4)))


@pytest.mark.parametrize("b_std,out_dim,branch_scale", _grid(((0.0, 0.3), (1, 3), (1.0, 0.5)), _FAST_RESMLP))
def test_resmlp_every_method_equals_explicit_gram(b_std, out_dim, branch_scale):
    model = ResMLP(3, 5, 2, out_dim=out_dim, activation="erf", parameterization="ntk", w_std=1.4, b_std=b_std, branch_scale=branch_scale, seed=0, dtype=F64)
    assert_every_method_matches(model, vectors(4, 1), vectors(3, 2))


class TorchLayersNet(nn.Module):
    """torch.nn layers the factorization knows, in awkward settings: a strided, dilated
    Conv2d with reflect padding, an even 'same' Conv1d, a Linear applied to every position
    (P > 1), a Linear without bias, a layer used twice (weight sharing) and a BatchNorm in
    eval mode (unknown to the factorization: per-sample Jacobians for its parameters)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, stride=2, dilation=1, padding=1, padding_mode="reflect")
        self.conv1d = nn.Conv1d(3, 4, 2, padding="same", bias=False)
        self.norm = nn.BatchNorm1d(4)
        self.per_position = nn.Linear(4, 4)
        self.head = nn.Linear(4, 3, bias=False)

    def forward(self, x):
        h = torch.tanh(self.conv(x))                    # (N, 3, 3, 2)
        h = torch.tanh(self.conv1d(h.flatten(2)))       # (N, 4, 6)
        h = self.norm(h)
        h = torch.tanh(self.per_position(h.transpose(1, 2)))  # (N, 6, 4)
        h = torch.tanh(self.per_position(h))            # the same weights again
        return self.head(h.mean(1))


def test_torch_layers_every_method_and_structured_parts():
    torch.manual_seed(0)
    model = TorchLayersNet().double()
    with torch.no_grad():  # non-trivial running statistics and affine parameters
        model.norm.running_mean.normal_()
        model.norm.running_var.uniform_(0.5, 2.0)
        model.norm.weight.normal_()
        model.norm.bias.normal_()
    model.eval()
    kinds = [layer.module is not None for layer in structured_layers(model)]
    assert kinds == [True, True, False, True, True]  # the BatchNorm is the general layer
    assert_every_method_matches(model, images(4, 1, (2, 5, 4)), images(3, 2, (2, 5, 4)))


def test_frozen_bias_is_left_out():
    model = CNN(2, 3, 1, out_dim=2, activation="relu", b_std=0.5, seed=1, dtype=F64)
    model.layers[0].bias.requires_grad_(False)
    assert_every_method_matches(model, images(3, 1), images(2, 2))


@pytest.mark.parametrize("mode", MODES)
def test_conv_gram_and_explicit_forms_agree(mode):
    """The two evaluations of a conv layer's kernel (chosen by operation count) give the same
    numbers, also with x2 = x1 (J formed once). The explicit form reads the patches lazily —
    all kernel offsets gathered at once (large budget), or one offset at a time and J formed
    for one feature of it (a 256-byte budget); the Gram form reads them materialized."""
    model = CNN(2, 4, 2, out_dim=3, activation="relu", b_std=0.4, seed=2, dtype=F64)
    layers = structured_layers(model)
    f1 = capture_factors(model, images(4, 1), layers)
    f2 = capture_factors(model, images(3, 2), layers)
    for a, b in zip(f1[:2], f2[:2]):  # the two conv layers
        assert a.input_shape[1] == 20  # P = 5·4 positions
        assert a.feature_unit == a.input_shape[2] // 9  # lazy patches: whole 3×3 offsets of C_in
        explicit = {budget: (affine_kernel(a, b, mode, budget, form="explicit"),
                             affine_kernel(a, a, mode, budget, form="explicit", same=True))
                    for budget in (1 << 30, 256)}
        assert a.feature_unit > 1  # nothing materialized the patches
        gram = affine_kernel(a, b, mode, 1 << 30, form="gram")
        gram_same = affine_kernel(a, a, mode, 1 << 30, form="gram")
        for between, same in explicit.values():
            assert rel_err(between, gram) < REL_TOL
            assert rel_err(same, gram_same) < REL_TOL


@pytest.mark.parametrize("strip_rows", [256, 16, None])
def test_symmetric_triangle_of_the_explicit_form(strip_rows, monkeypatch):
    """Θ(x, x) from its upper part, mirrored — row strips on and above the diagonal (two of 35
    rows, or five uneven ones of ≤ 16) with the BLAS switched off, or (None) BLAS syrk where
    this torch has it — equals the full product J1·J2ᵀ of two separate captures."""
    import ntk_lab.kernels.structured_contraction as contraction

    if strip_rows is not None:
        monkeypatch.setattr(contraction, "SYMMETRIC_STRIP_ROWS", strip_rows)
        monkeypatch.setattr(contraction, "syrk_available", lambda c: False)
    model = CNN(2, 4, 2, out_dim=1, activation="relu", b_std=0.4, seed=2, dtype=F64)
    layers = structured_layers(model)
    x = images(70, 3)
    a, b = capture_factors(model, x, layers)[1], capture_factors(model, x, layers)[1]
    assert contraction._symmetric_strips(70) is not None
    same = affine_kernel(a, a, "trace", 1 << 30, form="explicit", same=True)
    assert torch.equal(same, same.T)
    assert rel_err(same, affine_kernel(a, b, "trace", 1 << 30, form="explicit")) < REL_TOL


@pytest.mark.parametrize("make", [
    lambda: CNN(2, 3, 2, out_dim=2, activation="relu", b_std=0.2, seed=0, dtype=F64),
    lambda: ResMLP(2, 4, 2, out_dim=2, activation="tanh", b_std=0.2, seed=0, dtype=F64),
])
def test_chunking_under_a_tiny_budget_changes_nothing(make):
    model = make()
    x1, x2 = (images(5, 1), images(3, 2)) if isinstance(model, CNN) else (vectors(5, 1, 2), vectors(3, 2, 2))
    # (jacrev's and ntvp's chunking is tested on the MLP in tests/test_empirical.py)
    whole = empirical_ntk(model, x1, x2, method="structured", mode="full")
    chunked = empirical_ntk(model, x1, x2, method="structured", mode="full", memory_budget_bytes=1 << 15)
    assert rel_err(chunked, whole) < REL_TOL
    sym = empirical_ntk(model, x1, method="structured", mode="full", memory_budget_bytes=1 << 15)
    assert rel_err(sym, empirical_ntk(model, x1, x1, method="jacrev", mode="full")) < REL_TOL


def explicit_layer_ntk(model: nn.Module, names: list[str], x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
    """Trace-mode NTK restricted to the named parameters, from autograd one sample at a time."""
    params = dict(model.named_parameters())
    chosen = [params[n] for n in names]

    def grads(x):
        rows = []
        for xi in x:
            out = model(xi.unsqueeze(0))[0]
            rows.append(torch.stack([torch.cat([g.reshape(-1) for g in torch.autograd.grad(
                out[o], chosen, retain_graph=True)]) for o in range(out.shape[0])]))
        return torch.stack(rows)

    return torch.einsum("aop,bop->ab", grads(x1), grads(x2)) / model(x1[:1]).shape[1]


@pytest.mark.parametrize("make,inputs", [
    (lambda: CNN(2, 3, 2, out_dim=3, activation="relu", b_std=0.2, seed=0, dtype=F64), images),
    (lambda: ResMLP(3, 4, 2, out_dim=3, activation="erf", b_std=0.2, seed=0, dtype=F64), vectors),
    (lambda: ScaledOutput(MLP(3, 4, 2, out_dim=2, b_std=0.1, seed=0, dtype=F64), 2.0, True), vectors),
    (lambda: TorchLayersNet().double().eval(), lambda n, s: images(n, s, (2, 5, 4))),
])
def test_per_layer_kernels(make, inputs):
    """empirical_ntk_layers: one slice per parameter_layers entry, each the Gram matrix of that
    layer's own gradients, summing to the trace-mode NTK."""
    torch.manual_seed(0)
    model = make()
    x1, x2 = inputs(4, 1), inputs(3, 2)
    per_layer = empirical_ntk_layers(model, x1, x2)
    groups = parameter_layers(model)
    assert per_layer.shape == (len(groups), 4, 3)
    for slice_, names in zip(per_layer, groups):
        assert rel_err(slice_, explicit_layer_ntk(model, names, x1, x2)) < REL_TOL, names
    assert rel_err(per_layer.sum(0), empirical_ntk(model, x1, x2, method="jacrev")) < REL_TOL
    assert rel_err(empirical_ntk_layers(model, x1).sum(0), empirical_ntk(model, x1, method="jacrev")) < REL_TOL


def test_parameter_layers_of_the_built_in_networks():
    cnn = CNN(1, 4, 3, out_dim=2, seed=0)
    assert parameter_layers(cnn) == [[f"layers.{i}.weight", f"layers.{i}.bias"] for i in (0, 2, 4, 7)]
    res = ResMLP(3, 4, 2, seed=0)
    assert parameter_layers(res) == [["layers.0.weight", "layers.0.bias"],
                                     ["layers.1.branch.1.weight", "layers.1.branch.1.bias"],
                                     ["layers.2.branch.1.weight", "layers.2.branch.1.bias"],
                                     ["layers.4.weight", "layers.4.bias"]]
    with pytest.raises(ValueError, match="no trainable parameters"):
        empirical_ntk_layers(MLP(2, 3, 1).requires_grad_(False), torch.randn(2, 2))


@pytest.mark.parametrize("make,inputs", [
    (lambda: CNN(2, 3, 2, out_dim=2, activation="tanh", b_std=0.2, seed=0, dtype=F64), images),
    (lambda: ResMLP(3, 4, 2, out_dim=2, activation="relu", b_std=0.2, seed=0, dtype=F64), vectors),
    (lambda: TorchLayersNet().double().eval(), lambda n, s: images(n, s, (2, 5, 4))),
])
def test_jacobian_change_against_explicit_gradients(make, inputs):
    torch.manual_seed(0)
    model = make()
    initial = copy.deepcopy(model).requires_grad_(False)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    x = inputs(5, 1)
    probe = copy.deepcopy(initial).requires_grad_(True)

    def flat_grads(m):
        ps = list(m.parameters())
        out_dim = m(x[:1]).shape[1]
        return torch.stack([torch.cat([g.reshape(-1) for g in torch.autograd.grad(
            m(xi.unsqueeze(0))[0, o], ps)]) for xi in x for o in range(out_dim)])

    jt, j0 = flat_grads(model), flat_grads(probe)
    expected = ((jt - j0).norm() / j0.norm()).item()
    for method in ("structured", "jacrev", "auto"):
        assert jacobian_change(model, initial, x, method=method) == pytest.approx(expected, rel=JAC_CHANGE_REL_TOL)


def test_auto_picks_structured_for_a_wide_cnn_and_a_general_method_without_known_layers():
    cnn = CNN(1, 64, 3, out_dim=1, seed=0)
    x = torch.randn(16, 1, 8, 8)
    assert resolve_method(cnn, x, None, "auto") == "structured"

    class Quadratic(nn.Module):  # no layer the factorization knows
        def __init__(self):
            super().__init__()
            self.a = nn.Parameter(torch.randn(4, 2))

        def forward(self, x):
            return (x @ self.a) ** 2

    assert resolve_method(Quadratic(), torch.randn(3, 4), None, "auto") in ("jacrev", "ntvp")


@pytest.mark.parametrize("make", [
    lambda p: CNN(2, 32, 2, out_dim=2, activation="relu", parameterization=p, w_std=1.2, b_std=0.3, seed=5, dtype=F64),
    lambda p: CNN(2, 32, 2, out_dim=2, activation="relu", parameterization=p, w_std=1.2, b_std=0.3, readout="flatten", spatial_shape=(5, 4), seed=5, dtype=F64),
    lambda p: ResMLP(3, 64, 2, out_dim=2, activation="relu", parameterization=p, w_std=1.2, b_std=0.3, branch_scale=0.5, seed=5, dtype=F64),
])
def test_mup_at_init_is_the_ntk_network_with_its_output_divided_by_sqrt_width(make):
    """Channels count as width: with the same draws, f_μP = f_NTK/√n and Θ_μP = Θ_NTK, so the
    μP conv and residual nets share the ntk nets' Θ_∞ (ntk_lab.layers.scales)."""
    ntk, mup = make("ntk"), make("mup")
    x = images(4, 1) if isinstance(ntk, CNN) else vectors(4, 1)
    # draws are float32 scaled before the cast: agreement to float32 rounding, ~1e-7
    rtol = 1e-5
    with torch.no_grad():
        assert torch.allclose(mup(x), ntk(x) / math.sqrt(ntk.width), rtol=rtol, atol=0)
    assert torch.allclose(empirical_ntk(mup, x, mode="full"), empirical_ntk(ntk, x, mode="full"), rtol=rtol, atol=0)


@pytest.mark.parametrize("shape,kernel,stride,dilation,pads,mode", [
    ((3, 4, 7, 6), (3, 3), (1, 1), (1, 1), (1, 1, 1, 1), "zeros"),
    ((3, 4, 7, 6), (3, 2), (2, 1), (1, 1), (1, 1, 1, 1), "circular"),
    ((3, 4, 7, 6), (3, 3), (1, 2), (2, 1), (0, 0, 0, 0), "zeros"),
    ((2, 5, 9), (3,), (2,), (1,), (1, 1), "zeros"),
])
def test_unfolded_patches_equal_im2col(shape, kernel, stride, dilation, pads, mode):
    """The strided-view patches (and the dilated fallback) equal torch's im2col after the
    same padding, rearranged to (N, P, ∏k·C): exact, both are copies of the input."""
    import torch.nn.functional as F

    from ntk_lab.layers.patches import ConvPatches

    h = torch.randn(*shape, dtype=torch.float64)
    patches = ConvPatches(h, kernel, stride, dilation, pads, mode)
    got = patches.materialize()
    assert patches.shape == tuple(got.shape)
    padded = F.pad(h, pads, mode="constant" if mode == "zeros" else mode)
    if padded.ndim == 3:
        padded, kernel, stride, dilation = (padded.unsqueeze(2), (1, *kernel), (1, *stride),
                                            (1, *dilation))
    cols = F.unfold(padded, kernel, dilation=dilation, stride=stride)  # (N, C·∏k, P), C outer
    n, c = h.shape[:2]
    want = cols.reshape(n, c, -1, cols.shape[-1]).permute(0, 3, 2, 1).reshape(n, cols.shape[-1], -1)
    assert torch.equal(got, want)
