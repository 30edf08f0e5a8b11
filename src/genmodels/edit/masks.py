"""Inpainting masks: 1 = regenerate, 0 = keep, float32 [N, 1, H, W].

A mask is given as a tensor ([H, W], [1, H, W] or [N, 1, H, W]), a PNG (white = regenerate; any
size, resized nearest to the image's) or a spec:

    top, bottom, left, right   that half of the image
    center                     the central box of half the height and width
    full                       everything (plain sampling)
    box:X0,Y0,X1,Y1            pixels X0 <= x < X1, Y0 <= y < Y1 (x across, y down)
    strokes:SEED               random brush strokes drawn from SEED (the same mask on every machine)

``training_masks`` draws the random masks an inpainting model trains on (boxes, strokes, halves,
full), and ``latent_mask`` carries a mask to a latent grid (a latent cell is regenerated when
any of its pixels is).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError, DataError

__all__ = ["MASK_SPECS", "TRAINING_MASK_KINDS", "as_mask", "latent_mask", "load_mask", "make_mask", "resolve_mask",
           "stroke_mask", "training_masks"]

MASK_SPECS = ("top", "bottom", "left", "right", "center", "full", "box:X0,Y0,X1,Y1", "strokes:SEED")
TRAINING_MASK_KINDS = ("box", "strokes", "half", "full")


def make_mask(spec: str, size: tuple[int, int]) -> Tensor:
    """The [1, 1, H, W] mask of a spec (module docstring) for images of ``size`` (H, W)."""
    h, w = size
    mask = torch.zeros(1, 1, h, w)
    name, _, arg = spec.partition(":")
    if name == "top" and not arg:
        mask[..., : h // 2, :] = 1
    elif name == "bottom" and not arg:
        mask[..., h // 2:, :] = 1
    elif name == "left" and not arg:
        mask[..., :, : w // 2] = 1
    elif name == "right" and not arg:
        mask[..., :, w // 2:] = 1
    elif name == "center" and not arg:
        mask[..., h // 4: h // 4 + h // 2, w // 4: w // 4 + w // 2] = 1
    elif name == "full" and not arg:
        mask[:] = 1
    elif name == "box" and arg:
        x0, y0, x1, y1 = _ints(arg, 4, spec)
        if not (0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h):
            raise ConfigError(f"mask '{spec}': the box must satisfy 0 <= X0 < X1 <= {w} and 0 <= Y0 < Y1 <= {h}")
        mask[..., y0:y1, x0:x1] = 1
    elif name == "strokes" and arg:
        (seed,) = _ints(arg, 1, spec)
        mask = stroke_mask(size, torch.Generator().manual_seed(seed))[None]
    else:
        raise ConfigError(f"unknown mask '{spec}'; give a PNG path or one of {', '.join(MASK_SPECS)}")
    return mask


def _ints(text: str, count: int, spec: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) != count:
        raise ConfigError(f"mask '{spec}': expected {count} integer(s) after ':'")
    return values


def load_mask(path, size: tuple[int, int]) -> Tensor:
    """A PNG mask (white = regenerate, thresholded at half intensity) as [1, 1, H, W], resized
    (nearest) to ``size`` when drawn at another resolution."""
    from PIL import Image

    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"mask file '{path}' does not exist")
    try:
        with Image.open(path) as image:
            gray = image.convert("L").resize((size[1], size[0]), Image.NEAREST)
            pixels = torch.from_numpy(np.asarray(gray, dtype=np.float32).copy())[None, None]
    except (OSError, ValueError) as err:
        raise DataError(f"cannot read mask '{path}' as an image ({err})") from None
    return (pixels >= 128).float()


def as_mask(mask, n: int, size: tuple[int, int]) -> Tensor:
    """A mask tensor ([H, W], [1, H, W], [1, 1, H, W] or [n, 1, H, W]) as float {0, 1} [n, 1, H, W]."""
    mask = torch.as_tensor(mask).float()
    if mask.ndim == 2:
        mask = mask[None, None]
    elif mask.ndim == 3:
        mask = mask[None]
    if mask.ndim != 4 or mask.shape[1] != 1 or tuple(mask.shape[2:]) != tuple(size) or len(mask) not in (1, n):
        raise ConfigError(f"a mask must have shape [H, W] or [N, 1, H, W] with (H, W) = {tuple(size)} and N = 1 or "
                          f"{n}, got {list(mask.shape)}")
    if not ((mask == 0) | (mask == 1)).all():
        raise ConfigError("a mask must hold only 0 (keep) and 1 (regenerate); threshold it first, e.g. (m > 0.5)")
    return mask.expand(n, 1, *size).contiguous()


def resolve_mask(mask, n: int, size: tuple[int, int]) -> Tensor:
    """A mask given any way (tensor, PNG path, spec) as float {0, 1} [n, 1, H, W]."""
    if isinstance(mask, (str, Path)):
        text = str(mask)
        looks_like_file = isinstance(mask, Path) or text.lower().endswith((".png", ".jpg", ".jpeg", ".webp"))
        mask = load_mask(text, size) if looks_like_file or Path(text).is_file() else make_mask(text, size)
    return as_mask(mask, n, size)


def stroke_mask(size: tuple[int, int], generator: torch.Generator) -> Tensor:
    """Random brush strokes [1, H, W]: 1-4 strokes, each a polyline of 3-6 segments of random
    direction and length (~ a quarter of the image), drawn with a round brush of radius ~ 1/14
    to 1/7 of the image side (2-4 px on MNIST), as free-form masks are (Yu et al. 2019)."""
    h, w = size
    side = min(h, w)
    centers, radii = [], []  # every disc of every stroke, drawn at once at the end (one broadcast)

    def uniform(lo, hi):
        return lo + (hi - lo) * torch.rand((), generator=generator).item()

    for _ in range(int(torch.randint(1, 5, (), generator=generator))):
        y, x = uniform(0, h - 1), uniform(0, w - 1)
        radius = uniform(side / 14, side / 7)
        angle = uniform(0, 2 * math.pi)
        for _ in range(int(torch.randint(3, 7, (), generator=generator))):
            angle += uniform(-math.pi / 2, math.pi / 2)
            length = uniform(side / 8, side / 3)
            y1 = min(max(y + length * math.sin(angle), 0), h - 1)
            x1 = min(max(x + length * math.cos(angle), 0), w - 1)
            for t in torch.linspace(0, 1, max(2, int(length))).tolist():  # discs along the segment
                centers.append((y + (y1 - y) * t, x + (x1 - x) * t))
                radii.append(radius**2)
            y, x = y1, x1
    return _discs(centers, radii, size)[None]


def _discs(centers, radii2, size: tuple[int, int]) -> Tensor:
    """The union of discs (centre (y, x), squared radius) on an [H, W] grid as float {0, 1}: each
    disc is tested only on the pixels of its bounding box (one broadcast over all discs), which
    selects exactly the pixels a whole-grid test would."""
    h, w = size
    c = torch.tensor(centers, dtype=torch.float32)
    r2 = torch.tensor(radii2, dtype=torch.float32)
    reach = int(math.ceil(math.sqrt(max(radii2)))) + 1  # a margin of a pixel over the largest radius
    offsets = torch.arange(-reach, reach + 1)
    rows = c[:, 0].floor().long()[:, None] + offsets  # [N, B]
    cols = c[:, 1].floor().long()[:, None] + offsets
    dy2, dx2 = (rows.float() - c[:, :1]) ** 2, (cols.float() - c[:, 1:]) ** 2
    inside = dy2[:, :, None] + dx2[:, None, :] <= r2[:, None, None]
    inside &= ((rows >= 0) & (rows < h))[:, :, None] & ((cols >= 0) & (cols < w))[:, None, :]
    mask = torch.zeros(h * w)
    mask[(rows[:, :, None] * w + cols[:, None, :])[inside]] = 1
    return mask.reshape(h, w)


def training_masks(kinds, n: int, size: tuple[int, int], generator: torch.Generator) -> Tensor:
    """``n`` random training masks [n, 1, H, W], each of a kind drawn uniformly from ``kinds``
    (``TRAINING_MASK_KINDS``): ``box`` a random box of 1/4 to 3/4 of each side, ``strokes``
    brush strokes, ``half`` one of the four halves, ``full`` all ones (so the model also learns
    to draw from nothing, the Stable Diffusion inpainting recipe's fully masked share)."""
    unknown = sorted(set(kinds) - set(TRAINING_MASK_KINDS))
    if unknown or not kinds:
        raise ConfigError(f"unknown training mask kind(s) {unknown or '(none given)'}; choose from "
                          f"{', '.join(TRAINING_MASK_KINDS)}")
    h, w = size
    out = torch.zeros(n, 1, h, w)
    picks = torch.randint(len(kinds), (n,), generator=generator).tolist()
    for i, pick in enumerate(picks):
        kind = kinds[pick]
        if kind == "box":
            bh = int(torch.randint(max(1, h // 4), max(2, 3 * h // 4 + 1), (), generator=generator))
            bw = int(torch.randint(max(1, w // 4), max(2, 3 * w // 4 + 1), (), generator=generator))
            y0 = int(torch.randint(0, h - bh + 1, (), generator=generator))
            x0 = int(torch.randint(0, w - bw + 1, (), generator=generator))
            out[i, :, y0: y0 + bh, x0: x0 + bw] = 1
        elif kind == "strokes":
            out[i] = stroke_mask(size, generator)
        elif kind == "half":
            side = ("top", "bottom", "left", "right")[int(torch.randint(4, (), generator=generator))]
            out[i] = make_mask(side, size)[0]
        else:
            out[i] = 1
    return out


def latent_mask(mask: Tensor, latent_size: tuple[int, int]) -> Tensor:
    """A pixel mask [N, 1, H, W] on a latent grid [N, 1, h, w]: a latent cell is regenerated
    when any pixel it covers is (max pooling), so nothing to regenerate is kept by rounding."""
    if tuple(mask.shape[2:]) == tuple(latent_size):
        return mask
    return F.adaptive_max_pool2d(mask.float(), latent_size)
