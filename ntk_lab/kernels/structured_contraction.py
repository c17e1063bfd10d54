"""The structured NTK's contraction: one layer's factors to its (N1, N2[, O, O]) kernel.

Two forms, chosen per layer by operation count (:mod:`ntk_lab.kernels.structured_cost`):

* Gram form Σ_{p,q} (m_W²·u(x,p)·u(x',q) + m_b²)·(δ(x,p)·δ(x',q)), in blocks of samples —
  a symmetric Θ(x, x) from blocks on and above the diagonal, mirrored;
* explicit per-sample gradients J(x) = m_W Σ_p δ(x,p) u(x,p)ᵀ, formed a block of input
  features at a time and contracted (J1·J2ᵀ) while the block is in cache — a symmetric Θ(x, x)
  from its upper triangle: BLAS syrk (:mod:`ntk_lab.kernels.blas_syrk`), or row strips on and
  above the diagonal where torch's BLAS has no syrk.

Memory is bounded by the budget passed in (bytes).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ntk_lab.kernels._common import chunk_size, chunks, empty_kernel
from ntk_lab.kernels.blas_syrk import add_upper_gram, syrk_available
from ntk_lab.layers.factors import AffineFactors
from ntk_lab.kernels.structured_cost import _explicit_cost, _gram_cost


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


EXPLICIT_BLOCK_BYTES = 4 << 20
"""Target size of one block of per-sample gradients (with its gathered patch columns) in the
explicit form. J is formed for a block of input features at a time and contracted at once,
so each block is written and read back while it is still in cache (32 MiB L3 on the
benchmark CPU) and the whole J — 75 MB per layer at N = 128, 128 → 128 channels, 8×8 — is
never allocated. Measured there (``scripts/bench_arch.py``): the CNN's NTK 0.36 s → 0.21 s
together with the lazily gathered patches; at 512 channels 8 MiB and 16 MiB blocks gave
2.2× and 2.0× a forward+backward, 4 MiB 2.6×. On this project's 2-core CPU
(2 MiB L2 per core) 4 MiB replaced 16 MiB: a transformer's NTK (width 256, depth 2, N = 128,
16 tokens, ``scripts/bench_transformer_ntk.py``) went from 4.1× to 2.9× a forward+backward (one
thread, medians of alternating pairs), the 128-channel CNN above from 2.44× to 2.25×, while the
512-channel one went from 2.20× to 2.41×."""


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
        # Θ(x, x) from its upper triangle: BLAS syrk where torch's BLAS has one, else row
        # strips above the diagonal (None: too few rows to gain, whole products)
        triangle = None
        if same and mode == "trace":
            triangle = "blas" if syrk_available(result) else _symmetric_strips(n1)
        # gathered blocks are whole kernel offsets of lazy patches (a view for a plain u);
        # J is formed for slices of about ``block`` features of each
        for start, stop in _feature_blocks(feat, max(a.feature_unit, b.feature_unit), block):
            u1 = a.columns(start, stop)
            u2 = u1 if same else b.columns(start, stop)
            for s in _even_slices(stop - start, block):
                j1 = _per_sample_weight_gradients(a, d1, u1[:, :, s])
                if triangle == "blas":
                    add_upper_gram(result, j1.reshape(n1, -1), scale / out)
                    continue
                if triangle is not None:
                    _add_upper_gram(result, j1.reshape(n1, -1), triangle, scale / out)
                    continue
                j2 = j1 if same else _per_sample_weight_gradients(b, d2, u2[:, :, s])
                contract(j1, j2, mode, accumulate=result, scale=scale)
        if triangle == "blas":
            result.add_(result.triu(1).T)
        elif triangle is not None:
            _mirror_upper(result, triangle)
    if m_b2 > 0.0:
        result += contract(a.delta.sum(2), b.delta.sum(2), mode) * m_b2
    return result


SYMMETRIC_STRIP_ROWS = 256
"""Rows per strip when J·Jᵀ of one sample set is accumulated strip by strip above the
diagonal, where torch's BLAS has no syrk (at least two strips once N ≥ 64). Strips of N rows
cost 1/2 + 1/(2·strips) of the full product's operations (75% at two strips; 256 rows keep
each product large enough to run at full speed). What that buys depends on the BLAS: 12%
once (33.5 → 29.4 ms for nine 8 MB blocks at N = 128), nothing on the benchmark CPU with MKL,
where (128, 8192) float32 products run at the core's peak — and where syrk takes 0.66× (one
thread) to 0.78× (two threads) of the whole product."""


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
