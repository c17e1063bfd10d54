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

The method in five modules: the layers and their factors (``structured_layers``), the cost
model (``structured_cost``), the per-layer contraction (``structured_contraction``), the
Jacobian distance for ``jac_change`` (``jacobian_distance``), and here the whole kernel, per
layer or summed.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor, nn

from ntk_lab.kernels._common import chunk_size, chunks, empty_kernel
from ntk_lab.layers.factors import AffineFactors
# The parts of the structured method, importable from here as before the split.
from ntk_lab.kernels.jacobian_distance import (  # noqa: F401
    jacobian_sq_distance_from_factors, jacobian_sq_norms, structured_jacobian_sq_distance,
)
from ntk_lab.kernels.structured_contraction import (  # noqa: F401
    EXPLICIT_BLOCK_BYTES, SYMMETRIC_BLOCK, SYMMETRIC_STRIP_ROWS, affine_kernel, contract,
)
from ntk_lab.kernels.structured_cost import (  # noqa: F401
    LayerShape, _factor_bytes_and_out_dim, _out_dim, factor_bytes_per_sample, forward_cost,
    layer_shapes, structured_cost,
)
from ntk_lab.kernels.structured_layers import (  # noqa: F401
    StructuredLayer, capture_factors, structured_layers,
)


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


__all__ = [
    "EXPLICIT_BLOCK_BYTES", "LayerShape", "SYMMETRIC_BLOCK", "SYMMETRIC_STRIP_ROWS",
    "StructuredLayer", "affine_kernel", "capture_factors", "contract", "factor_bytes_per_sample",
    "forward_cost", "fully_structured", "jacobian_sq_distance_from_factors", "jacobian_sq_norms",
    "kernel_from_factors", "layer_shapes", "model_factors", "structured_cost",
    "structured_jacobian_sq_distance", "structured_layers", "structured_ntk_layers",
]
