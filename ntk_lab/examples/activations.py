"""Worked examples of ``model.activation=module.path:function``: elementwise torch functions.

    python -m ntk_lab.run model.activation=ntk_lab.examples.activations:swish

Your own works the same way: a module importable from where you run (a ``my_acts.py`` in that
folder, or an installed package) with a function mapping a tensor to a tensor of the same
shape and dtype, elementwise, built from torch operations (autograd gives φ'); then
``model.activation=my_acts:my_fn``. Θ_∞ uses the Hermite series (no closed form is known to
the library), so very large pre-activation variances warn about the truncation.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def swish(x: Tensor) -> Tensor:
    """x·sigmoid(x) (SiLU, Ramachandran et al. 2017); no closed-form kernel."""
    return x * torch.sigmoid(x)


def erf_copy(x: Tensor) -> Tensor:
    """erf, written out: the same Θ_∞ as the built-in ``erf`` and its closed form."""
    return torch.erf(x)


def gelu_copy(x: Tensor) -> Tensor:
    """x·Φ(x) with Φ the standard normal cdf: the same Θ_∞ as the built-in ``gelu``."""
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


def sin(x: Tensor) -> Tensor:
    """sin; its Gaussian expectations are known in closed form (tests compare them)."""
    return torch.sin(x)
