"""The convolution: finite module, kernel map, structured-NTK factors.

(a) ``Conv``: z = m_W · (W ∗ h) + m_b · b, stride 1, an odd k×k (or k) filter, ``same`` (zero)
    or ``circular`` padding; fan_in = C_in·k^d. Under ``ntk``: z = (σ_w/√(C_in k^d))·W∗h + σ_b b.
(b) kernel map (Novak et al. 2019; Arora et al. 2019, CNTK; neural-tangents ``stax.Conv``):
    with A the mean over the k^d stencil offsets o applied to both positions at once,

        (A K)(p, p') = k^(-d) Σ_o K(p + o, p' + o)       (terms outside the image are 0 for
                                                           ``same``, wrap for ``circular``),
        Σ_out = v_w·A(Σ_in) + v_b,   Θ_out = g_w·A(Σ_in) + g_b + v_w·A(Θ_in).

    A is separable over the spatial axes; on the same-position layout it is a plain k^d
    average pool over positions (zero padding counted), on the full (P, P) layout a shift of
    both positions together. No (P, P) stencil matrix is ever formed.
(c) structured factors: u(p) = the input patch read at output position p (channels-last,
    gathered lazily: :mod:`ntk_lab.layers.patches`), δ(p) = ∂f/∂z(p) — for ``Conv`` and for
    ``torch.nn.Conv1d`` / ``Conv2d`` (any stride, dilation, padding and padding mode; groups 1).
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ntk_lab.layers.dense import _require_coefficients
from ntk_lab.layers import fused_pairs
from ntk_lab.layers.factors import AffineFactors, register_factors
from ntk_lab.layers.patches import ConvPatches
from ntk_lab.layers.scales import KernelCoefficients, LayerScales
from ntk_lab.layers.state import KernelState

PADDINGS = ("same", "circular")


class Conv(nn.Module):
    """A stride-1 convolution with an odd filter in 1 or 2 spatial dims.

    Args:
        in_channels, out_channels: C_in, C_out.
        kernel_size: k (odd), the same along every spatial axis.
        scales: init stds and multipliers for fan_in = C_in·k^d
            (:func:`~ntk_lab.layers.scales.layer_scales`).
        coefficients: kernel-map coefficients, or None (then ``kernel_map`` raises).
        padding: ``same`` (zeros) or ``circular``.
        spatial_dims: d = 1 (N, C, L) or 2 (N, C, H, W).

    Shapes: (N, C_in, *S) -> (N, C_out, *S).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, scales: LayerScales,
                 coefficients: Optional[KernelCoefficients] = None, *, padding: str = "same",
                 spatial_dims: int = 2):
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be an odd integer >= 1, got {kernel_size!r}")
        if padding not in PADDINGS:
            raise ValueError(f"unknown padding {padding!r}; known: {', '.join(PADDINGS)}")
        if spatial_dims not in (1, 2):
            raise ValueError(f"spatial_dims must be 1 or 2, got {spatial_dims!r}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.padding, self.spatial_dims = kernel_size, padding, spatial_dims
        self.scales = scales
        self.coefficients = coefficients
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, *(kernel_size,) * spatial_dims))
        self.bias = nn.Parameter(torch.empty(out_channels))

    @property
    def fan_in(self) -> int:
        return self.in_channels * self.kernel_size ** self.spatial_dims

    @property
    def weight_multiplier(self) -> float:
        return self.scales.weight_multiplier

    @property
    def bias_multiplier(self) -> float:
        return self.scales.bias_multiplier

    def reset_parameters(self, generator: Optional[torch.Generator] = None) -> None:
        with torch.no_grad():
            self.weight.normal_(0.0, 1.0, generator=generator).mul_(self.scales.weight_init_std)
            self.bias.normal_(0.0, 1.0, generator=generator).mul_(self.scales.bias_init_std)

    def padded(self, h: Tensor) -> Tensor:
        """h with the circular border added (``same`` pads inside the convolution)."""
        if self.padding != "circular":
            return h
        r = self.kernel_size // 2
        return F.pad(h, (r, r) * self.spatial_dims, mode="circular")

    def forward(self, h: Tensor) -> Tensor:
        conv = F.conv2d if self.spatial_dims == 2 else F.conv1d
        inner_pad = self.kernel_size // 2 if self.padding == "same" else 0
        z = conv(self.padded(h), self.weight, padding=inner_pad) * self.scales.weight_multiplier
        return z + (self.bias * self.scales.bias_multiplier).reshape(-1, *(1,) * self.spatial_dims)

    def kernel_map(self, state: KernelState) -> KernelState:
        """Σ_out = v_w A(Σ) + v_b, Θ_out = g_w A(Σ) + g_b + v_w A(Θ) (module docstring)."""
        c = _require_coefficients(self)
        if len(state.spatial) != self.spatial_dims:
            raise ValueError(f"a {self.spatial_dims}-D convolution needs inputs with "
                             f"{self.spatial_dims} spatial dims, got spatial shape {state.spatial}")
        first, second = state.pair_dims()
        axes = [tuple(sorted({a, b})) for a, b in zip(first, second)]
        circular, k = self.padding == "circular", self.kernel_size
        scale = 1.0 / k ** self.spatial_dims  # A = scale · stencil sum, folded into the coefficients
        # Σ_out = v_w·A(Σ) + v_b. Θ_out = v_w·A(Θ) + g_w·A(Σ) + g_b, and g_w·A(Σ) is
        # (g_w/v_w)·(Σ_out − v_b): one stencil per tensor, the scales folded into its first pass.
        fused = None
        if state.fused and state.full and not circular and state.nngp.device.type == "cpu":
            fused = fused_pairs.conv_pair_map(state.nngp, None if state.zero_ntk else state.ntk,
                                              state.spatial, k, c.v_w * scale, c.v_b, c.g_w * scale, c.g_b)
        if fused is not None:
            nngp, ntk = fused
        elif c.v_w != 0.0:
            raw = stencil_sum(state.nngp, axes, k, circular, c.v_w * scale)   # v_w·A(Σ)
            if state.zero_ntk:  # the first layer: A(Θ) = 0
                ntk = torch.mul(raw, c.g_w / c.v_w).add_(c.g_b)
            else:
                ntk = stencil_sum(state.ntk, axes, k, circular, c.v_w * scale, c.g_b)  # v_w·A(Θ) + g_b
                ntk.add_(raw, alpha=c.g_w / c.v_w)
            nngp = raw.add_(c.v_b)
        else:  # σ_w = 0: Σ_out = v_b, Θ_out = g_w·A(Σ) + g_b
            ntk = stencil_sum(state.nngp, axes, k, circular, c.g_w * scale, c.g_b)
            nngp = torch.full_like(ntk, c.v_b)
        var_axes = [(1 + i,) for i in range(self.spatial_dims)]

        def var_map(v: Optional[Tensor]) -> Optional[Tensor]:
            if v is None:
                return None
            return stencil_sum(v, var_axes, k, circular, c.v_w * scale).add_(c.v_b)

        return state.replace(nngp=nngp, ntk=ntk, var1=var_map(state.var1), var2=var_map(state.var2))

    def extra_repr(self) -> str:
        return (f"{self.in_channels} -> {self.out_channels}, k={self.kernel_size}, "
                f"padding={self.padding}, W_mult={self.weight_multiplier:.4g}")


def stencil_mean(t: Tensor, axes: Sequence[tuple[int, ...]], k: int, circular: bool) -> Tensor:
    """k^(-len(axes)) Σ_o t[… i + o …], the offsets o ∈ [−k//2, k//2] per spatial axis.

    Args:
        t: any tensor.
        axes: one tuple per spatial axis: the tensor dims that shift together (one dim for
            same-position terms, two — p and p' — for the full pair layout).
        k: the odd filter size.
        circular: wrap around (circular padding); else a term whose index leaves [0, n) is 0.

    Returns:
        A new tensor of t's shape.
    """
    return stencil_sum(t, axes, k, circular).div_(k ** len(axes))


def stencil_sum(t: Tensor, axes: Sequence[tuple[int, ...]], k: int, circular: bool,
                scale: float = 1.0, shift: float = 0.0) -> Tensor:
    """scale · Σ_o t[… i + o …] + shift (no division by k^d), as :func:`stencil_mean`;
    separable, one axis at a time, each a copy plus 2·(k//2) in-place shifted adds on strided
    views (no padding copies). ``scale`` rides on the first axis's copy and adds, ``shift`` on
    the last axis's copy (its adds read the shift-free tensor): neither costs a pass."""
    r = k // 2
    if not axes:
        return torch.mul(t, scale).add_(shift)
    for index, dims in enumerate(axes):
        c = scale if index == 0 else 1.0
        last = index == len(axes) - 1
        n = t.shape[dims[0]]
        if c != 1.0:
            out = torch.mul(t, c).add_(shift) if last and shift else torch.mul(t, c)
        else:
            out = torch.add(t, shift) if last and shift else t.clone()
        for o in range(1, r + 1):
            if circular:
                out.add_(torch.roll(t, shifts=(o,) * len(dims), dims=dims), alpha=c)
                out.add_(torch.roll(t, shifts=(-o,) * len(dims), dims=dims), alpha=c)
            elif o < n:
                low, high = _window(t.ndim, dims, 0, n - o), _window(t.ndim, dims, o, n)
                out[low].add_(t[high], alpha=c)   # out[i] += c·t[i + o]
                out[high].add_(t[low], alpha=c)   # out[i] += c·t[i − o]
        t = out
    return t


def _window(ndim: int, dims: tuple[int, ...], start: int, stop: int) -> tuple:
    index = [slice(None)] * ndim
    for d in dims:
        index[d] = slice(start, stop)
    return tuple(index)


# --------------------------------------------------------------------------- structured factors
def _supports_torch_conv(module: nn.Module) -> bool:
    return module.groups == 1


@register_factors(Conv, nn.Conv1d, nn.Conv2d, supports=lambda m: isinstance(m, Conv) or _supports_torch_conv(m))
def conv_factors(module: nn.Module, h: Tensor, delta: Tensor) -> AffineFactors:
    """u = unfolded patches (N, P, ∏k·C_in), δ (N, O, C_out, *S_out) -> (N, O, P, C_out)."""
    n, out = h.shape[0], delta.shape[1]
    if isinstance(module, Conv):
        r = module.kernel_size // 2
        pads = (r, r) * module.spatial_dims
        mode = "circular" if module.padding == "circular" else "zeros"
        kernel = (module.kernel_size,) * module.spatial_dims
        stride = dilation = (1,) * module.spatial_dims
        m_w, m_b = module.weight_multiplier, module.bias_multiplier
    else:
        pads = tuple(module._reversed_padding_repeated_twice)  # (left, right) per dim, last dim first
        mode = module.padding_mode
        kernel, stride, dilation = module.kernel_size, module.stride, module.dilation
        m_w, m_b = 1.0, (1.0 if module.bias is not None else None)
    u = ConvPatches(h, kernel, stride, dilation, pads, mode)  # (N, P, F), gathered lazily
    d = delta.reshape(n, out, delta.shape[2], -1).transpose(2, 3)  # (N, O, P, C_out)
    return AffineFactors(u, d, m_w, m_b, "weight", "bias" if m_b is not None else None)
