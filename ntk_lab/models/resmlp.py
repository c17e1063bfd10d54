"""The residual MLP.

    h¹ = Dense(x),   h^{l+1} = h^l + β·Dense(φ(h^l))  for l = 1…depth,   f = Dense(φ(h^{depth+1})),

β = ``branch_scale``; the same σ_w, σ_b in every Dense layer. This is neural-tangents'
``stax.serial(Dense(width), [serial(FanOut(2), parallel(serial(φ, Dense(width), β·),
Identity()), FanInSum())] * depth, φ, Dense(out_dim))``.
"""

from __future__ import annotations

import functools
from typing import Optional

import torch
from torch import Tensor, nn

from ntk_lab.layers.activations import Activation
from ntk_lab.layers import Dense, Nonlinearity, Residual
from ntk_lab.layers.dense import scaled_dense


class ResMLP(nn.Module):
    """A residual MLP of ``depth`` blocks h ↦ h + β·Dense(φ(h)) of ``width`` units.

    Args:
        in_dim: input dimension d.
        width: hidden width n.
        depth: number of residual blocks (≥ 1).
        out_dim: outputs O.
        activation, parameterization, w_std, b_std: as for :class:`~ntk_lab.models.MLP`.
        branch_scale: β.
        seed: if given, parameters are drawn from a CPU generator seeded with it.
        dtype, device: where the parameters live.

    Shapes: (N, in_dim) -> (N, out_dim); samples do not interact.
    """

    def __init__(
        self,
        in_dim: int,
        width: int,
        depth: int,
        *,
        out_dim: int = 1,
        activation: str | Activation = "relu",
        parameterization: str = "ntk",
        w_std: float = 1.0,
        b_std: float = 0.0,
        branch_scale: float = 1.0,
        seed: Optional[int] = None,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ):
        super().__init__()
        if min(in_dim, width, depth, out_dim) < 1:
            raise ValueError(f"ResMLP needs in_dim, width, depth, out_dim >= 1, got "
                             f"{in_dim}, {width}, {depth}, {out_dim}")
        self.in_dim, self.width, self.depth, self.out_dim = in_dim, width, depth, out_dim
        self.parameterization = parameterization
        self.w_std, self.b_std, self.branch_scale = float(w_std), float(b_std), float(branch_scale)
        phi = Nonlinearity(activation)
        self.activation = phi.activation

        dense = functools.partial(scaled_dense, parameterization=parameterization, width=width,
                                  w_std=w_std, b_std=b_std)

        self.layers = nn.Sequential(
            dense(in_dim, width, "input"),
            *[Residual([phi, dense(width, width, "hidden")], branch_scale) for _ in range(depth)],
            phi,
            dense(width, out_dim, "output"),
        )
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        for module in self.modules():  # forward order, float32 on the CPU
            if isinstance(module, Dense):
                module.reset_parameters(generator)
        self.to(dtype=dtype, device=device)

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)

    def kernel_layers(self) -> list[nn.Module]:
        """The layers whose kernel maps compose to Θ_∞, in forward order."""
        return list(self.layers)
