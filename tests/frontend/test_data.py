"""Data loading: npz layouts, ImageFolder, normalisation, limits."""

from __future__ import annotations

import numpy as np
import pytest

from adans_toolchain.errors import DataError
from adans_toolchain.frontend.data import Preprocessing, load_image_set


def test_npz_uint8_nhwc_is_normalised(tmp_path):
    x = np.full((4, 8, 8, 3), 255, np.uint8)
    np.savez(tmp_path / "d.npz", x=x, y=np.arange(4))
    data = load_image_set(tmp_path / "d.npz", Preprocessing(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25)))
    assert data.x.shape == (4, 3, 8, 8)
    assert np.allclose(data.x.numpy(), 2.0)
    assert data.y.tolist() == [0, 1, 2, 3]


def test_npz_float_nchw_is_taken_as_preprocessed(tmp_path):
    x = np.random.default_rng(0).standard_normal((3, 3, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=x, y=np.zeros(3, np.int64))
    data = load_image_set(tmp_path / "d.npz", Preprocessing())
    assert np.array_equal(data.x.numpy(), x)
    with pytest.raises(DataError, match="already preprocessed"):
        load_image_set(tmp_path / "d.npz", Preprocessing(), explicit_normalisation=True)


def test_limit_and_label_offset(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.zeros((10, 4, 4, 3), np.uint8), y=np.arange(10))
    data = load_image_set(tmp_path / "d.npz", Preprocessing(label_offset=1), limit=3)
    assert len(data) == 3 and data.y.tolist() == [1, 2, 3]


def test_image_folder_resize_crop_and_class_order(tmp_path):
    from PIL import Image

    for label, name in enumerate(["cat", "dog"]):
        (tmp_path / name).mkdir()
        for i in range(3):
            Image.fromarray(np.full((40, 60, 3), 40 * label + i, np.uint8)).save(tmp_path / name / f"{i}.png")
    data = load_image_set(tmp_path, Preprocessing(input_size=(16, 16)), limit=4)
    assert data.x.shape == (4, 3, 16, 16)
    # Round-robin over classes so a limited set still covers both.
    assert data.y.tolist() == [0, 1, 0, 1]


def test_bad_shapes(tmp_path):
    np.savez(tmp_path / "a.npz", x=np.zeros((4, 8, 8), np.uint8), y=np.zeros(4, np.int64))
    with pytest.raises(DataError, match="4-D"):
        load_image_set(tmp_path / "a.npz", Preprocessing())
    np.savez(tmp_path / "b.npz", x=np.zeros((4, 8, 8, 3), np.uint8), y=np.zeros(3, np.int64))
    with pytest.raises(DataError, match="one label per image"):
        load_image_set(tmp_path / "b.npz", Preprocessing())
    np.savez(tmp_path / "c.npz", images=np.zeros((4, 8, 8, 3), np.uint8))
    with pytest.raises(DataError, match="must hold arrays"):
        load_image_set(tmp_path / "c.npz", Preprocessing())
