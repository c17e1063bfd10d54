"""A worked example of ``model=custom``: a small conv net written in plain ``torch.nn``.

    python -m ntk_lab.run model=custom data=digits lr=0.1 +width=64 +depth=2
    python -m ntk_lab.run model=custom model.target=ntk_lab.examples.custom_net:build \\
        +model.kernel_size=5 data=digits lr=0.1 +width=32

Your own module works the same way: put a file ``my_nets.py`` in the folder you run from (or
in an installed package) with a function taking these arguments, and pass
``model=custom model.target=my_nets:build``; any further ``+model.NAME=value`` reaches the
function as a keyword.

What the run does with it: the empirical NTK comes through ``auto`` — the Conv2d and Linear
layers by their structured factors, the GroupNorm's affine parameters by per-sample
Jacobians (the factorization does not know that layer) —, every drift metric is recorded,
and the Θ_∞-based ones are NaN with the reason in summary.json (no known infinite-width limit).
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from torch import nn


def build(width: int, depth: int, in_shape: Sequence[int], out_dim: int, seed: Optional[int],
          kernel_size: int = 3, groups: int = 1) -> nn.Module:
    """``depth`` blocks Conv2d(k×k, 'same') → GroupNorm → ReLU of ``width`` channels, global
    average pooling, a Linear readout; vectors (d,) are read as 1×1 images with d channels.

    Args:
        width, depth, in_shape, out_dim, seed: what ntk_lab passes to every custom module.
        kernel_size, groups: this example's own knobs (``+model.kernel_size=5``).

    Returns:
        A module mapping (N, *in_shape) to (N, out_dim), samples independent (GroupNorm
        normalizes within each sample).
    """
    if seed is not None:
        torch.manual_seed(seed)
    shape = tuple(in_shape) if len(in_shape) == 3 else (math.prod(in_shape), 1, 1)
    layers: list[nn.Module] = [nn.Unflatten(1, shape)] if len(in_shape) != 3 else []
    channels = shape[0]
    for _ in range(depth):
        layers += [nn.Conv2d(channels, width, kernel_size, padding="same"),
                   nn.GroupNorm(groups, width), nn.ReLU()]
        channels = width
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, out_dim)]
    return nn.Sequential(*layers)
