"""The one definition of a network's layers: which parameters form a layer, and, for the
built-in networks, which layers' kernel maps compose to Θ_∞.

A *layer* is a module that owns trainable parameters directly (the weight and bias of a Dense
or Conv layer; the affine parameters of a norm layer). Modules whose parameters are all frozen
(the θ₀ copy inside a centered :class:`~ntk_lab.models.ScaledOutput`) are not layers. The
per-layer metric columns (``param_change_layer{i}``, ``kappa_layer{i}``), the per-layer
kernels, the μP learning rates and the forward hooks all use these functions.
"""

from __future__ import annotations

from torch import nn

from ntk_lab.models.wrappers import ScaledOutput


def trainable_layers(model: nn.Module) -> list[nn.Module]:
    """Modules that own at least one trainable parameter directly, in registration order."""
    return [m for m in model.modules()
            if any(p.requires_grad for p in m.parameters(recurse=False))]


def parameter_layers(model: nn.Module) -> list[list[str]]:
    """For each parameterized layer, the names of its trainable parameters, forward order.

    A layer is a module that owns trainable parameters directly (weight and bias of a Dense
    or Conv layer; the affine parameters of a norm layer). Built-in networks register their
    layers in forward order; for other modules this is registration order, which is forward
    order for the usual ``__init__`` written top to bottom. Frozen parameters (the initial
    copy inside :class:`~ntk_lab.models.ScaledOutput`) are left out. Names are those of
    ``model.named_parameters()``, so ``..._layer{i}`` columns use i = position + 1.
    """
    groups: list[list[str]] = []
    seen: set[int] = set()
    for prefix, module in model.named_modules():
        names = []
        for name, p in module.named_parameters(recurse=False):
            if p.requires_grad and id(p) not in seen:
                seen.add(id(p))
                names.append(f"{prefix}.{name}" if prefix else name)
        if names:
            groups.append(names)
    return groups


def kernel_layers(model: nn.Module) -> list[nn.Module]:
    """The layers of a built-in network whose kernel maps compose to its Θ_∞.

    Raises:
        ValueError: the module has no known infinite-width limit (the message says why);
            this includes a :class:`ScaledOutput` (scale its network's kernels by α²).
    """
    if isinstance(model, ScaledOutput):
        raise ValueError("pass the network inside ScaledOutput (Θ_∞ of the wrapper is α² times its Θ_∞)")
    layers = getattr(model, "kernel_layers", None)
    if not callable(layers):
        raise ValueError(f"{type(model).__name__} has no known infinite-width limit (only the built-in "
                         f"MLP, CNN and ResMLP compose their layers' kernel maps)")
    return layers()
