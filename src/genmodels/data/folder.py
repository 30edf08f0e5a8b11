"""Image folders: every PNG/JPEG/WebP under a path, loaded into one tensor.

    PATH/cat/001.jpg, PATH/dog/002.png   -> labelled, class_names ("cat", "dog")
    PATH/001.jpg, PATH/002.webp          -> unlabelled

Each image is resized so its shorter side is ``image_size`` (antialiased) and centre-cropped to a
square, then converted to grayscale ("L", channels=1) or RGB (channels=3). Transparent pixels are
composited on white, because dropping alpha leaves whatever colour the encoder stored there.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from genmodels.errors import DataError

__all__ = ["IMAGE_SUFFIXES", "load_image_folder", "read_image"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
_PIL_MODES = {1: "L", 3: "RGB"}
# how each entry point spells skip_bad: the folder error names them all
SKIP_BAD_HINT = ("or skip unreadable images (genmodels train ... data.skip_bad=true, "
                 "genmodels data show --skip-bad, Python: skip_bad=True)")


def load_image_folder(
    path: str | Path, *, image_size: int | None, channels: int = 3, skip_bad: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None, tuple[str, ...]]:
    """Read a folder into ``(x [N, C, S, S] float32 in [-1, 1], y [N] int64 or None, class_names)``.

    Sub-folders that hold images are classes (sorted by name, searched recursively); otherwise the
    images directly in ``path`` form one unlabelled set. Unreadable files raise DataError naming
    the file, or with ``skip_bad=True`` are skipped with a warning.
    """
    root = Path(path).expanduser()
    image_size = _check_options(root, image_size, channels)
    files, labels, class_names = _find_images(root)
    pixels = np.empty((len(files), image_size, image_size, channels), dtype=np.uint8)
    kept = []
    for i, file in enumerate(files):
        try:
            image = read_image(file, image_size=image_size, channels=channels)
            pixels[i] = image.reshape(pixels.shape[1:])
        except DataError as err:
            if not skip_bad:
                raise DataError(f"{err}, {SKIP_BAD_HINT}") from err.__cause__
            warnings.warn(f"skipping unreadable image {file}: {err.__cause__}", stacklevel=3)
            continue
        kept.append(i)
    if not kept:
        raise DataError(f"none of the {len(files)} image files under {root} could be read")
    x = torch.from_numpy(pixels[kept]).permute(0, 3, 1, 2).float().div(127.5).sub(1).contiguous()
    y = None if labels is None else torch.tensor([labels[i] for i in kept], dtype=torch.int64)
    return x, y, class_names


def read_image(file: str | Path, *, image_size: int, channels: int) -> np.ndarray:
    """One image file as uint8 [S, S] (channels=1) or [S, S, 3], shorter side resized to S and
    centre-cropped; any failure becomes a DataError naming the file."""
    try:
        with Image.open(file) as image:
            image.load()
            image = ImageOps.exif_transpose(image)
            image = _flatten_alpha(image).convert(_PIL_MODES[channels])
            image = ImageOps.fit(image, (image_size, image_size), method=Image.Resampling.LANCZOS)
            return np.asarray(image, dtype=np.uint8)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        # PIL reports corrupt or truncated files through several exception types
        raise DataError(f"unreadable image {file}: {err}; delete or replace the file") from err


def _flatten_alpha(image: Image.Image) -> Image.Image:
    has_alpha = "A" in image.getbands() or "transparency" in image.info
    if not has_alpha:
        return image
    rgba = image.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba)


def _check_options(root: Path, image_size: int | None, channels: int) -> int:
    if image_size is None:
        raise DataError(
            f"folder datasets need an image size: set image_size (e.g. 32 or 64) for {root}"
        )
    if int(image_size) < 1:
        raise DataError(f"image_size must be a positive number of pixels, got {image_size}")
    if channels not in _PIL_MODES:
        raise DataError(f"channels must be 1 (grayscale) or 3 (RGB) for {root}, got {channels}")
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist or is not a directory")
    return int(image_size)


def _find_images(root: Path) -> tuple[list[Path], list[int] | None, tuple[str, ...]]:
    """Files (sorted) with their class indices, or None labels when there are no class folders."""
    top_level = _images_in(root, recursive=False)
    class_dirs = sorted(
        (
            d for d in root.iterdir()
            if d.is_dir() and not d.name.startswith(".") and _images_in(d, recursive=True)
        ),
        key=lambda d: d.name,
    )
    if not class_dirs:
        if not top_level:
            raise DataError(
                f"no images ({', '.join(IMAGE_SUFFIXES)}) found in {root}; "
                "put the images in it or in one sub-folder per class"
            )
        return top_level, None, ()
    if top_level:
        raise DataError(
            f"{root} has both class sub-folders and {len(top_level)} loose images "
            f"(e.g. {top_level[0].name}); move the loose images into a class folder or elsewhere"
        )
    files, labels = [], []
    for label, class_dir in enumerate(class_dirs):
        found = _images_in(class_dir, recursive=True)
        files += found
        labels += [label] * len(found)
    return files, labels, tuple(d.name for d in class_dirs)


def _images_in(directory: Path, *, recursive: bool) -> list[Path]:
    candidates = directory.rglob("*") if recursive else directory.iterdir()
    return sorted(
        p for p in candidates
        if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file() and not p.name.startswith(".")
    )
