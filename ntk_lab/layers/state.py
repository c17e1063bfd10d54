"""The kernel state a layer's infinite-width map takes and returns (docs/architecture.md, *Layers*).

Between two blocks of inputs x1 (n1 of them) and x2 (n2), a representation with spatial shape
S — () for vectors, (L,) or (H, W) for feature maps — has, per unit (channel),

    nngp[a, b, p, p'] = Σ(x1_a at p, x2_b at p')    the NNGP covariance,
    ntk[a, b, p, p']  = Θ(x1_a at p, x2_b at p')    the NTK,
    var1[a, p] = Σ(x1_a at p, x1_a at p),  var2[b, p'] likewise for x2,

the variances being what a nonlinearity needs besides the covariance. Two layouts for images
(Novak et al. 2019, "Bayesian deep CNNs ... infinitely many channels", §3):

* ``full``: pair dims (n1, n2, *S, *S), every pair of positions — needed when a later layer
  mixes positions (global average pooling);
* not ``full``: pair dims (n1, n2, *S), the same-position terms only — enough for a network
  whose readout flattens, since a convolution maps same-position terms to same-position terms.

For vectors both layouts are (n1, n2). Token sequences (n, T, C), channels last, use the
``full`` layout with S = (T,) and also carry each input's own covariance over every pair of
tokens, ``cov1`` (n1, T, T) and ``cov2`` (n2, T, T): self-attention weighs tokens by them
(neural-tangents' ``cov1``/``cov2``), and they keep the variances known after a layer that
mixes tokens. Everything is float64. Tiling over blocks of inputs
(``ntk_lab.kernels.analytic``) keeps the (P, P) layout inside a memory budget.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional, Tuple

import torch
from torch import Tensor


@dataclass(frozen=True)
class KernelState:
    """NNGP, NTK and the two inputs' variances of one representation (see the module docstring).

    Attributes:
        nngp, ntk: (n1, n2, *S, *S) when ``full``, else (n1, n2, *S).
        var1: (n1, *S); var2: (n2, *S). None once a layer has mixed positions (a pair tile
            does not hold an input's own (P, P) covariance); a nonlinearity then refuses.
        spatial: S, the spatial shape; () for vectors.
        full: whether all position pairs are held.
        zero_ntk: ``ntk`` is known to be 0 (the inputs' state), so a layer may skip its work on
            it; :meth:`replace` clears it whenever ``ntk`` is replaced.
        cov1, cov2: (n1, *S, *S), (n2, *S, *S): each input's own covariance over every pair
            of positions; carried for token sequences (None otherwise).
        channels_last: the representation is (n, *S, C), a token sequence: a dense layer
            then acts on every token alike.
        fused: layers may use their compiled maps of the full state
            (:mod:`ntk_lab.layers.fused_pairs`), set for long computations on a CPU.
    """

    nngp: Tensor
    ntk: Tensor
    var1: Optional[Tensor]
    var2: Optional[Tensor]
    spatial: Tuple[int, ...] = ()
    full: bool = False
    zero_ntk: bool = False
    cov1: Optional[Tensor] = None
    cov2: Optional[Tensor] = None
    channels_last: bool = False
    fused: bool = False

    def replace(self, **changes) -> "KernelState":
        if "ntk" in changes:
            changes.setdefault("zero_ntk", False)
        return dataclasses.replace(self, **changes)

    @property
    def is_vector(self) -> bool:
        return self.spatial == ()

    def pair_dims(self) -> Tuple[Tuple[int, ...], Tuple[int, ...]]:
        """Tensor dims of x1's and x2's spatial positions in ``nngp`` (equal unless full)."""
        s = len(self.spatial)
        first = tuple(range(2, 2 + s))
        return first, (tuple(range(2 + s, 2 + 2 * s)) if self.full else first)

    def broadcast_vars(self) -> Tuple[Tensor, Tensor]:
        """var1, var2 shaped to broadcast against ``nngp``: (n1, 1, *S[, 1…]), (1, n2, [1…,] *S)."""
        if self.var1 is None or self.var2 is None:
            raise ValueError("a nonlinearity after a layer that mixes positions (global average "
                             "pooling) is not supported: the inputs' variances are not known there")
        s = len(self.spatial)
        v1 = self.var1.reshape(self.var1.shape[0], 1, *self.spatial, *((1,) * s if self.full else ()))
        v2 = self.var2.reshape(1, self.var2.shape[0], *((1,) * s if self.full else ()), *self.spatial)
        return v1, v2

    def map_self_covariances(self, fn) -> dict:
        """``{"cov1": fn(cov1, 1), "cov2": fn(cov2, 2)}`` for the inputs' own covariances that
        are carried (the keyword arguments of :meth:`replace`); empty when none are."""
        changes = {}
        if self.cov1 is not None:
            changes["cov1"] = fn(self.cov1, 1)
        if self.cov2 is not None:
            changes["cov2"] = fn(self.cov2, 2)
        return changes

    @staticmethod
    def from_tokens(x1: Tensor, x2: Tensor) -> "KernelState":
        """The state of token sequences x1 (n1, T, C), x2 (n2, T, C), float64: every pair of
        tokens, Σ⁰[a, b, t, t'] = x1[a, t]·x2[b, t'] / C, Θ⁰ = 0, and the inputs' own (T, T)
        covariances."""
        channels, tokens = x1.shape[-1], x1.shape[1]
        nngp = torch.einsum("itc,jsc->ijts", x1, x2) / channels
        cov1 = torch.einsum("itc,isc->its", x1, x1) / channels
        cov2 = torch.einsum("itc,isc->its", x2, x2) / channels
        return KernelState(nngp, torch.zeros_like(nngp), cov1.diagonal(dim1=1, dim2=2).clone(),
                           cov2.diagonal(dim1=1, dim2=2).clone(), (tokens,), True, zero_ntk=True,
                           cov1=cov1, cov2=cov2, channels_last=True)

    @staticmethod
    def from_inputs(x1: Tensor, x2: Tensor, full: bool) -> "KernelState":
        """The state of the data: Σ⁰ = mean over channels of x1·x2 (per position), Θ⁰ = 0.

        Args:
            x1: (n1, d) vectors or (n1, C, *S) feature maps, float64.
            x2: (n2, …) with the same trailing shape.
            full: keep every position pair (images only).
        """
        if x1.ndim == 2:
            nngp = x1 @ x2.T / x1.shape[1]
            return KernelState(nngp, torch.zeros_like(nngp), (x1 * x1).mean(1), (x2 * x2).mean(1),
                               zero_ntk=True)
        channels, spatial = x1.shape[1], tuple(x1.shape[2:])
        a = x1.reshape(x1.shape[0], channels, -1)
        b = x2.reshape(x2.shape[0], channels, -1)
        var1 = (a * a).sum(1).reshape(len(a), *spatial) / channels
        var2 = (b * b).sum(1).reshape(len(b), *spatial) / channels
        if full:  # (P, P) per pair: the 1/C on the small factor, and Θ⁰ = 0 as a broadcast view
            nngp = torch.einsum("icp,jcq->ijpq", a / channels, b).reshape(len(a), len(b), *spatial, *spatial)
            return KernelState(nngp, nngp.new_zeros(()).expand(nngp.shape), var1, var2, spatial, full,
                               zero_ntk=True)
        nngp = torch.einsum("icp,jcp->ijp", a, b).reshape(len(a), len(b), *spatial)
        return KernelState(nngp / channels, torch.zeros_like(nngp), var1, var2, spatial, full, zero_ntk=True)


class NoClosedForm(ValueError):
    """A layer whose infinite-width kernel has no closed form in these settings (softmax
    attention with 1/√n_key logits, a LayerNorm with trained gain and bias, …); the message
    says why. Θ_∞ is then NaN with that reason, or a Monte-Carlo estimate
    (``lazy.infinite_width=monte_carlo``)."""
