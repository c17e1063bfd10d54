"""MNIST, Fashion-MNIST and CIFAR-10 as a :class:`ntk_lab.data.Dataset`.

From the full training and test splits: keep the chosen classes (``data.classes``), draw
class-stratified subsets of ``n_train`` training and ``n_test`` test images with ``seed``,
standardize every channel with the training subset's mean and standard deviation over all its
pixels, and store each image flat in C, H, W order with ``image_shape`` = (C, H, W).

Targets: one-hot rows over the chosen classes (column k is ``classes[k]``); with two classes
and ``pm1_targets`` (MSE) one column, −1 for ``classes[0]`` and +1 for ``classes[1]`` (the
±1 regression targets of Lee et al. 2019's CIFAR-2). ``num_classes`` is the number of
chosen classes. The probe set is the first ``n_probe`` test images (the test subset is
shuffled, so it mixes the classes).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from ntk_lab.data import cifar, idx, image_files as files
from ntk_lab.data.dataset import DataError, Dataset


IMAGE_DATASETS = ("mnist", "fashion_mnist", "cifar10")
NUM_CLASSES = 10  # all three have ten classes, labelled 0..9
# A channel whose training pixels are all equal has std 0; it is centred and left unscaled.
_STD_FLOOR = 1e-12


def load_splits(name: str, root: Optional[str | Path] = None, download: bool = False,
                mirror: Optional[str] = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The full splits: train images (N, C, H, W) uint8, train labels (N,), test images, labels.

    Looks in ``root`` (see :mod:`ntk_lab.data.image_files`), then — when ``root`` is not
    given — in a system package's folder (Debian's ``dataset-fashion-mnist``); fetches the
    files first when they are missing and ``download`` is set.

    Raises:
        DataError: missing files (saying which to put where), malformed files, a failed download.
    """
    if name not in IMAGE_DATASETS:
        raise DataError(f"data: unknown image dataset {name!r}; allowed: {', '.join(IMAGE_DATASETS)}")
    root_given = root not in (None, "")
    root = files.resolve_root(root)
    if name == "cifar10":
        directory = _cifar_dir(root, download, mirror)
        x_train, y_train = cifar.read_split(directory, train=True)
        x_test, y_test = cifar.read_split(directory, train=False)
        return x_train, y_train, x_test, y_test
    found = files.find_idx_files(name, root)
    if found is None and not root_given:  # e.g. Debian's dataset-fashion-mnist
        found = files.find_system_idx_files(name)
    if found is None:
        if not download:
            raise DataError(files.missing_files_message(name, root))
        files.download(name, root, mirror)
        found = files.find_idx_files(name, root)
    images = {k: idx.read_images(p) for k, p in found.items() if "images" in k}
    labels = {k: idx.read_labels(p, NUM_CLASSES) for k, p in found.items() if "labels" in k}
    out = []
    for split in ("train", "t10k"):
        x, y = images[f"{split}-images-idx3-ubyte"], labels[f"{split}-labels-idx1-ubyte"]
        if len(x) != len(y):
            raise DataError(f"{found[f'{split}-labels-idx1-ubyte']}: {len(y)} labels for "
                            f"{len(x)} images in {found[f'{split}-images-idx3-ubyte'].name}")
        out += [x[:, None], y]  # (N, 1, H, W): one channel
    return tuple(out)  # type: ignore[return-value]


def _cifar_dir(root: Path, download: bool, mirror: Optional[str]) -> Path:
    directory = files.find_cifar_dir(root)
    if directory is not None:
        return directory
    archive = root / files.SOURCES["cifar10"].folder / files.CIFAR_ARCHIVE
    if archive.is_file():  # the user put the archive there, or a download was not unpacked
        return files.unpack_cifar(archive, archive.parent)
    if not download:
        raise DataError(files.missing_files_message("cifar10", root))
    files.download("cifar10", root, mirror)
    return files.find_cifar_dir(root)


def stratified_indices(labels: np.ndarray, classes: Sequence[int], n: int,
                       rng: np.random.Generator, split: str, key: str, name: str) -> np.ndarray:
    """``n`` indices of ``labels`` drawn without replacement, as evenly over ``classes`` as
    possible, shuffled: each class gives n // K, the n % K extra ones go to classes picked at
    random, and a class with too few images gives all it has, the others making up the rest.

    Raises:
        DataError: ``n`` larger than the number of images of those classes.
    """
    pools = [np.flatnonzero(labels == c) for c in classes]
    sizes = np.array([len(p) for p in pools])
    if n > sizes.sum():
        raise DataError(f"{key}={n} is larger than the {sizes.sum()} {split} images of {name} "
                        f"classes {list(classes)}")
    counts = np.zeros(len(classes), dtype=np.int64)
    while counts.sum() < n:  # water-filling: at most K rounds
        open_ = np.flatnonzero(counts < sizes)
        left = n - counts.sum()
        share = np.full(len(open_), left // len(open_))
        share[rng.permutation(len(open_))[: left % len(open_)]] += 1
        counts[open_] = np.minimum(counts[open_] + share, sizes[open_])
    chosen = np.concatenate([rng.permutation(pool)[:count] for pool, count in zip(pools, counts)])
    return rng.permutation(chosen)


def standardize_channels(x_train: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    """(x − mean_c) / std_c per channel c, both statistics over all training pixels of c.

    Args:
        x_train: (N, C, H, W); others: arrays of the same trailing shape.

    Returns:
        float64 arrays in the order given (training set first).
    """
    x = x_train.astype(np.float64)
    mean = x.mean(axis=(0, 2, 3), keepdims=True)
    std = x.std(axis=(0, 2, 3), keepdims=True)
    std = np.where(std > _STD_FLOOR, std, 1.0)
    return [(a.astype(np.float64) - mean) / std for a in (x_train, *others)]


def targets(labels: np.ndarray, classes: Sequence[int], pm1: bool) -> np.ndarray:
    """One-hot (N, K) over ``classes``; (N, 1) ±1 when ``pm1`` and K = 2."""
    position = {c: k for k, c in enumerate(classes)}
    index = np.array([position[int(c)] for c in labels], dtype=np.int64)
    one_hot = np.eye(len(classes))[index]
    if pm1 and len(classes) == 2:
        return 2.0 * one_hot[:, 1:] - 1.0
    return one_hot


def image_dataset(
    name: str, n_train: int = 256, n_test: int = 512, n_probe: int = 32, seed: int = 0,
    classes: Optional[Sequence[int]] = None, root: Optional[str] = None, download: bool = False,
    mirror: Optional[str] = None, standardize: bool = True, pm1_targets: bool = True,
) -> Dataset:
    """A class-stratified subset of MNIST, Fashion-MNIST or CIFAR-10 (see the module docstring).

    Args:
        name: ``mnist``, ``fashion_mnist`` or ``cifar10``.
        n_train, n_test, n_probe: subset sizes (the probe set: the first test images).
        seed: the subsets' draw (``data.seed``).
        classes: labels to keep, in target-column order; None keeps 0..9.
        root, download, mirror: where the files are and whether to fetch them.
        standardize: per-channel standardization; False scales pixels to [0, 1].
        pm1_targets: two classes give one ±1 target column (MSE); else one-hot.

    Raises:
        DataError: classes not in the data, sizes larger than it, file problems.
    """
    classes = list(range(NUM_CLASSES)) if classes is None else [int(c) for c in classes]
    bad = [c for c in classes if not 0 <= c < NUM_CLASSES]
    if bad:
        raise DataError(f"data.classes={classes} is invalid: {name} has classes 0..{NUM_CLASSES - 1}, "
                        f"not {bad[0]}")
    if len(set(classes)) != len(classes) or len(classes) < 2:
        raise DataError(f"data.classes={classes} is invalid: need at least two distinct classes")
    x_train_all, y_train_all, x_test_all, y_test_all = load_splits(name, root, download, mirror)
    rng = np.random.default_rng(seed)
    train_idx = stratified_indices(y_train_all, classes, n_train, rng, "training", "data.n_train", name)
    test_idx = stratified_indices(y_test_all, classes, n_test, rng, "test", "data.n_test", name)
    x_train, x_test = x_train_all[train_idx], x_test_all[test_idx]
    if standardize:
        x_train, x_test = standardize_channels(x_train, x_test)
    else:
        x_train, x_test = x_train / 255.0, x_test / 255.0
    image_shape = tuple(int(s) for s in x_train.shape[1:])
    t = lambda a: torch.as_tensor(np.ascontiguousarray(a), dtype=torch.float64)  # noqa: E731
    flat = lambda a: t(a.reshape(len(a), -1))  # noqa: E731  C, H, W order
    y_train = t(targets(y_train_all[train_idx], classes, pm1_targets))
    y_test = t(targets(y_test_all[test_idx], classes, pm1_targets))
    x_test_flat = flat(x_test)
    return Dataset(name, flat(x_train), y_train, x_test_flat, y_test,
                   x_test_flat[:n_probe].clone(), y_probe=y_test[:n_probe].clone(),
                   image_shape=image_shape, num_classes=len(classes))
