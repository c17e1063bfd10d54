"""Compiled maps of the full (P, P) pair state, for Θ_∞ of globally pooled conv nets on a CPU.

A pooled conv net's Θ_∞ carries, per input pair, (P, P) covariance and NTK tensors (P = 784 for
a 28×28 image: 4.9 MB each), far larger than a core's cache. Its two per-layer maps

* the convolution's stencil, Σ_out[p, p'] = v_w/k^d Σ_o Σ[p + o, p' + o] + v_b (and Θ alike),
* the ReLU dual and the NTK's product, (E[φφ], E[φ'φ']·Θ) elementwise over (p, p'),

take about twenty passes over those tensors as separate torch operations (a copy and shifted
adds per axis and tensor, the dual's in-place steps), each at memory bandwidth. Compiled by
``torch.compile`` (inductor's C++ loops on the CPU), each map becomes a few fused loops:
every stencil axis is one loop of masked reads at constant offsets of the flat tensor (a shift
of both positions on axis i moves the flat index by stride(p_i) + stride(p'_i)), and the dual
and the product one loop. The results agree with the eager maps to rounding (≤ 1e-15
relative, the order of summation aside).

Used only where it pays: CPU tensors, full states, zero-padded ("same" or "valid" reads as
zeros outside) odd stencils, relu; :func:`ntk_lab.kernels.composed.composed_kernels` turns it on
for long computations (compiling takes seconds, once per process and shape). Any failure to
compile — no C++ compiler, an unsupported platform — switches it off for the process with one
warning; the eager maps then run as before.
"""

from __future__ import annotations

import functools
import math
import warnings
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

_FAILED: List[str] = []  # the first compile error; once set, every call takes the eager maps


def available() -> bool:
    """Whether the compiled maps may be tried in this process (none has failed yet)."""
    return not _FAILED and hasattr(torch, "compile")


_COMPILED: dict = {}  # function -> its torch.compile'd form, built on first use


def _call_compiled(fn, *args):
    """fn compiled (once per process) and called on args; None once any compile has failed."""
    if not available():
        return None
    try:
        if fn not in _COMPILED:
            _COMPILED[fn] = torch.compile(fn, dynamic=False)
        return _COMPILED[fn](*args)
    except Exception as error:  # noqa: BLE001 — any compiler failure: fall back to eager
        _disable(error)
        return None


def _disable(error: BaseException) -> None:
    _FAILED.append(str(error).splitlines()[0] if str(error) else type(error).__name__)
    warnings.warn(f"compiled pair maps unavailable ({_FAILED[0][:120]}); using the eager maps",
                  RuntimeWarning, stacklevel=4)


# --------------------------------------------------------------------------- the stencil
def _axis_sum(t: Tensor, masks: Sequence[Tuple[Tensor, Tensor]], offsets: Sequence[int], pad: int) -> Tensor:
    """Σ_o (row_o ⊗ col_o) · t[flat index + offset_o] on t (B, P, P): one axis of the stencil,
    zero outside (row_o, col_o (P, 1), (1, P): whether position p, p' shifted by o is inside)."""
    shape = t.shape
    flat = F.pad(t.reshape(shape[0], -1), (pad, pad))
    n = flat.shape[1] - 2 * pad
    out = None
    for (row, col), offset in zip(masks, offsets):
        term = (row * col) * flat[:, pad + offset:pad + offset + n].reshape(shape)
        out = term if out is None else out + term
    return out


def _stencil(t: Tensor, masks, offsets, pad: int) -> Tensor:
    for axis_masks, axis_offsets in zip(masks, offsets):
        t = _axis_sum(t, axis_masks, axis_offsets, pad)
    return t


def _conv_map(nngp: Tensor, ntk: Optional[Tensor], masks, offsets, pad: int, v_w: Tensor,
              v_b: Tensor, g_w: Tensor, g_b: Tensor) -> Tuple[Tensor, Tensor]:
    """(v_w·A(Σ) + v_b, v_w·A(Θ) + g_w·A(Σ) + g_b) on (B, P, P), A the stencil sum (its 1/k^d
    already in v_w, g_w); ``ntk`` None: Θ = 0."""
    raw = _stencil(nngp, masks, offsets, pad)
    ntk_out = raw * g_w + g_b
    if ntk is not None:
        ntk_out = ntk_out + _stencil(ntk, masks, offsets, pad) * v_w
    return raw * v_w + v_b, ntk_out



@functools.lru_cache(maxsize=16)
def _stencil_plan(spatial: Tuple[int, ...], k: int, dtype, device):
    """Per spatial axis i: the (row, col) masks and flat offsets of the k shifts
    o ∈ [−k//2, k//2] of both positions of the (P, P) pair plane (P = ∏S, row-major), and the
    padding they need. Shifting both positions by o on axis i moves the flat index of
    (p, p') by o·(stride_i·P + stride_i)."""
    positions = math.prod(spatial)
    index = torch.arange(positions, device=device)
    masks, offsets = [], []
    stride = positions
    for size in spatial:
        stride //= size
        coord = (index // stride) % size
        axis_masks, axis_offsets = [], []
        for o in range(-(k // 2), k // 2 + 1):
            inside = ((coord + o >= 0) & (coord + o < size)).to(dtype)
            axis_masks.append((inside[:, None], inside[None, :]))
            axis_offsets.append(o * (stride * positions + stride))
        masks.append(axis_masks)
        offsets.append(axis_offsets)
    pad = max(abs(o) for axis in offsets for o in axis)
    return masks, offsets, pad


def conv_pair_map(nngp: Tensor, ntk: Optional[Tensor], spatial: Tuple[int, ...], k: int,
                  v_w: float, v_b: float, g_w: float, g_b: float) -> Optional[Tuple[Tensor, Tensor]]:
    """The convolution's map of a full state (n1, n2, *S, *S), zero padding, compiled; the
    coefficients already include 1/k^d. None when the compiled map is unavailable."""
    positions = math.prod(spatial)
    shape = (nngp.shape[0] * nngp.shape[1], positions, positions)
    masks, offsets, pad = _stencil_plan(tuple(spatial), k, nngp.dtype, nngp.device)
    # the coefficients as 0-d tensors: graph inputs, not constants to recompile for
    coefficients = [torch.tensor(c, dtype=nngp.dtype) for c in (v_w, v_b, g_w, g_b)]
    out = _call_compiled(_conv_map, nngp.reshape(shape), None if ntk is None else ntk.reshape(shape),
                         masks, offsets, pad, *coefficients)
    return None if out is None else (out[0].reshape(nngp.shape), out[1].reshape(nngp.shape))


# --------------------------------------------------------------------------- the relu dual
def _relu_map(v1: Tensor, q12: Tensor, v2: Tensor, ntk: Tensor) -> Tuple[Tensor, Tensor]:
    """(E[relu(u)relu(v)], E[relu'(u)relu'(v)]·Θ): the arc-cosine pair of the eager
    ``_relu_dual`` (θ = atan2(s sin θ, q12); relu'(0) = 0 at zero variance), fused."""
    s = torch.sqrt(v1.clamp_min(0.0)) * torch.sqrt(v2.clamp_min(0.0))
    ssin = torch.sqrt(((s - q12) * (s + q12)).clamp_min(0.0))
    dot = 0.5 - torch.atan2(ssin, q12) * (0.5 / math.pi)
    dot = torch.where((v1 > 0.0) & (v2 > 0.0), dot, torch.zeros_like(dot))
    return ssin * (0.5 / math.pi) + dot * q12, dot * ntk



def relu_pair_map(v1: Tensor, q12: Tensor, v2: Tensor, ntk: Tensor) -> Optional[Tuple[Tensor, Tensor]]:
    """:func:`_relu_map` compiled, on a full state q12, ntk (n1, n2, *S, *S) with the variances
    v1 (n1, 1, *S, 1…), v2 (1, n2, 1…, *S) (viewed as (n1, n2, P, P), (n1, 1, P, 1),
    (1, n2, 1, P)); None when the compiled map is unavailable."""
    n1, n2 = q12.shape[:2]
    positions = math.isqrt(q12[0, 0].numel())
    pairs = (n1, n2, positions, positions)
    out = _call_compiled(_relu_map, v1.reshape(n1, 1, positions, 1), q12.reshape(pairs),
                         v2.reshape(1, n2, 1, positions), ntk.reshape(pairs))
    return None if out is None else (out[0].reshape(q12.shape), out[1].reshape(q12.shape))
