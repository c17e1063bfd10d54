"""A user's own network: ``model=custom model.target=my_pkg.nets:build``.

The target names a callable (``package.module:attribute``; ``package.module.attribute`` works
too). It is called as

    build(width=…, depth=…, in_shape=…, out_dim=…, seed=…, **extra)

with ``in_shape`` the shape of one input — (C, H, W) for image data (digits), (d,) for vectors —
and ``extra`` every other ``model.*`` key of the config, and must return a ``torch.nn.Module``
mapping (N, *in_shape) to (N, out_dim) without mixing samples. It runs and sweeps like a
built-in network: its empirical NTK comes through ``auto`` (structured for the layers the
factorization knows — Linear, Conv1d, Conv2d — per-sample Jacobians for the rest); it has no
known infinite-width limit, so Θ_∞-based metrics are NaN, with the reason in summary.json.

Modules whose outputs mix samples (BatchNorm in training mode) break every per-sample NTK
method. :func:`check_sample_independence` detects them by perturbing one sample and watching
the others' outputs; if the module is independent in eval mode, the run uses eval-mode
statistics (``model.eval()`` for the whole run) and says so in summary.json; otherwise it is
a one-line error.
"""

from __future__ import annotations

import copy
import importlib
from typing import Any, Callable, Optional, Sequence

import torch
from torch import nn

# Outputs of the other samples may change by round-off only when one sample is replaced
# (batched kernels can reorder sums with the batch size): 1e-5 relative to the output scale
# is far above float32 round-off and far below any real mixing (BatchNorm moves them O(1)).
MIXING_RTOL = 1e-5


class CustomModuleError(ValueError):
    """The user's module cannot be used; the message is one line naming ``model.target``."""


def import_target(target: str) -> Callable[..., Any]:
    """The callable named by ``package.module:attribute`` (or ``package.module.attribute``)."""
    module_name, sep, attribute = target.partition(":")
    if not sep:
        module_name, _, attribute = target.rpartition(".")
    if not module_name or not attribute:
        raise CustomModuleError(f"model.target={target!r} is invalid: write package.module:callable")
    try:
        module = importlib.import_module(module_name)
    except Exception as err:  # ImportError, or an error raised while importing the user's file
        raise CustomModuleError(f"model.target={target!r} cannot be imported: "
                                f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}") from None
    try:
        fn = getattr(module, attribute)
    except AttributeError:
        raise CustomModuleError(f"model.target={target!r} cannot be imported: module {module_name!r} "
                                f"has no attribute {attribute!r}") from None
    if not callable(fn):
        raise CustomModuleError(f"model.target={target!r} is not callable")
    return fn


def build_custom(target: str, *, width: int, depth: int, in_shape: Sequence[int], out_dim: int,
                 seed: Optional[int], extra: Optional[dict] = None) -> nn.Module:
    """Call the user's builder and check that it returned a Module.

    Raises:
        CustomModuleError: the target cannot be imported, raises, or returns no Module.
    """
    fn = import_target(target)
    try:
        model = fn(width=width, depth=depth, in_shape=tuple(in_shape), out_dim=out_dim, seed=seed,
                   **(extra or {}))
    except TypeError as err:
        raise CustomModuleError(f"model.target={target!r} could not be called with width, depth, "
                                f"in_shape, out_dim, seed and the extra model keys "
                                f"{sorted(extra or {})}: {str(err).splitlines()[0]}") from None
    if not isinstance(model, nn.Module):
        raise CustomModuleError(f"model.target={target!r} returned a {type(model).__name__}, "
                                f"not a torch.nn.Module")
    return model


def check_output_shape(model: nn.Module, x: torch.Tensor, out_dim: int, target: str) -> None:
    """One forward pass on two samples: the output must be (2, out_dim)."""
    try:
        with torch.no_grad():
            out = copy.deepcopy(model)(x[:2])
    except Exception as err:
        raise CustomModuleError(f"model.target={target!r}: the module fails on inputs of shape "
                                f"{tuple(x[:2].shape)}: {type(err).__name__}: "
                                f"{str(err).splitlines()[0] if str(err) else ''}") from None
    want = (min(2, len(x)), out_dim)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != want:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise CustomModuleError(f"model.target={target!r}: the module returns {shape} for inputs of "
                                f"shape {tuple(x[:2].shape)}; the data needs {want} (out_dim {out_dim})")


def mixes_samples(model: nn.Module, x: torch.Tensor) -> bool:
    """Whether the outputs of samples 1… change when sample 0 is replaced (on a copy: a
    BatchNorm's running statistics are not touched). x: (N ≥ 3, …)."""
    probe = copy.deepcopy(model)
    batch = x[:4]
    other = batch.clone()
    other[0] = x[-1] if len(x) > 4 else batch[0] * -2.0 + 1.0
    with torch.no_grad():
        a, b = probe(batch)[1:], probe(other)[1:]
    scale = torch.maximum(a.abs().max(), torch.ones((), dtype=a.dtype, device=a.device))
    return bool(((a - b).abs() > MIXING_RTOL * scale).any())


def check_sample_independence(model: nn.Module, x: torch.Tensor, target: str) -> Optional[str]:
    """None if the module treats samples independently; a note if it does so only in eval mode
    (the module is then put in eval mode for the whole run).

    Raises:
        CustomModuleError: outputs mix samples even in eval mode.
    """
    if len(x) < 2 or not mixes_samples(model, x):
        return None
    if model.training:
        evaluated = copy.deepcopy(model).eval()
        if not mixes_samples(evaluated, x):
            model.eval()
            kinds = sorted({type(m).__name__ for m in model.modules()
                            if isinstance(m, nn.modules.batchnorm._NormBase)}) or ["a layer"]
            return (f"{', '.join(kinds)} in training mode mixes samples, which breaks every "
                    f"per-sample NTK: the run uses eval-mode statistics (model.eval()) throughout")
    raise CustomModuleError(f"model.target={target!r}: the module's outputs mix samples (one "
                            f"sample's output depends on the others), even in eval mode; the "
                            f"per-sample NTK is undefined")
