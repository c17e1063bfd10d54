"""The empirical (finite-width) neural tangent kernel, by several methods that agree.

    Θ_op(x, x') = Σ_p ∂f_o(x; θ)/∂p · ∂f_p(x'; θ)/∂p      (all trainable weights and biases)

Methods (docs/conventions.md, *Kernel methods*):
    ``jacrev``      per-sample Jacobians with ``torch.func.vmap(jacrev(...))`` contracted with
                    einsum — the torch.func tutorial recipe, any module; the reference.
    ``ntvp``        NTK-vector products: ``vjp`` gives Jᵀe for each output basis vector e of
                    f(x2), ``jvp`` pushes it through f(x1) — any module, no O²·P contraction.
    ``structured``  the per-layer factorization of :mod:`ntk_lab.kernels.structured` for the
                    layers it knows (Dense, Conv, torch.nn.Linear / Conv1d / Conv2d), per-sample
                    Jacobians for the parameters of any other layer.
    ``auto``        the cheapest of the three by an operation count.

``empirical_ntk_layers`` returns the per-layer kernels (one slice per parameterized layer,
summing to the trace-mode NTK).
Modes: ``trace`` (N1, N2) — the MEAN over outputs of the diagonal blocks, neural-tangents'
``trace_axes=(-1,)`` convention; ``diagonal`` (N1, N2, O); ``full`` (N1, N2, O, O).
"""

from __future__ import annotations

from typing import Iterable, Optional

import torch
from torch import Tensor, nn
from torch.func import jacrev, jvp, vjp, vmap

from ntk_lab.kernels._common import (
    DEFAULT_MEMORY_BUDGET_BYTES, check_mode, chunk_size, chunks, empty_kernel,
    full_fp32_precision, functional_forward, output_dim, reduce_full, split_parameters,
)
from ntk_lab.kernels.structured import (
    forward_cost, layer_shapes, structured_cost, structured_jacobian_sq_distance, structured_layers,
    structured_ntk_layers,
)

METHODS = ("auto", "jacrev", "ntvp", "structured")

__all__ = ["METHODS", "empirical_ntk", "empirical_ntk_layers", "jacobian_change", "per_sample_jacobians",
           "resolve_method"]


def empirical_ntk(
    model: nn.Module,
    x1: Tensor,
    x2: Tensor | None = None,
    *,
    method: str = "auto",
    mode: str = "trace",
    memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET_BYTES,
) -> Tensor:
    """Empirical NTK of ``model`` between x1 and x2.

    Args:
        model: any module mapping a batch (N, …) to (N, O) with no interaction between samples.
        x1: (N1, …) inputs; x2: (N2, …) inputs, or None for x1.
        method: "auto", "jacrev", "ntvp" or "structured" (see the module docstring).
        mode: "trace" -> (N1, N2); "diagonal" -> (N1, N2, O); "full" -> (N1, N2, O, O).
        memory_budget_bytes: cap on Jacobian-sized intermediates held at once; samples are
            processed in chunks that fit.

    Returns:
        Θ in the model's dtype, on its device; no autograd graph.
    """
    check_mode(mode)
    method = resolve_method(model, x1, x2, method)
    with full_fp32_precision():
        if method == "structured":
            return structured_ntk_layers(model, x1, x2, mode, memory_budget_bytes,
                                         per_sample_jacobians, _contract).sum(0)
        if method == "jacrev":
            return _jacrev_ntk(model, x1, x2, mode, memory_budget_bytes)
        return _ntvp_ntk(model, x1, x2, mode, memory_budget_bytes)


def empirical_ntk_layers(
    model: nn.Module,
    x1: Tensor,
    x2: Tensor | None = None,
    *,
    memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET_BYTES,
) -> Tensor:
    """Per-layer empirical NTK: Θ_l(x, x') = Σ_{p ∈ layer l} ∂f(x)/∂p · ∂f(x')/∂p (trace mode).

    One slice per parameterized layer of :func:`ntk_lab.models.parameter_layers` (its weight
    and bias together), in that order; the slices sum to ``empirical_ntk(model, x1, x2,
    mode="trace")``. Structured factors for the layers the factorization knows, per-sample
    Jacobians for the others.

    Args:
        model: any module mapping (N, …) to (N, O) without mixing samples.
        x1: (N1, …); x2: (N2, …) or None for x1.
        memory_budget_bytes: cap on the intermediates held at once.

    Returns:
        (L, N1, N2) in the model's dtype, no autograd graph.

    Raises:
        ValueError: the model has no trainable parameters.
    """
    if not structured_layers(model):
        raise ValueError(f"{type(model).__name__} has no trainable parameters: no per-layer NTK")
    with full_fp32_precision():
        return structured_ntk_layers(model, x1, x2, "trace", memory_budget_bytes,
                                     per_sample_jacobians, _contract)


def resolve_method(model: nn.Module, x1: Tensor, x2: Tensor | None, method: str) -> str:
    """The concrete method ``auto`` stands for, after checking the name.

    ``auto`` compares rough multiply-add counts (trace mode) and takes the cheapest. With F
    the forward cost per sample (:func:`ntk_lab.kernels.structured.forward_cost`: Σ P·C·F over
    the layers, which for an MLP is its parameter count P_θ but for a conv net far more):
    jacrev — 3·N·O·F for the per-sample Jacobians plus N1·N2·O·P_θ for the contraction;
    ntvp — 3·N2·O·F for the vjps plus 3·N1·N2·O·F for the jvps; structured — one forward and
    O backward passes plus, per known layer, the cheaper of its Gram and explicit forms
    (:func:`ntk_lab.kernels.structured.structured_cost`). A module without any layer the
    factorization knows never gets ``structured``.
    """
    if method not in METHODS:
        raise ValueError(f"unknown NTK method {method!r}; known: {', '.join(METHODS)}")
    layers = structured_layers(model)
    known = any(layer.module is not None for layer in layers)
    if method == "structured" and not known:
        raise ValueError(f"ntk method 'structured' needs a layer it can factor (ntk_lab Dense / Conv, "
                         f"torch.nn.Linear / Conv1d / Conv2d); {type(model).__name__} has none; "
                         f"use 'jacrev', 'ntvp' or 'auto'")
    if method != "auto":
        return method
    n1 = len(x1)
    n2 = n1 if x2 is None else len(x2)
    out = output_dim(model, x1)
    n_params = sum(p.numel() for p in split_parameters(model)[0].values())
    shapes = layer_shapes(model, x1, layers) if known else None
    fwd = forward_cost(model, x1, shapes) if known else n_params
    costs = {
        "jacrev": 3 * (n1 + n2) * out * fwd + n1 * n2 * out * n_params,
        "ntvp": 3 * n2 * out * fwd + 3 * n1 * n2 * out * fwd,
    }
    if known:
        costs["structured"] = structured_cost(model, x1, n1, n2, out, shapes)
    return min(costs, key=costs.get)


# --------------------------------------------------------------------------- jacrev
def per_sample_jacobians(
    model: nn.Module, x: Tensor, names: Optional[Iterable[str]] = None
) -> dict[str, Tensor]:
    """∂f(x_i)/∂θ for each sample: {name: (N, O, numel)}, by vmap(jacrev) over samples.

    ``names``: the parameters to differentiate (default: the trainable ones).
    """
    params, fixed = split_parameters(model, names)
    f = functional_forward(model, fixed)

    def f_one(p: dict[str, Tensor], xi: Tensor) -> Tensor:
        return f(p, xi.unsqueeze(0)).squeeze(0)  # (O,)

    jac = vmap(jacrev(f_one), in_dims=(None, 0))(params, x)
    return {k: v.reshape(v.shape[0], v.shape[1], -1) for k, v in jac.items()}


def _contract(j1: dict[str, Tensor], j2: dict[str, Tensor], mode: str) -> Tensor:
    """Σ over parameter tensors of J1 J2ᵀ, reduced to ``mode``."""
    pattern = {"trace": "aop,bop->ab", "diagonal": "aop,bop->abo", "full": "aop,bqp->aboq"}[mode]
    total = sum(torch.einsum(pattern, j1[k], j2[k]) for k in j1)
    if mode == "trace":
        total = total / next(iter(j1.values())).shape[1]
    return total


def _jacrev_ntk(model: nn.Module, x1: Tensor, x2: Tensor | None, mode: str, budget: int) -> Tensor:
    same = x2 is None
    x2 = x1 if same else x2
    out = output_dim(model, x1)
    n_params = sum(p.numel() for p in split_parameters(model)[0].values())
    size = chunk_size(out * n_params * x1.element_size(), budget // 2, max(len(x1), len(x2)))
    result = empty_kernel(len(x1), len(x2), out, mode, x1)
    cache_x2 = size >= len(x2)  # all of J2 fits in half the budget: compute it once
    j2_all = per_sample_jacobians(model, x2) if cache_x2 and not same else None
    for s1 in chunks(len(x1), size):
        j1 = per_sample_jacobians(model, x1[s1])
        if same and size >= len(x1):
            return _contract(j1, j1, mode)
        for s2 in chunks(len(x2), size):
            if j2_all is not None:
                j2 = {k: v[s2] for k, v in j2_all.items()}
            elif same and s1 == s2:
                j2 = j1
            else:
                j2 = per_sample_jacobians(model, x2[s2])
            result[s1, s2] = _contract(j1, j2, mode)
    return result


# --------------------------------------------------------------------------- ntvp
def _ntvp_ntk(model: nn.Module, x1: Tensor, x2: Tensor | None, mode: str, budget: int) -> Tensor:
    """Θ by NTK-vector products: columns J1 (J2ᵀ e_{b,q}) for every sample b and output q."""
    x2 = x1 if x2 is None else x2
    params, fixed = split_parameters(model)
    f = functional_forward(model, fixed)
    out = output_dim(model, x1)
    n_params = sum(p.numel() for p in params.values())
    size2 = chunk_size(out * n_params * x1.element_size(), budget // 2, len(x2))
    result = torch.zeros(len(x1), len(x2), out, out, dtype=x1.dtype, device=x1.device)
    for s2 in chunks(len(x2), size2):
        xb = x2[s2]
        nb = xb.shape[0]
        _, pullback = vjp(lambda p: f(p, xb), params)
        basis = torch.eye(nb * out, dtype=x1.dtype, device=x1.device).reshape(nb * out, nb, out)
        tangents = vmap(pullback)(basis)[0]  # {name: (nb·O, *shape)} = rows of J2
        push = lambda t: jvp(lambda p: f(p, x1), (params,), (t,))[1]  # (N1, O)  # noqa: E731
        cols = vmap(push)(tangents)  # (nb·O, N1, O): cols[b·O+q, a, o] = Θ_oq(x1_a, x2_b)
        result[:, s2] = cols.reshape(nb, out, len(x1), out).permute(2, 0, 3, 1)
    return reduce_full(result, mode)


# --------------------------------------------------------------------------- Jacobian change
def jacobian_change(
    model_t: nn.Module,
    model_0: nn.Module,
    x: Tensor,
    *,
    method: str = "auto",
    memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET_BYTES,
) -> float:
    """‖J_t − J_0‖_F / ‖J_0‖_F with J = ∂f/∂θ on x (N, …) — ``jac_change`` (docs/conventions.md).

    ``structured`` (what ``auto`` picks when the model has layers it can factor): per-sample
    Gram expansion in float64; otherwise per-sample Jacobians of both models in chunks,
    differenced directly.
    """
    if method == "auto":  # the per-sample Gram expansion is the cheapest whenever it applies
        known = any(layer.module is not None for layer in structured_layers(model_t))
        method = "structured" if known else "jacrev"
    method = resolve_method(model_t, x, None, method)
    with full_fp32_precision():
        return _jacobian_change(model_t, model_0, x, method, memory_budget_bytes)


def _jacobian_change(model_t: nn.Module, model_0: nn.Module, x: Tensor, method: str,
                     memory_budget_bytes: int) -> float:
    if method == "structured":
        dist2, norm2 = structured_jacobian_sq_distance(model_t, model_0, x, memory_budget_bytes,
                                                       per_sample_jacobians)
        return (dist2 / norm2) ** 0.5 if norm2 > 0 else float("nan")
    out = output_dim(model_0, x)
    n_params = sum(p.numel() for p in split_parameters(model_t)[0].values())
    size = chunk_size(2 * out * n_params * x.element_size(), memory_budget_bytes, len(x))
    dist2, norm2 = 0.0, 0.0
    for s in chunks(len(x), size):
        jt = per_sample_jacobians(model_t, x[s])
        j0 = per_sample_jacobians(model_0, x[s], names=list(jt))
        for k in j0:
            dist2 += (jt[k] - j0[k]).double().pow(2).sum().item()
            norm2 += j0[k].double().pow(2).sum().item()
    return (dist2 / norm2) ** 0.5 if norm2 > 0 else float("nan")
