"""The residual block: finite module and kernel map.

(a) ``Residual``: h ↦ h + β · branch(h), ``branch`` a sequence of layers (ResMLP: φ then Dense).
(b) kernel map (neural-tangents ``stax.serial(FanOut(2), parallel(branch, Identity),
    FanInSum)`` with the branch scaled by β): in the infinite-width limit the branch's output is
    a Gaussian process independent of its input's (its last weights are independent with mean
    zero), so covariances and NTKs add:
        Σ_out = Σ + β²·Σ_branch,   Θ_out = Θ + β²·Θ_branch,   var_out = var + β²·var_branch
    (and the token sequences' own covariances likewise),
    where (Σ_branch, Θ_branch) is the branch's layer maps composed on the block's input state.
The block has no parameters of its own; its branch's layers carry their own factors.
"""

from __future__ import annotations

from torch import Tensor, nn

from ntk_lab.layers.state import KernelState


class Residual(nn.Module):
    """h + β·branch(h); shapes kept.

    Args:
        branch: the layers of the branch, applied in order (each with a ``kernel_map``).
        beta: the branch scale β (``branch_scale``).
    """

    def __init__(self, branch: list[nn.Module], beta: float = 1.0):
        super().__init__()
        self.branch = nn.Sequential(*branch)
        self.beta = float(beta)

    def forward(self, h: Tensor) -> Tensor:
        return h + self.beta * self.branch(h)

    def kernel_map(self, state: KernelState) -> KernelState:
        inner = state
        for layer in self.branch:
            inner = layer.kernel_map(inner)
        b2 = self.beta ** 2
        add = lambda a, b: None if a is None or b is None else a + b2 * b  # noqa: E731
        return state.replace(nngp=state.nngp + b2 * inner.nngp, ntk=state.ntk + b2 * inner.ntk,
                             var1=add(state.var1, inner.var1), var2=add(state.var2, inner.var2),
                             cov1=add(state.cov1, inner.cov1), cov2=add(state.cov2, inner.cov2))

    def extra_repr(self) -> str:
        return f"beta={self.beta:g}"
