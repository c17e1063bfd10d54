"""The convolutional network: ``depth`` conv layers, a readout, a dense output.

    h⁰ = x (N, C_in, H, W),  h^l = φ(Conv_l(h^{l-1}))  for l = 1…depth  (``width`` channels,
    stride 1, an odd k×k filter, ``same`` zero or ``circular`` padding),
    f = Dense(GAP(h^depth))  or  Dense(Flatten(h^depth)).

Conventions are neural-tangents' ``stax.serial([Conv(width, (k, k), padding=SAME|CIRCULAR),
φ] * depth, GlobalAvgPool() | Flatten(), Dense(out_dim))`` with the same σ_w, σ_b everywhere:
under ``ntk``, z = (σ_w/√(C_in·k²))·W∗h + σ_b·b; after ``flatten`` the readout's fan-in is
C·H·W. ``standard`` and ``mup`` follow the MLP's rules with channels counted as width
(:func:`ntk_lab.layers.scales.layer_scales`).
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from torch import Tensor, nn

from ntk_lab.layers.activations import Activation
from ntk_lab.layers import (
    Conv, Dense, Flatten, GlobalAvgPool, Nonlinearity, kernel_coefficients, layer_scales,
)

READOUTS = ("gap", "flatten")
PADDINGS = ("same", "circular")


class CNN(nn.Module):
    """``depth`` conv layers of ``width`` channels, then GAP or flatten, then a dense readout.

    Args:
        in_channels: C_in of the input images.
        width: channels n of every conv layer.
        depth: number of conv layers (≥ 1).
        out_dim: outputs O.
        activation: a name from :mod:`ntk_lab.layers.activations` or an ``Activation``.
        parameterization: ``ntk``, ``standard`` or ``mup``.
        w_std, b_std: σ_w, σ_b of every layer, the readout included.
        kernel_size: odd filter size k.
        padding: ``same`` (zeros) or ``circular``.
        readout: ``gap`` (global average pool) or ``flatten``.
        seed: if given, parameters are drawn from a CPU generator seeded with it (the same
            network on every device).
        spatial_shape: (H, W) of the inputs; required for ``flatten`` (the readout's fan-in
            is C·H·W), ignored for ``gap``.
        dtype, device: where the parameters live.

    Shapes: forward maps (N, C_in, H, W) -> (N, out_dim); samples do not interact.
    """

    def __init__(
        self,
        in_channels: int,
        width: int,
        depth: int,
        *,
        out_dim: int = 1,
        activation: str | Activation = "relu",
        parameterization: str = "ntk",
        w_std: float = 1.0,
        b_std: float = 0.0,
        kernel_size: int = 3,
        padding: str = "same",
        readout: str = "gap",
        seed: Optional[int] = None,
        spatial_shape: Optional[Sequence[int]] = None,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ):
        super().__init__()
        if min(in_channels, width, depth, out_dim) < 1:
            raise ValueError(f"CNN needs in_channels, width, depth, out_dim >= 1, got "
                             f"{in_channels}, {width}, {depth}, {out_dim}")
        if readout not in READOUTS:
            raise ValueError(f"unknown readout {readout!r}; known: {', '.join(READOUTS)}")
        if readout == "flatten" and (spatial_shape is None or len(spatial_shape) != 2):
            raise ValueError("readout='flatten' needs spatial_shape=(H, W): the readout's fan-in is C·H·W")
        self.in_channels, self.width, self.depth, self.out_dim = in_channels, width, depth, out_dim
        self.kernel_size, self.padding, self.readout = kernel_size, padding, readout
        self.spatial_shape = tuple(spatial_shape) if spatial_shape is not None else None
        self.parameterization = parameterization
        self.w_std, self.b_std = float(w_std), float(b_std)
        phi = Nonlinearity(activation)
        self.activation = phi.activation
        layers: list[nn.Module] = []
        channels = in_channels
        for i in range(depth):
            fan_in = channels * kernel_size ** 2
            kind = "input" if i == 0 else "hidden"
            layers += [Conv(channels, width, kernel_size,
                            layer_scales(parameterization, kind, fan_in, width, w_std, b_std),
                            kernel_coefficients(parameterization, fan_in, w_std, b_std),
                            padding=padding), phi]
            channels = width
        if readout == "gap":
            layers.append(GlobalAvgPool())
            fan_in = width
        else:
            layers.append(Flatten())
            fan_in = width * math.prod(self.spatial_shape)
        layers.append(Dense(fan_in, out_dim,
                            layer_scales(parameterization, "output", fan_in, width, w_std, b_std),
                            kernel_coefficients(parameterization, fan_in, w_std, b_std)))
        self.layers = nn.Sequential(*layers)
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        for layer in self.layers:  # forward order, float32 on the CPU: identical across devices
            if hasattr(layer, "reset_parameters"):
                layer.reset_parameters(generator)
        self.to(dtype=dtype, device=device)

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)

    def kernel_layers(self) -> list[nn.Module]:
        """The layers whose kernel maps compose to Θ_∞, in forward order."""
        return list(self.layers)
