"""Outpainting: extend the canvas by inpainting the new border, in tiles of the model's size
when the canvas is larger than it.

    canvas = outpaint(pipe, images, {"left": 14, "right": 14}, seed=0)     # 28 x 28 -> 28 x 56

Tiles of the model's size step across the canvas with ``overlap`` pixels shared between
neighbours. They are filled greedily, the tile with the largest known share first (recomputed
after each), so every tile after the first sees what earlier tiles drew in its overlap as known
pixels, and inpainting continues it. A tile never regenerates pixels that are already known, so
there is no seam to blend: the overlap is the context a tile continues from. A tile with nothing
known (a border wider than the model's size) is drawn from its neighbours' overlap too, because
the greedy order visits it only after a neighbour has filled part of it.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..errors import ConfigError
from .inpaint import inpaint

__all__ = ["SIDES", "outpaint", "parse_pad", "tile_origins"]

SIDES = ("top", "bottom", "left", "right")


def parse_pad(text: str) -> dict[str, int]:
    """``left:14,right:14`` -> {"left": 14, "right": 14} (pixels added on each named side)."""
    pad = {}
    for part in [p for p in text.split(",") if p.strip()]:
        side, _, value = part.strip().partition(":")
        if side not in SIDES or not value.strip().isdigit():
            raise ConfigError(f"--pad '{text}': give SIDE:PIXELS pairs separated by commas, SIDE one of "
                              f"{', '.join(SIDES)} (e.g. left:14,right:14)")
        pad[side] = int(value)
    if not any(pad.values()):
        raise ConfigError(f"--pad '{text}' adds no pixels")
    return pad


def tile_origins(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of ``tile`` pixels covering ``length`` with at least ``overlap``
    pixels shared by neighbours (the last tile flush with the end)."""
    if length <= tile:
        return [0]
    if not 0 <= overlap < tile:
        raise ConfigError(f"the tile overlap must lie in [0, {tile}), got {overlap}")
    stride = tile - overlap
    starts = list(range(0, length - tile, stride)) + [length - tile]
    return sorted(set(starts))


def outpaint(pipe, images, pad: dict, *, overlap: int | None = None, seed: int = 0, **inpaint_kwargs) -> Tensor:
    """``images`` ([N, C, H, W], [-1, 1]) on a canvas grown by ``pad`` ({side: pixels}), the new
    border inpainted (``inpaint_kwargs``: method, sampler, steps, jumps, labels, prompt, ...).
    ``overlap`` between tiles defaults to half the model's size. Image i's tile k uses seed
    ``seed + k * N + i``. The original pixels are kept exactly."""
    unknown = sorted(set(pad) - set(SIDES))
    if unknown:
        raise ConfigError(f"unknown pad side(s) {unknown}; choose from {', '.join(SIDES)}")
    images = torch.as_tensor(images, dtype=torch.float32)
    n, c, h, w = images.shape
    th, tw = tuple(pipe.data_shape[1:])
    if (h, w) != (th, tw):
        raise ConfigError(f"images of size {h}x{w} do not fit this model's {th}x{tw}")
    top, bottom, left, right = (int(pad.get(s, 0)) for s in SIDES)
    if min(top, bottom, left, right) < 0:
        raise ConfigError("pad sizes must be >= 0")
    canvas = torch.zeros(n, c, h + top + bottom, w + left + right)
    known = torch.zeros(n, 1, *canvas.shape[2:], dtype=torch.bool)
    canvas[..., top: top + h, left: left + w] = images
    known[..., top: top + h, left: left + w] = True
    tiles = [(y, x) for y in tile_origins(canvas.shape[2], th, th // 2 if overlap is None else overlap)
             for x in tile_origins(canvas.shape[3], tw, tw // 2 if overlap is None else overlap)]
    for k in range(len(tiles)):
        # the tile whose window is best known (over all images: they share the layout)
        shares = [known[..., y: y + th, x: x + tw].float().mean().item() for y, x in tiles]
        todo = [i for i, (y, x) in enumerate(tiles) if not known[..., y: y + th, x: x + tw].all()]
        if not todo:
            break
        i = max(todo, key=lambda j: shares[j])
        y, x = tiles[i]
        window, window_known = canvas[..., y: y + th, x: x + tw], known[..., y: y + th, x: x + tw]
        filled = inpaint(pipe, window, (~window_known).float(), seed=seed + k * n, **inpaint_kwargs)
        canvas[..., y: y + th, x: x + tw] = torch.where(window_known, window, filled)
        known[..., y: y + th, x: x + tw] = True
    return canvas
