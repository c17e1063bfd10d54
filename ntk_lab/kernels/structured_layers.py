"""The layers the structured NTK sees, and their factors: inputs u and output sensitivities δ.

:func:`structured_layers` splits a model's parameterized layers
(:func:`ntk_lab.models.parameter_layers`) into those whose factors
:func:`ntk_lab.layers.has_factors` knows (ntk_lab's Dense and Conv, torch's Linear, Conv1d,
Conv2d) and the rest (norm layers, embeddings, …), whose parameters go through per-sample
Jacobians. :func:`capture_factors` reads the known layers' factors with one forward pass with
hooks and one backward pass per output (batched with ``is_grads_batched``); a layer called
several times (weight sharing) contributes the positions of all its calls.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor, nn

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
