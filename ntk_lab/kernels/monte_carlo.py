"""Monte-Carlo kernels: the NNGP and NTK of any network as averages over random initializations.

For a network f(x; θ) with O outputs and θ drawn at initialization,

    NNGP_MC(x, x') = mean_s  (1/O) Σ_o f_o(x; θ_s) f_o(x'; θ_s),
    NTK_MC(x, x')  = mean_s  (1/O) Σ_o ∇_θ f_o(x; θ_s) · ∇_θ f_o(x'; θ_s)      (trace mode),

over S independent draws θ_s, with the standard error of each entry (the sample standard
deviation over √S). This is neural-tangents' ``monte_carlo_kernel_fn`` with ``trace_axes=(-1,)``
(its outputs averaged, not summed). At width n the estimate converges to E[Θ_0] = Θ_∞ + O(1/n)
as S grows, which is how a network with no closed-form limit (a user's module, BatchNorm,
standard 1/√d softmax attention) gets a Θ_∞ estimate: a wide width and enough samples.

Networks are drawn one at a time and their kernels computed by
:func:`ntk_lab.kernels.empirical_ntk` under its memory budget, so memory is that of one
empirical NTK; the running sums are Welford's (numerically stable in one pass).
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Sequence

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from ntk_lab.kernels.empirical import DEFAULT_MEMORY_BUDGET_BYTES, empirical_ntk


def monte_carlo_kernels(
    build: Callable[[int], nn.Module],
    x1: Tensor,
    x2: Optional[Tensor] = None,
    *,
    n_samples: int | Sequence[int],
    batch_size: Optional[int] = None,
    seed: int = 0,
    method: str = "auto",
    memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET_BYTES,
    progress: bool = False,
) -> dict[str, Tensor]:
    """Monte-Carlo NNGP and NTK of the networks ``build(seed + s)``, s = 0 … S − 1.

    Args:
        build: ``seed -> nn.Module``, a freshly initialized network (N, …) -> (N, O) per seed.
        x1: (N1, …) inputs; x2: (N2, …) inputs, or None for x1 (then both kernels are
            symmetric).
        n_samples: S, or an increasing list of counts: the running estimates at each.
        batch_size: compute each network's kernels in blocks of this many inputs per side
            (neural-tangents' ``batch_size``: memory of a (batch_size, batch_size) block; for a
            symmetric kernel the blocks above the diagonal, mirrored); None: all at once.
        seed: the first network's seed.
        method: the empirical-NTK method (``auto``, ``structured``, ``ntvp``, ``jacrev``).
        memory_budget_bytes: the empirical NTK's cap on Jacobian-sized intermediates.
        progress: a tqdm bar over the networks.

    Returns:
        ``nngp``, ``ntk``, ``nngp_se``, ``ntk_se``: float64 (N1, N2) — or (K, N1, N2) for a
        list of K counts — and ``n_samples``, the counts (K,). A standard error needs two
        samples; with one it is NaN.
    """
    counts = [int(n_samples)] if isinstance(n_samples, int) else [int(n) for n in n_samples]
    if not counts or counts[0] < 1 or any(b <= a for a, b in zip(counts, counts[1:])):
        raise ValueError(f"n_samples must be a positive int or an increasing list of them, got {n_samples!r}")
    stats = {"nngp": _Welford(), "ntk": _Welford()}
    snapshots: list[dict[str, Tensor]] = []
    for s in tqdm(range(counts[-1]), desc="Monte-Carlo kernels", disable=not progress, leave=False):
        net = build(seed + s)
        with torch.no_grad():
            f1 = torch.cat([net(x1[b]).double() for b in _blocks(len(x1), batch_size)])
            f2 = f1 if x2 is None else torch.cat([net(x2[b]).double() for b in _blocks(len(x2), batch_size)])
        stats["nngp"].add(f1 @ f2.T / f1.shape[1])
        stats["ntk"].add(_blocked_ntk(net, x1, x2, batch_size, method=method, mode="trace",
                                      memory_budget_bytes=memory_budget_bytes))
        if s + 1 in counts:
            snapshots.append({**{k: w.mean.clone() for k, w in stats.items()},
                              **{f"{k}_se": w.standard_error() for k, w in stats.items()}})
    if isinstance(n_samples, int):
        out = snapshots[0]
    else:
        out = {key: torch.stack([snap[key] for snap in snapshots]) for key in snapshots[0]}
    out["n_samples"] = torch.tensor(counts)
    return out


def _blocks(n: int, size: Optional[int]) -> list[slice]:
    size = n if not size else max(1, int(size))
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def _blocked_ntk(net: nn.Module, x1: Tensor, x2: Optional[Tensor], batch_size: Optional[int],
                 **options) -> Tensor:
    """The empirical NTK (N1, N2) float64 from (batch_size, batch_size) blocks; for x2 None the
    blocks on and above the diagonal, mirrored."""
    if not batch_size or (len(x1) <= batch_size and (x2 is None or len(x2) <= batch_size)):
        return empirical_ntk(net, x1, x2, **options).double()
    symmetric = x2 is None
    other = x1 if symmetric else x2
    out = torch.empty(len(x1), len(other), dtype=torch.float64, device=x1.device)
    rows, cols = _blocks(len(x1), batch_size), _blocks(len(other), batch_size)
    for i, r in enumerate(rows):
        for j, c in enumerate(cols):
            if symmetric and j < i:
                continue
            block = empirical_ntk(net, x1[r], None if symmetric and i == j else other[c], **options).double()
            out[r, c] = block
            if symmetric and j > i:
                out[c, r] = block.T
    return out


class _Welford:
    """Running mean and sum of squared deviations of equally shaped float64 tensors."""

    def __init__(self) -> None:
        self.n, self.mean, self.m2 = 0, None, None

    def add(self, value: Tensor) -> None:
        self.n += 1
        if self.mean is None:
            self.mean, self.m2 = value.clone(), torch.zeros_like(value)
            return
        delta = value - self.mean
        self.mean += delta / self.n
        self.m2 += delta * (value - self.mean)

    def standard_error(self) -> Tensor:
        if self.n < 2:
            return torch.full_like(self.mean, math.nan)
        return torch.sqrt(self.m2 / (self.n - 1) / self.n)
