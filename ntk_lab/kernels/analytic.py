"""Infinite-width kernels of the MLP: the NNGP Σ and the neural tangent kernel Θ_∞.

The recursion (docs/conventions.md; Jacot, Gabriel & Hongler 2018; Lee et al. 2018; Arora et al.
2019), for ``depth`` hidden layers and the same (σ_w, σ_b) = (w_std, b_std) in every layer:

    Σ¹(x, x') = σ_w² · x·x'/d + σ_b²,        Θ¹ = Σ¹
    (u, v) ~ N(0, [[Σʰ(x,x), Σʰ(x,x')], [Σʰ(x',x), Σʰ(x',x')]])
    Σ^{h+1} = σ_w² · E[φ(u) φ(v)] + σ_b²
    Θ^{h+1} = Σ^{h+1} + σ_w² · E[φ'(u) φ'(v)] · Θʰ
    NNGP = Σ^{depth+1},  NTK = Θ^{depth+1}

This is what neural-tangents' ``stax.serial([Dense(n, W_std, b_std), φ] * depth,
Dense(1, W_std, b_std))`` ``kernel_fn`` computes (for one output; with several outputs the
kernel is the same per output and the ``trace`` mode of docs/conventions.md returns it unchanged).

How the Gaussian expectations are computed:

* closed forms (``Activation.dual``: relu, leaky_relu, abs — the arc-cosine kernels of Cho &
  Saul 2009 —, erf — Williams 1997 —, gelu, identity), elementwise on all pairs;
* otherwise (tanh, sigmoid, softplus, any user-supplied ``Activation`` with
  ``dual=None``) a Hermite (Mehler) expansion whose coefficients come from 1-D Gauss–Hermite
  quadrature, see :func:`_series_expectations`. Why not the 2-D tensor-product Gauss–Hermite
  rule: for tanh at variance q = 1 it still errs by 3e-7 with 64×64 nodes (1e-3 at q = 3),
  because tanh is analytic only in a strip and Gauss–Hermite converges like exp(−c√n) there;
  and n² transcendental evaluations per pair make 2048² pairs take minutes on a CPU. The
  expansion needs one 1-D quadrature per *point* and a degree-K polynomial per *pair*, and it
  comes with a rigorous error bound (Parseval), so the degree is chosen to meet a tolerance.

Everything is vectorized over pairs and processed in 256 × 256 tiles of pairs, the whole
depth at once per tile, carrying the diagonals Σʰ(x, x) of x1 and x2 alongside. Working memory
beyond the two (N1, N2) outputs is one tile plus, for the series path, the per-point
coefficients (N1 + N2) × 2 × (K + 1) per layer (2048 × 2048 at depth 5: < 200 MB in all).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Iterator, Optional, Tuple

import numpy as np
import torch
from torch import Tensor, nn

from ntk_lab.kernels.composed import composed_kernels
from ntk_lab.layers import PARAMETERIZATIONS
from ntk_lab.layers.activations import Activation, get_activation
from ntk_lab.models import kernel_layers
from ntk_lab.layers.gaussian import (  # noqa: F401  (SERIES_* and _hermite_table: public via here too)
    SERIES_MAX_DEGREE, SERIES_TOL, SERIES_WARN_TOL, _hermite_table, _series_coefficients,
    _series_expectations,
)

_TILE_SIDE = 256  # tiles of 256 × 256 pairs: the Horner loop's operands stay in cache


def infinite_width_kernels(
    x1: Tensor,
    x2: Optional[Tensor] = None,
    *,
    model: Optional[nn.Module] = None,
    activation: str | Activation | None = None,
    depth: Optional[int] = None,
    w_std: float = 1.0,
    b_std: float = 0.0,
    parameterization: str = "ntk",
    width: Optional[int] = None,
    quadrature_degree: Optional[int] = None,
    memory_budget_bytes: Optional[int] = None,
    progress: bool = False,
) -> Tuple[Tensor, Tensor]:
    """Infinite-width NNGP and NTK of a network between x1 and x2.

    Two forms:

    * ``infinite_width_kernels(x1, x2, model=net)`` — a built-in :class:`~ntk_lab.models.MLP`,
      :class:`~ntk_lab.models.CNN` or :class:`~ntk_lab.models.ResMLP`: its layers' kernel maps
      composed (:mod:`ntk_lab.kernels.composed`), with the network's own activation,
      parameterization, σ's, width, padding and readout. x1, x2 are what the network takes:
      (N, d) vectors, or (N, C, H, W) images for a CNN.
    * the keyword form for the MLP of docs/conventions.md, below (``activation=`` and ``depth=``).

    Args:
        model: a built-in network (then leave the MLP keywords out).
        memory_budget_bytes: with ``model=``: cap on one tile's working memory (the
            (N, N, P, P) covariance of a globally pooled CNN is computed in tiles of input
            blocks); None: the default tile size only.
        progress: with ``model=``: a progress bar over the tiles.
        x1: inputs, shape (N1, d).
        x2: inputs, shape (N2, d), or None for x1 (then only half the pairs are computed and
            the result is exactly symmetric).
        activation: a name from :mod:`ntk_lab.layers.activations` or an :class:`Activation`; one
            with ``dual=None`` (e.g. user-supplied, with ``fn`` and ``derivative``) goes
            through the Hermite-series quadrature.
        depth: number of hidden layers (≥ 1).
        w_std, b_std: σ_w and σ_b, the same in every layer, the readout included.
        parameterization:
            ``"ntk"`` — the recursion in the module docstring (Θ is width-independent).
            ``"mup"`` — returns exactly the ``"ntk"`` kernels: the repo's μP network is built
            so that its hidden pre-activations and its NTK at initialization have the ``ntk``
            network's distribution (see :func:`ntk_lab.models.layer_scales`).
            ``"standard"`` — neural-tangents' ``Dense(parameterization='standard')``
            (0.6.5, ``stax`` Dense ``kernel_fn``): the NNGP is unchanged, and each dense
            layer with input width n_in updates the NTK as
            ``ntk = n_in * nngp_in + 1 + W_std**2 * ntk_in``, where ``nngp_in`` is the
            covariance of the layer's input (x·x'/d for the first layer, E[φ(u)φ(v)] after),
            ``ntk_in`` the NTK of that input (0 for the data) and the ``+1`` the bias
            gradient (present even when b_std = 0: the bias parameter exists). Hence

                Θ¹ = x·x' + 1,   Θ^{h+1} = n·E[φ(u)φ(v)] + 1 + σ_w² E[φ'(u)φ'(v)] Θʰ,

            with n = ``width`` for every layer after the first. This Θ grows like n. It is
            the exact expectation of the finite network's NTK for depth 1 and its leading
            order in 1/n for deeper networks (relative bias O(1/n)).
        width: hidden width n; required for ``"standard"``, ignored otherwise.
        quadrature_degree: degree K of the Hermite expansion for activations without a
            closed form; None (default) picks, per layer, the smallest K ≤
            ``SERIES_MAX_DEGREE`` whose Parseval bound on the truncation error is
            ≤ ``SERIES_TOL`` relative. Ignored for closed-form activations.

    Returns:
        (nngp, ntk): float64 tensors of shape (N1, N2) on x1's device (x2 is moved there);
        no autograd graph.

    Raises:
        ValueError: unknown activation or parameterization, depth < 1, ``"standard"``
            without a positive ``width``, inputs that are not (N, d) with matching d, or a
            ``quadrature_degree`` outside [0, ``SERIES_MAX_DEGREE``].

    References:
        Jacot, Gabriel & Hongler 2018 (NTK); Lee et al. 2018 (NNGP recursion); Arora et al.
        2019 (exact NTK recursion); Cho & Saul 2009 (arc-cosine kernels); Williams 1997 (erf).
    """
    if model is not None:
        if activation is not None or depth is not None:
            raise ValueError("pass either model=net or the MLP keywords (activation=, depth=, ...), not both")
        return _model_kernels(model, x1, x2, memory_budget_bytes, progress)
    if activation is None or depth is None:
        raise ValueError("infinite_width_kernels needs model=net, or activation= and depth= (the MLP)")
    act = get_activation(activation)
    if parameterization not in PARAMETERIZATIONS:
        raise ValueError(f"unknown parameterization {parameterization!r}; "
                         f"known: {', '.join(PARAMETERIZATIONS)}")
    if isinstance(depth, bool) or not isinstance(depth, (int, np.integer)) or depth < 1:
        raise ValueError(f"depth must be an integer >= 1, got {depth!r}")
    standard = parameterization == "standard"
    if standard and (width is None or isinstance(width, bool)
                     or not isinstance(width, (int, np.integer)) or width < 1):
        raise ValueError("parameterization='standard' needs the hidden width: pass width=<int >= 1>, "
                         f"got {width!r}")
    if quadrature_degree is not None and not 0 <= int(quadrature_degree) <= SERIES_MAX_DEGREE:
        raise ValueError(f"quadrature_degree must lie in [0, {SERIES_MAX_DEGREE}], got {quadrature_degree!r}")

    symmetric = x2 is None
    device = _as_matrix(x1, "x1").device
    x1 = x1.detach().to(torch.float64)
    x2 = x1 if symmetric else _as_matrix(x2, "x2").detach().to(device=device, dtype=torch.float64)
    if x2.shape[1] != x1.shape[1]:
        raise ValueError(f"x1 and x2 need the same input dimension, got {x1.shape[1]} and {x2.shape[1]}")
    n1, d = x1.shape
    n2 = x2.shape[0]
    w2, b2 = float(w_std) ** 2, float(b_std) ** 2

    sq1 = (x1 * x1).sum(dim=1)
    sq2 = sq1 if symmetric else (x2 * x2).sum(dim=1)
    layers = _plan_layers(act, w2 * sq1 / d + b2, None if symmetric else w2 * sq2 / d + b2,
                          depth, w2, b2, quadrature_degree)

    # Series path: visit points in order of their input variance so that each tile holds
    # points of similar variance and needs only their (similar) expansion degrees.
    order1 = torch.argsort(sq1) if layers[0].sorts_points else torch.arange(n1, device=device)
    order2 = order1 if symmetric else (
        torch.argsort(sq2) if layers[0].sorts_points else torch.arange(n2, device=device))
    nngp = torch.empty(n1, n2, dtype=torch.float64, device=device)
    ntk = torch.empty(n1, n2, dtype=torch.float64, device=device)
    for rows, cols, on_diagonal in _tiles(n1, n2, symmetric, _TILE_SIDE):
        rows, cols = order1[rows], order2[cols]
        dots = x1[rows] @ x2[cols].T
        if on_diagonal:  # exact symmetry, and Σ¹(x, x) equal to the carried diagonal
            dots = 0.5 * (dots + dots.T)
            dots.diagonal().copy_(sq1[rows])
        sigma = w2 * dots / d + b2
        theta = dots + 1.0 if standard else sigma
        for layer in layers:
            e_phi, e_dphi = layer.expectations(sigma, rows, cols, on_diagonal)
            new_sigma = w2 * e_phi + b2
            if standard:
                theta = width * e_phi + 1.0 + w2 * e_dphi * theta
            else:
                theta = new_sigma + w2 * e_dphi * theta
            sigma = new_sigma
        nngp[rows[:, None], cols[None, :]] = sigma
        ntk[rows[:, None], cols[None, :]] = theta
        if symmetric and not on_diagonal:
            nngp[cols[:, None], rows[None, :]] = sigma.T
            ntk[cols[:, None], rows[None, :]] = theta.T
    return nngp, ntk


# --------------------------------------------------------------------------- model= form
def _model_kernels(model: nn.Module, x1: Tensor, x2: Optional[Tensor],
                   memory_budget_bytes: Optional[int], progress: bool = False) -> Tuple[Tensor, Tensor]:
    """Θ_∞ of a built-in network by its composed kernel maps, after checking the inputs fit it."""
    layers = kernel_layers(model)
    for name, x in (("x1", x1), ("x2", x2)):
        if x is None:
            continue
        if not isinstance(x, Tensor) or x.ndim < 2:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"{name} must be a batch of inputs (N, ...), got {shape}")
        param = next(model.parameters())
        if param.is_meta:
            # a network built on the meta device only for its kernel maps (as runs build it):
            # no forward check, whose first meta operation in a process costs ~1 s (torch
            # imports its meta decompositions); its shapes come from the data it will see
            continue
        try:
            with torch.no_grad():
                model(x[:1].detach().to(dtype=param.dtype, device=param.device))
        except (RuntimeError, ValueError) as err:
            raise ValueError(f"{name} of shape {tuple(x.shape)} does not fit {type(model).__name__}: "
                             f"{str(err).splitlines()[0]}") from None
    if x2 is not None and x2.shape[1:] != x1.shape[1:]:
        raise ValueError(f"x1 and x2 need the same input shape, got {tuple(x1.shape[1:])} and {tuple(x2.shape[1:])}")
    return composed_kernels(layers, x1, x2, memory_budget_bytes=memory_budget_bytes,
                            progress=progress)


# --------------------------------------------------------------------------- layer plans
@dataclass
class _ClosedFormLayer:
    """Σʰ's diagonals for x1 / x2 and the activation's closed-form dual."""

    act: Activation
    q1: Tensor
    q2: Tensor
    sorts_points = False

    def expectations(self, sigma: Tensor, rows: Tensor, cols: Tensor, on_diagonal: bool):
        return self.act.dual(self.q1[rows, None], sigma, self.q2[None, cols])


@dataclass
class _SeriesLayer:
    """Hermite coefficients of φ(√q z) and φ'(√q z) per point, each point's degree, moments."""

    q1: Tensor
    q2: Tensor
    coef1: Tensor  # (N1, 2, K+1): [:, 0] for φ, [:, 1] for φ'
    coef2: Tensor  # (N2, 2, K+1)
    degree1: Tensor  # (N1,) degree each point needs (≤ K)
    degree2: Tensor  # (N2,)
    moments1: Tensor  # (N1, 2): E[φ(u)²], E[φ'(u)²] with u ~ N(0, q1)
    sorts_points = True

    def expectations(self, sigma: Tensor, rows: Tensor, cols: Tensor, on_diagonal: bool):
        # a pair needs the larger of its two points' degrees (each tail is then ≤ the bound)
        k = int(torch.maximum(self.degree1[rows].max(), self.degree2[cols].max()))
        e_phi, e_dphi = _series_expectations(self.coef1[rows, :, : k + 1], self.coef2[cols, :, : k + 1],
                                             self.q1[rows], self.q2[cols], sigma)
        if on_diagonal:  # the exact 1-D moments; the series is only within its bound there
            e_phi.diagonal().copy_(self.moments1[rows, 0])
            e_dphi.diagonal().copy_(self.moments1[rows, 1])
        return e_phi, e_dphi


def _plan_layers(act: Activation, q1: Tensor, q2: Optional[Tensor], depth: int, w2: float,
                 b2: float, degree: Optional[int]) -> list:
    """Carry the diagonals Σʰ(x, x), h = 1..depth, and prepare each layer's expectations.

    q2 is None in the symmetric case (x2 = x1). Σ^{h+1}(x, x) = σ_w² E[φ(u)²] + σ_b² with
    u ~ N(0, Σʰ(x, x)): from the dual at (q, q, q), or from the exact 1-D moments.
    """
    layers, worst_bound = [], 0.0
    for _ in range(depth):
        if act.dual is not None:
            qq1 = q1 if q2 is None else q2
            layers.append(_ClosedFormLayer(act, q1, qq1))
            q1_next = w2 * act.dual(q1, q1, q1)[0] + b2
            q2_next = None if q2 is None else w2 * act.dual(q2, q2, q2)[0] + b2
        else:
            n1 = q1.shape[0]
            q_all = q1 if q2 is None else torch.cat([q1, q2])
            coef, degrees, moments, bound = _series_coefficients(act, q_all, degree)
            worst_bound = max(worst_bound, bound)
            coef1, degree1, moments1 = coef[:n1], degrees[:n1], moments[:n1]
            coef2, degree2 = (coef1, degree1) if q2 is None else (coef[n1:], degrees[n1:])
            layers.append(_SeriesLayer(q1, q1 if q2 is None else q2, coef1, coef2, degree1,
                                       degree2, moments1))
            q1_next = w2 * moments1[:, 0] + b2
            q2_next = None if q2 is None else w2 * moments[n1:, 0] + b2
        q1, q2 = q1_next, q2_next
    if degree is None and worst_bound > SERIES_WARN_TOL:
        warnings.warn(
            f"infinite_width_kernels: the Hermite expansion of activation {act.name!r} at degree "
            f"{SERIES_MAX_DEGREE} leaves a relative truncation bound of {worst_bound:.1e} (> "
            f"{SERIES_WARN_TOL:g}); expect errors of that order. This happens for activations "
            f"with a kink (give the Activation its closed-form dual) or for large "
            f"pre-activation variances (e.g. tanh beyond about 10, sigmoid beyond about 35).",
            RuntimeWarning, stacklevel=3)
    return layers


# --------------------------------------------------------------------------- helpers
def _as_matrix(x: Tensor, name: str) -> Tensor:
    if not isinstance(x, Tensor) or x.ndim != 2:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"{name} must be a tensor of shape (N, d), got {shape}")
    return x


def _tiles(n1: int, n2: int, symmetric: bool, side: int) -> Iterator[Tuple[slice, slice, bool]]:
    """Tiles (rows, cols, on_diagonal) of at most side × side pairs covering the kernel; for a
    symmetric kernel only the tiles on or above the diagonal (the caller mirrors the rest)."""
    for r in range(0, n1, side):
        for c in range(r if symmetric else 0, n2, side):
            yield slice(r, min(r + side, n1)), slice(c, min(c + side, n2)), symmetric and r == c
