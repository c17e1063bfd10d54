"""Image data sets: the IDX and CIFAR-10 binary readers on files the tests write byte by byte,
every accepted layout, the refusal of pickles, subsets / classes / standardization / targets,
and one-line errors for every malformed input. No network (the download tests are in
test_image_download.py)."""

from __future__ import annotations

import gzip
import pickle
import struct

import numpy as np
import pytest
import torch

from ntk_lab.data import (
    DataError, make_dataset, cifar, image_files as files, idx, images,
    generated_files as synthetic,
)

# Standardized training pixels have mean 0 and std 1 per channel up to float64 round-off of
# a sum over ~10^4 values.
STANDARDIZED_TOL = 1e-10


def _idx_bytes(magic_type: int, shape: tuple[int, ...], values: bytes) -> bytes:
    """An IDX file written by hand (independently of idx.write_idx)."""
    return bytes([0, 0, magic_type, len(shape)]) + b"".join(struct.pack(">I", s) for s in shape) + values


def _mnist_layout(root, layout: str, n_train=60, n_test=40, compress=True):
    folder = {"ntk_lab": root / "mnist", "torchvision": root / "MNIST" / "raw", "flat": root}[layout]
    synthetic.write_idx_dataset(folder, n_train, n_test, seed=0, compress=compress)
    return folder


# ----------------------------------------------------------------------------- IDX
def test_idx_reader_decodes_a_hand_written_file_gzip_or_not(tmp_path):
    pixels = bytes(range(2 * 3 * 4))  # 2 images of 3 rows × 4 columns, values 0..23
    raw = _idx_bytes(0x08, (2, 3, 4), pixels)
    (tmp_path / "a").write_bytes(raw)
    (tmp_path / "b.gz").write_bytes(gzip.compress(raw))
    for name in ("a", "b.gz"):
        x = idx.read_images(tmp_path / name)
        assert x.shape == (2, 3, 4) and x.dtype == np.uint8
        assert x[1, 2, 3] == 12 + 2 * 4 + 3  # C order: image, row, column
    (tmp_path / "l").write_bytes(_idx_bytes(0x08, (3,), bytes([7, 0, 9])))
    assert idx.read_labels(tmp_path / "l").tolist() == [7, 0, 9]


@pytest.mark.parametrize("case,match", [
    ("truncated_body", "truncated"),
    ("truncated_header", "truncated"),
    ("trailing", "trailing bytes"),
    ("wrong_magic", "wrong magic"),
    ("truncated_gzip", "damaged or truncated gzip"),
    ("empty", "truncated"),
])
def test_idx_errors_are_one_line_naming_the_file(tmp_path, case, match):
    good = _idx_bytes(0x08, (2, 3, 4), bytes(24))
    content = {
        "truncated_body": good[:-5],
        "truncated_header": good[:9],
        "trailing": good + b"\0",
        "wrong_magic": _idx_bytes(0x08, (2,), bytes(2)),  # a labels file where images belong
        "truncated_gzip": gzip.compress(good)[:20],
        "empty": b"",
    }[case]
    path = tmp_path / ("images.gz" if case == "truncated_gzip" else "images")
    path.write_bytes(content)
    with pytest.raises(DataError, match=match) as info:
        idx.read_images(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_idx_label_out_of_range_is_an_error(tmp_path):
    (tmp_path / "l").write_bytes(_idx_bytes(0x08, (2,), bytes([3, 12])))
    with pytest.raises(DataError, match="label 12 out of range"):
        idx.read_labels(tmp_path / "l")


@pytest.mark.parametrize("layout", ["ntk_lab", "torchvision", "flat"])
@pytest.mark.parametrize("compress", [True, False])
def test_mnist_is_found_in_every_layout(tmp_path, layout, compress):
    folder = _mnist_layout(tmp_path, layout, compress=compress)
    data = make_dataset("mnist", root=str(tmp_path), n_train=20, n_test=10, n_probe=4)
    assert data.x_train.shape == (20, 784) and data.image_shape == (1, 28, 28)
    assert data.y_train.shape == (20, 10) and data.num_classes == 10
    x_all = idx.read_images(next(folder.glob("train-images*")))
    assert x_all.shape == (60, 28, 28)


def test_fashion_mnist_torchvision_layout(tmp_path):
    synthetic.write_idx_dataset(tmp_path / "FashionMNIST" / "raw", 30, 20, compress=False)
    data = make_dataset("fashion_mnist", root=str(tmp_path), n_train=6, n_test=4, n_probe=4,
                        classes=[0, 9], pm1_targets=False)
    assert data.y_train.shape == (6, 2) and data.num_classes == 2


def test_image_rows_are_the_images_in_c_h_w_order(tmp_path):
    """Row i of x_train is image i standardized and flattened; as_images() undoes the flattening."""
    _mnist_layout(tmp_path, "ntk_lab", n_train=50, n_test=20)
    data = make_dataset("mnist", root=str(tmp_path), n_train=50, n_test=20, n_probe=4,
                        standardize=False)
    raw = idx.read_images(tmp_path / "mnist" / "train-images-idx3-ubyte.gz") / 255.0
    raw_rows = torch.as_tensor(raw.reshape(50, -1))
    # every training row is one of the raw images (all 50 are drawn, in a shuffled order)
    match = (data.x_train[:, None, :] - raw_rows[None]).abs().amax(-1).min(1).values
    assert match.max().item() == 0.0
    img = data.as_images().x_train
    assert torch.equal(img[:, 0, 5, 7], data.x_train[:, 5 * 28 + 7])


# ----------------------------------------------------------------------------- CIFAR
def _cifar_record(label: int, r: int, g: int, b: int) -> bytes:
    return bytes([label]) + bytes([r]) * 1024 + bytes([g]) * 1024 + bytes([b]) * 1024


def test_cifar_record_layout_is_label_then_red_green_blue_planes(tmp_path):
    record = bytearray(_cifar_record(4, 10, 20, 30))
    record[1 + 32 * 5 + 7] = 99  # red plane, row 5, column 7
    record[1 + 2048 + 31] = 77  # blue plane, row 0, column 31
    (tmp_path / "b.bin").write_bytes(bytes(record) + _cifar_record(9, 1, 2, 3))
    x, y = cifar.read_batch(tmp_path / "b.bin")
    assert x.shape == (2, 3, 32, 32) and y.tolist() == [4, 9]
    assert x[0, 0, 5, 7] == 99 and x[0, 2, 0, 31] == 77 and x[0, 1, 3, 3] == 20
    assert x[1, :, 0, 0].tolist() == [1, 2, 3]


def test_cifar_in_every_layout_with_per_channel_standardization(tmp_path):
    for i, folder in enumerate([tmp_path / "a" / "cifar10" / "cifar-10-batches-bin",
                                tmp_path / "b" / "cifar-10-batches-bin", tmp_path / "c"]):
        synthetic.write_cifar_dataset(folder, per_file=40, seed=i)
        data = make_dataset("cifar10", root=str(folder.parents[1] if i == 0 else folder.parent
                                               if i == 1 else folder),
                            n_train=60, n_test=20, n_probe=8)
        assert data.image_shape == (3, 32, 32) and data.x_train.shape == (60, 3072)
        img = data.as_images().x_train
        mean, std = img.mean(dim=(0, 2, 3)), img.std(dim=(0, 2, 3), unbiased=False)
        assert torch.allclose(mean, torch.zeros(3, dtype=torch.float64), atol=STANDARDIZED_TOL)
        assert torch.allclose(std, torch.ones(3, dtype=torch.float64), atol=STANDARDIZED_TOL)


@pytest.mark.parametrize("case,match", [
    ("truncated", "truncated or malformed"),
    ("bad_label", "label 200"),
])
def test_cifar_errors_name_the_file(tmp_path, case, match):
    synthetic.write_cifar_dataset(tmp_path, per_file=4)
    path = tmp_path / "data_batch_3.bin"
    content = path.read_bytes()
    path.write_bytes(content[:-100] if case == "truncated" else bytes([200]) + content[1:])
    with pytest.raises(DataError, match=match) as info:
        make_dataset("cifar10", root=str(tmp_path), n_train=8, n_test=4, n_probe=2)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


class _Trap:
    """Unpickling this object would call os.mkdir(<marker>): the proof that a pickle was loaded."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.mkdir, (self.marker,))


def test_a_pickle_is_never_loaded(tmp_path):
    marker = tmp_path / "pickle_was_loaded"
    payload = pickle.dumps({"data": _Trap(str(marker))}, protocol=2)
    # torchvision's python version of CIFAR-10 ...
    py_dir = tmp_path / "cifar-10-batches-py"
    py_dir.mkdir()
    for fname in ("data_batch_1", "test_batch", "batches.meta"):
        (py_dir / fname).write_bytes(payload)
    with pytest.raises(DataError, match="python version, a pickle that ntk_lab never loads") as info:
        make_dataset("cifar10", root=str(tmp_path), n_train=4, n_test=4, n_probe=2)
    assert "cifar-10-binary.tar.gz" in str(info.value) and "\n" not in str(info.value)
    # ... and a pickle renamed to a binary batch file
    bin_dir = tmp_path / "cifar-10-batches-bin"
    synthetic.write_cifar_dataset(bin_dir, per_file=4)
    (bin_dir / "data_batch_2.bin").write_bytes(payload)
    with pytest.raises(DataError, match="is a Python pickle"):
        make_dataset("cifar10", root=str(tmp_path), n_train=4, n_test=4, n_probe=2)
    assert not marker.exists()


def test_a_cifar_archive_put_by_the_user_is_unpacked(tmp_path):
    import tarfile

    src = tmp_path / "src" / "cifar-10-batches-bin"
    synthetic.write_cifar_dataset(src, per_file=10)
    (tmp_path / "root" / "cifar10").mkdir(parents=True)
    with tarfile.open(tmp_path / "root" / "cifar10" / "cifar-10-binary.tar.gz", "w:gz") as tar:
        tar.add(src, arcname="cifar-10-batches-bin")
    data = make_dataset("cifar10", root=str(tmp_path / "root"), n_train=20, n_test=10, n_probe=4)
    assert data.x_train.shape == (20, 3072)
    unpacked = tmp_path / "root" / "cifar10" / "cifar-10-batches-bin" / "test_batch.bin"
    assert unpacked.read_bytes() == (src / "test_batch.bin").read_bytes()


# ----------------------------------------------------------------------------- options
def test_stratified_subsets_targets_and_seed(tmp_path):
    _mnist_layout(tmp_path, "ntk_lab", n_train=200, n_test=100)
    kw = dict(root=str(tmp_path), n_train=30, n_test=20, n_probe=6, classes=[3, 5, 8])
    a = make_dataset("mnist", seed=1, **kw)
    b = make_dataset("mnist", seed=1, **kw)
    c = make_dataset("mnist", seed=2, **kw)
    assert torch.equal(a.x_train, b.x_train) and not torch.equal(a.x_train, c.x_train)
    assert a.y_train.shape == (30, 3) and torch.all(a.y_train.sum(1) == 1)
    assert a.y_train.sum(0).tolist() == [10.0, 10.0, 10.0]  # stratified: 30 / 3 each
    counts = sorted(make_dataset("mnist", seed=0, **{**kw, "n_train": 31}).y_train.sum(0).tolist())
    assert counts == [10.0, 10.0, 11.0]  # the remainder goes to one class
    assert torch.equal(a.x_probe, a.x_test[:6]) and torch.equal(a.y_probe, a.y_test[:6])


def test_two_classes_give_pm1_targets_or_one_hot(tmp_path):
    _mnist_layout(tmp_path, "ntk_lab", n_train=100, n_test=50)
    d = make_dataset("mnist", root=str(tmp_path), n_train=20, n_test=10, n_probe=4, classes=[7, 2])
    assert d.y_train.shape == (20, 1) and set(d.y_train.flatten().tolist()) == {-1.0, 1.0}
    assert d.num_classes == 2 and d.y_train.sum().item() == 0.0
    # the labels behind the ±1: +1 is classes[1] = 2
    raw_labels = idx.read_labels(tmp_path / "mnist" / "train-labels-idx1-ubyte.gz")
    raw_x = idx.read_images(tmp_path / "mnist" / "train-images-idx3-ubyte.gz").reshape(100, -1)
    d_raw = make_dataset("mnist", root=str(tmp_path), n_train=20, n_test=10, n_probe=4,
                         classes=[7, 2], standardize=False)
    for row, target in zip(d_raw.x_train, d_raw.y_train[:, 0]):
        i = int(np.flatnonzero((raw_x / 255.0 == row.numpy()).all(1))[0])
        assert raw_labels[i] == (2 if target > 0 else 7)
    one_hot = make_dataset("mnist", root=str(tmp_path), n_train=20, n_test=10, n_probe=4,
                           classes=[7, 2], pm1_targets=False)
    assert one_hot.y_train.shape == (20, 2)


@pytest.mark.parametrize("settings,match", [
    ({"classes": [3, 12]}, r"data.classes=\[3, 12\] is invalid: mnist has classes 0..9, not 12"),
    ({"classes": [3]}, "at least two distinct classes"),
    ({"n_train": 61}, "data.n_train=61 is larger than the 60 training images"),
    ({"n_test": 41, "classes": None}, "data.n_test=41 is larger than the 40 test images"),
])
def test_option_errors_are_one_line(tmp_path, settings, match):
    _mnist_layout(tmp_path, "ntk_lab", n_train=60, n_test=40)  # 6 / 4 images per class
    kw = {"root": str(tmp_path), "n_train": 10, "n_test": 10, "n_probe": 2, **settings}
    with pytest.raises(DataError, match=match) as info:
        make_dataset("mnist", **kw)
    assert "\n" not in str(info.value)


def test_missing_files_say_which_files_to_put_where(tmp_path):
    with pytest.raises(DataError) as info:
        make_dataset("fashion_mnist", root=str(tmp_path), n_train=4, n_test=4)
    message = str(info.value)
    assert "\n" not in message and str(tmp_path / "fashion_mnist") in message
    assert "train-images-idx3-ubyte.gz" in message and "data.download=true" in message
    with pytest.raises(DataError, match="cifar-10-batches-bin") as info:
        make_dataset("cifar10", root=str(tmp_path), n_train=4, n_test=4)


def test_default_root_is_the_environment_variable_then_the_cache(monkeypatch, tmp_path):
    monkeypatch.setenv(files.ROOT_ENV, str(tmp_path))
    assert files.resolve_root(None) == tmp_path
    assert files.resolve_root("/x/y") == files.Path("/x/y")
    monkeypatch.delenv(files.ROOT_ENV)
    assert "ntk_lab" in str(files.resolve_root(None))


def test_stratified_indices_are_distinct_and_balanced():
    labels = np.repeat(np.arange(10), 50)
    chosen = images.stratified_indices(labels, [1, 4], 37, np.random.default_rng(0),
                                       "training", "data.n_train", "x")
    assert len(set(chosen.tolist())) == 37
    assert sorted(np.bincount(labels[chosen], minlength=10)[[1, 4]].tolist()) == [18, 19]
    # a class with too few images gives them all; the other makes up the rest
    short = np.concatenate([np.zeros(5, int), np.ones(50, int)])
    chosen = images.stratified_indices(short, [0, 1], 30, np.random.default_rng(0), "", "", "")
    assert np.bincount(short[chosen]).tolist() == [5, 25]


def test_fashion_mnist_from_the_system_package_when_no_root_is_set(monkeypatch, tmp_path):
    """Debian's dataset-fashion-mnist (gzipped IDX in /usr/share/datasets/fashion-mnist/) is
    used when data.root is unset and the default root has no files — never when data.root
    names a folder, and the missing-files line says how to install it."""
    system = tmp_path / "usr-share-datasets-fashion-mnist"
    synthetic.write_idx_dataset(system, 30, 20, seed=3)
    monkeypatch.setitem(files.SYSTEM_FOLDERS, "fashion_mnist", (system,))
    monkeypatch.setenv(files.ROOT_ENV, str(tmp_path / "empty-cache"))
    data = make_dataset("fashion_mnist", n_train=20, n_test=10, n_probe=4)
    assert data.image_shape == (1, 28, 28) and len(data.x_train) == 20
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        make_dataset("fashion_mnist", root=str(tmp_path / "elsewhere"), n_train=4, n_test=4)
    with pytest.raises(DataError) as info:  # MNIST has no system package: no such advice
        make_dataset("mnist", n_train=4, n_test=4)
    assert "apt-get" not in str(info.value)


@pytest.mark.slow
@pytest.mark.skipif(files.find_system_idx_files("fashion_mnist") is None,
                    reason="Debian's dataset-fashion-mnist is not installed")
def test_the_real_fashion_mnist_files_of_the_debian_package(monkeypatch, tmp_path):
    monkeypatch.setenv(files.ROOT_ENV, str(tmp_path))
    train_x, train_y, test_x, test_y = images.load_splits("fashion_mnist")
    assert train_x.shape == (60000, 1, 28, 28) and test_x.shape == (10000, 1, 28, 28)
    assert np.bincount(train_y).tolist() == [6000] * 10  # the published class balance
    assert np.bincount(test_y).tolist() == [1000] * 10
