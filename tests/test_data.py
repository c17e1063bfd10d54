"""Datasets: shapes, determinism, the circle probe, and clear errors for a user's file."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ntk_lab.data import DataError, make_dataset


def test_circle_is_jacot_s_setup():
    d = make_dataset("circle", n_train=4, n_test=10, n_probe=16, seed=0)
    assert d.x_train.shape == (4, 2) and d.y_train.shape == (4, 1)
    assert torch.allclose(d.y_train[:, 0], d.x_train[:, 0] * d.x_train[:, 1])
    assert torch.allclose(d.x_probe.norm(dim=1), torch.ones(16, dtype=torch.float64))
    assert torch.equal(d.x_probe[0], torch.tensor([1.0, 0.0], dtype=torch.float64))
    assert d.probe_angle[1].item() == pytest.approx(2 * math.pi / 16)


def test_datasets_are_deterministic_in_their_seed():
    a, b = make_dataset("sphere_teacher", seed=1), make_dataset("sphere_teacher", seed=1)
    c = make_dataset("sphere_teacher", seed=2)
    assert torch.equal(a.y_train, b.y_train) and not torch.equal(a.y_train, c.y_train)
    assert torch.allclose(a.x_train.norm(dim=1), torch.ones(len(a.x_train), dtype=torch.float64))


def test_digits_are_standardized_one_hot():
    d = make_dataset("digits", n_train=200, n_test=100, n_probe=8)
    assert d.x_train.shape == (200, 64) and d.y_train.shape == (200, 10)
    assert torch.all(d.y_train.sum(1) == 1)
    assert d.x_train.mean(0).abs().max() < 1e-12  # standardized with the train statistics


def test_file_npz_and_csv(tmp_path):
    x = np.random.default_rng(0).normal(size=(50, 3))
    np.savez(tmp_path / "d.npz", x=x, y=x[:, 0])
    d = make_dataset("file", path=str(tmp_path / "d.npz"), n_probe=4)
    assert d.x_train.shape == (40, 3) and d.y_test.shape == (10, 1)
    (tmp_path / "d.csv").write_text("a,b,y\n" + "\n".join(f"{i},{i+1},{2*i}" for i in range(20)))
    d = make_dataset("file", path=str(tmp_path / "d.csv"), n_probe=2)
    assert d.in_dim == 2 and d.out_dim == 1


@pytest.mark.parametrize("content,match", [
    (None, "file not found"),
    ("bad_ext", "unsupported file type"),
    ("missing_y", "lacks array"),
    ("nan", "NaN"),
    ("mismatch", "rows"),
    ("strings", "numeric"),
])
def test_file_errors_name_data_path(tmp_path, content, match):
    path = tmp_path / "data.npz"
    if content == "bad_ext":
        path = tmp_path / "data.txt"
        path.write_text("1 2 3")
    elif content == "missing_y":
        np.savez(path, x=np.ones((5, 2)))
    elif content == "nan":
        np.savez(path, x=np.full((5, 2), np.nan), y=np.ones(5))
    elif content == "mismatch":
        np.savez(path, x=np.ones((5, 2)), y=np.ones(4))
    elif content == "strings":
        path = tmp_path / "data.csv"
        path.write_text("a,y\nfoo,1\nbar,2\n")
    with pytest.raises(DataError, match=match) as info:
        make_dataset("file", path=str(path))
    assert str(info.value).startswith("data.path") and "\n" not in str(info.value)


def test_unknown_dataset_lists_the_allowed_ones():
    with pytest.raises(DataError, match="circle"):
        make_dataset("imagenet")


@pytest.mark.parametrize("name", ["circle", "sphere_teacher", "digits"])
def test_probe_targets_are_the_probe_inputs_targets(name):
    """y_probe pairs each probe input with its own target: the circle's x₁x₂, and for the
    other sets the test targets of the test inputs the probes were taken from."""
    data = make_dataset(name, n_probe=8)
    assert data.y_probe.shape == (8, data.out_dim)
    if name == "circle":
        expected = (data.x_probe[:, 0] * data.x_probe[:, 1]).unsqueeze(1)
    else:
        assert torch.equal(data.x_probe, data.x_test[:8])
        expected = data.y_test[:8]
    assert torch.equal(data.y_probe, expected)


def test_digits_as_images_keeps_pixel_order():
    """digits rows are 8×8 images flattened row by row: pixel (r, c) is column 8r + c."""
    data = make_dataset("digits", n_train=4, n_test=8, n_probe=2)
    images = data.as_images()
    assert data.image_shape == (1, 8, 8) and data.num_classes == 10
    assert images.x_train.shape == (4, 1, 8, 8) and images.x_probe.shape == (2, 1, 8, 8)
    assert torch.equal(images.x_train[:, 0, 2, 5], data.x_train[:, 8 * 2 + 5])
    assert torch.equal(images.y_train, data.y_train)


def test_vector_data_as_images_is_a_one_line_error():
    with pytest.raises(DataError, match="vectors, not images"):
        make_dataset("circle").as_images()
