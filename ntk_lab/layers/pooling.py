"""Readouts of feature maps: global average pooling and flatten (finite module + kernel map).

(a) ``GlobalAvgPool``: (N, C, *S) -> (N, C), the mean over positions.
    ``Flatten``: (N, C, *S) -> (N, C·∏S), in C, H, W order (a following dense layer has
    fan_in C·H·W).
(b) kernel maps (Novak et al. 2019; neural-tangents ``stax.GlobalAvgPool`` / ``Flatten``),
    per unit of the output vector:
        GAP:      Σ_out = P^(-2) Σ_{p,p'} Σ(p, p'),   Θ likewise   — needs the full (P, P) state;
        Flatten:  Σ_out = P^(-1) Σ_p Σ(p, p),         Θ likewise   — same-position terms only.
    After GAP the inputs' own variances are not in a pair tile (they need an input's full
    (P, P) self-covariance); they are dropped, so a nonlinearity may not follow GAP.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ntk_lab.layers.state import KernelState


class GlobalAvgPool(nn.Module):
    """Mean over all spatial positions: (N, C, *S) -> (N, C)."""

    mixes_positions = True  # Θ_∞ needs the full (P, P) covariance

    def forward(self, h: Tensor) -> Tensor:
        return h.flatten(2).mean(-1)

    def kernel_map(self, state: KernelState) -> KernelState:
        if not state.full:
            raise ValueError("global average pooling needs the full (P, P) kernel state")
        dims = tuple(range(2, state.nngp.ndim))
        return KernelState(state.nngp.mean(dims), state.ntk.mean(dims), None, None)


class Flatten(nn.Module):
    """(N, C, *S) -> (N, C·∏S), C, H, W order."""

    mixes_positions = False

    def forward(self, h: Tensor) -> Tensor:
        return h.flatten(1)

    def kernel_map(self, state: KernelState) -> KernelState:
        if state.is_vector:
            return state
        nngp, ntk = state.nngp, state.ntk
        if state.full:  # keep the same-position terms only
            n1, n2, p = nngp.shape[0], nngp.shape[1], _positions(state)
            nngp = torch.diagonal(nngp.reshape(n1, n2, p, p), dim1=-2, dim2=-1)
            ntk = torch.diagonal(ntk.reshape(n1, n2, p, p), dim1=-2, dim2=-1)
        dims = tuple(range(2, nngp.ndim))
        mean_var = lambda v: None if v is None else v.flatten(1).mean(-1)  # noqa: E731
        return KernelState(nngp.mean(dims), ntk.mean(dims), mean_var(state.var1), mean_var(state.var2))


def _positions(state: KernelState) -> int:
    p = 1
    for s in state.spatial:
        p *= s
    return p
