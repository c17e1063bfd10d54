"""data.download=true against a local HTTP server on 127.0.0.1: good files are fetched and
read, corrupted (hash mismatch) and truncated (connection closed early) files leave nothing
behind, and an unreachable mirror gives one line saying which files to put where."""

from __future__ import annotations

import hashlib
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from ntk_lab.data import DataError, make_dataset, image_files as files, generated_files as synthetic


class _Server:
    """Serves ``content[name]``; ``mode[name]`` = "corrupt" flips a byte, "truncate" promises
    the full length but sends half and closes, "missing" answers 404."""

    def __init__(self):
        self.content: dict[str, bytes] = {}
        self.mode: dict[str, str] = {}
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's name)
                name = self.path.rsplit("/", 1)[-1]
                body, mode = server.content.get(name), server.mode.get(name, "good")
                if body is None or mode == "missing":
                    self.send_error(404)
                    return
                if mode == "corrupt":
                    body = bytes([body[0] ^ 0xFF]) + body[1:]
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[: len(body) // 2] if mode == "truncate" else body)
                if mode == "truncate":
                    self.close_connection = True

            def log_message(self, *args):  # keep the test output clean
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/data/"
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = _Server()
    yield s
    s.close()


def _md5(data: bytes) -> str:
    return "md5:" + hashlib.md5(data).hexdigest()


def _serve_mnist(server: _Server, tmp_path: Path) -> dict[str, str]:
    src = tmp_path / "src"
    synthetic.write_idx_dataset(src, 40, 20, compress=True)
    for p in src.iterdir():
        server.content[p.name] = p.read_bytes()
    return {name: _md5(body) for name, body in server.content.items()}


def _files_under(path: Path) -> list[Path]:
    return [p for p in path.rglob("*") if p.is_file()] if path.exists() else []


def test_download_fetches_checks_and_reads(server, tmp_path):
    hashes = _serve_mnist(server, tmp_path)
    root = tmp_path / "root"
    folder = files.download("mnist", root, mirror=server.url, hashes=hashes)
    assert folder == root / "mnist" and sorted(p.name for p in folder.iterdir()) == sorted(hashes)
    data = make_dataset("mnist", root=str(root), n_train=20, n_test=10, n_probe=4)
    assert data.x_train.shape == (20, 784)


@pytest.mark.parametrize("mode", ["corrupt", "truncate", "missing"])
def test_a_bad_download_leaves_nothing_behind(server, tmp_path, mode):
    hashes = _serve_mnist(server, tmp_path)
    server.mode["t10k-images-idx3-ubyte.gz"] = mode
    root = tmp_path / "root"
    with pytest.raises(DataError) as info:
        files.download("mnist", root, mirror=server.url, hashes=hashes)
    message = str(info.value)
    assert "\n" not in message and message.startswith("data.download: could not fetch mnist")
    assert str(root / "mnist") in message  # where to put the files by hand
    if mode == "corrupt":
        assert "hash does not match" in message
    if mode == "missing":
        assert "HTTP 404" in message
    left = _files_under(root)
    # only complete files whose hash matched may remain; never the bad one nor a temporary
    assert all(p.name in hashes and _md5(p.read_bytes()) == hashes[p.name] for p in left)
    assert "t10k-images-idx3-ubyte.gz" not in [p.name for p in left]


def test_no_network_is_one_line_naming_files_and_folder(tmp_path):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    root = tmp_path / "root"
    with pytest.raises(DataError) as info:
        make_dataset("fashion_mnist", root=str(root), download=True,
                     mirror=f"http://127.0.0.1:{port}/", n_train=4, n_test=4)
    message = str(info.value)
    assert "\n" not in message and "train-labels-idx1-ubyte.gz" in message
    assert str(root / "fashion_mnist") in message and "cannot connect" in message
    assert not root.exists()  # the folders the download created are gone again


def test_cifar_archive_download_is_unpacked(server, tmp_path):
    src = tmp_path / "src" / "cifar-10-batches-bin"
    synthetic.write_cifar_dataset(src, per_file=10)
    archive = tmp_path / "src" / "cifar-10-binary.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src, arcname="cifar-10-batches-bin")
    server.content[archive.name] = archive.read_bytes()
    hashes = {archive.name: _md5(archive.read_bytes())}
    root = tmp_path / "root"
    files.download("cifar10", root, mirror=server.url, hashes=hashes)
    assert (root / "cifar10" / "cifar-10-batches-bin" / "data_batch_5.bin").read_bytes() == \
        (src / "data_batch_5.bin").read_bytes()
    assert not list((root / "cifar10").glob(".cifar-unpack-*"))  # no staging folder left
    data = make_dataset("cifar10", root=str(root), n_train=20, n_test=10, n_probe=4)
    assert data.image_shape == (3, 32, 32)


# The checksums as their publishers give them, typed here from the sources (not from
# ntk_lab's table): MNIST — torchvision.datasets.MNIST.resources (LeCun's page publishes
# none); Fashion-MNIST — the MD5 column of the zalandoresearch/fashion-mnist README;
# CIFAR-10 — https://www.cs.toronto.edu/~kriz/cifar.html, "CIFAR-10 binary version".
PUBLISHED_MD5 = {
    "mnist": {
        "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
    },
    "fashion_mnist": {
        "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
    },
    "cifar10": {"cifar-10-binary.tar.gz": "c32a1d4ab5d03f1284b67883e8d87530"},
}


def test_the_download_checks_the_published_md5s():
    ours = {name: {fname: known for fname, known in source.hashes.items()}
            for name, source in files.SOURCES.items()}
    assert ours == {name: {fname: f"md5:{digest}" for fname, digest in table.items()}
                    for name, table in PUBLISHED_MD5.items()}