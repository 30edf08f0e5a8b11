"""Turning model outputs into files: image grids, per-sample PNGs, .npz arrays, 2-D scatter plots.

Inputs are float tensors [N, C, H, W] in [-1, 1] (C = 1 is saved as grayscale "L", C = 3 as
RGB). Every file is written to a temporary name beside its destination and renamed, so an
interrupted run never leaves a half-written image that a later FID run would read.

    save_grid(samples, "runs/x/samples/step_1000.png", scale=4)
    save_captioned_grid(data.x[:64], names, "emoji.png", scale=2)   # a name under each image
    save_npz(samples, "runs/x/samples.npz")      # uint8 [N, H, W, C] under "arr_0"
    scatter_plot(points, "toy.png", reference=data.x)
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import uuid
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from .errors import DataError

__all__ = ["to_uint8", "make_grid", "save_grid", "save_captioned_grid", "save_images", "save_npz", "scatter_plot",
           "load_image_set", "save_with_parameters", "read_parameters"]


def to_uint8(x: Tensor) -> np.ndarray:
    """Images [N, C, H, W] in [-1, 1] -> uint8 [N, H, W, C]: -1 -> 0, 0 -> 128, 1 -> 255."""
    _check_images(x)
    x = x.detach().to("cpu", torch.float32)
    # casting NaN/inf to uint8 is undefined; a diverged model should still give a viewable file
    x = torch.nan_to_num(x, nan=0.0, posinf=1.0, neginf=-1.0)
    pixels = ((x + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    return pixels.permute(0, 2, 3, 1).numpy()


def make_grid(
    x: Tensor, *, nrow: int | None = None, padding: int = 2, pad_value: int = 255
) -> np.ndarray:
    """Tile images [N, C, H, W] into uint8 [H', W', C], ``nrow`` images per row.

    ``nrow`` defaults to ceil(sqrt(N)); tiles are separated and framed by ``padding`` pixels of
    ``pad_value`` (white, visible between MNIST's black backgrounds); empty cells are padding.
    """
    pixels = to_uint8(x)
    n, h, w, c = pixels.shape
    nrow = max(1, math.ceil(math.sqrt(n))) if nrow is None else int(nrow)
    if nrow < 1:
        raise ValueError(f"nrow must be at least 1, got {nrow}")
    rows = max(1, math.ceil(n / nrow))
    grid = np.full(
        (rows * (h + padding) + padding, nrow * (w + padding) + padding, c), pad_value, np.uint8
    )
    for i in range(n):
        top = padding + (i // nrow) * (h + padding)
        left = padding + (i % nrow) * (w + padding)
        grid[top : top + h, left : left + w] = pixels[i]
    return grid


def save_grid(x: Tensor, path: str | Path, *, nrow: int | None = None, scale: int = 1) -> None:
    """Save images as one grid PNG, each pixel repeated ``scale`` x ``scale`` times (nearest)."""
    if int(scale) < 1:
        raise ValueError(f"scale must be a positive integer, got {scale}")
    grid = make_grid(x, nrow=nrow)
    if scale > 1:
        grid = grid.repeat(scale, axis=0).repeat(scale, axis=1)
    _write_png(grid, Path(path))


def save_captioned_grid(x: Tensor, captions, path: str | Path, *, nrow: int | None = None, scale: int = 1,
                        lines: int = 2, font_size: int = 10) -> None:
    """``save_grid`` with each image's caption under it, in DejaVu Sans (matplotlib's own font),
    word-wrapped into at most ``lines`` lines of the tile's width and cut with "..." beyond them."""
    from matplotlib import font_manager
    from PIL import ImageDraw, ImageFont

    if len(captions) != len(x):
        raise ValueError(f"{len(x)} images but {len(captions)} captions")
    if int(scale) < 1:
        raise ValueError(f"scale must be a positive integer, got {scale}")
    pixels = to_uint8(x).repeat(scale, axis=1).repeat(scale, axis=2)
    n, h, w, c = pixels.shape
    font = ImageFont.truetype(font_manager.findfont(font_manager.FontProperties(family="DejaVu Sans")), font_size)
    line_height = font_size + 3
    text_height = lines * line_height + 2
    nrow = max(1, math.ceil(math.sqrt(n))) if nrow is None else int(nrow)
    rows, padding = max(1, math.ceil(n / nrow)), 4
    cell_h, cell_w = h + text_height + padding, w + padding
    grid = Image.new("RGB", (nrow * cell_w + padding, rows * cell_h + padding), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    for i in range(n):
        left, top = padding + (i % nrow) * cell_w, padding + (i // nrow) * cell_h
        tile = Image.fromarray(pixels[i, ..., 0] if c == 1 else pixels[i])
        grid.paste(tile.convert("RGB"), (left, top))
        for j, line in enumerate(_wrap(str(captions[i]), font, w, lines)):
            draw.text((left + (w - font.getlength(line)) / 2, top + h + 2 + j * line_height), line,
                      font=font, fill=(40, 40, 40))
    with _atomic_file(Path(path)) as f:
        grid.save(f, format="PNG")


def _wrap(text: str, font, width: float, lines: int) -> list[str]:
    """``text`` as at most ``lines`` lines no wider than ``width``; the last cut with "..." if need be."""
    out, words = [], text.split()
    while words and len(out) < lines:
        line = words.pop(0)
        while words and font.getlength(f"{line} {words[0]}") <= width:
            line = f"{line} {words.pop(0)}"
        out.append(line)
    if words or (out and font.getlength(out[-1]) > width):
        last = out[-1] if out else ""
        while last and font.getlength(last + "...") > width:
            last = last[:-1]
        out[-1:] = [last.rstrip() + "..."]
    return out


def save_images(x: Tensor, directory: str | Path, *, start: int = 0) -> None:
    """Save one PNG per image, ``directory/000000.png`` onwards (``start`` offsets the numbering,
    so batches of samples can be written one after another)."""
    directory = Path(directory)
    for i, pixels in enumerate(to_uint8(x), start=start):
        _write_png(pixels, directory / f"{i:06d}.png")


def save_npz(x: Tensor, path: str | Path) -> None:
    """Save images as uint8 [N, H, W, C] under key "arr_0", the layout FID tools read; points
    [N, D] (toy 2-D data) as float32 [N, D], which have no pixels to quantise.

    The file is written to ``path`` exactly (numpy's habit of appending ".npz" is bypassed).
    """
    array = x.detach().to("cpu", torch.float32).numpy() if x.ndim == 2 else to_uint8(x)
    with _atomic_file(Path(path)) as f:
        np.savez(f, arr_0=array)


def scatter_plot(
    points, path: str | Path, *, reference=None, title: str | None = None, size: float = 4.0
) -> None:
    """Save a PNG scatter plot of 2-D ``points`` [N, 2], with ``reference`` [M, 2] (e.g. the
    data) drawn in light grey behind. Axis limits follow the reference when given, so a few
    far-off samples from a bad model do not shrink the data to a dot."""
    from matplotlib.figure import Figure  # Figure alone renders with Agg; no pyplot global state

    points = _as_points(points)
    fig = Figure(figsize=(size, size), dpi=100)
    ax = fig.add_subplot()
    if reference is not None:
        reference = _as_points(reference)
        ax.scatter(reference[:, 0], reference[:, 1], s=1, c="#c8c8c8", alpha=0.5, linewidths=0)
    ax.scatter(points[:, 0], points[:, 1], s=1, c="#1f5fa8", alpha=0.6, linewidths=0)
    ax.set_xlim(*_limits(points if reference is None else reference))
    ax.set_ylim(*_limits(points if reference is None else reference, axis=1))
    ax.set_aspect("equal")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    with _atomic_file(Path(path)) as f:
        fig.savefig(f, format="png")


def _check_images(x: Tensor) -> None:
    if not isinstance(x, Tensor) or x.ndim != 4 or x.shape[1] not in (1, 3):
        shape = tuple(x.shape) if hasattr(x, "shape") else type(x).__name__
        raise ValueError(
            f"expected an image tensor [N, C, H, W] with C = 1 or 3, got {shape}; "
            "add a batch dimension with x[None] for a single image"
        )


def _as_points(points) -> np.ndarray:
    array = points.detach().cpu().numpy() if isinstance(points, Tensor) else np.asarray(points)
    if array.ndim != 2 or array.shape[1] != 2:
        raise ValueError(f"expected 2-D points of shape [N, 2], got {array.shape}")
    return array


def _limits(points: np.ndarray, axis: int = 0) -> tuple[float, float]:
    finite = points[np.isfinite(points).all(1), axis]
    if len(finite) == 0:
        return -1.0, 1.0
    low, high = float(finite.min()), float(finite.max())
    margin = 0.05 * (high - low) or 1.0
    return low - margin, high + margin


PARAMETERS_KEY = "genmodels"  # the PNG text chunk holding an output's parameters (JSON)


def _write_png(pixels: np.ndarray, path: Path, parameters: dict | None = None) -> None:
    """uint8 [H, W, 1] -> grayscale PNG, [H, W, 3] -> RGB PNG; ``parameters`` (JSON-able) go in
    its ``genmodels`` text chunk."""
    from PIL.PngImagePlugin import PngInfo

    image = Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels)
    info = None
    if parameters is not None:
        info = PngInfo()
        info.add_text(PARAMETERS_KEY, json.dumps(parameters, sort_keys=True, default=str))
    with _atomic_file(path) as f:
        image.save(f, format="PNG", pnginfo=info)


def save_with_parameters(x: Tensor, path: str | Path, parameters: dict, *, nrow: int | None = None,
                         scale: int = 1) -> None:
    """``save_grid`` that records what made the images (run, method, mask, strength, sampler,
    seed, ...) in the PNG's ``genmodels`` text chunk; ``read_parameters`` reads it back."""
    grid = make_grid(x, nrow=nrow)
    if scale > 1:
        grid = grid.repeat(scale, axis=0).repeat(scale, axis=1)
    _write_png(grid, Path(path), parameters)


def read_parameters(path: str | Path) -> dict:
    """The parameters ``save_with_parameters`` stored in a PNG ({} when it has none)."""
    with Image.open(path) as image:
        text = image.text.get(PARAMETERS_KEY) if hasattr(image, "text") else None
    return {} if text is None else json.loads(text)


@contextlib.contextmanager
def _atomic_file(path: Path):
    """A binary file object that becomes ``path`` only if the block completes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # a unique name in the same directory: os.replace is atomic only within one filesystem,
    # and open(..., "xb") keeps the user's umask (tempfile.mkstemp would force mode 0600)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "xb") as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def load_image_set(path: str | Path) -> Tensor:
    """Images from an .npz (uint8 [N, H, W, C] or [N, H, W], the first array or "arr_0") or a
    folder of images (all resized to the first image's size) -> float32 [N, C, H, W] in [-1, 1]."""
    from .data.folder import IMAGE_SUFFIXES, load_image_folder
    path = Path(path).expanduser()
    if path.is_dir():
        first = next((p for p in sorted(path.rglob("*")) if p.suffix.lower() in IMAGE_SUFFIXES), None)
        if first is None:
            raise DataError(f"no PNG/JPEG/WebP images under {path}")
        with Image.open(first) as image:
            size, channels = min(image.size), 1 if image.mode in ("L", "LA", "I", "1") else 3
        x, _, _ = load_image_folder(path, image_size=size, channels=channels)
        return x
    if path.suffix != ".npz" or not path.is_file():
        raise DataError(f"{path} is neither a folder of images nor an existing .npz file")
    try:
        with np.load(path) as data:
            key = "arr_0" if "arr_0" in data.files else data.files[0]
            pixels = data[key]
    except (OSError, ValueError, IndexError) as err:
        raise DataError(f"cannot read {path} as .npz ({err})") from None
    if pixels.ndim == 3:
        pixels = pixels[..., None]
    if pixels.dtype != np.uint8 or pixels.ndim != 4 or pixels.shape[-1] not in (1, 3):
        raise DataError(f"{path}: expected uint8 images [N, H, W, C] with C = 1 or 3, got "
                        f"{pixels.dtype} {tuple(pixels.shape)}")
    return torch.from_numpy(pixels).permute(0, 3, 1, 2).float().div(127.5).sub(1).contiguous()


def load_image(path: str | Path, *, channels: int) -> Tensor:
    """One image file -> float32 [1, C, H, W] in [-1, 1], converted to ``channels`` (1: gray by
    ITU-R 601 luma, 3: RGB); never resized, so a wrong size stays visible to the caller."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"image file '{path}' does not exist")
    try:
        with Image.open(path) as image:
            pixels = np.asarray(image.convert("L" if channels == 1 else "RGB"))
    except (OSError, ValueError) as err:
        raise DataError(f"cannot read '{path}' as an image ({err})") from None
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    return torch.from_numpy(pixels.copy()).permute(2, 0, 1)[None].float().div(127.5).sub(1)


def write_samples(x, out: str, *, nrow=None) -> str:
    """Save samples by the form of ``out``: .png grid, .npz (uint8 NHWC) or a directory/."""
    as_dir = out.endswith(("/", "\\"))  # a trailing slash, which Path() would drop
    out = Path(out)
    if as_dir or out.is_dir():
        save_images(x, out)
        return f"{len(x)} PNG files in {out}/"
    if out.suffix == ".npz":
        save_npz(x, out)
        return f"{len(x)} samples in {out}"
    if out.suffix == ".png":
        if x.ndim == 2:
            scatter_plot(x, out)
        else:
            save_grid(x, out, nrow=nrow, scale=2)
        return f"grid of {len(x)} samples in {out}"
    raise DataError(f"--out '{out}' must end in .png (grid), .npz (uint8 array) or / (one PNG each)")
