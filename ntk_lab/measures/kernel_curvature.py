"""The empirical NTK's top eigenvalue and the critical learning rate, without forming the kernel.

Full-batch gradient descent on the lab's MSE, L = 1/(2N) Σ_i ‖f(x_i) − y_i‖², moves the
linearized network's residual as

    f_{t+1} − y = (I − η Θ/N)(f_t − y),

Θ the (N·O)×(N·O) empirical NTK on the training set, Θ[(i,a),(j,b)] = Σ_p ∂_p f_a(x_i) ∂_p f_b(x_j)
over the trainable parameters p. Θ is PSD, so the dynamics are stable iff
η < η_crit = 2 / λ_max(Θ/N) (Lewkowycz et al. 2020, "The large learning rate phase of deep
learning: the catapult mechanism").

λ_max(Θ/N) comes from Lanczos (or power) iteration on v ↦ Θ v / N, v ∈ R^{N×O}, with
Θ v = J (Jᵀ v): Jᵀ v is one vector-Jacobian product of θ ↦ f(x; θ) (``torch.func.vjp``), J u
one Jacobian-vector product (``torch.func.jvp``). Memory is that of a forward/backward pass on the N points (or on ``chunk``
of them at a time), never N²·O².
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterable, Optional

import torch
from torch import Tensor, nn
from torch.func import jvp, vjp

from ntk_lab.kernels._common import (
    chunks, full_fp32_precision, functional_forward, output_dim, split_parameters,
)

METHODS = ("lanczos", "power")

# Stop when the estimate changes by less than this, relatively, in one step. η_crit only sets
# the unit of the learning rate (runs use fractions like 0.5·η_crit or 1.1·η_crit, far coarser
# than 1e-6). The estimate's remaining error is about the last change times 1/(1 − (λ₂/λ₁)²)
# for power iteration; Lanczos converges superlinearly, so its error is about the change.
EIG_TOL = 1e-6

# Most products with Θ. Lanczos reaches 1e-6 in ~10–40 of them on the lab's networks; power
# iteration needs ~log(tol)/log((λ₂/λ₁)²) and can run out when λ₂ ≈ λ₁ (``converged`` says so).
EIG_MAX_ITERS = 100

# Lanczos stops early when the new Krylov direction is this small relative to λ: the space
# found is invariant and its Ritz values are Θ/N's eigenvalues to float64 rounding.
LANCZOS_BREAKDOWN = 1e-12


@dataclass(frozen=True)
class KernelTop:
    """Result of :func:`top_kernel_eigenvalue`.

    value: the estimate of λ_max(Θ/N), a Rayleigh quotient (so a lower bound for a PSD Θ).
    iterations: products with Θ taken.
    converged: the last step changed the estimate by ≤ ``tol`` relatively, or Lanczos found an
        invariant subspace (exact). False after one step otherwise: one estimate has no change.
    relative_change: |λ_k − λ_{k−1}| / |λ_k| of the last step (inf after one step; 0 when Θ
        is found to be 0).
    """

    value: float
    iterations: int
    converged: bool
    relative_change: float


def kernel_operator(
    model: nn.Module, x: Tensor, *, names: Optional[Iterable[str]] = None,
    chunk: Optional[int] = None,
) -> Callable[[Tensor], Tensor]:
    """The map v ↦ Θ v / N on v of shape (N, O), in the model's dtype, Θ never formed.

    Θ v = J (Jᵀ v), J the (N·O)×P Jacobian of f(x; θ) w.r.t. the trainable parameters (or
    ``names``). ``chunk`` points per pass: Jᵀ v is summed over chunks, J u is done per chunk.
    With one chunk the vjp's forward pass is kept and reused on every call.
    """
    params, fixed = split_parameters(model, names)
    f = functional_forward(model, fixed)
    n = x.shape[0]
    slices = list(chunks(n, chunk or n))
    cached = [vjp(lambda p: f(p, x), params)[1]] if len(slices) == 1 else None

    def pull(v: Tensor) -> dict[str, Tensor]:  # Jᵀ v: parameter-shaped
        total: Optional[dict[str, Tensor]] = None
        for k, s in enumerate(slices):
            pullback = cached[k] if cached else vjp(lambda p, s=s: f(p, x[s]), params)[1]
            (g,) = pullback(v[s])
            total = g if total is None else {name: total[name] + g[name] for name in g}
        return total

    def apply(v: Tensor) -> Tensor:
        u = pull(v)
        pushed = [jvp(lambda p, s=s: f(p, x[s]), (params,), (u,))[1] for s in slices]
        return torch.cat(pushed) / n

    return apply


def top_kernel_eigenvalue(
    model: nn.Module, x: Tensor, *, iters: int = EIG_MAX_ITERS, tol: float = EIG_TOL,
    seed: int = 0, names: Optional[Iterable[str]] = None, chunk: Optional[int] = None,
    method: str = "lanczos",
) -> KernelTop:
    """λ_max(Θ/N) of the empirical NTK on ``x``, from products Θ v only (Θ never formed).

    ``method="lanczos"`` (default): the Krylov space of A = Θ/N from v_0 ~ N(0, I) in R^{N×O},
    fully reorthogonalized; λ_k = the top eigenvalue of the k×k tridiagonal Qᵀ A Q
    (Lanczos 1950; Golub & Van Loan, *Matrix Computations*, §10.1). ``method="power"``: power
    iteration v_k = A v_{k−1}/‖A v_{k−1}‖ with the Rayleigh quotient λ_k = v_{k−1}·A v_{k−1}.
    Both estimates rise monotonically to λ_max (Θ is PSD; Cauchy interlacing for Lanczos) and
    stop when |λ_k − λ_{k−1}| ≤ tol·λ_k. Power iteration's error falls like (λ₂/λ₁)^{2k};
    Lanczos' like a Chebyshev polynomial in the gap, far faster when λ₂ ≈ λ₁ — the usual case
    for O outputs, where Θ ≈ K ⊗ I_O near the infinite-width limit.

    Args:
        model: a network mapping x (N, …) -> (N, O); its parameters, buffers and
            ``requires_grad`` flags are left untouched and no ``.grad`` is written.
        x: (N, …) training points, on the model's device and in its dtype.
        iters: most products with Θ; tol: the relative-change stopping threshold.
        seed: seeds the start vector (drawn on the CPU: the same start on every device).
        names: the parameters θ of the kernel (default: those with ``requires_grad``).
        chunk: points per vjp/jvp pass (default: all N at once).
        method: ``lanczos`` or ``power``.

    Products run in the model's dtype; the Krylov vectors, norms and quotients in float64.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; known: {', '.join(METHODS)}")
    if iters < 1:
        raise ValueError(f"iters must be >= 1, got {iters}")
    if chunk is not None and chunk < 1:
        raise ValueError(f"chunk must be >= 1 or None, got {chunk}")
    with full_fp32_precision():
        operator = kernel_operator(model, x, names=names, chunk=chunk)
        dtype = next((p.dtype for p in model.parameters()), x.dtype)
        shape = (x.shape[0], output_dim(model, x))
        g = torch.Generator(device="cpu").manual_seed(seed)
        v0 = torch.randn(shape[0] * shape[1], generator=g, dtype=torch.float64).to(x.device)

        def apply(v: Tensor) -> Tensor:  # (N·O,) float64 -> (N·O,) float64
            return operator(v.reshape(shape).to(dtype)).detach().reshape(-1).double()

        run = _lanczos if method == "lanczos" else _power
        return run(apply, v0 / v0.norm(), iters, tol)


def _relative_change(new: float, old: float) -> float:
    return abs(new - old) / max(abs(new), 1e-300)  # the floor only avoids 0/0 when Θ = 0


def _power(apply: Callable[[Tensor], Tensor], v: Tensor, iters: int, tol: float) -> KernelTop:
    """Power iteration from the unit vector v, the Rayleigh quotient as the estimate."""
    value, change = 0.0, math.inf
    for step in range(1, iters + 1):
        w = apply(v)
        new = float(v @ w)
        change = _relative_change(new, value) if step > 1 else math.inf
        value = new
        norm = w.norm()
        if norm == 0:  # Θ v = 0 from a generic start: Θ = 0 (e.g. a zero readout)
            return KernelTop(0.0, step, True, 0.0)
        v = w / norm
        if change <= tol:
            break
    return KernelTop(value, step, change <= tol, change)


def _lanczos(apply: Callable[[Tensor], Tensor], q: Tensor, iters: int, tol: float) -> KernelTop:
    """Lanczos from the unit vector q with full reorthogonalization (done twice: one
    Gram–Schmidt pass leaves O(ε·κ) overlaps, the second brings them to O(ε))."""
    dim = q.numel()
    basis, alphas, betas = [q], [], []
    value, change = 0.0, math.inf
    for step in range(1, min(iters, dim) + 1):
        w = apply(basis[-1])
        alphas.append(float(basis[-1] @ w))
        span = torch.stack(basis)  # (k, N·O)
        for _ in range(2):
            w = w - span.T @ (span @ w)
        tri = torch.diag(torch.tensor(alphas, dtype=torch.float64))
        if betas:
            off = torch.tensor(betas, dtype=torch.float64)
            tri += torch.diag(off, 1) + torch.diag(off, -1)
        new = torch.linalg.eigvalsh(tri)[-1].item()
        change = _relative_change(new, value) if step > 1 else math.inf
        value = new
        beta = w.norm().item()
        if beta <= LANCZOS_BREAKDOWN * abs(value) or step == dim:
            # an invariant subspace (or all of R^{N·O}): the Ritz values are eigenvalues
            return KernelTop(max(value, 0.0), step, True, change if step > 1 else 0.0)
        if change <= tol:
            break
        betas.append(beta)
        basis.append(w / beta)
    return KernelTop(value, step, change <= tol, change)


def critical_learning_rate(model: nn.Module, x: Tensor, **kw) -> tuple[float, KernelTop]:
    """(η_crit = 2 / λ_max(Θ/N), the eigenvalue estimate): the largest full-batch GD step on the
    MSE L = 1/(2N) Σ‖f − y‖² at which the linearized dynamics are stable (Lewkowycz et al. 2020).

    ``kw`` goes to :func:`top_kernel_eigenvalue`. Since the estimate is a lower bound on
    λ_max, η_crit is an upper bound, tight to the estimate's relative error.
    """
    top = top_kernel_eigenvalue(model, x, **kw)
    return (2.0 / top.value if top.value > 0 else math.inf), top
