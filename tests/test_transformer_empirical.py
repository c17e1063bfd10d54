"""Empirical NTK of transformers and attention networks: every method (structured, ntvp,
jacrev, auto) against an explicit per-sample-gradient Gram matrix in float64, computed here
with torch.autograd.grad one sample and one output at a time over all trainable parameters,
then averaged over the outputs (trace mode, the lab's normalization; full mode as well where
O > 1). Checked:

* every mechanism with scaling="linear", and scaling="sqrt" with identity and softmax (finite
  networks exist for all); LayerNorm on and off; one and two heads; pos_emb "none" and "sum"
  (the trained positional embeddings go through per-sample Jacobians in the structured
  method); out_dim 1 and 3; GAP and flatten readouts; depth 1 and 2; x2 ≠ x1 (a rectangular
  kernel) and x2 = None;
* LayerNorm(affine=True) in a Serial network, whose gain and bias are parameters of a layer
  the factorization does not know (per-sample Jacobians inside the structured method);
* the per-layer kernels of ``empirical_ntk_layers``: each slice the Gram matrix of that
  layer's own gradients, the slices summing to the total;
* a Transformer on images (N, C, H, W) with ``patch_size`` has the empirical NTK of the same
  network's layers applied to the patchified tokens, and of the token Transformer built with
  the same seed.

Tiny sizes (N = 5 and 3 sequences of T = 4 tokens × d = 3 features, width 8) keep the file at a
few seconds on a 2-core CPU.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ntk_lab.kernels import empirical_ntk, empirical_ntk_layers
from ntk_lab.kernels.structured import structured_layers
from ntk_lab.layers.tokens import patchify
from ntk_lab.models import Transformer, parameter_layers
from ntk_lab.models.serial import Dense, LayerNorm, Relu, Residual, SelfAttention, Serial, TokenReadout

F64 = torch.float64
METHODS = ("structured", "ntvp", "jacrev", "auto")
N1, N2, TOKENS, FEATURES, WIDTH = 5, 3, 4, 3, 8

REL_TOL = 1e-10
"""Relative Frobenius error allowed against the explicit Gram matrix. Every kernel here is a
float64 sum of a few hundred to a few thousand products of O(1) numbers: the methods differ
from the reference only in summation order, which leaves ~1e-15 relative (measured ≤ 1.3e-15
on every case below); 1e-10 leaves five orders of magnitude for that and still catches any
missing parameter, term or factor: the smallest share of the kernel (relative Frobenius) that
any one parameter tensor carries in TRANSFORMER_CASES is 1.2e-8 (biases of the two-block relu
attention network without LayerNorm, where the weights' terms grow large); 173 of the 189
parameter tensors carry 1e-4 or more."""


@pytest.fixture(autouse=True)
def one_thread():
    """Tensors of a few dozen numbers: on a busy 2-core machine OpenMP hand-offs between threads
    cost far more than they save (measured here while other processes ran: a case 0.05–0.1 s on
    one thread, 0.2–3 s on two; tests/test_critical_rate.py does the same)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def sequences(n: int, seed: int, tokens: int = TOKENS, features: int = FEATURES) -> torch.Tensor:
    return torch.randn(n, tokens, features, generator=torch.Generator().manual_seed(seed), dtype=F64)


def per_sample_gradients(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """{name: (N, O, numel)} of ∂f_o(x_i)/∂p for every trainable parameter p, from
    torch.autograd.grad one sample and one output at a time — no torch.func, no vmap, none of
    the lab's kernel code."""
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    params = [p for _, p in named]
    rows: list[list[list[torch.Tensor]]] = []  # [sample][output][parameter]
    for xi in x:
        out = model(xi.unsqueeze(0))[0]
        rows.append([[g.reshape(-1) for g in torch.autograd.grad(out[o], params, retain_graph=True)]
                     for o in range(out.shape[0])])
    return {name: torch.stack([torch.stack([per_output[k] for per_output in sample]) for sample in rows])
            for k, (name, _) in enumerate(named)}


def explicit_full(g1: dict, g2: dict, names=None) -> torch.Tensor:
    """Θ_op(a, b) = Σ_p ∂f_o(x1_a)/∂p · ∂f_p(x2_b)/∂p over the named parameters: (N1, N2, O, O)."""
    names = list(g1) if names is None else names
    return sum(torch.einsum("aok,bqk->aboq", g1[n], g2[n]) for n in names)


def trace(full: torch.Tensor) -> torch.Tensor:
    """The lab's trace mode: the MEAN over outputs of the diagonal blocks (N1, N2)."""
    return full.diagonal(dim1=-2, dim2=-1).mean(-1)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def assert_every_method_matches(model: nn.Module, x1: torch.Tensor, x2: torch.Tensor) -> None:
    """Every method, x1 against x2 (trace mode, and full mode when O > 1) and x1 against itself
    (x2=None: structured's mirrored blocks, jacrev's single Jacobian); then the per-layer
    kernels, layer by layer and summed."""
    g1, g2 = per_sample_gradients(model, x1), per_sample_gradients(model, x2)
    full, full_same = explicit_full(g1, g2), explicit_full(g1, g1)
    assert trace(full).abs().max() > 0  # a kernel that is not trivially zero
    modes = ("trace", "full") if full.shape[-1] > 1 else ("trace",)
    for method in METHODS:
        for mode in modes:
            want = trace(full) if mode == "trace" else full
            theta = empirical_ntk(model, x1, x2, method=method, mode=mode)
            assert theta.shape == want.shape and theta.dtype == F64, (method, mode)
            assert rel_err(theta, want) < REL_TOL, (method, mode)
        same = empirical_ntk(model, x1, method=method)
        assert rel_err(same, trace(full_same)) < REL_TOL, (method, "x2=None")

    per_layer = empirical_ntk_layers(model, x1, x2)
    groups = parameter_layers(model)
    assert per_layer.shape == (len(groups), len(x1), len(x2))
    assert sorted(n for names in groups for n in names) == sorted(g1)  # every parameter, once
    for slice_, names in zip(per_layer, groups):
        assert rel_err(slice_, trace(explicit_full(g1, g2, names))) < REL_TOL, names
    assert rel_err(per_layer.sum(0), trace(full)) < REL_TOL
    assert rel_err(empirical_ntk_layers(model, x1).sum(0), trace(full_same)) < REL_TOL


# mechanism, scaling, layer_norm, heads, pos_emb, out_dim, readout, depth: every mechanism
# and scaling with LayerNorm and without, each pair of rows also flipping heads, pos_emb,
# out_dim and the readout; four rows have two blocks.
TRANSFORMER_CASES = [
    ("softmax", "linear", True, 1, "none", 1, "gap", 2),
    ("softmax", "linear", False, 2, "sum", 3, "flatten", 1),
    ("identity", "linear", True, 1, "sum", 1, "flatten", 1),
    ("identity", "linear", False, 2, "none", 3, "gap", 1),
    ("relu", "linear", True, 2, "sum", 3, "gap", 1),
    ("relu", "linear", False, 1, "none", 1, "flatten", 2),
    ("abs", "linear", True, 2, "none", 1, "gap", 1),
    ("abs", "linear", False, 1, "sum", 3, "flatten", 1),
    ("identity", "sqrt", True, 2, "sum", 1, "gap", 2),
    ("identity", "sqrt", False, 1, "none", 3, "flatten", 1),
    ("softmax", "sqrt", True, 2, "sum", 3, "flatten", 1),
    ("softmax", "sqrt", False, 1, "none", 1, "gap", 2),
]


@pytest.mark.parametrize("mechanism,scaling,layer_norm,heads,pos_emb,out_dim,readout,depth", TRANSFORMER_CASES,
                         ids=["-".join(map(str, case)) for case in TRANSFORMER_CASES])
def test_transformer_every_method_equals_explicit_gram(mechanism, scaling, layer_norm, heads, pos_emb,
                                                       out_dim, readout, depth):
    model = Transformer(FEATURES, WIDTH, depth, out_dim=out_dim, heads=heads, activation="gelu",
                        w_std=1.3, b_std=0.2, qk_std=0.8, scaling=scaling, mechanism=mechanism,
                        layer_norm=layer_norm, pos_emb=pos_emb, pos_std=0.7, readout=readout,
                        branch_scale=0.8, n_tokens=TOKENS, seed=0, dtype=F64)
    names = [n for n, _ in model.named_parameters()]
    assert any(n.endswith("pos_embedding") for n in names) == (pos_emb == "sum")
    assert any(".query." in n for n in names) == (scaling == "sqrt")
    assert_every_method_matches(model, sequences(N1, 1), sequences(N2, 2))


def test_affine_layer_norm_in_a_serial_network():
    """The gains and biases of LayerNorm(affine=True) — moved off their initial 1 and 0 — are
    layers the factorization does not know: the structured method takes their per-sample
    Jacobians beside the factored Dense and attention maps, and must still match."""
    attention = dict(heads=2, scaling="sqrt", mechanism="softmax", qk_std=0.8, w_std=1.2, b_std=0.1,
                     pos_emb="sum", pos_std=0.5, n_tokens=TOKENS)
    model = Serial(
        Dense(FEATURES, WIDTH, b_std=0.1),
        Residual(LayerNorm(WIDTH, affine=True), SelfAttention(WIDTH, WIDTH, **attention)),
        Residual(LayerNorm(WIDTH, affine=True), Dense(WIDTH, WIDTH, b_std=0.1), Relu(),
                 Dense(WIDTH, WIDTH, b_std=0.1)),
        LayerNorm(WIDTH, affine=True), TokenReadout("gap"), Dense(WIDTH, 3, b_std=0.1),
        seed=0, dtype=F64)
    generator = torch.Generator().manual_seed(3)
    norms = [m for m in model.modules() if isinstance(m, LayerNorm)]
    assert len(norms) == 3
    with torch.no_grad():
        for norm in norms:
            norm.weight.copy_(1.0 + 0.3 * torch.randn(WIDTH, generator=generator, dtype=F64))
            norm.bias.copy_(0.3 * torch.randn(WIDTH, generator=generator, dtype=F64))
    general = [layer.names for layer in structured_layers(model) if layer.module is None]
    # the three LayerNorms' gain and bias, and the attention's positional embeddings
    assert sorted(general) == sorted([[f"{p}.weight", f"{p}.bias"] for p in
                                      ("layers.1.branch.0", "layers.2.branch.0", "layers.3")]
                                     + [["layers.1.branch.1.pos_embedding"]])
    assert_every_method_matches(model, sequences(N1, 1), sequences(N2, 2))


def test_images_cut_into_patches_have_the_ntk_of_their_tokens():
    """A Transformer taking images (N, C, H, W) with patch_size p equals, kernel for kernel, its
    own layers after PatchTokens applied to patchify(x), and the token Transformer built with the
    same seed (PatchTokens has no parameters, so the draws are the same)."""
    channels, side, p = 2, 4, 2  # T = 4 tokens of C·p² = 8 features
    kwargs = dict(out_dim=2, heads=2, activation="relu", b_std=0.1, mechanism="softmax",
                  pos_emb="sum", n_tokens=(side // p) ** 2, readout="flatten", seed=4, dtype=F64)
    images = Transformer(channels * p * p, WIDTH, 1, patch_size=p, **kwargs)
    tokens = Transformer(channels * p * p, WIDTH, 1, **kwargs)
    after_patches = nn.Sequential(*list(images.layers)[1:])
    g = torch.Generator().manual_seed(5)
    x1 = torch.randn(N1, channels, side, side, generator=g, dtype=F64)
    x2 = torch.randn(N2, channels, side, side, generator=g, dtype=F64)
    t1, t2 = patchify(x1, p), patchify(x2, p)
    assert t1.shape == (N1, (side // p) ** 2, channels * p * p)
    with torch.no_grad():
        assert torch.equal(images(x1), tokens(t1))
    want = explicit_full(per_sample_gradients(images, x1), per_sample_gradients(images, x2))
    for method in METHODS:
        theta = empirical_ntk(images, x1, x2, method=method, mode="full")
        assert rel_err(theta, want) < REL_TOL, method
        assert rel_err(empirical_ntk(after_patches, t1, t2, method=method, mode="full"), theta) < REL_TOL, method
        assert rel_err(empirical_ntk(tokens, t1, t2, method=method, mode="full"), theta) < REL_TOL, method
    assert rel_err(empirical_ntk_layers(images, x1, x2), empirical_ntk_layers(tokens, t1, t2)) < REL_TOL
