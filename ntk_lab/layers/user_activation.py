"""A user's own activation: ``model.activation=package.module:function``.

The name (anything containing ``:``) is split at the ``:``, the module imported with
:mod:`importlib` and the attribute taken from it. It must be an elementwise torch function
φ: Tensor -> Tensor, of any shape, differentiable by autograd and keeping the dtype (Θ_∞ is
computed in float64). From it the library builds an :class:`Activation` with

* ``fn`` = φ itself (the finite network calls it, as for a built-in name);
* ``derivative`` = φ' by autograd: the gradient of Σ φ(x) with respect to x, which is φ'(x)
  elementwise exactly when φ is elementwise; it is taken on a detached copy under
  ``torch.enable_grad()`` (so it works inside ``torch.no_grad()`` and ``torch.inference_mode()``)
  and returned detached;
* ``dual`` = None: Θ_∞ goes through the Hermite (Mehler) series of
  :mod:`ntk_lab.layers.gaussian`, which computes the same two Gaussian integrals as
  neural-tangents' ``stax.ElementwiseNumerical`` (2-D Gauss–Hermite of φ(u)φ(v) and, with
  autograd's φ', of φ'(u)φ'(v)), with a Parseval bound on the error instead of a fixed rule.

Before use the function is probed once on a float64 tensor of shape (3, 4) and on each of its
elements alone: it must run, keep the shape and dtype, give the same values both ways (a
function that mixes elements — softmax, x − x.mean() — does not), and carry an autograd graph.
Every failure is one :class:`ActivationError` line naming ``model.activation``. The built
:class:`Activation` is cached per name.
"""

from __future__ import annotations

import importlib
from typing import Callable, Sequence

import torch
from torch import Tensor

# The probe compares φ on a (3, 4) tensor with φ on each element alone. torch's vectorized and
# scalar kernels for transcendental functions may round differently (a few ulp of float64);
# a function that mixes elements differs at the size of the values themselves.
ELEMENTWISE_RTOL = 1e-12
_PROBE_SHAPE = (3, 4)
_PROBE_SEED = 0


class ActivationError(ValueError):
    """A ``module.path:function`` activation that cannot be used; one line.

    Attributes:
        reason: what is wrong, without the ``model.activation=… is invalid:`` prefix (the
            config validation puts its own).
    """

    def __init__(self, name: str, reason: str):
        self.reason = reason
        super().__init__(f"model.activation={name!r} is invalid: {reason}")


class _AutogradDerivative:
    """φ'(x) = ∂/∂x Σ φ(x), elementwise for an elementwise φ; no graph is kept or returned."""

    def __init__(self, fn: Callable[[Tensor], Tensor]):
        self.fn = fn

    def __call__(self, x: Tensor) -> Tensor:
        with torch.inference_mode(False), torch.enable_grad():  # works under no_grad / inference_mode
            leaf = x.detach()
            if leaf.is_inference():  # an inference-mode tensor cannot enter a graph; a copy can
                leaf = leaf.clone()
            leaf.requires_grad_(True)
            (grad,) = torch.autograd.grad(self.fn(leaf).sum(), leaf)
        return grad.detach()


def user_activation(name: str, known: Sequence[str]) -> tuple[Callable[[Tensor], Tensor],
                                                              Callable[[Tensor], Tensor]]:
    """(φ, φ') for ``module.path:function``: the function imported and probed, its derivative
    by autograd. ``known``: the built-in names, for the error messages. (The caller,
    :func:`ntk_lab.layers.activations.get_activation`, wraps and caches them; this module does
    not import it, so the two stay one-way.)

    Raises:
        ActivationError: malformed name, module not importable, attribute missing, not
            callable, or the function fails the probe (see the module docstring).
    """
    fn = _import_function(name, ", ".join(known))
    derivative = _AutogradDerivative(fn)
    _probe(name, fn, derivative)
    return fn, derivative


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0]}" if text else type(err).__name__


def _import_function(name: str, known: str) -> Callable[[Tensor], Tensor]:
    module_name, _, attribute = name.partition(":")
    module_name, attribute = module_name.strip(), attribute.strip()
    if not module_name or not attribute or ":" in attribute:
        raise ActivationError(name, f"write module.path:function, or use a name from {known}")
    try:
        module = importlib.import_module(module_name)
    except Exception as err:  # ImportError, or whatever the user's module raises on import
        raise ActivationError(name, f"cannot import module {module_name!r} ({_first_line(err)}); "
                                    f"use a name from {known} or module.path:function") from None
    if not hasattr(module, attribute):
        raise ActivationError(name, f"module {module_name!r} has no attribute {attribute!r}")
    fn = getattr(module, attribute)
    if not callable(fn):
        raise ActivationError(name, f"{module_name}.{attribute} is a {type(fn).__name__}, not a "
                                    f"callable")
    return fn


def _probe(name: str, fn: Callable[[Tensor], Tensor], derivative: Callable[[Tensor], Tensor]) -> None:
    """Run φ and φ' on a (3, 4) float64 tensor and φ on each element alone; see the docstring."""
    generator = torch.Generator().manual_seed(_PROBE_SEED)
    x = 2.0 * torch.randn(_PROBE_SHAPE, generator=generator, dtype=torch.float64)
    shape = tuple(x.shape)
    try:
        with torch.no_grad():
            y = fn(x)
            alone = [fn(x[i:i + 1, j:j + 1]) for i in range(shape[0]) for j in range(shape[1])]
    except Exception as err:
        raise ActivationError(name, f"it fails on a float64 tensor of shape {shape}: "
                                    f"{_first_line(err)}") from None
    for out, want in [(y, shape)] + [(a, (1, 1)) for a in alone]:
        if not isinstance(out, Tensor):
            raise ActivationError(name, f"it returns a {type(out).__name__}, not a torch.Tensor")
        if tuple(out.shape) != want:
            raise ActivationError(name, f"not elementwise: it maps a tensor of shape {want} to "
                                        f"shape {tuple(out.shape)}")
        if out.dtype != x.dtype:
            raise ActivationError(name, f"it returns {out.dtype} for float64 inputs; Θ_∞ is computed in "
                                        f"float64, so the function must keep the dtype")
    alone_values = torch.cat([a.reshape(1) for a in alone]).reshape(shape)
    if not bool(torch.isfinite(y).all() and torch.isfinite(alone_values).all()):
        raise ActivationError(name, f"it returns NaN or infinity on finite inputs (of shape {shape}); "
                                    f"an activation must be finite on the whole real line")
    gap = (y - alone_values).abs().max().item()
    scale = max(y.abs().max().item(), alone_values.abs().max().item(), 1e-300)
    if gap > ELEMENTWISE_RTOL * scale:
        raise ActivationError(name, f"not elementwise: on a tensor of shape {shape} it differs "
                                    f"from the function applied to each element alone by up to "
                                    f"{gap:.1e} (relative {gap / scale:.1e})")
    try:
        derivative(x)
    except Exception as err:
        raise ActivationError(name, f"autograd cannot differentiate it ({_first_line(err)}); use "
                                    f"torch operations on the input tensor, without detaching it") from None
