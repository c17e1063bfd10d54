"""CIFAR-10's binary version (``cifar-10-batches-bin``; Krizhevsky 2009).

Each record is 3073 bytes: the label (0–9), then 3072 pixel bytes — 1024 red, 1024 green,
1024 blue, each a 32×32 image row by row — so a record reshapes to (3, 32, 32) in C, H, W
order. The official files hold 10000 records each (30,730,000 bytes): ``data_batch_1.bin`` …
``data_batch_5.bin`` (training) and ``test_batch.bin``.

The "python version" (``cifar-10-batches-py``) is a pickle, and unpickling runs arbitrary
code: it is never opened. :data:`BINARY_VERSION_HELP` tells the user where the binary version is.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ntk_lab.data.dataset import DataError

RECORD_BYTES = 1 + 3 * 32 * 32
IMAGE_SHAPE = (3, 32, 32)
RECORDS_PER_FILE = 10000
TRAIN_FILES = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
TEST_FILES = ("test_batch.bin",)
BINARY_DIR = "cifar-10-batches-bin"
PYTHON_DIR = "cifar-10-batches-py"
BINARY_VERSION_HELP = ("get the binary version, cifar-10-binary.tar.gz ('CIFAR-10 binary version "
                       "(suitable for C programs)', https://www.cs.toronto.edu/~kriz/cifar.html), "
                       "or run with data.download=true")
# Pickle streams start with the PROTO opcode 0x80; a CIFAR record starts with a label 0–9.
_PICKLE_PROTO = 0x80


def read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images (n, 3, 32, 32) uint8 and labels (n,) int64 from one binary batch file.

    Raises:
        DataError: unreadable, a pickle, a size that is not a whole number of records
            (truncated), or a label outside 0–9 — naming the file.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise DataError(f"cannot read {path}: {err.strerror or err}") from None
    if raw[:1] == bytes([_PICKLE_PROTO]):
        raise DataError(f"{path} is a Python pickle (the CIFAR-10 python version), which "
                        f"ntk_lab never loads; {BINARY_VERSION_HELP}")
    if len(raw) == 0 or len(raw) % RECORD_BYTES:
        raise DataError(f"{path}: truncated or malformed: {len(raw)} bytes is not a whole "
                        f"number of {RECORD_BYTES}-byte records (an official batch is "
                        f"{RECORD_BYTES * RECORDS_PER_FILE} bytes)")
    records = np.frombuffer(raw, dtype=np.uint8).reshape(-1, RECORD_BYTES)
    labels = records[:, 0].astype(np.int64)
    if labels.max() > 9:
        bad = int(np.argmax(labels > 9))
        raise DataError(f"{path}: malformed: record {bad} has label {labels[bad]} (allowed 0..9)")
    return records[:, 1:].reshape(-1, *IMAGE_SHAPE), labels


def read_split(directory: Path, train: bool) -> tuple[np.ndarray, np.ndarray]:
    """All records of the training (5 files) or test (1 file) split of ``directory``."""
    names = TRAIN_FILES if train else TEST_FILES
    parts = [read_batch(Path(directory) / name) for name in names]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def write_batch(path: Path, images: np.ndarray, labels: np.ndarray) -> None:
    """Write images (n, 3, 32, 32) uint8 and labels (n,) as one binary batch file.

    Used by the tests and by ``scripts/make_cifar_format_files.py``.
    """
    images = np.ascontiguousarray(images, dtype=np.uint8).reshape(len(images), -1)
    records = np.concatenate([np.asarray(labels, dtype=np.uint8)[:, None], images], axis=1)
    Path(path).write_bytes(records.tobytes())
