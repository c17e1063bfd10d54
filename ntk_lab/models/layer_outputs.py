"""What a network's layers see and produce, read with forward hooks: the conjugate kernel's
features (the readout's input) and the coordinate check's per-layer activations.

The layers are those of :func:`ntk_lab.models.layer_groups.trainable_layers`, taken in the
order the forward pass calls them — for the MLP, ``layers.0`` … ``layers.depth``, the readout
last. Hooks see the module's input and output, so this works for any feed-forward module, not
just :class:`~ntk_lab.models.MLP`.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import Tensor, nn

from ntk_lab.models.layer_groups import trainable_layers


@contextmanager
def _record_calls(model: nn.Module) -> Iterator[list[tuple[Tensor, Tensor]]]:
    """Yields a list that fills with (input, output) of every layer call, in call order."""
    calls: list[tuple[Tensor, Tensor]] = []

    def hook(_module: nn.Module, args: tuple, output: Tensor) -> None:
        calls.append((args[0].detach(), output.detach()))

    handles = [m.register_forward_hook(hook) for m in trainable_layers(model)]
    try:
        yield calls
    finally:
        for handle in handles:
            handle.remove()


def layer_activations(model: nn.Module, x: Tensor) -> list[Tensor]:
    """What each layer hands on, from one forward pass on x (N, …).

    Layer i's activation is the input of layer i+1 (for the MLP: h^i = φ(z^i), (N, width));
    the last layer's is its output, the network's f (N, O) before any output factor α.

    Args:
        model: a feed-forward module whose layers are called once each, in sequence.
        x: (N, …) inputs.

    Returns:
        One tensor per layer call, in forward order, detached.

    Raises:
        ValueError: the model has no trainable layer.
    """
    with _record_calls(model) as calls, torch.no_grad():
        model(x)
    if not calls:
        raise ValueError(f"{type(model).__name__} has no module with trainable parameters")
    return [inp for inp, _ in calls[1:]] + [calls[-1][1]]


def readout_features(model: nn.Module, x: Tensor) -> Tensor:
    """Φ: the input of the last layer the forward pass calls (the readout), flattened to (N, n).

    For the MLP these are the last hidden layer's activations h^depth (N, width); the
    conjugate kernel of :func:`ntk_lab.measures.geometry.conjugate_kernel` is built from them.
    """
    with _record_calls(model) as calls, torch.no_grad():
        model(x)
    if not calls:
        raise ValueError(f"{type(model).__name__} has no module with trainable parameters")
    features = calls[-1][0]
    return features.reshape(features.shape[0], -1)
