"""The data a run trains and probes on: :class:`Dataset` and :class:`DataError`.

Every builder (:mod:`ntk_lab.data.tasks`, :mod:`ntk_lab.data.images`) returns a
:class:`Dataset` of float64 tensors; the run casts them to its precision.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor


class DataError(ValueError):
    """A dataset cannot be built from the given settings (bad path, shape, dtype, sizes)."""


@dataclass
class Dataset:
    """Train / test / probe tensors (float64).

    Attributes:
        name: the dataset name.
        x_train (N_train, d), y_train (N_train, O), x_test (N_test, d), y_test (N_test, O).
        x_probe (N_probe, d): fixed inputs on which Θ is recorded.
        probe_angle (N_probe,) or None: γ_k of each circle probe point, radians in [0, 2π).
        y_probe (N_probe, O) or None: the targets of the probe inputs (kernel-target
            alignment and the target's eigenspace share need them).
        image_shape: (C, H, W) when every input row is an image flattened in C, H, W order
            (digits: (1, 8, 8)), else None. :meth:`as_images` gives the (N, C, H, W) view a
            conv net takes; an MLP takes the flat rows.
        token_shape: (T, d) when every input row is a sequence of T tokens of d features
            flattened token by token (a ``data=file`` whose x is (N, T, d)), else None.
            :meth:`as_tokens` gives the (N, T, d) view a transformer takes.
        num_classes: the number of classes of a classification data set (targets are
            one-hot rows, or ±1 for two classes), None for regression. Accuracy is recorded
            only when it is set.
    """

    name: str
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    x_probe: Tensor
    probe_angle: Optional[Tensor] = None
    y_probe: Optional[Tensor] = None
    image_shape: Optional[tuple[int, int, int]] = None
    num_classes: Optional[int] = None
    token_shape: Optional[tuple[int, int]] = None

    @property
    def in_dim(self) -> int:
        return self.x_train.shape[1]

    @property
    def out_dim(self) -> int:
        return self.y_train.shape[1]

    def to(self, dtype: torch.dtype, device: torch.device | str) -> "Dataset":
        cast = lambda t: None if t is None else t.to(dtype=dtype, device=device)  # noqa: E731
        return dataclasses.replace(
            self, **{f: cast(getattr(self, f)) for f in _TENSOR_FIELDS})

    def as_images(self) -> "Dataset":
        """The same data with every input reshaped to (N, C, H, W) (``image_shape``).

        Raises:
            DataError: the data set has no image shape (vector data).
        """
        if self.image_shape is None:
            raise DataError(f"the {self.name} data are vectors, not images; a conv net needs "
                            f"image data (e.g. data=digits)")
        shape = tuple(self.image_shape)
        image = lambda t: t.reshape(t.shape[0], *shape)  # noqa: E731
        return dataclasses.replace(self, x_train=image(self.x_train), x_test=image(self.x_test),
                                   x_probe=image(self.x_probe))


    def as_tokens(self) -> "Dataset":
        """The same data with every input reshaped to (N, T, d) (``token_shape``).

        Raises:
            DataError: the data set has no token shape.
        """
        if self.token_shape is None:
            raise DataError(f"the {self.name} data are vectors, not sequences (N, T, d)")
        shape = tuple(self.token_shape)
        tokens = lambda t: t.reshape(t.shape[0], *shape)  # noqa: E731
        return dataclasses.replace(self, x_train=tokens(self.x_train), x_test=tokens(self.x_test),
                                   x_probe=tokens(self.x_probe))


_TENSOR_FIELDS = ("x_train", "y_train", "x_test", "y_test", "x_probe", "probe_angle", "y_probe")
