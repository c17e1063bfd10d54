"""The input patches a convolution reads, gathered lazily from its padded channels-last input.

A convolution's per-sample weight gradient is Σ_p δ(p) ⊗ u(p) with u(p) the input patch read
at output position p (:mod:`ntk_lab.layers.factors`). Materialized, the patches of a batch are
(N, P, ∏k·C): ∏k times the layer's input — 38 MB for N = 128, 128 channels, 8×8, k = 3, a
fresh allocation whose page faults alone cost as much as the copy. :class:`ConvPatches` keeps
the padded input once, in channels-last layout, and gathers the patch features of a few kernel
offsets at a time: the structured NTK forms J block by block from them
(:mod:`ntk_lab.kernels.structured`) and never holds all patches.

Feature order is (k…, C): kernel offsets outer, channels inner — not the weight's (C, k…)
order. The structured NTK only takes inner products of patches of one layer (u·u', and J·J'
for J = Σ_p δ(p) ⊗ u(p)), so any fixed order gives the same kernel, and channels-last is the
cheap one to gather: each copied run is C contiguous values.
"""

from __future__ import annotations

import itertools
import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


class ConvPatches:
    """Patches u(p) = h_pad[p·stride + o·dilation] of a batch, for every kernel offset o.

    Args:
        h: the convolution's input (N, C, *S), S one or two spatial dims.
        kernel, stride, dilation: per spatial dim.
        pads: ``torch.nn.functional.pad`` order (last dim first).
        mode: a Conv ``padding_mode`` (zeros, circular, reflect, replicate).

    Shapes: :attr:`shape` is (N, P, F) with P = ∏ output spatial sizes and F = ∏k·C, the
    shape of :meth:`materialize`.
    """

    def __init__(self, h: Tensor, kernel: Sequence[int], stride: Sequence[int], dilation: Sequence[int],
                 pads: Sequence[int], mode: str):
        if any(pads):
            h = F.pad(h, tuple(pads), mode="constant" if mode == "zeros" else mode)
        self.padded = h.movedim(1, -1).contiguous()  # (N, *S_pad, C)
        self.kernel, self.stride, self.dilation = tuple(kernel), tuple(stride), tuple(dilation)
        self.out_spatial = tuple((s - d * (k - 1) - 1) // st + 1 for s, k, st, d in
                                 zip(self.padded.shape[1:-1], self.kernel, self.stride, self.dilation))
        self.offsets = list(itertools.product(*(range(k) for k in self.kernel)))

    @classmethod
    def _from_padded(cls, padded: Tensor, like: "ConvPatches") -> "ConvPatches":
        new = cls.__new__(cls)
        new.padded = padded
        new.kernel, new.stride, new.dilation = like.kernel, like.stride, like.dilation
        new.out_spatial, new.offsets = like.out_spatial, like.offsets
        return new

    @property
    def channels(self) -> int:
        """C, the features of one kernel offset."""
        return self.padded.shape[-1]

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.padded.shape[0], math.prod(self.out_spatial), len(self.offsets) * self.channels)

    @property
    def dtype(self) -> torch.dtype:
        return self.padded.dtype

    def element_size(self) -> int:
        return self.padded.element_size()

    def window(self, offset: tuple[int, ...]) -> Tensor:
        """h_pad[p·stride + offset·dilation] for every output position p: a view
        (N, *S_out, C)."""
        index = [slice(None)]
        for o, n, st, d in zip(offset, self.out_spatial, self.stride, self.dilation):
            start = o * d
            index.append(slice(start, start + (n - 1) * st + 1, st))
        return self.padded[tuple(index)]

    def columns(self, start: int, stop: int) -> Tensor:
        """Features [start, stop) of the patches, (N, P, stop − start); both multiples of C
        (whole kernel offsets). One offset's columns are a view when the window is
        contiguous (1-D, stride 1), else one copy."""
        c = self.channels
        if start % c or stop % c:
            raise ValueError(f"patch columns come in whole kernel offsets of {c} channels, "
                             f"got [{start}, {stop})")
        n, p, _ = self.shape
        windows = [self.window(o) for o in self.offsets[start // c: stop // c]]
        if len(windows) == 1:
            return windows[0].reshape(n, p, c)
        return torch.stack(windows, dim=-2).reshape(n, p, stop - start)

    def materialize(self) -> Tensor:
        """All patches, (N, P, ∏k·C)."""
        return self.columns(0, self.shape[2])

    def rows(self, rows: slice) -> "ConvPatches":
        """The patches of samples ``rows`` (no copy)."""
        return ConvPatches._from_padded(self.padded[rows], self)


__all__ = ["ConvPatches"]
