"""Datasets and the fixed probe set on which kernels are measured.

Every dataset gives train, test and probe inputs as float64 tensors (the run casts them to its
precision). Targets are (N, O) regression targets for the MSE loss of docs/conventions.md.

| name             | inputs                                   | targets                            |
| ---------------- | ---------------------------------------- | ---------------------------------- |
| ``circle``       | N(0, I₂) (Jacot et al. 2018 §6.1)        | f*(x) = x₁x₂                        |
| ``sphere_teacher`` | uniform on the unit sphere in R^d     | a fixed random ReLU teacher MLP (+ noise) |
| ``digits``       | scikit-learn's bundled 8×8 digits, standardized | one-hot (O = 10)            |
| ``file``         | a user's ``.npz`` (arrays ``x``, ``y``) or ``.csv`` (columns named ``y*`` are targets) | |
| ``mnist``, ``fashion_mnist``, ``cifar10`` | stratified subsets of the real files, per-channel standardized (:mod:`ntk_lab.data.images`) | one-hot, or ±1 for two classes under MSE |

Probe sets: ``circle`` probes n_probe points of the unit circle, x_k = (cos γ_k, sin γ_k),
γ_k = 2πk/n_probe, so probe 0 is x₀ = (1, 0) and Θ(x₀, x(γ)) is Jacot et al.'s Figure 1. The
other datasets probe the first n_probe test inputs. The data draw has its own seed
(``data.seed``), so a sweep over model seeds keeps the data fixed.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ntk_lab.data.dataset import DataError, Dataset
from ntk_lab.data.images import image_dataset

DATASETS = ("circle", "sphere_teacher", "digits", "file", "mnist", "fashion_mnist", "cifar10")


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed))


def circle(n_train: int = 4, n_test: int = 256, n_probe: int = 64, seed: int = 0) -> Dataset:
    """Jacot et al. 2018 §6.1: f*(x) = x₁x₂ on Gaussian inputs in R²; probes on the circle."""
    g = _generator(seed)
    x_train = torch.randn(n_train, 2, generator=g, dtype=torch.float64)
    x_test = torch.randn(n_test, 2, generator=g, dtype=torch.float64)
    target = lambda x: (x[:, 0] * x[:, 1]).unsqueeze(1)  # noqa: E731
    angle = torch.arange(n_probe, dtype=torch.float64) * (2 * math.pi / n_probe)
    x_probe = torch.stack([torch.cos(angle), torch.sin(angle)], dim=1)
    return Dataset("circle", x_train, target(x_train), x_test, target(x_test), x_probe, angle,
                   y_probe=target(x_probe))


def sphere_teacher(
    n_train: int = 64, n_test: int = 256, n_probe: int = 32, seed: int = 0, in_dim: int = 8,
    noise: float = 0.0, teacher_width: int = 64, teacher_depth: int = 2,
) -> Dataset:
    """Inputs uniform on S^{d-1}; targets from a fixed random ReLU MLP teacher + N(0, noise²)."""
    from ntk_lab.models import MLP  # the teacher is a network of the same family

    g = _generator(seed)
    n = n_train + n_test
    x = torch.randn(n, in_dim, generator=g, dtype=torch.float64)
    x = x / x.norm(dim=1, keepdim=True)
    teacher = MLP(in_dim, teacher_width, teacher_depth, out_dim=1, activation="relu",
                  parameterization="ntk", w_std=1.0, b_std=0.0, seed=int(seed) + 1,
                  dtype=torch.float64)
    with torch.no_grad():
        y = teacher(x)
    y = y + noise * torch.randn(y.shape, generator=g, dtype=torch.float64)
    x_test = x[n_train:]
    y_test = y[n_train:]
    return Dataset("sphere_teacher", x[:n_train], y[:n_train], x_test, y_test,
                   x_test[:n_probe].clone(), y_probe=y_test[:n_probe].clone())


def digits(n_train: int = 256, n_test: int = 512, n_probe: int = 32, seed: int = 0) -> Dataset:
    """scikit-learn's bundled 8×8 handwritten digits (1797 images, no download).

    Pixels standardized with the training split's mean and std (constant pixels -> 0);
    one-hot regression targets, O = 10.
    """
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x_all = np.asarray(bunch.data, dtype=np.float64)
    labels = np.asarray(bunch.target)
    if n_train + n_test > len(x_all):
        raise DataError(f"data.n_train + data.n_test = {n_train + n_test} exceeds the "
                        f"{len(x_all)} digits images")
    order = torch.randperm(len(x_all), generator=_generator(seed)).numpy()
    train_idx, test_idx = order[:n_train], order[n_train:n_train + n_test]
    mean = x_all[train_idx].mean(0)
    std = x_all[train_idx].std(0)
    std[std == 0] = 1.0
    x_all = (x_all - mean) / std
    one_hot = np.eye(10)[labels]
    t = lambda a: torch.as_tensor(a, dtype=torch.float64)  # noqa: E731
    x_test, y_test = t(x_all[test_idx]), t(one_hot[test_idx])
    return Dataset("digits", t(x_all[train_idx]), t(one_hot[train_idx]), x_test, y_test,
                   x_test[:n_probe].clone(), y_probe=y_test[:n_probe].clone(),
                   image_shape=(1, 8, 8), num_classes=10)


def load_arrays(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) from a ``.npz`` (arrays ``x`` and ``y``) or a ``.csv`` with a header row.

    In a CSV the columns whose names start with ``y`` are targets, the others inputs.

    Raises:
        DataError: a missing file, an unknown extension, missing arrays, non-numeric or
            non-finite values, or mismatched lengths — each naming ``data.path``.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"data.path: file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as arrays:
                missing = [k for k in ("x", "y") if k not in arrays.files]
                if missing:
                    raise DataError(f"data.path: {path.name} lacks array(s) {missing}; "
                                    f"it has {arrays.files}, needs 'x' (N, d) and 'y' (N,) or (N, O)")
                x, y = arrays["x"], arrays["y"]
        except DataError:
            raise
        except Exception as err:  # zipfile / pickle errors of a damaged file
            raise DataError(f"data.path: cannot read {path.name} as .npz ({err})") from None
    elif suffix == ".csv":
        import pandas as pd

        try:
            frame = pd.read_csv(path)
        except Exception as err:
            raise DataError(f"data.path: cannot read {path.name} as CSV ({err})") from None
        y_cols = [c for c in frame.columns if str(c).lower().startswith("y")]
        x_cols = [c for c in frame.columns if c not in y_cols]
        if not y_cols or not x_cols:
            raise DataError(f"data.path: {path.name} needs input columns and target columns "
                            f"named y*, got columns {list(frame.columns)}")
        try:
            x = frame[x_cols].to_numpy(dtype=np.float64)
            y = frame[y_cols].to_numpy(dtype=np.float64)
        except (ValueError, TypeError):
            raise DataError(f"data.path: {path.name} has non-numeric values") from None
    else:
        raise DataError(f"data.path: unsupported file type {suffix!r} ({path.name}); "
                        f"allowed: .npz, .csv")
    return _check_arrays(np.asarray(x), np.asarray(y), path.name)


def _check_arrays(x: np.ndarray, y: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    if y.ndim == 1:
        y = y[:, None]
    if x.ndim == 1:
        x = x[:, None]
    for label, a in (("x", x), ("y", y)):
        if a.ndim != 2 and not (label == "x" and a.ndim == 3):  # x may be sequences (N, T, d)
            allowed = "1-D, 2-D or 3-D (N, T, d) sequences" if label == "x" else "1-D or 2-D"
            raise DataError(f"data.path: {name}: '{label}' must be {allowed}, got shape {a.shape}")
        if not (np.issubdtype(a.dtype, np.number) or a.dtype == bool):
            raise DataError(f"data.path: {name}: '{label}' must be numeric, got dtype {a.dtype}")
        if not np.all(np.isfinite(a.astype(np.float64))):
            raise DataError(f"data.path: {name}: '{label}' has NaN or infinite values")
    if len(x) != len(y):
        raise DataError(f"data.path: {name}: x has {len(x)} rows but y has {len(y)}")
    return x.astype(np.float64), y.astype(np.float64)


def from_file(path: str | Path, n_train: Optional[int] = None, n_test: Optional[int] = None,
              n_probe: int = 32, seed: int = 0) -> Dataset:
    """A user's data file, shuffled with ``seed`` and split into train and test.

    ``n_train`` defaults to 80% of the rows, ``n_test`` to the rest.
    """
    x, y = load_arrays(path)
    token_shape = tuple(int(k) for k in x.shape[1:]) if x.ndim == 3 else None
    x = x.reshape(len(x), -1)  # sequences are kept flat, token by token (Dataset.token_shape)
    n = len(x)
    n_train = int(0.8 * n) if n_train is None else int(n_train)
    n_test = n - n_train if n_test is None else int(n_test)
    if n_train < 1 or n_test < 1 or n_train + n_test > n:
        raise DataError(f"data.n_train={n_train} and data.n_test={n_test} do not fit the "
                        f"{n} rows of {Path(path).name} (need both >= 1, sum <= {n})")
    order = torch.randperm(n, generator=_generator(seed)).numpy()
    t = lambda a: torch.as_tensor(a, dtype=torch.float64)  # noqa: E731
    x_test = t(x[order[n_train:n_train + n_test]])
    y_test = t(y[order[n_train:n_train + n_test]])
    return Dataset("file", t(x[order[:n_train]]), t(y[order[:n_train]]), x_test, y_test,
                   x_test[:n_probe].clone(), y_probe=y_test[:n_probe].clone(), token_shape=token_shape)


def _image_builder(name: str):
    """The builder of the image data set ``name`` (:mod:`ntk_lab.data.images`)."""

    def build(**settings) -> Dataset:
        return image_dataset(name, **settings)

    return build


_BUILDERS = {"circle": circle, "sphere_teacher": sphere_teacher, "digits": digits, "file": from_file,
             **{name: _image_builder(name) for name in ("mnist", "fashion_mnist", "cifar10")}}


def make_dataset(name: str, **settings) -> Dataset:
    """Build a dataset by name; ``settings`` are that builder's keyword arguments.

    Raises:
        DataError: unknown name, or settings the data cannot satisfy.
    """
    if name not in _BUILDERS:
        raise DataError(f"data: unknown dataset {name!r}; allowed: {', '.join(DATASETS)}")
    data = _BUILDERS[name](**settings)
    if len(data.x_probe) < 2:
        raise DataError(f"data.n_probe: the probe set has {len(data.x_probe)} point(s); "
                        f"at least 2 are needed (the test set may be too small)")
    return data
