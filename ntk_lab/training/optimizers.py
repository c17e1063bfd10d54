"""Optimizers, their μP learning rates, and the learning-rate schedule.

``train.optimizer``:

| name       | torch.optim                                   | update (g = ∇L + λθ with weight decay λ) |
| ---------- | --------------------------------------------- | ---------------------------------------- |
| ``sgd``      | ``SGD(lr)``                                  | θ ← θ − η g                              |
| ``momentum`` | ``SGD(lr, momentum=μ)`` (heavy ball, no dampening) | v ← μv + g, θ ← θ − η v (v₀ = 0)   |
| ``adam``     | ``Adam(lr, betas=(β₁, β₂), eps=ε)``          | m ← β₁m + (1−β₁)g, v ← β₂v + (1−β₂)g², θ ← θ − η m̂/(√v̂ + ε) |

Weight decay is the L2 term λθ added to the gradient (torch's ``weight_decay``), for every
optimizer.

μP learning rates (Yang & Hu 2021, Tensor Programs IV, Table 3). In the abc-form of
:func:`ntk_lab.models.layer_scales` a parameter w enters the network as W = n^(−a)·w and is
trained with learning rate η·n^(−c) (n = width). For SGD (and momentum) c = 0 for every
parameter: the learning rate is not rescaled (``ntk_lab/layers/scales.py``). For Adam, whose step moves every
entry by ~η whatever the gradient's scale, μP needs ΔW = Θ(1) per entry for the input layer
and every input-like bias and Θ(1/n) for the hidden and readout weights, i.e. a + c = 0 and
a + c = 1:

| parameter (a of scales.py)                  | SGD c | Adam c | Adam learning rate |
| ------------------------------------------- | ----- | ------ | ------------------ |
| input weight (a = −½)                       | 0     | ½      | η/√n               |
| input and hidden biases (a = −½)            | 0     | ½      | η/√n               |
| hidden weights (a = 0)                      | 0     | 1      | η/n                |
| readout weight (a = ½)                      | 0     | ½      | η/√n               |
| readout bias (a = 0)                        | 0     | 0      | η                  |

(In the "standard" form of Tensor Programs V, Table 3, this is Adam's η for the input layer and
biases and η/fan_in for the hidden and readout weights.) Under ``ntk`` and ``standard`` every
parameter uses η.

``train.schedule``: ``constant`` (η_k = η) or ``cosine`` (η_k = η·(1 + cos(πk/T))/2 at step
k of T, the rule of ``torch.optim.lr_scheduler.CosineAnnealingLR`` with η_min = 0). The run's
time is the summed learning rate t_k = Σ_{j<k} η_j, which is η·k for the constant schedule
(docs/conventions.md), so gradient-flow predictions use the same clock.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ntk_lab.models.layer_groups import trainable_layers
from ntk_lab.models import CNN, MLP, ResMLP, Transformer, unwrap
from ntk_lab.models.serial import Serial

OPTIMIZERS = ("sgd", "momentum", "adam")
SCHEDULES = ("constant", "cosine")


@dataclass
class OptimizerSettings:
    """Plain optimizer settings (validated in :mod:`ntk_lab.config`).

    Attributes:
        name: ``sgd``, ``momentum`` or ``adam``.
        lr: base learning rate η.
        momentum: μ for ``momentum``.
        weight_decay: λ, the L2 term added to the gradient.
        betas, eps: Adam's (β₁, β₂) and ε.
        schedule: ``constant`` or ``cosine``.
    """

    name: str = "sgd"
    lr: float = 1.0
    momentum: float = 0.9
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    schedule: str = "constant"


def mup_adam_exponents(kind: str) -> tuple[float, float]:
    """(c of the weight, c of the bias) of a layer of ``kind`` input / hidden / output under
    μP Adam: its learning rates are η·n^(−c) (see the module table)."""
    exponents = {"input": (0.5, 0.5), "hidden": (1.0, 0.5), "output": (0.5, 0.0)}
    if kind not in exponents:
        raise ValueError(f"unknown layer kind {kind!r}; known: {', '.join(exponents)}")
    return exponents[kind]


def parameter_groups(model: nn.Module, settings: OptimizerSettings,
                     parameterization: str) -> list[dict]:
    """The optimizer's parameter groups: one group with η, or μP Adam's per-tensor η·n^(−c).

    Raises:
        ValueError: μP Adam for a custom module (its layer kinds are unknown).
    """
    trainable = [(k, p) for k, p in model.named_parameters() if p.requires_grad]
    if not (settings.name == "adam" and parameterization == "mup"):
        return [{"params": [p for _, p in trainable], "lr": settings.lr}]
    net, _ = unwrap(model)
    if not isinstance(net, (MLP, CNN, ResMLP, Transformer, Serial)):
        raise ValueError("μP Adam learning rates are defined for the built-in networks "
                         "(mlp, cnn, resmlp, transformer, Serial) only")
    n = net.width  # channels for the CNN
    layers = trainable_layers(net)  # forward order: the input layer first, the readout last
    groups = []
    for i, layer in enumerate(layers):
        kind = "input" if i == 0 else "output" if i == len(layers) - 1 else "hidden"
        c_weight, c_bias = mup_adam_exponents(kind)
        if getattr(layer, "weight", None) is not None:  # positional embeddings: the rest
            groups.append({"params": [layer.weight], "lr": settings.lr * n ** -c_weight})
        if getattr(layer, "bias", None) is not None:
            groups.append({"params": [layer.bias], "lr": settings.lr * n ** -c_bias})
    covered = {id(p) for g in groups for p in g["params"]}
    rest = [p for _, p in trainable if id(p) not in covered]
    if rest:
        groups.append({"params": rest, "lr": settings.lr})
    return groups


def build_optimizer(model: nn.Module, settings: OptimizerSettings,
                    parameterization: str = "ntk") -> torch.optim.Optimizer:
    """The torch optimizer of ``settings`` over ``model``'s trainable parameters."""
    groups = parameter_groups(model, settings, parameterization)
    s = settings
    if s.name == "sgd":
        return torch.optim.SGD(groups, lr=s.lr, weight_decay=s.weight_decay)
    if s.name == "momentum":
        return torch.optim.SGD(groups, lr=s.lr, momentum=s.momentum, weight_decay=s.weight_decay)
    if s.name == "adam":
        return torch.optim.Adam(groups, lr=s.lr, betas=tuple(s.betas), eps=s.eps,
                                weight_decay=s.weight_decay)
    raise ValueError(f"unknown optimizer {s.name!r}; known: {', '.join(OPTIMIZERS)}")


def lr_factor(schedule: str, step: int, steps: int) -> float:
    """η_k / η at step k of T."""
    if schedule == "constant" or steps <= 0:
        return 1.0
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * min(step, steps) / steps))
    raise ValueError(f"unknown schedule {schedule!r}; known: {', '.join(SCHEDULES)}")


def build_scheduler(optimizer: torch.optim.Optimizer, schedule: str,
                    steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Multiplies every group's learning rate by :func:`lr_factor` (call ``step()`` after each
    optimizer step)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda k: lr_factor(schedule, k, steps))


def elapsed_time(schedule: str, lr: float, step: int, steps: int) -> float:
    """t_k = Σ_{j<k} η_j: η·k for ``constant``."""
    if schedule == "constant":
        return lr * step
    return lr * sum(lr_factor(schedule, j, steps) for j in range(step))


def infinite_width_support(settings: OptimizerSettings) -> str:
    """Why the Θ_∞ function-space prediction does not apply to these settings ('' if it does).

    The kernel flow covers gradient descent and heavy-ball momentum (``ntk_lab/dynamics/kernel_flow.py``).
    Adam's per-coordinate normalization is not a function-space flow of the NTK, and weight
    decay pulls θ towards 0, a direction the kernel does not see.
    """
    if settings.name == "adam":
        return ("train.optimizer=adam: Adam's per-parameter normalized steps have no "
                "infinite-width kernel (NTK) flow; no Θ_∞ prediction")
    if settings.weight_decay > 0:
        return ("train.weight_decay > 0: weight decay pulls θ towards 0, which the kernel flow "
                "does not describe; no Θ_∞ prediction")
    if settings.name == "momentum" and settings.schedule != "constant":
        return ("train.optimizer=momentum with train.schedule=cosine: the momentum ODE needs a "
                "constant learning rate; no Θ_∞ prediction")
    return ""
