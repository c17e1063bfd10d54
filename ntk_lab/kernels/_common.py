"""Small helpers shared by the empirical-kernel methods: functional calls, chunking, modes."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterable, Iterator, Optional

import torch
from torch import Tensor, nn
from torch.func import functional_call

MODES = ("trace", "full", "diagonal")

# Default cap on the bytes of Jacobian-sized intermediates held at once (per-sample Jacobians,
# vjp tangents, structured features). 1 GiB keeps width 4096 far inside a 24 GB machine.
DEFAULT_MEMORY_BUDGET_BYTES = 1 << 30


def check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"unknown NTK mode {mode!r}; known: {', '.join(MODES)}")


def split_parameters(
    model: nn.Module, names: Optional[Iterable[str]] = None
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """(differentiated parameters, everything else the forward needs: other params, buffers).

    By default the differentiated ones are those with ``requires_grad=True``: frozen
    parameters are not trained and do not enter the NTK. ``names`` picks them explicitly
    (used to differentiate a frozen copy of θ₀ w.r.t. the parameters trained in θ_t).
    """
    params = dict(model.named_parameters())
    chosen = set(names) if names is not None else {k for k, v in params.items() if v.requires_grad}
    trainable = {k: v.detach() for k, v in params.items() if k in chosen}
    fixed = {k: v.detach() for k, v in params.items() if k not in chosen}
    fixed.update({k: v.detach() for k, v in model.named_buffers()})
    return trainable, fixed


def functional_forward(model: nn.Module, fixed: dict[str, Tensor]) -> Callable:
    """f(params, x) -> (N, O): the model's forward as a pure function of its parameters."""

    def f(params: dict[str, Tensor], x: Tensor) -> Tensor:
        return functional_call(model, {**params, **fixed}, (x,))

    return f


def output_dim(model: nn.Module, x: Tensor) -> int:
    """O, from one forward pass on one sample (cheap; no graph)."""
    with torch.no_grad():
        return model(x[:1]).shape[-1]


def chunk_size(bytes_per_sample: int, budget_bytes: int, n: int) -> int:
    """How many samples fit in ``budget_bytes`` (at least 1, at most n)."""
    return int(max(1, min(n, budget_bytes // max(1, bytes_per_sample))))


def chunks(n: int, size: int) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


def reduce_full(theta_full: Tensor, mode: str) -> Tensor:
    """(N1, N2, O, O) -> the requested mode: trace (N1, N2), diagonal (N1, N2, O) or full."""
    if mode == "full":
        return theta_full
    diag = torch.diagonal(theta_full, dim1=-2, dim2=-1)  # (N1, N2, O)
    return diag if mode == "diagonal" else diag.mean(-1)


def empty_kernel(n1: int, n2: int, out_dim: int, mode: str, like: Tensor) -> Tensor:
    shape = {"trace": (n1, n2), "diagonal": (n1, n2, out_dim), "full": (n1, n2, out_dim, out_dim)}
    return torch.zeros(shape[mode], dtype=like.dtype, device=like.device)


@contextmanager
def full_fp32_precision() -> Iterator[None]:
    """Turn TF32 off for CUDA matmuls and convolutions inside the block, then restore.

    TF32 keeps 10 mantissa bits: kernels computed with it drift by ~1e-3 relative, the size
    of the effects ntk_lab measures at large width.
    """
    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    if hasattr(matmul, "fp32_precision"):  # torch >= 2.9
        saved = (matmul.fp32_precision, cudnn.fp32_precision)
        matmul.fp32_precision, cudnn.fp32_precision = "ieee", "ieee"
        try:
            yield
        finally:
            matmul.fp32_precision, cudnn.fp32_precision = saved
    else:
        saved = (matmul.allow_tf32, cudnn.allow_tf32)
        matmul.allow_tf32, cudnn.allow_tf32 = False, False
        try:
            yield
        finally:
            matmul.allow_tf32, cudnn.allow_tf32 = saved
