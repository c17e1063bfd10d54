"""The Hessian-based lazy-training κ (Liu, Zhu & Belkin 2020): relative change of the gradient predicted
from the Hessian,

    κ = ‖f(θ_T) − f(θ_0)‖ · ‖∇²_θ f(θ_0)‖₂ / ‖∇_θ f(θ_0)‖²,

per probe point x and output o (f = f_o(x), a scalar), averaged over them. ‖∇²f‖₂ is the
largest |eigenvalue| of the P×P Hessian, found by power iteration on Hessian-vector products
(``torch.func``: jvp of grad), never forming the Hessian. ‖∇f‖² is Θ_0(x, x) for output o.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.func import grad, jvp, vmap

from ntk_lab.kernels import empirical_ntk
from ntk_lab.kernels._common import chunk_size, chunks, split_parameters


def hessian_spectral_norms(
    model: nn.Module, x: Tensor, *, names: list[str] | None = None, iters: int = 30,
    seed: int = 0, memory_budget_bytes: int = 1 << 30,
) -> Tensor:
    """‖∇²_θ f_o(x_i)‖₂ for every point and output, (M, O), by ``iters`` power iterations.

    Args:
        model: the network; x: (M, …) points.
        names: the parameters θ (default: the trainable ones).
        iters: power iterations; the estimate |vᵀHv| grows monotonically to the top |λ|.
        seed: seeds the random start vectors.
        memory_budget_bytes: cap on the batched vectors (chunked over points × outputs).
    """
    params, fixed = split_parameters(model, names)
    with torch.no_grad():
        out_dim = model(x[:1]).shape[-1]
    pairs = [(i, o) for i in range(len(x)) for o in range(out_dim)]
    n_params = sum(p.numel() for p in params.values())
    size = chunk_size(4 * n_params * x.element_size(), memory_budget_bytes, len(pairs))
    eye = torch.eye(out_dim, dtype=x.dtype, device=x.device)

    def f_scalar(p, xi, e):
        return torch.func.functional_call(model, {**p, **fixed}, (xi.unsqueeze(0),))[0] @ e

    def hvp(xi, e, v):
        return jvp(lambda p: grad(f_scalar)(p, xi, e), (params,), (v,))[1]

    batched_hvp = vmap(hvp)
    g = torch.Generator(device="cpu").manual_seed(seed)
    norms = torch.empty(len(pairs), dtype=torch.float64)
    for s in chunks(len(pairs), size):
        idx = pairs[s]
        xs = x[[i for i, _ in idx]]
        es = eye[[o for _, o in idx]]
        v = {k: torch.randn((len(idx), *p.shape), generator=g, dtype=p.dtype).to(p.device)
             for k, p in params.items()}
        estimate = torch.zeros(len(idx), dtype=torch.float64, device=x.device)
        for _ in range(iters):
            v = _normalize(v)
            hv = batched_hvp(xs, es, v)
            estimate = _batch_norm(hv)  # ‖Hv‖ for unit v -> top |λ|
            v = hv
        norms[s] = estimate.cpu()
    return norms.reshape(len(x), out_dim)


def _batch_norm(v: dict[str, Tensor]) -> Tensor:
    return torch.sqrt(sum(t.double().pow(2).flatten(1).sum(1) for t in v.values()))


def _normalize(v: dict[str, Tensor]) -> dict[str, Tensor]:
    norm = _batch_norm(v).clamp_min(1e-300)
    return {k: t / norm.to(t.dtype).view(-1, *([1] * (t.dim() - 1))) for k, t in v.items()}


def kappa_hessian(
    model_t: nn.Module, model_0: nn.Module, x: Tensor, *, iters: int = 30, seed: int = 0,
    memory_budget_bytes: int = 1 << 30,
) -> tuple[float, float]:
    """(κ_hessian averaged over points and outputs, the mean ‖∇²f(θ_0)‖₂).

    ``model_0`` may be a frozen copy: it is differentiated w.r.t. the parameters trainable in
    ``model_t``.
    """
    names = [k for k, p in model_t.named_parameters() if p.requires_grad]
    with torch.no_grad():
        change = (model_t(x) - model_0(x)).abs().double()  # (M, O)
    hess = hessian_spectral_norms(model_0, x, names=names, iters=iters, seed=seed,
                                  memory_budget_bytes=memory_budget_bytes).to(change.device)
    grad_sq = _gradient_norms_sq(model_0, x, names).to(change.device)
    return (change * hess / grad_sq).mean().item(), hess.mean().item()


def _gradient_norms_sq(model: nn.Module, x: Tensor, names: list[str]) -> Tensor:
    """‖∇_θ f_o(x_i)‖² = Θ_oo(x_i, x_i), (M, O), with ``names`` as the parameters."""
    saved = {k: p.requires_grad for k, p in model.named_parameters()}
    try:
        for k, p in model.named_parameters():
            p.requires_grad_(k in names)
        theta = empirical_ntk(model, x, mode="diagonal")  # (M, M, O)
    finally:
        for k, p in model.named_parameters():
            p.requires_grad_(saved[k])
    return torch.diagonal(theta, dim1=0, dim2=1).T.double()  # (M, O)
