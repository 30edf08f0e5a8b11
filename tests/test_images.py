"""Tests for genmodels.images: uint8 conversion, grids, PNG / npz files, scatter plots."""

import numpy as np
import pytest
import torch
from PIL import Image

from genmodels import images
from genmodels.images import make_grid, save_grid, save_images, save_npz, scatter_plot, to_uint8


def _random_images(n=5, c=1, h=6, w=4, seed=0):
    return torch.rand(n, c, h, w, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_to_uint8_exact_values_and_clamping():
    x = torch.tensor([-1.0, 0.0, 1.0, -3.0, 2.0, 0.5, float("nan")]).reshape(1, 1, 1, 7)
    assert to_uint8(x).reshape(-1).tolist() == [0, 128, 255, 0, 255, 191, 128]
    assert to_uint8(x).dtype == np.uint8


def test_to_uint8_moves_channels_last():
    x = torch.stack([torch.full((2, 3), v) for v in (-1.0, 0.0, 1.0)])[None]  # [1, 3, 2, 3]
    out = to_uint8(x)
    assert out.shape == (1, 2, 3, 3)
    assert out[0, 1, 2].tolist() == [0, 128, 255]


def test_to_uint8_rejects_a_single_image_with_a_hint():
    with pytest.raises(ValueError, match=r"x\[None\]"):
        to_uint8(torch.zeros(3, 8, 8))


def test_grid_shape_and_tile_positions():
    x = _random_images(n=10, h=6, w=4)
    grid = make_grid(x)  # nrow = ceil(sqrt(10)) = 4 -> 3 rows, padding 2
    assert grid.shape == (3 * 8 + 2, 4 * 6 + 2, 1)
    tiles = to_uint8(x)
    assert np.array_equal(grid[2:8, 2:6], tiles[0])
    assert np.array_equal(grid[10:16, 8:12], tiles[5])  # row 1, column 1
    assert (grid[18:24, 20:24] == 255).all()  # cell 11 of 12 is empty padding
    assert make_grid(x, nrow=5).shape == (2 * 8 + 2, 5 * 6 + 2, 1)
    assert make_grid(_random_images(n=1, c=3), nrow=1).shape == (10, 8, 3)


def test_save_grid_writes_a_png_of_the_expected_size(tmp_path):
    path = tmp_path / "new" / "dir" / "grid.png"
    x = _random_images(n=4, c=3, h=5, w=5)
    save_grid(x, path, scale=3)
    with Image.open(path) as image:
        assert image.format == "PNG" and image.mode == "RGB"
        assert image.size == (3 * (2 * 7 + 2), 3 * (2 * 7 + 2))
        pixels = np.asarray(image)
    grid = make_grid(x)
    assert np.array_equal(pixels[::3, ::3], grid) and np.array_equal(pixels[2::3, 1::3], grid)
    assert [p.name for p in path.parent.iterdir()] == ["grid.png"]  # no temp file left behind


def test_grayscale_is_saved_as_mode_L(tmp_path):
    save_grid(_random_images(n=2, c=1), tmp_path / "g.png")
    with Image.open(tmp_path / "g.png") as image:
        assert image.mode == "L"


def test_save_images_one_png_per_sample_round_trips(tmp_path):
    x = _random_images(n=3, c=3)
    save_images(x, tmp_path / "samples")
    save_images(x[:1], tmp_path / "samples", start=3)
    names = sorted(p.name for p in (tmp_path / "samples").iterdir())
    assert names == ["000000.png", "000001.png", "000002.png", "000003.png"]
    expected = to_uint8(x)
    for i in range(3):
        with Image.open(tmp_path / "samples" / f"{i:06d}.png") as image:
            assert np.array_equal(np.asarray(image), expected[i])


def test_npz_round_trip_keeps_the_fid_layout(tmp_path):
    x = _random_images(n=7, c=3, h=8, w=8)
    save_npz(x, tmp_path / "samples.npz")
    with np.load(tmp_path / "samples.npz") as f:
        assert list(f.keys()) == ["arr_0"]
        arr = f["arr_0"]
    assert arr.dtype == np.uint8 and arr.shape == (7, 8, 8, 3)
    assert np.array_equal(arr, to_uint8(x))


def test_failed_write_leaves_no_file(tmp_path, monkeypatch):
    def broken_save(self, fp, format=None, **params):
        fp.write(b"half a png")
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_grid(_random_images(), tmp_path / "grid.png")
    assert list(tmp_path.iterdir()) == []


def test_scatter_plot_writes_a_png(tmp_path):
    points = torch.randn(500, 2)
    path = tmp_path / "plots" / "toy.png"
    scatter_plot(points, path, reference=np.random.default_rng(0).normal(size=(300, 2)), title="t")
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == (400, 400)
        assert np.asarray(image.convert("L")).std() > 5  # something was drawn
    with pytest.raises(ValueError, match=r"\[N, 2\]"):
        scatter_plot(torch.randn(10, 3), path)


def test_scatter_plot_limits_follow_the_reference():
    reference = np.array([[-1.0, -2.0], [1.0, 2.0]])
    assert images._limits(reference) == pytest.approx((-1.1, 1.1))
    assert images._limits(reference, axis=1) == pytest.approx((-2.2, 2.2))
