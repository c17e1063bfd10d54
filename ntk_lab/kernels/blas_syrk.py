"""C ← C + α·A·Aᵀ on the upper triangle only: BLAS's symmetric rank-k update (syrk), from the
BLAS that torch itself ships.

Why: a layer's NTK on one sample set is J·Jᵀ, symmetric. torch has no syrk, and a general
matrix product computes both triangles. On this project's CPU a float32 product of (128, 8192)
blocks runs at the core's peak, so splitting it into row strips above the diagonal saves no
time (75% of the operations, the same seconds); syrk does the upper triangle at full speed:
(128, 8192) blocks, 1 thread 18 ms → 12 ms for eight, 2 threads 8.1 ms → 6.3 ms
(``scripts/bench_transformer_ntk.py`` runs the whole method).

How: torch's x86 Linux builds link Intel MKL into ``libtorch_cpu``, which exports the Fortran
entry ``mkl_blas_ssyrk`` / ``mkl_blas_dsyrk`` (the reference BLAS's ``ssyrk_`` signature: every
argument by reference). Its threads are torch's own OpenMP threads, so it does not fight
them the way a second BLAS (scipy's) does. Integers are passed as 64-bit: an LP64 library
reads their low half (little-endian), an ILP64 one the whole.

Where the symbol is missing (other builds, other BLAS), or a self-check on a small matrix
fails, :func:`add_upper_gram` returns False and the caller uses general products.
"""

from __future__ import annotations

import ctypes
import os
import sys
from typing import Optional

import torch
from torch import Tensor

_ENTRY_POINTS = {torch.float32: ("mkl_blas_ssyrk", "ssyrk_"), torch.float64: ("mkl_blas_dsyrk", "dsyrk_")}
_SCALAR = {torch.float32: ctypes.c_float, torch.float64: ctypes.c_double}
_CHECKED: dict[torch.dtype, Optional[object]] = {}

SELF_CHECK_RTOL = {torch.float32: 1e-5, torch.float64: 1e-12}
"""Agreement of the self-check's syrk with torch's product on a (6, 33) matrix: a few
rounding errors of a 33-term sum, far below what a wrong argument order would give (O(1))."""


def _library_function(name: str):
    """The named symbol from torch's CPU library, or None."""
    if not sys.platform.startswith("linux"):
        return None
    path = os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so")
    try:
        return getattr(ctypes.CDLL(path), name)
    except (OSError, AttributeError):
        return None


def _call(function, c: Tensor, a: Tensor, alpha: float, beta: float) -> None:
    """c (N, N) row-major += alpha·a·aᵀ on its upper triangle; a (N, K) row-major.

    Row-major a (N, K) is the column-major (K, N) matrix aᵀ, so the Fortran call is
    C ← α·(aᵀ)ᵀ(aᵀ) + β·C with trans = 'T', and row-major's upper triangle is column-major's
    lower ('L')."""
    n, k = a.shape
    integer = ctypes.c_int64
    scalar = _SCALAR[a.dtype]
    function(ctypes.byref(ctypes.c_char(b"L")), ctypes.byref(ctypes.c_char(b"T")),
             ctypes.byref(integer(n)), ctypes.byref(integer(k)), ctypes.byref(scalar(alpha)),
             ctypes.c_void_p(a.data_ptr()), ctypes.byref(integer(max(1, k))), ctypes.byref(scalar(beta)),
             ctypes.c_void_p(c.data_ptr()), ctypes.byref(integer(max(1, n))))


def _syrk(dtype: torch.dtype):
    """The checked syrk entry for dtype, or None (looked up and self-checked once)."""
    if dtype not in _CHECKED:
        _CHECKED[dtype] = None
        for name in _ENTRY_POINTS.get(dtype, ()):
            function = _library_function(name)
            if function is not None and _self_check(function, dtype):
                _CHECKED[dtype] = function
                break
    return _CHECKED[dtype]


def _self_check(function, dtype: torch.dtype) -> bool:
    a = torch.randn(6, 33, dtype=dtype, generator=torch.Generator().manual_seed(0))
    c = torch.full((6, 6), 2.0, dtype=dtype)
    _call(function, c, a, 0.5, 1.0)
    expected = (2.0 + 0.5 * a @ a.T).triu() + torch.full((6, 6), 2.0, dtype=dtype).tril(-1)
    return bool(torch.allclose(c, expected, rtol=SELF_CHECK_RTOL[dtype], atol=0.0))


def syrk_available(c: Tensor) -> bool:
    """Whether :func:`add_upper_gram` can update c: a CPU tensor of a dtype whose syrk torch's
    BLAS exports and passed the self-check."""
    return c.device.type == "cpu" and _syrk(c.dtype) is not None


def add_upper_gram(c: Tensor, a: Tensor, alpha: float) -> None:
    """c[i, j] += alpha·Σ_k a[i, k]·a[j, k] for j ≥ i, in place (the part of c below the
    diagonal is left as it is). Only where :func:`syrk_available` (c).

    Args:
        c: (N, N), contiguous.
        a: (N, K), the same dtype and device as c (copied when not contiguous).
    """
    if not (syrk_available(c) and c.is_contiguous() and a.dtype == c.dtype and a.device == c.device
            and c.shape == (a.shape[0], a.shape[0])):
        raise ValueError(f"add_upper_gram: needs a contiguous CPU c (N, N) and a (N, K) of its dtype "
                         f"with a BLAS syrk; got c {tuple(c.shape)} {c.dtype}, a {tuple(a.shape)} {a.dtype}")
    if a.shape[0] and a.shape[1]:
        with torch.no_grad():
            _call(_syrk(c.dtype), c, a.detach().contiguous(), alpha, 1.0)
