"""Multi-head self-attention over tokens: finite module and kernel map.

(a) ``SelfAttention`` on h (N, T, C_in), channels last, with neural-tangents'
    ``GlobalSelfAttention`` conventions (Hron et al. 2020, "Infinite attention"). For each of
    the H heads, with n_k key / query / value channels per head:

        scaling="linear" (keys and queries tied):  G_k = qk_std / (C_in·n_k) · K_k K_kᵀ
        scaling="sqrt"   (separate Q and K):       G_k = qk_std / (C_in·√n_k) · Q_k K_kᵀ
        K_k = h_pe W_K,k,  Q_k = h_pe W_Q,k,  V_k = h W_V,k      (W_·,k: C_in × n_k)
        A_k = mechanism(G_k)          softmax over the keys, identity, relu or abs  (T × T)
        out = w_std / √(n_k·H·C_in) · concat_k(A_k V_k) W_O + b_std·b,

    h_pe = h + pos_std·E with trained positional embeddings E (T, C_in) ~ N(0, 1) under
    ``pos_emb="sum"`` (keys and queries only), h_pe = h under ``"none"``. The key, query,
    value and output maps are :class:`~ntk_lab.layers.dense.Dense` layers acting per token,
    so the structured empirical NTK sees them as it sees any dense layer. Under ``mup`` the
    logits are scaled by 1/n_k in both scalings (μP's attention rule, Yang et al. 2022).
(b) kernel map, per pair of inputs (x, x') and tokens (t, t') (neural-tangents 0.6.5):

    linear scaling, any mechanism. As n_k → ∞ the logits become deterministic,
    G(x) = mechanism(qk_std·C̃(x)) with C̃(x) = C(x) + pos_std²·I the input's own (T, T)
    covariance (positional embeddings added), and with M(K) = G(x) K G(x')ᵀ

        Σ_out = w_std²·M(Σ) + b_std²,    Θ_out = w_std²·M(Θ) + b_std² + 2·w_std²·M(Σ)

    (the value and output weights each add w_std²·M(Σ); the keys' contribution vanishes).
    sqrt scaling, identity mechanism only, with Σ̃ = Σ + pos_std²·I, Θ̃ = Θ + pos_std²·I,
    ⟨A, B⟩ the sum over all token pairs and s² = qk_std²·w_std²:

        Σ_out = s²·⟨Σ̃, Σ⟩·Σ̃ + b_std²
        Θ_out = s²·(c·Σ̃ + ⟨Σ̃, Σ⟩·(Θ̃ + 4Σ̃)) + b_std²,
        c = 2⟨Σ, Θ⟩ without positional embeddings, ⟨Σ̃, Θ⟩ + ⟨Σ, Θ̃⟩ with them.

    Any other mechanism with sqrt scaling has no closed form (neural-tangents has none):
    :class:`~ntk_lab.layers.state.NoClosedForm`. The number of heads does not enter the limit.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor, nn

from ntk_lab.layers.dense import Dense
from ntk_lab.layers.scales import layer_scales
from ntk_lab.layers.state import KernelState, NoClosedForm

MECHANISMS = ("softmax", "identity", "relu", "abs")
SCALINGS = ("linear", "sqrt")
POS_EMBS = ("none", "sum")


def _mechanism(name: str, logits: Tensor) -> Tensor:
    if name == "softmax":
        return torch.softmax(logits, dim=-1)
    if name == "identity":
        return logits
    if name == "relu":
        return torch.relu(logits)
    return logits.abs()


class SelfAttention(nn.Module):
    """Self-attention of ``heads`` heads; (N, T, in_features) -> (N, T, width).

    Args:
        in_features: C_in, the channels of the input tokens.
        width: output channels (n_chan_out).
        heads: H ≥ 1.
        head_dim: n_k, key / query / value channels per head (default width // heads; the
            limit is the same for any).
        scaling: ``linear`` (tied keys and queries, 1/n_k logits) or ``sqrt`` (1/√n_k).
        mechanism: ``softmax``, ``identity``, ``relu`` or ``abs``.
        qk_std, w_std, b_std: the logit scale, the value–output scale, the output bias's.
        pos_emb: ``none`` or ``sum``; ``n_tokens`` T is then required.
        pos_std: the positional embeddings' scale.
        parameterization: ``ntk``, ``standard`` or ``mup`` for the four dense maps (all
            hidden-layer kind); ``network_width`` is μP's n (default ``width``).
    """

    mixes_positions = True
    channels_last = True

    def __init__(self, in_features: int, width: int, *, heads: int = 1, head_dim: Optional[int] = None,
                 scaling: str = "linear", mechanism: str = "softmax", qk_std: float = 1.0,
                 w_std: float = 1.0, b_std: float = 0.0, pos_emb: str = "none", pos_std: float = 1.0,
                 n_tokens: Optional[int] = None, parameterization: str = "ntk",
                 network_width: Optional[int] = None):
        super().__init__()
        check_attention_settings(width, heads, scaling, mechanism, pos_emb, n_tokens)
        self.in_features, self.width, self.heads = int(in_features), int(width), int(heads)
        self.head_dim = int(head_dim) if head_dim is not None else self.width // self.heads
        self.scaling, self.mechanism, self.pos_emb = scaling, mechanism, pos_emb
        self.qk_std, self.w_std, self.b_std = float(qk_std), float(w_std), float(b_std)
        self.pos_std, self.n_tokens = float(pos_std), n_tokens
        self.parameterization = parameterization
        n = network_width or self.width
        inner = self.heads * self.head_dim

        def dense(fan_in: int, units: int, sigma_w: float, sigma_b: float, bias: bool) -> Dense:
            return Dense(fan_in, units, layer_scales(parameterization, "hidden", fan_in, n, sigma_w, sigma_b),
                         bias=bias)

        root_qk = math.sqrt(self.qk_std)
        self.key = dense(self.in_features, inner, root_qk, 0.0, False)
        self.query = dense(self.in_features, inner, root_qk, 0.0, False) if scaling == "sqrt" else None
        self.value = dense(self.in_features, inner, 1.0, 0.0, False)
        self.out = dense(inner, self.width, self.w_std, self.b_std, True)
        if pos_emb == "sum":
            self.pos_embedding = nn.Parameter(torch.empty(int(n_tokens), self.in_features))
        else:
            self.register_parameter("pos_embedding", None)
        # 1/n_k (tied keys: the limit of K Kᵀ/n_k is deterministic; μP's rule) or 1/√n_k
        sqrt_logits = scaling == "sqrt" and parameterization != "mup"
        self.logit_scale = self.head_dim ** -0.5 if sqrt_logits else 1.0 / self.head_dim

    def reset_parameters(self, generator: Optional[torch.Generator] = None) -> None:
        for layer in (self.key, self.query, self.value, self.out):
            if layer is not None:
                layer.reset_parameters(generator)
        if self.pos_embedding is not None:
            with torch.no_grad():
                self.pos_embedding.normal_(0.0, 1.0, generator=generator)

    def forward(self, h: Tensor) -> Tensor:
        n, t, _ = h.shape
        h_pe = h
        if self.pos_embedding is not None:
            if t != self.pos_embedding.shape[0]:
                raise ValueError(f"SelfAttention(pos_emb='sum') was built for n_tokens="
                                 f"{self.pos_embedding.shape[0]} tokens, got {t}")
            h_pe = h + self.pos_std * self.pos_embedding
        split = lambda z: z.reshape(n, t, self.heads, self.head_dim).transpose(1, 2)  # noqa: E731
        keys = split(self.key(h_pe))                                   # (N, H, T, n_k)
        queries = keys if self.query is None else split(self.query(h_pe))
        logits = (queries @ keys.transpose(-1, -2)) * self.logit_scale  # (N, H, T, T)
        weights = _mechanism(self.mechanism, logits)
        heads = weights @ split(self.value(h))                         # (N, H, T, n_k)
        return self.out(heads.transpose(1, 2).reshape(n, t, self.heads * self.head_dim))

    # ------------------------------------------------------------------ kernel map
    def kernel_map(self, state: KernelState) -> KernelState:
        if state.cov1 is None or state.cov2 is None:
            raise ValueError("SelfAttention needs token inputs (N, T, C): its kernel map weighs "
                             "tokens by each input's own (T, T) covariance")
        if self.parameterization == "standard":
            raise NoClosedForm("SelfAttention under parameterization=standard: the infinite-width "
                               "NTK is derived for ntk (and mup) only")
        if self.scaling == "sqrt" and self.parameterization == "mup":
            raise NoClosedForm("SelfAttention(scaling='sqrt') under mup has 1/n_k logits with "
                               "untied keys and queries, which vanish at infinite width; no closed form here")
        if self.scaling == "linear":
            return self._linear_map(state)
        if self.mechanism != "identity":
            raise NoClosedForm(f"SelfAttention(scaling='sqrt', mechanism={self.mechanism!r}) has "
                               f"no closed-form infinite-width kernel (only identity does)")
        return self._sqrt_identity_map(state)

    def _pos_cov(self, like: Tensor) -> Tensor:
        """pos_std²·I over token pairs, shaped to broadcast against ``like`` (…, T, T)."""
        t = like.shape[-1]
        r = self.pos_std ** 2 if self.pos_emb == "sum" else 0.0
        return r * torch.eye(t, dtype=like.dtype, device=like.device)

    def _linear_map(self, state: KernelState) -> KernelState:
        g1 = _mechanism(self.mechanism, self.qk_std * (state.cov1 + self._pos_cov(state.cov1)))
        g2 = _mechanism(self.mechanism, self.qk_std * (state.cov2 + self._pos_cov(state.cov2)))
        w2, b2 = self.w_std ** 2, self.b_std ** 2
        mix = lambda k: torch.einsum("ats,absu,bvu->abtv", g1, k, g2)  # noqa: E731
        nngp_mixed = mix(state.nngp)
        ntk = b2 + 2.0 * w2 * nngp_mixed
        if not state.zero_ntk:  # on the data's state Θ = 0 and M(Θ) = 0
            ntk = ntk + w2 * mix(state.ntk)
        own = lambda g, cov: w2 * torch.einsum("ats,asu,avu->atv", g, cov, g) + b2  # noqa: E731
        return _with_own(state, w2 * nngp_mixed + b2, ntk, own(g1, state.cov1), own(g2, state.cov2))

    def _sqrt_identity_map(self, state: KernelState) -> KernelState:
        s2, b2 = (self.qk_std * self.w_std) ** 2, self.b_std ** 2
        pos = self._pos_cov(state.nngp)
        inner = lambda a, b: (a * b).sum((-2, -1), keepdim=True)  # noqa: E731  ⟨A, B⟩ over token pairs
        nngp_pe, ntk_pe = state.nngp + pos, state.ntk + pos
        dot12 = inner(nngp_pe, state.nngp)
        if self.pos_emb == "sum":
            c = inner(nngp_pe, state.ntk) + inner(state.nngp, ntk_pe)
        else:
            c = 2.0 * inner(nngp_pe, ntk_pe)
        nngp = s2 * dot12 * nngp_pe + b2
        ntk = s2 * (c * nngp_pe + dot12 * (ntk_pe + 4.0 * nngp_pe)) + b2
        own = lambda cov: s2 * inner(cov + self._pos_cov(cov), cov) * (cov + self._pos_cov(cov)) + b2  # noqa: E731
        return _with_own(state, nngp, ntk, own(state.cov1), own(state.cov2))

    def extra_repr(self) -> str:
        return (f"{self.in_features} -> {self.width}, heads={self.heads}, head_dim={self.head_dim}, "
                f"scaling={self.scaling}, mechanism={self.mechanism}, pos_emb={self.pos_emb}")


def _with_own(state: KernelState, nngp: Tensor, ntk: Tensor, cov1: Tensor, cov2: Tensor) -> KernelState:
    """The state after a layer that mixes tokens: new covariances, variances from their diagonals."""
    return state.replace(nngp=nngp, ntk=ntk, cov1=cov1, cov2=cov2,
                         var1=cov1.diagonal(dim1=-2, dim2=-1).clone(),
                         var2=cov2.diagonal(dim1=-2, dim2=-1).clone())


def check_attention_settings(width: int, heads: int, scaling: str, mechanism: str, pos_emb: str,
                             n_tokens: Optional[int]) -> None:
    """One-line ValueErrors for settings that cannot build an attention layer."""
    if isinstance(heads, bool) or not isinstance(heads, int) or heads < 1:
        raise ValueError(f"heads={heads!r} is invalid: an integer >= 1 is needed")
    if width % heads:
        raise ValueError(f"heads={heads} does not divide the width {width}: choose heads among the "
                         f"divisors of the width")
    if scaling not in SCALINGS:
        raise ValueError(f"scaling={scaling!r} is invalid: allowed: {', '.join(SCALINGS)}")
    if mechanism not in MECHANISMS:
        raise ValueError(f"mechanism={mechanism!r} is invalid: allowed: {', '.join(MECHANISMS)}")
    if pos_emb not in POS_EMBS:
        raise ValueError(f"pos_emb={pos_emb!r} is invalid: allowed: {', '.join(POS_EMBS)}")
    if pos_emb == "sum" and (n_tokens is None or n_tokens < 1):
        raise ValueError("pos_emb='sum' needs n_tokens (the number of tokens T)")
