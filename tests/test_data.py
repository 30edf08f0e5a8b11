"""Tests for genmodels.data: built-in sets, image folders, toy distributions, InfiniteBatches."""

import math
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from genmodels.data import (
    DATASET_NAMES,
    TOY_DISTRIBUTIONS,
    Dataset,
    InfiniteBatches,
    derive_seed,
    load_dataset,
)
from genmodels.data import datasets as datasets_module
from genmodels.errors import ConfigError, DataError, GenmodelsError


def _row_set(x: torch.Tensor) -> set[bytes]:
    return {row.tobytes() for row in x.reshape(len(x), -1).numpy()}


# ---------------------------------------------------------------- mnist


@pytest.fixture(scope="module")
def mnist():
    return {split: load_dataset("mnist", split=split) for split in ("train", "test", "all")}


def test_mnist_shapes_range_and_dtypes(mnist):
    assert mnist["train"].x.shape == (4500, 1, 28, 28)
    assert mnist["test"].x.shape == (500, 1, 28, 28)
    assert mnist["all"].x.shape == (5000, 1, 28, 28)
    for data in mnist.values():
        assert data.x.dtype == torch.float32 and data.y.dtype == torch.int64
        assert data.x.is_contiguous()
        assert data.x.min() == -1 and data.x.max() == 1
        assert data.kind == "image" and data.shape == (1, 28, 28) and data.num_classes == 10


def test_mnist_split_is_balanced_and_disjoint(mnist):
    assert torch.bincount(mnist["train"].y).tolist() == [450] * 10
    assert torch.bincount(mnist["test"].y).tolist() == [50] * 10
    train, test = _row_set(mnist["train"].x), _row_set(mnist["test"].x)
    assert not train & test
    assert train | test == _row_set(mnist["all"].x)


def test_mnist_rows_are_shuffled_not_sorted_by_label(mnist):
    # the source file is sorted by label; a grid of the first 64 images should show many classes
    assert len(set(mnist["train"].y[:64].tolist())) == 10


def test_mnist_is_deterministic_and_independent_of_seed(mnist):
    datasets_module._mnist_rows.cache_clear()
    again = load_dataset("mnist", split="test", seed=123)
    assert torch.equal(again.x, mnist["test"].x) and torch.equal(again.y, mnist["test"].y)


def test_mnist_labels_match_images(mnist):
    # class means differ: a "1" has far less ink than a "0", so a label shuffle would show here
    ink = [(mnist["all"].x[mnist["all"].y == c] + 1).mean().item() for c in range(10)]
    assert ink[1] < min(ink[0], ink[8]) * 0.7


def test_mnist_resize_and_channel_repeat():
    data = load_dataset("mnist", split="test", image_size=32, channels=3)
    assert data.x.shape == (500, 3, 32, 32) and data.x.is_contiguous()
    assert torch.equal(data.x[:, 0], data.x[:, 2])
    assert -1 <= data.x.min() and data.x.max() <= 1
    with pytest.raises(DataError, match="channels"):
        load_dataset("mnist", channels=2)


def test_cached_array_cannot_be_corrupted_by_callers(mnist):
    data = load_dataset("mnist", split="test")
    data.x.fill_(0.5)
    assert torch.equal(load_dataset("mnist", split="test").x, mnist["test"].x)


# ---------------------------------------------------------------- fashion, digits


fashion_installed = pytest.mark.skipif(
    not datasets_module.FASHION_DIR.is_dir(),
    reason="Fashion-MNIST not installed (apt-get install -y dataset-fashion-mnist)",
)


@fashion_installed
def test_fashion_shapes_and_classes():
    test = load_dataset("fashion", split="test")
    assert test.x.shape == (10000, 1, 28, 28)
    assert torch.bincount(test.y).tolist() == [1000] * 10
    assert test.class_names[0] == "T-shirt/top" and test.class_names[9] == "Ankle boot"
    assert test.x.min() == -1 and test.x.max() == 1
    # the train split goes through the same code; reading its files is enough (and 5x faster)
    read, root = datasets_module._read_idx, datasets_module.FASHION_DIR
    assert read(root / "train-images-idx3-ubyte.gz").shape == (60000, 28, 28)
    assert read(root / "train-labels-idx1-ubyte.gz").shape == (60000,)


def test_fashion_missing_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setattr(datasets_module, "FASHION_DIR", tmp_path / "absent")
    with pytest.raises(DataError, match="apt-get install -y dataset-fashion-mnist"):
        load_dataset("fashion", split="test")


def test_digits_split():
    train, test = load_dataset("digits"), load_dataset("digits", split="test")
    assert train.x.shape[1:] == (1, 8, 8) and len(train) + len(test) == 1797
    assert set(torch.bincount(test.y).tolist()) <= {17, 18}
    assert train.x.min() == -1 and train.x.max() == 1
    assert not _row_set(train.x) & _row_set(test.x)  # the 1,797 images are all distinct
    assert _row_set(train.x) | _row_set(test.x) == _row_set(load_dataset("digits", split="all").x)


def test_unknown_name_and_split_list_the_choices():
    with pytest.raises(DataError) as err:
        load_dataset("mnits")
    assert all(name in str(err.value) for name in ("mnist", "8gaussians", "folder:PATH"))
    with pytest.raises(DataError, match="train, test, all"):
        load_dataset("mnist", split="validation")
    assert issubclass(DataError, GenmodelsError)


def test_dataset_repr_is_short_and_names_are_listed():
    data = load_dataset("moons", n_points=10)
    assert "n=10" in repr(data) and len(repr(data)) < 200
    assert {"mnist", "fashion", "digits", "emoji", "folder:PATH", "pairs:FILE.npz", "edges:mnist", "edges:fashion",
            *TOY_DISTRIBUTIONS} == set(DATASET_NAMES)


# ---------------------------------------------------------------- image folders


def _solid(size, colour, mode="RGB"):
    return Image.new(mode, size, colour)


def _write_mixed_folder(root):
    root.mkdir(parents=True, exist_ok=True)
    _solid((40, 30), (255, 0, 0)).save(root / "a.png")
    _solid((50, 64), (255, 0, 0)).save(root / "b.jpg", quality=95)
    _solid((33, 33), (255, 0, 0)).save(root / "c.webp", lossless=True)
    _solid((20, 20), (255, 0, 0, 255), mode="RGBA").save(root / "d.PNG")
    (root / "notes.txt").write_text("not an image, ignored")
    return 4


def test_folder_unlabelled_sizes_and_range(tmp_path):
    n = _write_mixed_folder(tmp_path / "imgs")
    data = load_dataset(f"folder:{tmp_path / 'imgs'}", image_size=16)
    assert data.x.shape == (n, 3, 16, 16) and data.y is None and data.class_names == ()
    assert data.x.is_contiguous() and data.x.dtype == torch.float32
    red = data.x.mean(dim=(2, 3))
    assert torch.allclose(red, torch.tensor([1.0, -1.0, -1.0]).expand(n, 3), atol=0.05)


def test_folder_grayscale(tmp_path):
    n = _write_mixed_folder(tmp_path)
    data = load_dataset(f"folder:{tmp_path}", image_size=8, channels=1)
    assert data.x.shape == (n, 1, 8, 8)
    assert -1 <= data.x.min() and data.x.max() <= 1


def test_folder_class_subfolders_give_labels(tmp_path):
    for i in range(3):
        (tmp_path / "zebra").mkdir(exist_ok=True)
        _solid((30 + i, 20), (0, 0, 255)).save(tmp_path / "zebra" / f"{i}.png")
    (tmp_path / "ant" / "nested").mkdir(parents=True)
    _solid((24, 24), (255, 0, 0)).save(tmp_path / "ant" / "x.jpg")
    _solid((24, 24), (255, 0, 0)).save(tmp_path / "ant" / "nested" / "y.webp")
    (tmp_path / "empty").mkdir()
    data = load_dataset(f"folder:{tmp_path}", image_size=12)
    assert data.class_names == ("ant", "zebra") and data.num_classes == 2
    assert torch.bincount(data.y).tolist() == [2, 3]
    red, blue = data.x[:, 0].mean(dim=(1, 2)), data.x[:, 2].mean(dim=(1, 2))
    assert torch.all((red > 0.9) == (data.y == 0)) and torch.all((blue > 0.9) == (data.y == 1))


def test_folder_resizes_shorter_side_then_centre_crops(tmp_path):
    # a 40x20 image, white only in columns 10..29: a centre crop keeps just the white part,
    # squashing the whole width into the square would keep the black sides too
    pixels = np.zeros((20, 40), np.uint8)
    pixels[:, 10:30] = 255
    Image.fromarray(pixels).save(tmp_path / "wide.png")
    x = load_dataset(f"folder:{tmp_path}", image_size=10, channels=1).x
    assert x.shape == (1, 1, 10, 10)
    assert x.mean() > 0.9


def test_folder_corrupt_file_is_named_or_skipped(tmp_path):
    n = _write_mixed_folder(tmp_path)
    (tmp_path / "broken.png").write_bytes(b"definitely not a png")
    with pytest.raises(DataError, match="broken.png"):
        load_dataset(f"folder:{tmp_path}", image_size=8)
    with pytest.warns(UserWarning, match="broken.png"):
        data = load_dataset(f"folder:{tmp_path}", image_size=8, skip_bad=True)
    assert len(data) == n


def test_folder_truncated_jpeg_is_corrupt(tmp_path):
    _solid((64, 64), (10, 200, 30)).save(tmp_path / "ok.jpg")
    data = (tmp_path / "ok.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="cut.jpg"):
        load_dataset(f"folder:{tmp_path}", image_size=8)


def test_folder_errors_name_the_path(tmp_path):
    with pytest.raises(DataError, match="nowhere"):
        load_dataset(f"folder:{tmp_path / 'nowhere'}", image_size=8)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty"):
        load_dataset(f"folder:{tmp_path / 'empty'}", image_size=8)
    _write_mixed_folder(tmp_path / "ok")
    with pytest.raises(DataError, match="image_size"):
        load_dataset(f"folder:{tmp_path / 'ok'}")
    with pytest.raises(DataError, match="held-out"):
        load_dataset(f"folder:{tmp_path / 'ok'}", image_size=8, split="test")


def test_folder_with_loose_images_beside_class_folders_is_refused(tmp_path):
    _write_mixed_folder(tmp_path / "cls")
    _solid((8, 8), (0, 0, 0)).save(tmp_path / "loose.png")
    with pytest.raises(DataError, match="loose.png"):
        load_dataset(f"folder:{tmp_path}", image_size=8)


# ---------------------------------------------------------------- toy distributions


def _grid(lim: float, n: int):
    """Midpoints of an n x n grid on [-lim, lim]^2 (float64) and the area of one cell."""
    h = 2 * lim / n
    axis = -lim + h * (torch.arange(n, dtype=torch.float64) + 0.5)
    return torch.cartesian_prod(axis, axis), h * h


@pytest.mark.parametrize("name", ["8gaussians", "25gaussians", "rings", "checkerboard"])
def test_toy_log_prob_integrates_to_one(name):
    dist = TOY_DISTRIBUTIONS[name]
    # the checkerboard's cell edges (multiples of sqrt(3)/2) fall on grid lines: exact sum
    if name == "checkerboard":
        points, area = _grid(3 * math.sqrt(3) / 2, 300)
    else:  # cells of 0.02 = 0.4 blur std: the midpoint rule is far more accurate than 1e-2
        points, area = _grid(4.0, 400)
    total = dist.log_prob(points).exp().sum().item() * area
    assert abs(total - 1) < 1e-2


@pytest.mark.parametrize("name", ["8gaussians", "25gaussians"])
def test_mixture_log_prob_matches_torch_distributions(name):
    dist = TOY_DISTRIBUTIONS[name]
    oracle = torch.distributions.MixtureSameFamily(
        torch.distributions.Categorical(torch.ones(len(dist.modes))),
        torch.distributions.Independent(torch.distributions.Normal(dist.modes, dist.mode_std), 1),
    )
    x = dist.sample(500, generator=torch.Generator().manual_seed(1)) + 0.3 * torch.randn(500, 2)
    assert torch.allclose(dist.log_prob(x), oracle.log_prob(x), atol=1e-3, rtol=1e-4)


def test_rings_log_prob_matches_angle_quadrature():
    dist = TOY_DISTRIBUTIONS["rings"]
    x = dist.sample(200, generator=torch.Generator().manual_seed(2)).double()
    angle = torch.linspace(0, 2 * math.pi, 4097, dtype=torch.float64)[:-1]
    circle = torch.stack([angle.cos(), angle.sin()], 1)
    centres = (dist.radii.double()[:, None, None] * circle).reshape(-1, 2)  # [rings*angles, 2]
    var = dist.noise**2
    density = torch.exp(-torch.cdist(x, centres).pow(2) / (2 * var)).mean(1) / (2 * math.pi * var)
    assert torch.allclose(dist.log_prob(x), density.log(), atol=1e-4)


def test_checkerboard_support():
    dist = TOY_DISTRIBUTIONS["checkerboard"]
    x = dist.sample(5000, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(dist.log_prob(x)).all()
    c = math.sqrt(3) / 2
    white_cells = torch.tensor([[-1.5 * c, -0.5 * c], [0.5 * c, 1.5 * c], [3 * c, 0.0]])
    assert torch.isneginf(dist.log_prob(white_cells)).all()


@pytest.mark.parametrize("name", list(TOY_DISTRIBUTIONS))
def test_toy_samples_have_unit_scale_and_are_seeded(name):
    data = load_dataset(name, n_points=20000, seed=3)
    assert data.x.shape == (20000, 2) and data.kind == "points" and data.y is None
    assert torch.allclose(data.x.std(0), torch.ones(2), atol=0.05)
    assert torch.allclose(data.x.mean(0), torch.zeros(2), atol=0.05)
    assert torch.equal(data.x, load_dataset(name, n_points=20000, seed=3).x)
    assert not torch.equal(data.x, load_dataset(name, n_points=20000, seed=4).x)
    assert not torch.equal(data.x, load_dataset(name, n_points=20000, seed=3, split="test").x)


@pytest.mark.parametrize("name", ["8gaussians", "25gaussians"])
def test_mixture_samples_hit_every_mode(name):
    dist = TOY_DISTRIBUTIONS[name]
    k = len(dist.modes)
    assert torch.pdist(dist.modes).min() > 6 * dist.mode_std  # hit regions do not overlap
    x = dist.sample(20000, generator=torch.Generator().manual_seed(0))
    distance, nearest = torch.cdist(x, dist.modes).min(1)
    hit = distance < 3 * dist.mode_std
    assert hit.float().mean() > 0.98  # chi(2) mass within 3 sigma is 1 - exp(-4.5) = 0.989
    counts = torch.bincount(nearest[hit], minlength=k).float()
    assert torch.all((counts - 20000 / k).abs() < 0.2 * 20000 / k)


def test_toys_without_density_say_so():
    for name in ("moons", "swissroll"):
        assert TOY_DISTRIBUTIONS[name].log_prob is None and TOY_DISTRIBUTIONS[name].modes is None


# ---------------------------------------------------------------- InfiniteBatches


def _indexed(n: int, labelled: bool = True) -> Dataset:
    """Items whose value is their index, so batches can be traced back to rows."""
    x = torch.arange(n, dtype=torch.float32)[:, None].repeat(1, 2)
    y = torch.arange(n) % 7 if labelled else None
    return Dataset("indexed", x, y, tuple("abcdefg") if labelled else (), "points")


def _ids(batch) -> list[int]:
    return batch["x"][:, 0].long().tolist()


def test_batches_follow_the_documented_permutation():
    batches = InfiniteBatches(_indexed(50), 8, seed=5, rank=1, world_size=2)
    perm = torch.randperm(50, generator=torch.Generator().manual_seed(derive_seed(5, 0)))
    assert _ids(next(batches)) == perm[1::2][:8].tolist()


@pytest.mark.parametrize("n", [100, 103])
def test_two_ranks_are_disjoint_and_cover_each_epoch(n):
    ranks = [InfiniteBatches(_indexed(n), 10, seed=0, rank=r, world_size=2) for r in range(2)]
    assert ranks[0].batches_per_epoch == ranks[1].batches_per_epoch == 5
    for _ in range(3):  # epochs
        seen = [sum((_ids(next(it)) for _ in range(5)), []) for it in ranks]
        assert not set(seen[0]) & set(seen[1])
        assert len(set(seen[0])) == len(set(seen[1])) == 50
        if n == 100:
            assert set(seen[0]) | set(seen[1]) == set(range(100))
    assert ranks[0].state_dict() == {"epoch": 3, "pos": 0}


def test_labels_travel_with_their_items_and_epochs_reshuffle():
    batches = InfiniteBatches(_indexed(40), 20, seed=1)
    first, second, third = next(batches), next(batches), next(batches)
    for batch in (first, second, third):
        assert torch.equal(batch["cond"]["y"], batch["x"][:, 0].long() % 7)
    assert sorted(_ids(first) + _ids(second)) == list(range(40))
    assert _ids(third) != _ids(first)
    assert "y" not in next(InfiniteBatches(_indexed(40, labelled=False), 4, seed=0))


def test_state_dict_round_trip_reproduces_the_following_batches():
    data = _indexed(37)
    original = InfiniteBatches(data, 6, seed=9)
    for _ in range(4):
        next(original)
    state = original.state_dict()
    expected = [_ids(next(original)) for _ in range(10)]  # crosses epoch boundaries (6 per epoch)
    resumed = InfiniteBatches(data, 6, seed=9)
    resumed.load_state_dict(state)
    assert [_ids(next(resumed)) for _ in range(10)] == expected
    other_seed = InfiniteBatches(data, 6, seed=10)
    other_seed.load_state_dict(state)
    assert [_ids(next(other_seed)) for _ in range(10)] != expected


def test_batch_iterator_rejects_impossible_settings():
    with pytest.raises(ConfigError, match="batch_size"):
        InfiniteBatches(_indexed(10), 6, seed=0, world_size=2)
    with pytest.raises(ConfigError, match="rank"):
        InfiniteBatches(_indexed(10), 2, seed=0, rank=2, world_size=2)
    batches = InfiniteBatches(_indexed(10), 4, seed=0)
    with pytest.raises(ConfigError, match="out of range"):
        batches.load_state_dict({"epoch": 0, "pos": 11})
    # a position with no full batch left moves on to the next epoch instead of a short batch
    batches.load_state_dict({"epoch": 0, "pos": 9})
    assert batches.state_dict() == {"epoch": 1, "pos": 0} and len(next(batches)["x"]) == 4


def test_batches_on_a_real_dataset(mnist):
    batch = next(InfiniteBatches(mnist["test"], 32, seed=0))
    assert batch["x"].shape == (32, 1, 28, 28) and batch["cond"]["y"].shape == (32,)
    assert batch["x"].dtype == torch.float32 and batch["cond"]["y"].dtype == torch.int64


def test_no_warnings_from_loading_builtins():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_dataset("digits", split="test", image_size=16)
        load_dataset("mnist", split="test")


def test_pairs_files_load_with_their_noise_and_bad_ones_are_named(tmp_path):
    good = tmp_path / "p.npz"
    np.savez(good, x=np.ones((6, 2), np.float32), noise=np.zeros((6, 2), np.float32))
    data = load_dataset(f"pairs:{good}")
    assert data.kind == "points" and data.noise.shape == (6, 2) and data.y is None
    bad = tmp_path / "bad.npz"
    np.savez(bad, x=np.ones((6, 2), np.float32), noise=np.zeros((5, 2), np.float32))
    with pytest.raises(DataError, match="bad.npz.*x has shape"):
        load_dataset(f"pairs:{bad}")
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(f"pairs:{tmp_path / 'missing.npz'}")
