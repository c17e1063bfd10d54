"""Structured empirical NTK: the per-layer factorization of affine layers' Jacobians.

For an affine layer z = m_W·(W ⋆ h) + m_b·b (dense or convolution) with output sensitivities
δ_o(p) = ∂f_o/∂z(p), the per-sample gradient is m_W·Σ_p δ_o(p) ⊗ u(p) (u(p): the input, or
the input patch a convolution reads at output position p), and the layer adds

    Σ_{p,q} (m_W²·u(x,p)·u(x',q) + m_b²) · (δ_o(x,p)·δ_o'(x',q))                  (Gram form)

to Θ_oo'(x, x') (Novak, Sohl-Dickstein & Schoenholz 2022, "Fast Finite Width Neural Tangent
Kernel", structured derivatives). Two ways to evaluate it, chosen per layer by operation count:

* Gram form: N1·N2·P²·(F + O·C) multiply-adds — the only sensible one for dense layers
  (P = 1), where it is the MLP's classic factorization;
* explicit per-sample gradients J(x) = m_W Σ_p δ(x,p) u(x,p)ᵀ, then J1·J2ᵀ:
  N·O·P·C·F + N1·N2·O·C·F — far cheaper for wide convolutions (P² ≫ N·O·C·F/(F + O·C)).
  J is formed for a block of input features at a time (a convolution's patches gathered
  lazily, a few kernel offsets at a time: :mod:`ntk_lab.layers.patches`) and contracted
  while the block is in cache; it never exceeds the memory budget.

The factors come from one forward pass with hooks on the layers that
:func:`ntk_lab.layers.has_factors` knows (ntk_lab's Dense and Conv, torch.nn.Linear, Conv1d,
Conv2d) and one backward pass per output (batched with ``is_grads_batched``). A layer called
several times (weight sharing) contributes the positions of all its calls. Parameters of
layers the factorization does not know (norm layers, embeddings, …) get per-sample Jacobians
from ``torch.func`` (the ``jacrev`` method restricted to them): structured for the layers it
knows, a general method for the rest.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import Tensor, nn

from ntk_lab.kernels._common import chunk_size

from ntk_lab.kernels._common import chunks

from ntk_lab.kernels._common import empty_kernel
from ntk_lab.layers.dense import Dense
from ntk_lab.layers.factors import AffineFactors, affine_factors, has_factors
from ntk_lab.models.layer_groups import parameter_layers


@dataclass
class StructuredLayer:
    """A parameterized layer of a model, as the structured NTK treats it.

    Attributes:
        names: its trainable parameters' full names (one slice of the per-layer NTK).
        module: the module owning them, when it has structured factors; else None (its
            parameters go through per-sample Jacobians).
        weight, bias: whether the factors' weight / bias are among the trainable parameters.
    """

    names: list[str]
    module: Optional[nn.Module]
    weight: bool = True
    bias: bool = True


def structured_layers(model: nn.Module) -> list[StructuredLayer]:
    """The model's parameterized layers in forward (registration) order, each marked with
    whether the factorization knows it. See :func:`ntk_lab.models.parameter_layers`."""
    owners = {}
    for prefix, module in model.named_modules():
        for name, _ in module.named_parameters(recurse=False):
            owners[f"{prefix}.{name}" if prefix else name] = (module, name)
    layers = []
    for names in parameter_layers(model):
        module, _ = owners[names[0]]
        own = {owners[n][1] for n in names}
        known = has_factors(module) and own <= {"weight", "bias"}
        layers.append(StructuredLayer(names, module if known else None,
                                      "weight" in own, "bias" in own))
    return layers


@dataclass
class LayerShape:
    """What the operation counts need of one parameterized layer, per sample.

    Attributes:
        known: whether the factorization knows the layer.
        positions: P, the output positions summed over its calls (known layers).
        features: F, its input features or patch size (known layers).
        channels: C, its output units or channels (known layers).
        numel: its trainable parameter count.
    """

    known: bool
    positions: int
    features: int
    channels: int
    numel: int


def layer_shapes(model: nn.Module, x: Tensor, layers: Optional[list[StructuredLayer]] = None) -> list[LayerShape]:
    """Each parameterized layer's :class:`LayerShape`, from one forward pass on x[:1] without
    a graph (shape-reading hooks only; works on the ``meta`` device)."""
    return _layer_shapes_and_out_dim(model, x, layers)[0]


def _layer_shapes_and_out_dim(model: nn.Module, x: Tensor, layers: Optional[list[StructuredLayer]] = None,
                              ) -> tuple[list[LayerShape], int]:
    """(:func:`layer_shapes`, O) from one forward pass."""
    layers = structured_layers(model) if layers is None else layers
    params = dict(model.named_parameters())
    seen: dict[int, list[int]] = {id(l.module): [0, 0, 0] for l in layers if l.module is not None}

    def hook(module: nn.Module, args: tuple, output: Tensor) -> None:
        c = output.shape[-1] if isinstance(module, (nn.Linear, Dense)) else output.shape[1]
        feat = args[0].shape[-1] if isinstance(module, (nn.Linear, Dense)) else module.weight[0].numel()
        entry = seen[id(module)]
        entry[0] += output[:1].numel() // c
        entry[1], entry[2] = feat, c

    handles = [l.module.register_forward_hook(hook) for l in layers if l.module is not None]
    try:
        with torch.no_grad():
            out_dim = model(x[:1]).shape[-1]
    finally:
        for h in handles:
            h.remove()
    shapes = []
    for layer in layers:
        numel = sum(params[n].numel() for n in layer.names)
        p, feat, c = seen[id(layer.module)] if layer.module is not None else (0, 0, 0)
        shapes.append(LayerShape(layer.module is not None and p > 0, p, feat, c, numel))
    return shapes, out_dim


def forward_cost(model: nn.Module, x: Tensor, shapes: Optional[list[LayerShape]] = None) -> float:
    """Multiply-adds of one forward pass per sample: Σ P·C·F over the layers the factorization
    knows (a convolution reuses its weights at every position) plus the parameter count of
    the others (a dense-like estimate). ``shapes``: :func:`layer_shapes`, when known."""
    shapes = layer_shapes(model, x) if shapes is None else shapes
    total = sum(s.positions * s.features * s.channels if s.known else s.numel for s in shapes)
    return max(float(total), 1.0)


def structured_cost(model: nn.Module, x: Tensor, n1: int, n2: int, out_dim: int,
                    shapes: Optional[list[LayerShape]] = None) -> float:
    """Rough multiply-add count of the structured method for N1 × N2 (trace mode): one forward
    and O backward passes over the samples, and per known layer the cheaper of the Gram and
    explicit forms; unknown layers cost like jacrev on their parameters."""
    shapes = layer_shapes(model, x) if shapes is None else shapes
    total = 0.0
    for s in shapes:
        if not s.known:
            total += 3 * (n1 + n2) * out_dim * s.numel + n1 * n2 * out_dim * s.numel
            continue
        p, feat, c = s.positions, s.features, s.channels
        total += (1 + out_dim) * (n1 + n2) * p * c * feat
        total += min(_gram_cost(n1, n2, p, feat, out_dim, c), _explicit_cost(n1, n2, p, feat, out_dim, c))
    return total


def _gram_cost(n1: int, n2: int, p: int, feat: int, out: int, c: int) -> float:
    return n1 * n2 * p * p * (feat + out * c + 2)


def _explicit_cost(n1: int, n2: int, p: int, feat: int, out: int, c: int) -> float:
    return (n1 + n2) * out * p * c * feat + n1 * n2 * out * c * feat


# --------------------------------------------------------------------------- capture
def capture_factors(model: nn.Module, x: Tensor, layers: list[StructuredLayer]) -> list[Optional[AffineFactors]]:
    """One forward pass with hooks and the O-output backward pass: each known layer's
    :class:`AffineFactors` on x (None for the layers the factorization does not know).

    δ = ∂f_o/∂z for every output o at once (``is_grads_batched``; a loop over outputs where
    an operation has no batching rule). No parameter gradients are formed.
    """
    known = [l.module for l in layers if l.module is not None]
    calls: dict[int, list[tuple[Tensor, Tensor]]] = {id(m): [] for m in known}

    def hook(module: nn.Module, args: tuple, output: Tensor) -> None:
        calls[id(module)].append((args[0].detach(), output))

    handles = [m.register_forward_hook(hook) for m in known]
    # an input that requires grad gives every layer output a graph even when the parameters
    # are frozen (the θ₀ copy of jac_change); only the requested gradients are computed
    x = x.detach().requires_grad_(True) if x.is_floating_point() else x
    try:
        with torch.enable_grad():
            f = model(x)
    finally:
        for h in handles:
            h.remove()
    outputs = [out for m in known for _, out in calls[id(m)]]
    grads = _output_sensitivities(f, outputs)
    result, i = [], 0
    for layer in layers:
        if layer.module is None:
            result.append(None)
            continue
        parts = []
        for h, _ in calls[id(layer.module)]:
            parts.append(_trainable_only(affine_factors(layer.module, h, grads[i]), layer))
            i += 1
        result.append(_join_calls(parts) if parts else None)
    return result


def _trainable_only(f: AffineFactors, layer: StructuredLayer) -> AffineFactors:
    """A frozen weight contributes nothing (m_W = 0), a frozen bias neither (no bias)."""
    if not layer.weight:
        f.weight_multiplier = 0.0
    if not layer.bias:
        f.bias_multiplier, f.bias_name = None, None
    return f


def _output_sensitivities(f: Tensor, outputs: list[Tensor]) -> list[Tensor]:
    """[∂f_o/∂z for each z in outputs], each (N, O, *z.shape[1:]); zeros where unused."""
    n, out_dim = f.shape
    if not outputs:
        return []
    eye = torch.eye(out_dim, dtype=f.dtype, device=f.device)
    basis = eye[:, None, :].expand(out_dim, n, out_dim)  # basis[o] selects output o of every sample
    try:
        if out_dim == 1:  # one plain backward pass: vmap's batched backward costs ~1.5× that
            grads = tuple(None if g is None else g[None] for g in torch.autograd.grad(
                f, outputs, grad_outputs=basis[0], allow_unused=True))
        else:
            grads = torch.autograd.grad(f, outputs, grad_outputs=basis, is_grads_batched=True,
                                        allow_unused=True)
    except RuntimeError:  # an op without a batching rule: one backward pass per output
        per_output = [torch.autograd.grad(f, outputs, grad_outputs=basis[o], retain_graph=True,
                                          allow_unused=True) for o in range(out_dim)]
        grads = tuple(None if per_output[0][k] is None else torch.stack([g[k] for g in per_output])
                      for k in range(len(outputs)))
    return [torch.zeros(out_dim, *z.shape, dtype=z.dtype, device=z.device).transpose(0, 1)
            if g is None else g.detach().transpose(0, 1) for g, z in zip(grads, outputs)]


def _join_calls(parts: list[AffineFactors]) -> AffineFactors:
    """A layer called several times: its gradient sums over the positions of every call."""
    if len(parts) == 1:
        return parts[0]
    first = parts[0]
    return AffineFactors(torch.cat([p.u for p in parts], 1), torch.cat([p.delta for p in parts], 2),
                         first.weight_multiplier, first.bias_multiplier, first.weight_name, first.bias_name)


# --------------------------------------------------------------------------- one layer's kernel
def affine_kernel(a: AffineFactors, b: AffineFactors, mode: str, budget_bytes: int, *, same: bool = False,
                  form: str = "auto") -> Tensor:
    """One affine layer's NTK between the samples of ``a`` and ``b``, in ``mode``.

    Args:
        a, b: factors on N1 and N2 samples (``same``: b is a, so J is formed once).
        mode: "trace" (N1, N2), "diagonal" (N1, N2, O) or "full" (N1, N2, O, O).
        budget_bytes: cap on the intermediates (explicit J blocks, Gram blocks).
        form: "gram", "explicit" or "auto" (the cheaper by operation count; dense layers
            always use the Gram form).
    """
    n1, p, feat = a.input_shape
    n2 = b.input_shape[0]
    out, c = a.delta.shape[1], a.delta.shape[3]
    m_w2 = a.weight_multiplier ** 2
    m_b2 = a.bias_multiplier ** 2 if a.bias_multiplier is not None else 0.0
    if form not in ("auto", "gram", "explicit"):
        raise ValueError(f"unknown form {form!r}; known: auto, gram, explicit")
    if form == "auto":
        cheaper = _explicit_cost(n1, 0 if same else n2, p, feat, out, c) < _gram_cost(n1, n2, p, feat, out, c)
        form = "explicit" if p > 1 and cheaper else "gram"
    if form == "explicit":
        return _explicit_kernel(a, b, mode, budget_bytes, same, m_b2, m_w2 > 0.0)
    if same and mode == "trace":
        return _gram_symmetric_blocks(a, budget_bytes, m_w2, m_b2)
    return _gram_kernel(a, b, mode, budget_bytes, m_w2, m_b2)


def _gram_kernel(a: AffineFactors, b: AffineFactors, mode: str, budget: int, m_w2: float, m_b2: float) -> Tensor:
    """Σ_{p,q} (m_W² u·u' + m_b²)(δ·δ'), rows of a in blocks so the (rows·P, N2·P) Grams fit."""
    n1, p, feat = a.u.shape
    n2 = b.u.shape[0]
    out = a.delta.shape[1]
    per_row = a.u.element_size() * p * n2 * p * (3 + (out if mode == "diagonal" else out * out if mode == "full" else 0))
    rows = chunk_size(per_row, budget, n1)
    u2 = b.u.reshape(n2 * p, feat)
    d2 = b.delta.permute(0, 2, 1, 3)  # (N2, P, O, C)
    result = empty_kernel(n1, n2, out, mode, a.delta)
    for s in chunks(n1, rows):
        r = s.stop - s.start
        coef = (a.u[s].reshape(r * p, feat) @ u2.T).mul_(m_w2).add_(m_b2).reshape(r, p, n2, p)
        d1 = a.delta[s].permute(0, 2, 1, 3)  # (r, P, O, C)
        if mode == "trace":
            dd = d1.reshape(r * p, -1) @ d2.reshape(n2 * p, -1).T / out
            result[s] = (coef * dd.reshape(r, p, n2, p)).sum((1, 3))
        elif mode == "diagonal":
            dd = torch.einsum("apoc,bqoc->apbqo", d1, d2)
            result[s] = torch.einsum("apbq,apbqo->abo", coef, dd)
        else:
            dd = torch.einsum("apoc,bqkc->apobqk", d1, d2)
            result[s] = torch.einsum("apbq,apobqk->abok", coef, dd)
    return result


SYMMETRIC_BLOCK = 512
"""Rows per block when a layer's Θ(x, x) is assembled from its upper-triangular blocks. The
Gram products cost N²·(F + O·C) multiply-adds per layer — at N = 4096 nearly all of a
checkpoint — and the blocks on and above the diagonal are 1/2 + 1/(2·blocks) of them (56% at
8 blocks). 512 rows keep each block's matmuls large enough to run at full speed."""


def _gram_symmetric_blocks(a: AffineFactors, budget: int, m_w2: float, m_b2: float) -> Tensor:
    """Trace-mode Gram form of Θ(x, x): the blocks on and above the diagonal, mirrored."""
    n = a.input_shape[0]
    if n < 2 * SYMMETRIC_BLOCK:
        return _gram_kernel(a, a, "trace", budget, m_w2, m_b2)
    blocks = [slice(i, min(i + SYMMETRIC_BLOCK, n)) for i in range(0, n, SYMMETRIC_BLOCK)]
    theta = a.delta.new_empty(n, n)
    for i, rows in enumerate(blocks):
        left = a.rows(rows)
        for cols in blocks[i:]:
            block = _gram_kernel(left, left if cols == rows else a.rows(cols), "trace", budget, m_w2, m_b2)
            theta[rows, cols] = block
            if cols != rows:
                theta[cols, rows] = block.T
    return theta


EXPLICIT_BLOCK_BYTES = 16 << 20
"""Target size of one block of per-sample gradients (with its gathered patch columns) in the
explicit form. J is formed for a block of input features at a time and contracted at once,
so each block is written and read back while it is still in cache (32 MiB L3 on the
benchmark CPU) and the whole J — 75 MB per layer at N = 128, 128 → 128 channels, 8×8 — is
never allocated. Measured there (``scripts/bench_arch.py``): the CNN's NTK 0.36 s → 0.21 s
together with the lazily gathered patches; at 512 channels 8 MiB and 16 MiB blocks gave
2.2× and 2.0× a forward+backward, 4 MiB 2.6×."""

EXPLICIT_MIN_INNER = 2048
"""Fewest multiply-adds per kernel entry in one block (O·C·|features|): each block's
contraction reads and writes the whole (N1, N2) result, so at large N a block must carry
enough inner products to hide that traffic (N = 4096: the result is 64 MB)."""


def _explicit_kernel(a: AffineFactors, b: AffineFactors, mode: str, budget: int, same: bool,
                     m_b2: float, weight: bool) -> Tensor:
    """J1·J2ᵀ with J = m_W Σ_p δ(p) u(p)ᵀ, formed one block of input features at a time and
    contracted while the block is in cache (:data:`EXPLICIT_BLOCK_BYTES`); a convolution's
    patches are gathered block by block too. The blocks never exceed the memory budget."""
    n1, p, feat = a.input_shape
    n2 = b.input_shape[0]
    out, c = a.delta.shape[1], a.delta.shape[3]
    result = empty_kernel(n1, n2, out, mode, a.delta)
    if weight:
        # bytes per input feature: a J column of each side plus its gathered patch column
        per_feature = a.delta.element_size() * (out * c + p) * (n1 + (0 if same else n2))
        block = min(max(EXPLICIT_BLOCK_BYTES // per_feature, -(-EXPLICIT_MIN_INNER // (out * c))),
                    chunk_size(per_feature, budget, feat))
        d1, d2 = _sensitivity_rows(a), None if same else _sensitivity_rows(b)
        scale = a.weight_multiplier * b.weight_multiplier
        strips = _symmetric_strips(n1) if same and mode == "trace" else None
        # gathered blocks are whole kernel offsets of lazy patches (a view for a plain u);
        # J is formed for slices of about ``block`` features of each
        for start, stop in _feature_blocks(feat, max(a.feature_unit, b.feature_unit), block):
            u1 = a.columns(start, stop)
            u2 = u1 if same else b.columns(start, stop)
            for s in _even_slices(stop - start, block):
                j1 = _per_sample_weight_gradients(a, d1, u1[:, :, s])
                if strips:
                    _add_upper_gram(result, j1.reshape(n1, -1), strips, scale / out)
                    continue
                j2 = j1 if same else _per_sample_weight_gradients(b, d2, u2[:, :, s])
                contract(j1, j2, mode, accumulate=result, scale=scale)
        if strips:
            _mirror_upper(result, strips)
    if m_b2 > 0.0:
        result += contract(a.delta.sum(2), b.delta.sum(2), mode) * m_b2
    return result


SYMMETRIC_STRIP_ROWS = 256
"""Rows per strip when J·Jᵀ of one sample set is accumulated strip by strip above the
diagonal (at least two strips once N ≥ 64): strips of N rows cost 1/2 + 1/(2·strips) of the
full product (75% at two strips, the N = 128 benchmark: its Gram products 12% faster, measured
33.5 → 29.4 ms for nine 8 MB blocks), and 256 rows keep each product large enough to run at
full speed."""


def _symmetric_strips(n: int) -> Optional[list[slice]]:
    """Row strips for :func:`_add_upper_gram`, or None when N is too small to gain."""
    if n < 64:
        return None
    return _even_slices(n, min(SYMMETRIC_STRIP_ROWS, -(-n // 2)))


def _add_upper_gram(result: Tensor, j: Tensor, strips: list[slice], alpha: float) -> None:
    """result[r, r.start:] += alpha · J[r] J[r.start:]ᵀ for each row strip r (the blocks on
    and above the diagonal of alpha·J Jᵀ); J is (N, K)."""
    for r in strips:
        result[r, r.start:].addmm_(j[r], j[r.start:].T, alpha=alpha)


def _mirror_upper(result: Tensor, strips: list[slice]) -> None:
    """Fill the blocks below the diagonal from those above (result is symmetric)."""
    for r in strips:
        result[r.stop:, r] = result[r, r.stop:].T


def _even_slices(n: int, block: int) -> list[slice]:
    """[0, n) cut into the fewest slices of at most ``block``, of nearly equal lengths."""
    parts = -(-n // max(1, block))
    bounds = [round(i * n / parts) for i in range(parts + 1)]
    return [slice(lo, hi) for lo, hi in zip(bounds, bounds[1:])]


def _feature_blocks(feat: int, unit: int, block: int) -> list[tuple[int, int]]:
    """[start, stop) ranges covering F features, each a multiple of ``unit`` (whole kernel
    offsets of lazy patches) and at most ``block`` long, or one unit when a unit is longer."""
    step = max(unit, block // unit * unit)
    return [(s, min(s + step, feat)) for s in range(0, feat, step)]


def _sensitivity_rows(f: AffineFactors) -> Tensor:
    """δ as (N, O·C, P): a view of the captured (N, O, C, P) storage when it is contiguous."""
    n, out, p, c = f.delta.shape
    return f.delta.transpose(2, 3).reshape(n, out * c, p)


def _per_sample_weight_gradients(f: AffineFactors, d: Tensor, u: Tensor) -> Tensor:
    """J[n, o] / m_W = Σ_p δ[n, o, p, :] ⊗ u[n, p, :] for a column block u (N, P, F_b) of f's
    inputs: (N, O, C·F_b), without the multiplier m_W (the contraction applies m_W² once,
    to the small result).

    One batched matrix product per sample, (O·C × P) @ (P × F_b); ``d`` is
    :func:`_sensitivity_rows` of f."""
    n, out = f.delta.shape[:2]
    return torch.bmm(d, u).reshape(n, out, -1)


def contract(j1: Tensor, j2: Tensor, mode: str, accumulate: Optional[Tensor] = None,
             scale: float = 1.0) -> Tensor:
    """scale · Σ_k J1[a, o, k] J2[b, o', k] reduced to ``mode`` (trace: mean over o = o');
    added into ``accumulate`` in place when given."""
    n1, out, _ = j1.shape
    if mode == "trace":
        a, b = j1.reshape(n1, -1), j2.reshape(j2.shape[0], -1)
        if accumulate is None:
            return (a @ b.T).mul_(scale / out)
        return accumulate.addmm_(a, b.T, alpha=scale / out)
    equation = "aok,bok->abo" if mode == "diagonal" else "aok,bpk->abop"
    value = torch.einsum(equation, j1, j2)
    if scale != 1.0:
        value.mul_(scale)
    return value if accumulate is None else accumulate.add_(value)


# --------------------------------------------------------------------------- the kernel
def structured_ntk_layers(
    model: nn.Module, x1: Tensor, x2: Optional[Tensor], mode: str, budget_bytes: int,
    jacobian_fn: Callable[[nn.Module, Tensor, list[str]], dict[str, Tensor]],
    contract_fn: Callable[[dict, dict, str], Tensor],
) -> Tensor:
    """Per-layer NTK (L, N1, N2[, O, O]) of any module: one slice per parameterized layer.

    Known layers by their factors; the others by ``jacobian_fn(model, x, names)`` —
    per-sample Jacobians {name: (N, O, numel)} — contracted by ``contract_fn``.
    Samples are processed in chunks whose captured factors fit in half the budget.
    """
    layers = structured_layers(model)
    same = x2 is None
    x2 = x1 if same else x2
    per_sample, out_dim = _factor_bytes_and_out_dim(model, x1)
    # the factors of one chunk of x1 and one of x2 (one chunk when x2 is x1) in half the
    # budget; the other half for a layer's intermediates (J blocks, Gram blocks)
    size = chunk_size(per_sample * (1 if same else 2), budget_bytes // 2, max(len(x1), len(x2)))
    result = torch.zeros(len(layers), *empty_kernel(len(x1), len(x2), out_dim, mode, x1).shape,
                         dtype=x1.dtype, device=x1.device)
    for s1 in chunks(len(x1), size):
        f1 = capture_factors(model, x1[s1], layers)
        for s2 in chunks(len(x2), size):
            diagonal_block = same and s1 == s2
            if same and s2.start < s1.start:  # mirror of a block already computed
                result[:, s1, s2] = _transpose_block(result[:, s2, s1], mode)
                continue
            f2 = f1 if diagonal_block else capture_factors(model, x2[s2], layers)
            for i, (layer, a, b) in enumerate(zip(layers, f1, f2)):
                if layer.module is not None:
                    result[i, s1, s2] = affine_kernel(a, b, mode, budget_bytes // 2, same=diagonal_block)
    general = [i for i, layer in enumerate(layers) if layer.module is None]
    if general:
        for i in general:
            result[i] = _general_layer(model, x1, None if same else x2, layers[i].names, mode,
                                       budget_bytes, jacobian_fn, contract_fn)
    return result


def _general_layer(model, x1, x2, names, mode, budget, jacobian_fn, contract_fn) -> Tensor:
    same = x2 is None
    x2 = x1 if same else x2
    params = dict(model.named_parameters())
    numel = sum(params[n].numel() for n in names)
    out_dim = _out_dim(model, x1)
    size = chunk_size(out_dim * numel * x1.element_size(), budget // 2, max(len(x1), len(x2)))
    result = empty_kernel(len(x1), len(x2), out_dim, mode, x1)
    for s1 in chunks(len(x1), size):
        j1 = jacobian_fn(model, x1[s1], names)
        for s2 in chunks(len(x2), size):
            j2 = j1 if same and s1 == s2 else jacobian_fn(model, x2[s2], names)
            result[s1, s2] = contract_fn(j1, j2, mode)
    return result


def _transpose_block(block: Tensor, mode: str) -> Tensor:
    """Θ(x_b, x_a) from Θ(x_a, x_b): swap the sample dims (and the output dims in full mode)."""
    t = block.transpose(1, 2)
    return t.transpose(-1, -2) if mode == "full" else t


def _out_dim(model: nn.Module, x: Tensor) -> int:
    with torch.no_grad():
        return model(x[:1]).shape[-1]


def factor_bytes_per_sample(model: nn.Module, x: Tensor) -> int:
    """Bytes of the structured factors (u and δ of every known layer) of one sample, from one
    forward pass on x[:1] with shape-reading hooks (no backward: works on the ``meta`` device
    for the memory preflight). u: P·F elements (the layer's input, or P patches of F = C_in·∏k
    — counted materialized, which the explicit form avoids), δ: O·P·C (O outputs times the
    layer's output)."""
    return _factor_bytes_and_out_dim(model, x)[0]


def _factor_bytes_and_out_dim(model: nn.Module, x: Tensor) -> tuple[int, int]:
    """(:func:`factor_bytes_per_sample`, O) from one forward pass: Σ over the known layers of
    P·F (u) + O·P·C (δ) elements."""
    shapes, out_dim = _layer_shapes_and_out_dim(model, x)
    elements = sum(s.positions * (s.features + out_dim * s.channels) for s in shapes if s.known)
    return max(1, elements) * x.element_size(), out_dim


def model_factors(model: nn.Module, x: Tensor) -> list[Optional[AffineFactors]]:
    """The factors of every parameterized layer of ``model`` on x (None for unknown layers)."""
    return capture_factors(model, x, structured_layers(model))


def kernel_from_factors(f1: list[Optional[AffineFactors]], f2: list[Optional[AffineFactors]], mode: str,
                        budget_bytes: int = 1 << 30, *, same: bool = False) -> Tensor:
    """Σ over the known layers of their NTK between the samples of f1 and f2, in ``mode``."""
    total = None
    for a, b in zip(f1, f2):
        if a is None:
            continue
        term = affine_kernel(a, b, mode, budget_bytes, same=same)
        total = term if total is None else total + term
    return total


def fully_structured(model: nn.Module) -> bool:
    """Whether every parameterized layer of ``model`` has structured factors."""
    layers = structured_layers(model)
    return bool(layers) and all(l.module is not None for l in layers)


# names of the MLP-only version, kept for callers: the factors are the generic ones now
mlp_features = model_factors


def kernel_from_features(f1: list, f2: list, mode: str) -> Tensor:
    return kernel_from_factors(f1, f2, mode)


# --------------------------------------------------------------------------- Jacobian change
def structured_jacobian_sq_distance(
    model_a: nn.Module, model_b: nn.Module, x: Tensor, budget_bytes: int,
    jacobian_fn: Callable[[nn.Module, Tensor, list[str]], dict[str, Tensor]],
) -> tuple[float, float]:
    """(‖J_a − J_b‖²_F, ‖J_b‖²_F) for two models of one architecture on x (N, …).

    J = ∂f/∂θ (N·O × P). For a known layer the per-sample inner products ⟨J_a(x), J_b(x)⟩ are
    Σ_{p,q} (m_W² u_a(p)·u_b(q) + m_b²)(δ_a(p)·δ_b(q)) (a P × P Gram per sample), expanded as
    ‖J_a‖² + ‖J_b‖² − 2⟨J_a, J_b⟩ in float64 so that a small change is not lost to
    cancellation. Other layers: per-sample Jacobians from ``jacobian_fn``, differenced.
    ``model_b`` may be a frozen copy: its parameters are matched to ``model_a``'s by name.
    """
    layers_a = structured_layers(model_a)
    layers_b = _mirror_layers(model_b, layers_a)
    per_sample = 2 * factor_bytes_per_sample(model_a, x) * 2
    size = chunk_size(per_sample, budget_bytes, len(x))
    dist, norm_b = 0.0, 0.0
    for s in chunks(len(x), size):
        fa = capture_factors(model_a, x[s], layers_a)
        fb = capture_factors(model_b, x[s], layers_b)
        for layer, a, b in zip(layers_a, fa, fb):
            if layer.module is None:
                continue
            d, n = jacobian_sq_distance_from_factors([a], [b])
            dist, norm_b = dist + d, norm_b + n
    general = [l.names for l in layers_a if l.module is None]
    if general:
        names = [n for group in general for n in group]
        out_dim = _out_dim(model_a, x)
        numel = sum(dict(model_a.named_parameters())[n].numel() for n in names)
        size = chunk_size(2 * out_dim * numel * x.element_size(), budget_bytes, len(x))
        for s in chunks(len(x), size):
            ja = jacobian_fn(model_a, x[s], names)
            jb = jacobian_fn(model_b, x[s], names)
            for k in ja:
                dist += (ja[k] - jb[k]).double().pow(2).sum().item()
                norm_b += jb[k].double().pow(2).sum().item()
    return max(dist, 0.0), norm_b


def _mirror_layers(model_b: nn.Module, layers_a: list[StructuredLayer]) -> list[StructuredLayer]:
    """model_b's modules at the same names as model_a's layers (model_b's parameters may be
    frozen, so its own parameter_layers would be empty)."""
    modules = dict(model_b.named_modules())
    mirrored = []
    for layer in layers_a:
        prefix = layer.names[0].rpartition(".")[0]
        module = modules[prefix] if layer.module is not None else None
        mirrored.append(StructuredLayer(layer.names, module, layer.weight, layer.bias))
    return mirrored


def jacobian_sq_distance_from_factors(
    factors_a: list[Optional[AffineFactors]], factors_b: list[Optional[AffineFactors]],
    norms_b: Optional[list[float]] = None,
) -> tuple[float, float]:
    """(‖J_a − J_b‖²_F, ‖J_b‖²_F) over the known layers, on the samples both factor lists
    were captured on: ‖J_a‖² + ‖J_b‖² − 2⟨J_a, J_b⟩ from per-sample inner products, in
    float64. ``norms_b``: the per-layer ‖J_b‖² of :func:`jacobian_sq_norms` when already known
    (a tracker's fixed θ_0). May be slightly negative from round-off; callers clamp."""
    norms_b = jacobian_sq_norms(factors_b) if norms_b is None else norms_b
    dist, norm_b = 0.0, 0.0
    for a, b, bb in zip(factors_a, factors_b, norms_b):
        if a is None:
            continue
        dist += _sample_inner(a, a) + bb - 2 * _sample_inner(a, b)
        norm_b += bb
    return dist, norm_b


def jacobian_sq_norms(factors: list[Optional[AffineFactors]]) -> list[float]:
    """Per layer ‖J‖²_F (float64) on the captured samples; 0 for unknown layers."""
    return [0.0 if f is None else _sample_inner(f, f) for f in factors]


def _sample_inner(a: AffineFactors, b: AffineFactors) -> float:
    """Σ_n Σ_o ⟨J_a(x_n)_o, J_b(x_n)_o⟩ for one layer, in float64."""
    da, db = a.delta.double(), b.delta.double()  # (N, O, P, C)
    m_w2 = a.weight_multiplier ** 2
    m_b2 = a.bias_multiplier ** 2 if a.bias_multiplier is not None else 0.0
    n, p, feat = a.input_shape
    if p == 1:  # dense: the classic expansion
        hh = (a.u[:, 0].double() * b.u[:, 0].double()).sum(-1)
        dd = (da[:, :, 0] * db[:, :, 0]).sum((-1, -2))
        return ((m_w2 * hh + m_b2) * dd).sum().item()
    gu = da.new_zeros(n, p, p)  # Σ_f u_a(p, f) u_b(q, f), one kernel offset's columns at a time
    unit = max(a.feature_unit, b.feature_unit)
    for start, stop in _feature_blocks(feat, unit, unit if unit > 1 else feat):
        gu.baddbmm_(a.columns(start, stop).double(), b.columns(start, stop).double().transpose(1, 2))
    gd = torch.einsum("nopc,noqc->npq", da, db)
    return ((m_w2 * gu + m_b2) * gd).sum().item()


__all__ = ["EXPLICIT_BLOCK_BYTES", "LayerShape", "SYMMETRIC_BLOCK", "SYMMETRIC_STRIP_ROWS", "StructuredLayer", "affine_kernel", "capture_factors", "contract",
           "factor_bytes_per_sample", "forward_cost", "fully_structured", "jacobian_sq_distance_from_factors",
           "jacobian_sq_norms",
           "kernel_from_factors", "layer_shapes", "model_factors", "structured_cost", "structured_jacobian_sq_distance",
           "structured_layers", "structured_ntk_layers"]
