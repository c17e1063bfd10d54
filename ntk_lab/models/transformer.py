"""The transformer: a per-token embedding, pre-LN blocks of attention and an MLP, a readout.

    h = Dense(x)                                          per token, d -> width
    depth × [ h ← h + β·SelfAttention(LN(h));  h ← h + β·Dense(φ(Dense(LN(h)))) ]
    f = Dense(readout(LN(h)))                             readout: gap (mean over tokens) or flatten

Inputs are token sequences (N, T, d), or images (N, C, H, W) cut into non-overlapping p × p
patches (``patch_size``; T = HW/p², d = C·p², ViT-style, row-major). With ``layer_norm=False``
every LayerNorm is dropped. Every Dense and the attention's maps have σ_w, σ_b of the network
(the attention's key and query scale is ``qk_std``); the layers and their kernel maps are those
of :mod:`ntk_lab.layers` (neural-tangents' ``stax`` with ``GlobalSelfAttention`` and
``LayerNorm``), so Θ_∞ is their maps composed.

Parameterizations: the embedding is the input layer, the readout Dense the output layer, and
every other weight (attention's key, query, value and output maps, the MLP's two maps) a hidden
layer of :func:`~ntk_lab.layers.scales.layer_scales`; under ``mup`` the attention logits are
scaled by 1/n_k (μP's attention rule, Yang et al. 2022).
"""

from __future__ import annotations

import functools
from typing import Optional

import torch
from torch import Tensor, nn

from ntk_lab.layers import Dense, Nonlinearity, Residual
from ntk_lab.layers.dense import scaled_dense
from ntk_lab.layers.activations import Activation
from ntk_lab.layers.attention import SelfAttention, check_attention_settings
from ntk_lab.layers.layer_norm import LayerNorm
from ntk_lab.layers.tokens import TOKEN_READOUTS, PatchTokens, TokenReadout


class Transformer(nn.Module):
    """A pre-LN transformer of ``depth`` blocks of ``width`` channels (see the module docstring).

    Args:
        in_dim: d, the features per token (C·p² for images cut into p × p patches).
        width: channels n of the residual stream (and of the attention and MLP maps).
        depth: number of blocks (≥ 1).
        out_dim: outputs O.
        heads, qk_std, scaling, mechanism, pos_emb, pos_std: of every attention layer
            (:class:`~ntk_lab.layers.attention.SelfAttention`).
        activation: φ of the blocks' MLPs.
        parameterization, w_std, b_std: as for :class:`~ntk_lab.models.MLP`.
        layer_norm: pre-LN blocks and a final LN (True) or none.
        readout: ``gap`` or ``flatten`` (the readout's fan-in is then T·width).
        branch_scale: β, the scale of every residual branch.
        n_tokens: T; required for ``pos_emb="sum"`` and ``readout="flatten"``.
        patch_size: p, when the network takes images (N, C, H, W).
        seed: if given, parameters are drawn from a CPU generator seeded with it.

    Shapes: (N, T, in_dim) or (N, C, H, W) -> (N, out_dim); samples do not interact.
    """

    def __init__(self, in_dim: int, width: int, depth: int, *, out_dim: int = 1, heads: int = 1,
                 activation: str | Activation = "relu", parameterization: str = "ntk",
                 w_std: float = 1.0, b_std: float = 0.0, qk_std: float = 1.0,
                 scaling: str = "linear", mechanism: str = "softmax", layer_norm: bool = True,
                 pos_emb: str = "none", pos_std: float = 1.0, readout: str = "gap",
                 branch_scale: float = 1.0, n_tokens: Optional[int] = None,
                 patch_size: Optional[int] = None, seed: Optional[int] = None,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"):
        super().__init__()
        if min(in_dim, width, depth, out_dim) < 1:
            raise ValueError(f"Transformer needs in_dim, width, depth, out_dim >= 1, got "
                             f"{in_dim}, {width}, {depth}, {out_dim}")
        check_attention_settings(width, heads, scaling, mechanism, pos_emb, n_tokens)
        if readout not in TOKEN_READOUTS:
            raise ValueError(f"readout={readout!r} is invalid: allowed: {', '.join(TOKEN_READOUTS)}")
        if readout == "flatten" and not n_tokens:
            raise ValueError("readout='flatten' needs n_tokens: the readout's fan-in is T·width")
        self.in_dim, self.width, self.depth, self.out_dim = in_dim, width, depth, out_dim
        self.heads, self.readout, self.patch_size, self.n_tokens = heads, readout, patch_size, n_tokens
        self.parameterization = parameterization
        self.w_std, self.b_std, self.branch_scale = float(w_std), float(b_std), float(branch_scale)
        phi = Nonlinearity(activation)
        self.activation = phi.activation

        dense = functools.partial(scaled_dense, parameterization=parameterization, width=width,
                                  w_std=w_std, b_std=b_std)

        norm = (lambda: [LayerNorm(width)]) if layer_norm else (lambda: [])  # noqa: E731
        layers: list[nn.Module] = [PatchTokens(patch_size)] if patch_size else []
        layers.append(dense(in_dim, width, "input"))
        for _ in range(depth):
            attention = SelfAttention(width, width, heads=heads, scaling=scaling, mechanism=mechanism,
                                      qk_std=qk_std, w_std=w_std, b_std=b_std, pos_emb=pos_emb,
                                      pos_std=pos_std, n_tokens=n_tokens,
                                      parameterization=parameterization, network_width=width)
            layers.append(Residual(norm() + [attention], branch_scale))
            layers.append(Residual(norm() + [dense(width, width, "hidden"), phi,
                                             dense(width, width, "hidden")], branch_scale))
        layers += norm() + [TokenReadout(readout)]
        fan_in = width if readout == "gap" else width * int(n_tokens)
        layers.append(dense(fan_in, out_dim, "output"))
        self.layers = nn.Sequential(*layers)
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        for module in self.modules():  # forward order, float32 on the CPU
            if isinstance(module, (Dense, SelfAttention)) and not _inside_attention(self, module):
                module.reset_parameters(generator)
        self.to(dtype=dtype, device=device)

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim == 4 and not self.patch_size:
            raise ValueError("model=transformer on images needs model.patch_size (the patch side p)")
        return self.layers(x)

    def kernel_layers(self) -> list[nn.Module]:
        """The layers whose kernel maps compose to Θ_∞, in forward order."""
        return list(self.layers)


def _inside_attention(net: nn.Module, module: nn.Module) -> bool:
    """Whether ``module`` is one of a SelfAttention's own dense maps (initialized by it)."""
    return isinstance(module, Dense) and any(
        module in (a.key, a.query, a.value, a.out) for a in net.modules() if isinstance(a, SelfAttention))
