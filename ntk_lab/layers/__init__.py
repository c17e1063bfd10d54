"""Layers that know their kernels (docs/architecture.md, *Layers*).

One file per layer type, each holding (a) the finite torch module with the parameterization's
scaling, (b) its infinite-width kernel map ``kernel_map(KernelState) -> KernelState`` and,
for layers with parameters, (c) the factors the structured empirical NTK needs:

    dense.py         Dense (and torch.nn.Linear's factors)
    conv.py          Conv, 1-D and 2-D (and torch.nn.Conv1d / Conv2d factors)
    nonlinearity.py  Nonlinearity (reads ntk_lab.layers.activations through gaussian.py)
    pooling.py       GlobalAvgPool, Flatten
    residual.py      Residual
    attention.py     SelfAttention over tokens (N, T, C) (its maps are Dense layers)
    layer_norm.py    LayerNorm over channels
    tokens.py        PatchTokens (images -> tokens), TokenReadout (gap / flatten over tokens)

``state.py`` is the kernel state, ``scales.py`` the parameterizations, ``factors.py`` the
registry of structured factors, ``patches.py`` a convolution's input patches gathered lazily
for them, ``gaussian.py`` the Gaussian expectations of activations.
"""

from ntk_lab.layers.attention import SelfAttention
from ntk_lab.layers.conv import Conv
from ntk_lab.layers.dense import Dense
from ntk_lab.layers.factors import AffineFactors, affine_factors, has_factors
from ntk_lab.layers.layer_norm import LayerNorm
from ntk_lab.layers.nonlinearity import Nonlinearity
from ntk_lab.layers.pooling import Flatten, GlobalAvgPool
from ntk_lab.layers.residual import Residual
from ntk_lab.layers.scales import (
    PARAMETERIZATIONS, KernelCoefficients, LayerScales, kernel_coefficients, layer_scales,
)
from ntk_lab.layers.state import KernelState, NoClosedForm
from ntk_lab.layers.tokens import PatchTokens, TokenReadout

__all__ = [
    "AffineFactors", "Conv", "Dense", "Flatten", "GlobalAvgPool", "KernelCoefficients",
    "KernelState", "LayerNorm", "LayerScales", "NoClosedForm", "Nonlinearity", "PARAMETERIZATIONS",
    "PatchTokens", "Residual", "SelfAttention", "TokenReadout",
    "affine_factors", "has_factors", "kernel_coefficients", "layer_scales",
]
