"""What the structured empirical NTK needs from an affine layer (docs/architecture.md, *Layers*, part (c)).

For an affine layer z = m_W·(W ⋆ h) + m_b·b with output sensitivities δ_o = ∂f_o/∂z, the
per-sample gradient is a sum over output positions p of an outer product (Novak,
Sohl-Dickstein & Schoenholz 2022, "Fast Finite Width Neural Tangent Kernel"):

    ∂f_o/∂W = m_W · Σ_p δ_o(p) ⊗ u(p),        ∂f_o/∂b = m_b · Σ_p δ_o(p),

where u(p) is the input a dense layer reads (one position) or the unfolded input patch a
convolution reads at p. Each layer file registers, for its module types, a function that
turns the layer's captured input and output sensitivities into :class:`AffineFactors`; the
kernel arithmetic is in :mod:`ntk_lab.kernels.structured`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional, Union

from torch import Tensor, nn

from ntk_lab.layers.patches import ConvPatches

FactorFn = Callable[[nn.Module, Tensor, Tensor], "AffineFactors"]


@dataclass
class AffineFactors:
    """One affine layer's structured-NTK factors on a batch of N samples.

    Attributes:
        inputs: u, (N, P, F) — the inputs (dense: P = positions of any extra dims, usually
            1; F = in_features) — or, for a convolution, its :class:`ConvPatches` (P output
            positions, F = ∏k·C_in), gathered lazily.
        delta: (N, O, P, C) — ∂f_o/∂z at each output position, C output units/channels.
        weight_multiplier: m_W.
        bias_multiplier: m_b, or None for a layer without a bias.
        weight_name, bias_name: the parameters' names inside the module.
    """

    inputs: Union[Tensor, ConvPatches]
    delta: Tensor
    weight_multiplier: float
    bias_multiplier: Optional[float]
    weight_name: str = "weight"
    bias_name: Optional[str] = "bias"
    _u: Optional[Tensor] = field(default=None, repr=False, compare=False)

    @property
    def u(self) -> Tensor:
        """The inputs as one (N, P, F) tensor (patches materialized once, then kept)."""
        if isinstance(self.inputs, Tensor):
            return self.inputs
        if self._u is None:
            self._u = self.inputs.materialize()
        return self._u

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(N, P, F) without materializing patches."""
        return tuple(self.inputs.shape)

    @property
    def feature_unit(self) -> int:
        """The granularity of :meth:`columns`: C_in for lazy patches (whole kernel offsets),
        else 1."""
        return self.inputs.channels if isinstance(self.inputs, ConvPatches) and self._u is None else 1

    def columns(self, start: int, stop: int) -> Tensor:
        """Features [start, stop) of u, (N, P, stop − start); gathered from lazy patches
        (start and stop multiples of :attr:`feature_unit`), else a view."""
        if isinstance(self.inputs, ConvPatches) and self._u is None:
            return self.inputs.columns(start, stop)
        return self.u[:, :, start:stop]

    def rows(self, rows: slice) -> "AffineFactors":
        """The factors of samples ``rows``."""
        inputs = self.inputs[rows] if isinstance(self.inputs, Tensor) else self.inputs.rows(rows)
        return AffineFactors(inputs, self.delta[rows], self.weight_multiplier, self.bias_multiplier,
                             self.weight_name, self.bias_name)


_REGISTRY: dict[type, tuple[FactorFn, Callable[[nn.Module], bool]]] = {}


def register_factors(*types: type, supports: Callable[[nn.Module], bool] = lambda m: True):
    """Decorator: ``fn(module, h_in, delta_out) -> AffineFactors`` for these module types;
    ``supports(module)`` rules out configurations the factorization does not cover."""

    def wrap(fn: FactorFn) -> FactorFn:
        for t in types:
            _REGISTRY[t] = (fn, supports)
        return fn

    return wrap


def has_factors(module: nn.Module) -> bool:
    """Whether the structured NTK knows this module (its exact type, with a supported setup)."""
    entry = _REGISTRY.get(type(module))
    return entry is not None and entry[1](module)


def affine_factors(module: nn.Module, h: Tensor, delta: Tensor) -> AffineFactors:
    """The factors of a known module from its input h (N, …) and δ (N, O, *output shape)."""
    return _REGISTRY[type(module)][0](module, h, delta)
