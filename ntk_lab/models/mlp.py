"""The fully connected network (docs/conventions.md): ``depth`` hidden Dense layers and a readout.

Every layer computes ``z = weight_multiplier · W h + bias_multiplier · b`` with trainable
``W`` (out, in) and ``b`` (out,) drawn from N(0, init_std²); the parameterization only sets
the four numbers per layer (:func:`ntk_lab.layers.scales.layer_scales`). The layers are
:class:`ntk_lab.layers.Dense`; Θ_∞ composes their kernel maps with the nonlinearity's
(:meth:`MLP.kernel_layers`).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from ntk_lab.layers.activations import Activation, get_activation
from ntk_lab.layers import Dense, Nonlinearity, kernel_coefficients, layer_scales


class MLP(nn.Module):
    """``depth`` hidden layers of ``width`` units and a linear readout (docs/conventions.md).

    h⁰ = x, z^l = layer_l(h^{l-1}), h^l = φ(z^l), f = z^{depth+1}.

    Args:
        in_dim: input dimension d.
        width: hidden width n.
        depth: number of hidden layers (≥ 1).
        out_dim: number of outputs O.
        activation: a name from :mod:`ntk_lab.layers.activations` or an ``Activation``.
        parameterization: ``"ntk"`` (default), ``"standard"`` or ``"mup"``.
        w_std, b_std: σ_w, σ_b for every layer, the first and the readout included.
        seed: if given, the initial parameters are drawn from a generator seeded with it
            (on the CPU, so the same seed gives the same network on every device).
        dtype, device: where the parameters live.

    Shapes: forward maps (N, in_dim) -> (N, out_dim); samples do not interact.
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
        seed: Optional[int] = None,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ):
        super().__init__()
        if depth < 1 or width < 1 or in_dim < 1 or out_dim < 1:
            raise ValueError(f"MLP needs in_dim, width, depth, out_dim >= 1, got "
                             f"{in_dim}, {width}, {depth}, {out_dim}")
        self.in_dim, self.width, self.depth, self.out_dim = in_dim, width, depth, out_dim
        self.activation = get_activation(activation)
        self.parameterization = parameterization
        self.w_std, self.b_std = float(w_std), float(b_std)
        dims = [in_dim] + [width] * depth + [out_dim]
        kinds = ["input"] + ["hidden"] * (depth - 1) + ["output"]
        self.layers = nn.ModuleList(
            Dense(dims[i], dims[i + 1],
                  layer_scales(parameterization, kinds[i], dims[i], width, w_std, b_std),
                  kernel_coefficients(parameterization, dims[i], w_std, b_std))
            for i in range(depth + 1)
        )
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        for layer in self.layers:  # drawn in float32 on the CPU: identical across devices
            layer.reset_parameters(generator)
        self.to(dtype=dtype, device=device)

    def forward(self, x: Tensor) -> Tensor:
        h = x
        for layer in self.layers[:-1]:
            h = self.activation.fn(layer(h))
        return self.layers[-1](h)

    def kernel_layers(self) -> list[nn.Module]:
        """The layers whose kernel maps compose to Θ_∞: Dense, φ, Dense, φ, …, Dense."""
        phi = Nonlinearity(self.activation)
        out: list[nn.Module] = []
        for layer in self.layers[:-1]:
            out += [layer, phi]
        return out + [self.layers[-1]]
