"""Token layers: images cut into patch tokens, and the readout of a token sequence.

(a) ``PatchTokens(patch_size)``: images (N, C, H, W) -> tokens (N, T, C·p²), non-overlapping
    p × p patches in row-major order (T = (H/p)·(W/p)), each patch's values in (C, p, p)
    order — a ViT's patch cut, before its (trainable) embedding.
    ``TokenReadout("gap" | "flatten")``: (N, T, C) -> (N, C), the mean over tokens, or
    (N, T·C), every token's channels side by side (a following dense layer has fan-in T·C).
(b) kernel maps: cutting patches regroups the input's coordinates, so the data's covariance
    per token pair is Σ⁰(x, t; x', t') = ⟨patch_t(x), patch_t'(x')⟩ / (C·p²), which the
    token state is built from directly (:meth:`KernelState.from_tokens`); the readouts are
    neural-tangents' ``GlobalAvgPool`` and ``Flatten`` over the token axis:
        gap:      Σ_out = T^(-2) Σ_{t,t'} Σ(t, t'),     Θ likewise;
        flatten:  Σ_out = T^(-1) Σ_t Σ(t, t),           Θ likewise.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ntk_lab.layers.state import KernelState

TOKEN_READOUTS = ("gap", "flatten")


class PatchTokens(nn.Module):
    """(N, C, H, W) -> (N, (H/p)·(W/p), C·p²); p must divide H and W."""

    def __init__(self, patch_size: int):
        super().__init__()
        self.patch_size = int(patch_size)

    def forward(self, x: Tensor) -> Tensor:
        return patchify(x, self.patch_size)

    def extra_repr(self) -> str:
        return f"patch_size={self.patch_size}"


def patchify(x: Tensor, p: int) -> Tensor:
    """Non-overlapping p × p patches of images x (N, C, H, W), row-major: (N, T, C·p²)."""
    n, c, h, w = x.shape
    if h % p or w % p:
        raise ValueError(f"patch_size={p} does not divide the image size {h}×{w}: choose a "
                         f"divisor of both")
    patches = x.reshape(n, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5)
    return patches.reshape(n, (h // p) * (w // p), c * p * p)


class TokenReadout(nn.Module):
    """``gap``: mean over tokens (N, T, C) -> (N, C); ``flatten``: (N, T, C) -> (N, T·C)."""

    mixes_positions = True
    channels_last = True

    def __init__(self, mode: str = "gap"):
        super().__init__()
        if mode not in TOKEN_READOUTS:
            raise ValueError(f"readout={mode!r} is invalid: allowed: {', '.join(TOKEN_READOUTS)}")
        self.mode = mode

    def forward(self, h: Tensor) -> Tensor:
        return h.mean(1) if self.mode == "gap" else h.flatten(1)

    def kernel_map(self, state: KernelState) -> KernelState:
        if state.is_vector:
            raise ValueError("TokenReadout needs a token sequence (N, T, C)")
        nngp, ntk = state.nngp, state.ntk
        if self.mode == "flatten":  # same-token terms only
            nngp = nngp.diagonal(dim1=-2, dim2=-1)
            ntk = ntk.diagonal(dim1=-2, dim2=-1)
            mean_var = lambda v: None if v is None else v.mean(-1)  # noqa: E731
            return KernelState(nngp.mean(-1), ntk.mean(-1), mean_var(state.var1), mean_var(state.var2))
        own = lambda c: None if c is None else c.mean((-2, -1))  # noqa: E731
        return KernelState(nngp.mean((-2, -1)), ntk.mean((-2, -1)), own(state.cov1), own(state.cov2))

    def extra_repr(self) -> str:
        return self.mode


def tokens_of(x: Tensor, patch_size: int | None) -> Tensor:
    """The token sequences a token network sees: x itself when (N, T, d), its patches when an
    image batch (N, C, H, W) and a patch size is given."""
    if x.ndim == 4 and patch_size:
        return patchify(x, patch_size)
    if x.ndim != 3:
        raise ValueError(f"a token network needs sequences (N, T, d) or images with a patch size, "
                         f"got inputs of shape {tuple(x.shape)}")
    return x
