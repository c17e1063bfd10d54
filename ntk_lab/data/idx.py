"""The IDX file format of MNIST and Fashion-MNIST (LeCun et al. 1998), gzip-compressed or not.

Layout (big-endian): two zero bytes, a type code (0x08 = unsigned byte, the only one these
data sets use), the number of dimensions k, then k 32-bit sizes, then the values in C order.
Images are k = 3 (count, rows, columns), magic 0x00000803 = 2051; labels are k = 1, magic
0x00000801 = 2049. A file starting with the gzip magic 1f 8b is decompressed first.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np

from ntk_lab.data.dataset import DataError

IMAGES_MAGIC = 2051
LABELS_MAGIC = 2049
_GZIP_MAGIC = b"\x1f\x8b"
_UBYTE = 0x08


def read_bytes(path: Path) -> bytes:
    """The file's content, gunzipped when it starts with the gzip magic.

    Raises:
        DataError: unreadable, or a damaged / truncated gzip stream (naming the file).
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise DataError(f"cannot read {path}: {err.strerror or err}") from None
    if raw[:2] != _GZIP_MAGIC:
        return raw
    try:
        return gzip.decompress(raw)
    except (EOFError, OSError, zlib.error) as err:
        raise DataError(f"{path}: damaged or truncated gzip file ({err}); delete it and "
                        f"download it again") from None


def parse_idx(content: bytes, name: str, magic: int) -> np.ndarray:
    """Decode an IDX byte string into a uint8 array of the sizes its header declares.

    Args:
        content: the uncompressed file content.
        name: the file name, for the error message.
        magic: the expected magic number (``IMAGES_MAGIC`` or ``LABELS_MAGIC``).

    Returns:
        uint8 array, shape (count, rows, cols) for images, (count,) for labels.

    Raises:
        DataError: wrong magic, a header or body shorter or longer than declared.
    """
    kind = "images" if magic == IMAGES_MAGIC else "labels"
    if len(content) < 4:
        raise DataError(f"{name}: truncated IDX file ({len(content)} bytes, no header)")
    found = struct.unpack(">I", content[:4])[0]
    if found != magic:
        raise DataError(f"{name}: wrong magic number {found:#010x}, expected {magic:#010x} "
                        f"(IDX {kind}); not an IDX {kind} file")
    ndim = content[3]
    header = 4 + 4 * ndim
    if len(content) < header:
        raise DataError(f"{name}: truncated IDX header ({len(content)} of {header} bytes)")
    shape = struct.unpack(f">{ndim}I", content[4:header])
    expected = header + int(np.prod(shape, dtype=np.int64))
    if len(content) != expected:
        what = "truncated" if len(content) < expected else "has trailing bytes"
        raise DataError(f"{name}: {what}: {len(content)} bytes, the header {tuple(shape)} "
                        f"needs {expected}")
    return np.frombuffer(content, dtype=np.uint8, offset=header).reshape(shape)


def read_images(path: Path) -> np.ndarray:
    """uint8 images (count, rows, cols) from an IDX images file (gzip or not)."""
    path = Path(path)
    return parse_idx(read_bytes(path), str(path), IMAGES_MAGIC)


def read_labels(path: Path, num_classes: int = 10) -> np.ndarray:
    """int64 labels (count,) from an IDX labels file; every label must be < num_classes."""
    path = Path(path)
    labels = parse_idx(read_bytes(path), str(path), LABELS_MAGIC).astype(np.int64)
    if labels.size and labels.max() >= num_classes:
        raise DataError(f"{path}: label {labels.max()} out of range 0..{num_classes - 1}")
    return labels


def write_idx(path: Path, array: np.ndarray, compress: bool = False) -> None:
    """Write a uint8 array as an IDX file (images: 3-D, labels: 1-D), gzip when asked.

    Used by the tests and by the scripts that generate files in the official format.
    """
    array = np.ascontiguousarray(array, dtype=np.uint8)
    head = struct.pack(">BBBB", 0, 0, _UBYTE, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    content = head + array.tobytes()
    Path(path).write_bytes(gzip.compress(content, mtime=0) if compress else content)
