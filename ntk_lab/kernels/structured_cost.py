"""The structured NTK's cost model: the layers' shapes from one pass, and operation counts.

``auto`` compares these counts with the other methods' (:mod:`ntk_lab.kernels.empirical`), the
memory preflight reads :func:`factor_bytes_per_sample`, and the contraction picks per layer the
cheaper of the Gram form and explicit per-sample gradients by :func:`_gram_cost` and
:func:`_explicit_cost` (counts of multiply-adds; see :mod:`ntk_lab.kernels.structured`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor, nn

from ntk_lab.layers.dense import Dense
from ntk_lab.kernels.structured_layers import StructuredLayer, structured_layers


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
