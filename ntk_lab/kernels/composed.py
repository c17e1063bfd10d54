"""Θ_∞ and NNGP_∞ of a network by composing its layers' kernel maps (docs/architecture.md, *Layers*).

    state⁰ = KernelState.from_inputs(x1, x2)        Σ⁰ = x1·x2 / C per position pair, Θ⁰ = 0
    state  = layer.kernel_map(state)                 for every layer in forward order
    (NNGP, NTK) = (state.nngp, state.ntk)            a vector state (N1, N2) at the output

Each layer type owns its map (:mod:`ntk_lab.layers`), so a new layer touches one file. The
pair state is computed in tiles of input blocks (rows of x1 × columns of x2, only the upper
triangle when x2 is x1): a network that pools globally needs every position pair, a
(b1, b2, P, P) tensor per tile, and tiles keep it — and each layer's temporaries — inside
a budget and mostly in cache. A network without global pooling carries the same-position
terms only, (b1, b2, P). A token network (any layer marked ``channels_last``: attention,
LayerNorm, a token readout) takes sequences (N, T, d), or images cut by a leading
:class:`~ntk_lab.layers.tokens.PatchTokens`, and carries every token pair plus each input's
own (T, T) covariance.
"""

from __future__ import annotations

import math
from typing import Iterator, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from ntk_lab.layers.state import KernelState
from ntk_lab.layers.tokens import PatchTokens

DEFAULT_TILE_BYTES = 1 << 20
"""Bytes of one float64 pair tensor per tile. A tile's dozen live temporaries (the arc-cosine
dual's, the stencil's copies) then stay near the cache: measured on a 2-core EPYC (1 MiB L2
per core, 32 MiB shared L3), the stencil runs at ~4 ns per element on 2 MiB tiles and ~19 ns
on 32 MiB tiles; 16×16 GAP images (0.5 MiB per input pair) ran within 20% for 1–8 MiB tiles."""
FUSE_MIN_UPDATES = 2.5e9
"""Pair-position maps (input pairs × position pairs × layer maps) from which a full-state
computation on a CPU uses the compiled maps of :mod:`ntk_lab.layers.fused_pairs`: about 11 s of
eager work (a 28×28 depth-3 pooled CNN, eight layer maps, ran 2.6e9 of them in 11.5 s here,
32 images), against a compile of 3–8 s once per process, after which it runs ~1.6× faster."""
_LIVE_TEMPORARIES = 16
"""Pair-sized tensors alive at once inside a layer map (NNGP, NTK, their stencil copies and
the dual's intermediates), for the memory budget."""


def composed_kernels(
    layers: Sequence[nn.Module],
    x1: Tensor,
    x2: Optional[Tensor] = None,
    *,
    memory_budget_bytes: Optional[int] = None,
    tile_bytes: int = DEFAULT_TILE_BYTES,
    progress: bool = False,
    fused: Optional[bool] = None,
) -> Tuple[Tensor, Tensor]:
    """(NNGP, NTK) of the network whose kernel layers are ``layers``, float64 (N1, N2).

    Args:
        layers: modules with ``kernel_map(KernelState) -> KernelState``, forward order.
        x1: (N1, d) vectors or (N1, C, *S) feature maps; x2 likewise, or None for x1 (then
            only the upper triangle of tiles is computed and the result is exactly symmetric).
        memory_budget_bytes: cap on the working memory of one tile (None: no cap beyond
            ``tile_bytes``).
        tile_bytes: target bytes of one pair tensor of a tile.
        progress: a tqdm bar over the tiles (for computations of more than a few seconds).
        fused: use the compiled full-state maps (:mod:`ntk_lab.layers.fused_pairs`; CPU only);
            None: when the work is at least ``FUSE_MIN_UPDATES`` pair-position maps.

    Returns:
        (nngp, ntk): float64 (N1, N2) on x1's device.
    """
    symmetric = x2 is None
    x1 = x1.detach().to(torch.float64)
    x2 = x1 if symmetric else x2.detach().to(device=x1.device, dtype=torch.float64)
    layers = list(layers)
    if layers and isinstance(layers[0], PatchTokens):  # images -> tokens: a regrouping of inputs
        cut, layers = layers[0], layers[1:]
        x1, x2 = cut(x1), (None if symmetric else cut(x2))
        x2 = x1 if symmetric else x2
    tokens = any(getattr(layer, "channels_last", False) for layer in _flat(layers))
    full = tokens or any(getattr(layer, "mixes_positions", False) for layer in _flat(layers))
    if tokens and x1.ndim != 3:
        raise ValueError(f"a token network needs sequences (N, T, d), got inputs of shape {tuple(x1.shape)}")
    positions = (x1.shape[1] if tokens else math.prod(x1.shape[2:])) if x1.ndim > 2 else 1
    pair_bytes = 8 * (positions * positions if full else positions)
    budget = tile_bytes if memory_budget_bytes is None else min(
        tile_bytes, memory_budget_bytes // _LIVE_TEMPORARIES)
    side = max(1, int(math.isqrt(max(budget // pair_bytes, 1))))
    n1, n2 = len(x1), len(x2)
    nngp = torch.empty(n1, n2, dtype=torch.float64, device=x1.device)
    ntk = torch.empty_like(nngp)
    tiles = list(_tiles(n1, n2, symmetric, side))
    if fused is None:
        pairs = sum((r.stop - r.start) * (c.stop - c.start) for r, c, _ in tiles)
        fused = bool(full and not tokens and x1.device.type == "cpu"
                     and pairs * positions ** 2 * len(layers) >= FUSE_MIN_UPDATES)
    for rows, cols, on_diagonal in tqdm(tiles, desc="Θ_∞ tiles", disable=not progress, leave=False,
                                        dynamic_ncols=True):
        state = (KernelState.from_tokens(x1[rows], x2[cols]) if tokens
                 else KernelState.from_inputs(x1[rows], x2[cols], full))
        if fused:
            state = state.replace(fused=True)
        for layer in layers:
            state = layer.kernel_map(state)
        if not state.is_vector:
            raise ValueError("the network's last layer does not return vectors (add a readout)")
        s, t = state.nngp, state.ntk
        if on_diagonal:  # exact symmetry
            s, t = 0.5 * (s + s.T), 0.5 * (t + t.T)
        nngp[rows, cols], ntk[rows, cols] = s, t
        if symmetric and not on_diagonal:
            nngp[cols, rows], ntk[cols, rows] = s.T, t.T
    return nngp, ntk


def _flat(layers: Sequence[nn.Module]) -> Iterator[nn.Module]:
    for layer in layers:
        yield from layer.modules()


def _tiles(n1: int, n2: int, symmetric: bool, side: int) -> Iterator[Tuple[slice, slice, bool]]:
    """(rows, cols, on_diagonal) tiles of at most side × side inputs; for a symmetric kernel
    only those on or above the diagonal (the caller mirrors the rest)."""
    for r in range(0, n1, side):
        for c in range(r if symmetric else 0, n2, side):
            yield slice(r, min(r + side, n1)), slice(c, min(c + side, n2)), symmetric and r == c
