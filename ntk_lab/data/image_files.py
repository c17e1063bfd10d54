"""Where the image data files live, their official hashes, and the download.

Root folder (``data.root``): the setting if given, else the environment variable
``NTK_LAB_DATA``, else the user's cache folder (``pooch.os_cache("ntk_lab")``, e.g.
``~/.cache/ntk_lab`` on Linux). Inside it each data set is looked for in

| data set        | ntk_lab's folder                    | also accepted                         |
| --------------- | ----------------------------------- | ------------------------------------- |
| ``mnist``        | ``mnist/``                          | ``MNIST/raw/`` (torchvision), the root |
| ``fashion_mnist``| ``fashion_mnist/``                  | ``FashionMNIST/raw/`` (torchvision), the root |
| ``cifar10``      | ``cifar10/cifar-10-batches-bin/``   | ``cifar-10-batches-bin/``, the root    |

IDX files may be gzipped (``.gz``) or not. torchvision keeps CIFAR-10 as the pickled python
version (``cifar-10-batches-py``), which is refused with a pointer to the binary version.

``data.download=true`` fetches the missing files with pooch from ``data.mirror`` (default: the
official location) and checks each against its published MD5 (torchvision's lists, the same as
the data sets' pages). pooch writes to a temporary name and renames only after the hash
matches, so a corrupted or interrupted download leaves no file; the CIFAR archive is unpacked
into a temporary folder that is renamed when complete.
"""

from __future__ import annotations

import logging
import os
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional

from ntk_lab.data.dataset import DataError
from ntk_lab.data import cifar

ROOT_ENV = "NTK_LAB_DATA"
# Seconds to wait for a mirror to answer before giving up (no network: a clear error, no hang).
DOWNLOAD_TIMEOUT_S = 30

IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
CIFAR_ARCHIVE = "cifar-10-binary.tar.gz"


@dataclass(frozen=True)
class Source:
    """One data set's files on disk and on the network.

    Attributes:
        folder: ntk_lab's folder under the root.
        other_folders: other accepted folders under the root (torchvision's layout, the root).
        hashes: download file name -> ``"md5:<hex>"``, the published checksum.
        mirror: the default base URL the files are fetched from.
    """

    folder: str
    other_folders: tuple[str, ...]
    hashes: Mapping[str, str]
    mirror: str


# Published MD5s: torchvision.datasets.MNIST / FashionMNIST ``resources`` and the CIFAR-10 page
# (https://www.cs.toronto.edu/~kriz/cifar.html lists the binary version's MD5).
SOURCES: dict[str, Source] = {
    "mnist": Source(
        folder="mnist", other_folders=("MNIST/raw", "."),
        hashes={
            "train-images-idx3-ubyte.gz": "md5:f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "train-labels-idx1-ubyte.gz": "md5:d53e105ee54ea40749a09fcbcd1e9432",
            "t10k-images-idx3-ubyte.gz": "md5:9fb629c4189551a2d022fa330f9573f3",
            "t10k-labels-idx1-ubyte.gz": "md5:ec29112dd5afa0611ce80d1b7f02629c",
        },
        mirror="https://ossci-datasets.s3.amazonaws.com/mnist/",
    ),
    "fashion_mnist": Source(
        folder="fashion_mnist", other_folders=("FashionMNIST/raw", "."),
        hashes={
            "train-images-idx3-ubyte.gz": "md5:8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "train-labels-idx1-ubyte.gz": "md5:25c81989df183df01b3e8a0aad5dffbe",
            "t10k-images-idx3-ubyte.gz": "md5:bef4ecab320f06d8554ea6380940ec79",
            "t10k-labels-idx1-ubyte.gz": "md5:bb300cfdad3c16e7a12a480ee83cd310",
        },
        mirror="http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    ),
    "cifar10": Source(
        folder="cifar10", other_folders=(".",),
        hashes={CIFAR_ARCHIVE: "md5:c32a1d4ab5d03f1284b67883e8d87530"},
        mirror="https://www.cs.toronto.edu/~kriz/",
    ),
}


# Folders where a distribution's package installs the real files, looked in when data.root is
# not set and the default root has none: Debian's ``dataset-fashion-mnist`` puts the four
# gzipped IDX files in /usr/share/datasets/fashion-mnist/ (Debian recompresses them, so their
# MD5s are not the published ones; the contents are, and the IDX reader checks their format).
SYSTEM_FOLDERS: dict[str, tuple[Path, ...]] = {
    "fashion_mnist": (Path("/usr/share/datasets/fashion-mnist"),),
}
# How to get them offline, for the missing-files message.
SYSTEM_PACKAGES = {"fashion_mnist": "apt-get install dataset-fashion-mnist"}


def find_system_idx_files(name: str) -> Optional[dict[str, Path]]:
    """The four IDX files of ``name`` from a system package's folder, or None."""
    for directory in SYSTEM_FOLDERS.get(name, ()):
        found = find_idx_files(name, directory, folders=(".",))
        if found is not None:
            return found
    return None


def default_root() -> Path:
    """``$NTK_LAB_DATA`` if set, else the user's cache folder for ntk_lab."""
    env = os.environ.get(ROOT_ENV)
    if env:
        return Path(env).expanduser()
    import pooch

    return Path(pooch.os_cache("ntk_lab"))


def resolve_root(root: Optional[str | Path]) -> Path:
    """``data.root`` as a path (``None``: :func:`default_root`)."""
    return default_root() if root in (None, "") else Path(root).expanduser()


# ----------------------------------------------------------------------------- finding files
def find_idx_files(name: str, root: Path,
                   folders: Optional[tuple[str, ...]] = None) -> Optional[dict[str, Path]]:
    """The four IDX files of ``name`` (base name -> path, ``.gz`` or not), or None if a folder
    holding all four is not found. ``folders``: where under ``root`` to look (default: the
    data set's folder, then torchvision's layout, then ``root`` itself)."""
    source = SOURCES[name]
    for folder in folders or (source.folder, *source.other_folders):
        directory = (root / folder).resolve()
        found = {}
        for base in IDX_FILES:
            for candidate in (directory / base, directory / f"{base}.gz"):
                if candidate.is_file():
                    found[base] = candidate
                    break
        if len(found) == len(IDX_FILES):
            return found
    return None


def find_cifar_dir(root: Path) -> Optional[Path]:
    """The folder holding CIFAR-10's six binary batch files, or None.

    Raises:
        DataError: only the pickled python version is there (it is never loaded).
    """
    folders = [root / "cifar10" / cifar.BINARY_DIR, root / cifar.BINARY_DIR, root / "cifar10", root]
    for directory in folders:
        if all((directory / f).is_file() for f in cifar.TRAIN_FILES + cifar.TEST_FILES):
            return directory
    for directory in (root / "cifar10" / cifar.PYTHON_DIR, root / cifar.PYTHON_DIR):
        if directory.is_dir():
            raise DataError(f"{directory} is CIFAR-10's python version, a pickle that ntk_lab "
                            f"never loads; {cifar.BINARY_VERSION_HELP}")
    return None


def missing_files_message(name: str, root: Path) -> str:
    """One line: which files to put where (or how to download them)."""
    source = SOURCES[name]
    where = root / source.folder
    if name == "cifar10":
        batches = cifar.TRAIN_FILES + cifar.TEST_FILES
        files = (f"{batches[0]} … {batches[-1]} (from {CIFAR_ARCHIVE}, {source.mirror}) into "
                 f"{where / cifar.BINARY_DIR}/, or the archive itself into {where}/")
    else:
        files = f"{', '.join(source.hashes)} (from {source.mirror}) into {where}/"
    package = f", install them ({SYSTEM_PACKAGES[name]})" if name in SYSTEM_PACKAGES else ""
    return (f"data={name}: files not found under data.root={root}; put {files}, set data.root "
            f"(or ${ROOT_ENV}) to a folder holding them{package}, or run with data.download=true")


# ----------------------------------------------------------------------------- download
def download(name: str, root: Path, mirror: Optional[str] = None,
             hashes: Optional[Mapping[str, str]] = None) -> Path:
    """Fetch ``name``'s files into ``root/<folder>/`` and check their hashes.

    Args:
        name: ``mnist``, ``fashion_mnist`` or ``cifar10``.
        root: the data root.
        mirror: base URL (``data.mirror``); None: the official location.
        hashes: file name -> ``"md5:…"`` / ``"sha256:…"``; None: the published ones (tests pass
            the hashes of the small files they serve).

    Returns:
        The folder the files are in.

    Raises:
        DataError: a mirror that cannot be reached, a file that is missing there, or a file
            whose hash does not match — one line saying which files to put where. Nothing
            partial is left behind.
    """
    import pooch
    import requests

    source = SOURCES[name]
    hashes = dict(source.hashes if hashes is None else hashes)
    base = (mirror or source.mirror).rstrip("/") + "/"
    target = root / source.folder
    first_new = next((p for p in reversed([target, *target.parents]) if not p.exists()), None)
    pooch.get_logger().setLevel(logging.WARNING)
    downloader = pooch.HTTPDownloader(progressbar=False, timeout=DOWNLOAD_TIMEOUT_S)
    try:
        for fname, known_hash in hashes.items():
            pooch.retrieve(base + fname, known_hash=known_hash, fname=fname, path=target,
                           downloader=downloader)
        if name == "cifar10":
            unpack_cifar(target / CIFAR_ARCHIVE, target)
    except DataError:
        raise
    except (requests.exceptions.RequestException, ValueError, OSError) as err:
        _remove_empty_dirs(target, first_new)
        reason = _download_reason(err, requests)
        raise DataError(f"data.download: could not fetch {name} from {base} ({reason}); "
                        f"without a network, put {', '.join(hashes)} (from {source.mirror}) "
                        f"into {target}/ and run again") from None
    return target


def _remove_empty_dirs(target: Path, first_new: Optional[Path]) -> None:
    """Remove the folders this download created (``first_new`` … ``target``) if they hold no file."""
    if first_new is None:
        return
    path = target
    while True:
        if path.is_dir() and not any(path.iterdir()):
            path.rmdir()
        if path == first_new or path == path.parent:
            break
        path = path.parent


def _download_reason(err: BaseException, requests) -> str:
    """A short reason for a failed download."""
    if isinstance(err, requests.exceptions.HTTPError) and err.response is not None:
        return f"HTTP {err.response.status_code} for {err.response.url}"
    if isinstance(err, requests.exceptions.Timeout):
        return f"no answer within {DOWNLOAD_TIMEOUT_S} s"
    if isinstance(err, requests.exceptions.ConnectionError):
        request = getattr(err, "request", None)
        url = getattr(request, "url", None) or ""
        return f"cannot connect{' to ' + url if url else ''}: no network, or the mirror is down"
    text = " ".join(str(err).split())
    if "hash" in text.lower():
        return "the downloaded file's hash does not match the published one; file removed"
    return (text[:160] + "…") if len(text) > 160 else text


def unpack_cifar(archive: Path, target: Path) -> Path:
    """Extract the binary batch files of ``archive`` into ``target/cifar-10-batches-bin``.

    Only the expected regular members are read (no path from the archive is trusted); they go
    to a temporary folder beside the destination, renamed into place when all are written.

    Raises:
        DataError: an unreadable archive or one lacking a batch file.
    """
    final = target / cifar.BINARY_DIR
    wanted = cifar.TRAIN_FILES + cifar.TEST_FILES
    staging = Path(tempfile.mkdtemp(prefix=".cifar-unpack-", dir=target))
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for fname in wanted:
                try:
                    member = tar.getmember(f"{cifar.BINARY_DIR}/{fname}")
                except KeyError:
                    raise DataError(f"{archive}: malformed archive, no {cifar.BINARY_DIR}/{fname}") from None
                stream = tar.extractfile(member) if member.isfile() else None
                if stream is None:
                    raise DataError(f"{archive}: malformed archive, {fname} is not a file")
                with stream, open(staging / fname, "wb") as out:
                    shutil.copyfileobj(stream, out)
        if final.exists():
            shutil.rmtree(final)
        os.replace(staging, final)
    except (tarfile.TarError, EOFError, OSError) as err:
        raise DataError(f"{archive}: damaged or truncated archive ({err})") from None
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return final
