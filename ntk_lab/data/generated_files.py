"""Files in the exact official formats, filled with generated images (no real data).

The tests write small ones; ``scripts/make_image_files.py`` writes full-size ones (60000 / 10000
MNIST-format images, 50000 / 10000 CIFAR-10-format records, the official file names and byte
sizes) for machines that cannot download the real files. Each class k gets a fixed smooth
random template; an image is 128 + contrast·template_k + noise, clipped to 0..255, so that the
classes are learnable but not trivially separable. These are NOT the real data sets.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ntk_lab.data import cifar, idx

NUM_CLASSES = 10


def class_images(labels: np.ndarray, shape: tuple[int, int, int], seed: int, noise_seed: int,
                 contrast: float = 40.0, noise: float = 40.0) -> np.ndarray:
    """uint8 images (N, C, H, W) whose mean depends on the label (see the module docstring).

    ``seed`` fixes the class templates (the same for every file of a data set), ``noise_seed``
    the per-image noise (different for every file).
    """
    c, h, w = shape
    coarse = np.random.default_rng(seed).normal(size=(NUM_CLASSES, c, 4, 4))  # low frequency
    rng = np.random.default_rng([seed, noise_seed])
    templates = np.kron(coarse, np.ones((1, 1, -(-h // 4), -(-w // 4))))[:, :, :h, :w]
    out = np.empty((len(labels), c, h, w), dtype=np.uint8)
    for start in range(0, len(labels), 5000):  # in blocks: bounded float64 memory
        lab = labels[start:start + 5000]
        pixels = 128 + contrast * templates[lab] + noise * rng.normal(size=(len(lab), c, h, w))
        out[start:start + 5000] = np.clip(np.rint(pixels), 0, 255).astype(np.uint8)
    return out


def balanced_labels(n: int, seed: int) -> np.ndarray:
    """n labels 0..9, as balanced as possible, shuffled."""
    return np.random.default_rng(seed).permutation(np.arange(n) % NUM_CLASSES).astype(np.int64)


def write_idx_dataset(directory: Path, n_train: int, n_test: int, seed: int = 0,
                      compress: bool = True, side: int = 28) -> None:
    """The four MNIST-format IDX files (``.gz`` when ``compress``) in ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if compress else ""
    for split, n, s in (("train", n_train, seed), ("t10k", n_test, seed + 1)):
        labels = balanced_labels(n, s)
        images = class_images(labels, (1, side, side), seed, s)[:, 0]
        idx.write_idx(directory / f"{split}-images-idx3-ubyte{suffix}", images, compress)
        idx.write_idx(directory / f"{split}-labels-idx1-ubyte{suffix}", labels, compress)


def write_cifar_dataset(directory: Path, per_file: int, seed: int = 0) -> None:
    """The six CIFAR-10 binary batch files, ``per_file`` records each, in ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for i, fname in enumerate(cifar.TRAIN_FILES + cifar.TEST_FILES):
        labels = balanced_labels(per_file, seed + 1 + i)
        cifar.write_batch(directory / fname, class_images(labels, cifar.IMAGE_SHAPE, seed, seed + 1 + i), labels)
