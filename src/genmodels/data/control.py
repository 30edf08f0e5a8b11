"""Control images computed from the images themselves (ControlNet's conditions), the ``control``
config section, and control fidelity.

A control map has the images' height and width and lies in [-1, 1] like them (-1 background, 1
the drawn structure), so its null ("no control", ``genmodels.cond``: zeros) is distinct from
every real map. ``CONTROL_TYPES`` (one extractor each, ``[N, C, H, W] -> [N, c, H, W]``):

    edges     Sobel gradient magnitude of the grey image, thresholded (1 channel)
    skeleton  the ink binarised and thinned to one-pixel strokes (Zhang & Suen 1984; 1 channel)
    scribble  a random part of the skeleton (coarse cells kept at random, seeded per image),
              dilated to 3-pixel strokes: what a person's quick sketch gives (1 channel)
    lowres    the image averaged to a quarter of its side (7x7 for 28 px, 8x8 for 32; 16x16 for
              64 px at an eighth: 8x8) and blown back up, nearest (the image's channels)
    mask      the silhouette: ink, or for colour images on white what differs from white,
              closed (dilate then erode) to fill pinholes (1 channel)

``control_fidelity(kind, outputs, controls)``: how well outputs follow their controls, the same
extractor applied to the outputs and compared with the control: F1 at one pixel's tolerance for
the stroke maps (edges, skeleton, scribble; the boundary-matching F-score of edge detection),
IoU for masks, 1 - mean |difference| (in [0, 1] units) for lowres. Real images score 1 against
their own controls by construction; unmatched pairs give the chance level.

    control:
      type: edges          # one of CONTROL_TYPES
      zero_lr_scale: 1.0   # learning-rate multiplier of the zero convs
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..config import register_section
from ..errors import ConfigError

__all__ = ["CONTROL_TYPES", "ControlConfig", "control_channels", "control_fidelity", "control_training_data",
           "extract_control", "skeletonize"]

SCRIBBLE_SEED = 7919  # the scribble of image i keeps the cells drawn by seed SCRIBBLE_SEED + i


def _grey(x: Tensor) -> Tensor:
    """[N, C, H, W] in [-1, 1] -> ink [N, 1, H, W] in [0, 1]: MNIST-like data are light strokes on
    black; colour images on white are inverted so ink is what differs from the background."""
    unit = (x.mean(1, keepdim=True) + 1) / 2
    if x.shape[1] == 3:  # colour on white (emoji): darkness is ink
        unit = 1 - unit
    return unit


def _binary(mask: Tensor) -> Tensor:
    return mask.float() * 2 - 1


def _dilate(b: Tensor, k: int = 3) -> Tensor:
    return F.max_pool2d(b, k, stride=1, padding=k // 2)


def _erode(b: Tensor, k: int = 3) -> Tensor:
    return -F.max_pool2d(-b, k, stride=1, padding=k // 2)


def edges(x: Tensor) -> Tensor:
    from .datasets import sobel_edges

    magnitude = (sobel_edges(_grey(x) * 2 - 1) + 1) / 2  # [0, 1]
    return _binary(magnitude > 0.5)


def skeletonize(binary: Tensor, max_iters: int = 50) -> Tensor:
    """Zhang-Suen thinning of a {0, 1} image batch [N, 1, H, W], both sub-iterations vectorised."""
    img = F.pad(binary.float(), (1, 1, 1, 1))
    for _ in range(max_iters):
        changed = False
        for step in (0, 1):
            p = img
            # neighbours P2..P9, clockwise from north
            n = [torch.roll(p, shifts, dims=(2, 3)) for shifts in
                 [(1, 0), (1, -1), (0, -1), (-1, -1), (-1, 0), (-1, 1), (0, 1), (1, 1)]]
            b = sum(n)
            a = sum(((n[i] == 0) & (n[(i + 1) % 8] == 1)).float() for i in range(8))
            p2, p4, p6, p8 = n[0], n[2], n[4], n[6]
            if step == 0:
                c1, c2 = p2 * p4 * p6, p4 * p6 * p8
            else:
                c1, c2 = p2 * p4 * p8, p2 * p6 * p8
            remove = (p == 1) & (b >= 2) & (b <= 6) & (a == 1) & (c1 == 0) & (c2 == 0)
            if remove.any():
                img = img * (~remove).float()
                changed = True
        if not changed:
            break
    return img[:, :, 1:-1, 1:-1]


def skeleton(x: Tensor) -> Tensor:
    return _binary(skeletonize(_grey(x) > 0.5))


def scribble(x: Tensor, *, first_index: int = 0) -> Tensor:
    sk = skeletonize(_grey(x) > 0.5)
    n, _, h, w = sk.shape
    cells = max(h // 7, 1)  # a 4x4 grid of cells on 28 px
    keep = torch.stack([torch.rand(1, (h + cells - 1) // cells, (w + cells - 1) // cells,
                                   generator=torch.Generator().manual_seed(SCRIBBLE_SEED + first_index + i)) < 0.7
                        for i in range(n)]).float()
    keep = F.interpolate(keep, scale_factor=cells, mode="nearest")[:, :, :h, :w]
    return _binary(_dilate(sk * keep.to(sk)) > 0)


def lowres(x: Tensor) -> Tensor:
    side = x.shape[-1]
    factor = 8 if side >= 64 else 4
    small = F.adaptive_avg_pool2d(x, (max(x.shape[-2] // factor, 1), max(side // factor, 1)))
    return F.interpolate(small, size=x.shape[-2:], mode="nearest").clamp(-1, 1)


def mask(x: Tensor) -> Tensor:
    ink = _grey(x) > (0.1 if x.shape[1] == 3 else 0.5)
    return _binary(_erode(_dilate(ink.float())) > 0)


CONTROL_TYPES = {"edges": edges, "skeleton": skeleton, "scribble": scribble, "lowres": lowres, "mask": mask}


def control_channels(kind: str, image_channels: int) -> int:
    return image_channels if kind == "lowres" else 1


def extract_control(kind: str, x: Tensor, *, first_index: int = 0, batch_size: int = 512) -> Tensor:
    """The ``kind`` control maps of images ``x`` [N, C, H, W] in [-1, 1] (``first_index``: the
    index of ``x[0]`` in its set, which seeds the scribbles)."""
    if kind not in CONTROL_TYPES:
        raise ConfigError(f"unknown control type {kind!r}; choose one of {', '.join(CONTROL_TYPES)}")
    if x.ndim != 4:
        raise ConfigError(f"control maps are drawn from images [N, C, H, W], got shape {list(x.shape)}")
    fn = CONTROL_TYPES[kind]
    out = []
    for start in range(0, len(x), batch_size):
        chunk = x[start:start + batch_size].float()
        out.append(fn(chunk, first_index=first_index + start) if kind == "scribble" else fn(chunk))
    return torch.cat(out)


def control_fidelity(kind: str, outputs: Tensor, controls: Tensor, *, first_index: int = 0) -> Tensor:
    """Per image, how well ``outputs`` follow ``controls`` (module docstring); higher is better."""
    got = extract_control(kind, outputs, first_index=first_index)
    if kind == "lowres":
        return 1 - ((got - controls.to(got)).abs() / 2).flatten(1).mean(1)
    pred, target = got.flatten(1) > 0, controls.to(got).flatten(1) > 0
    if kind == "mask":
        inter, union = (pred & target).sum(1).float(), (pred | target).sum(1).float()
        return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))
    near_target = (_dilate((controls.to(got) > 0).float()) > 0).flatten(1)
    near_pred = (_dilate((got > 0).float()) > 0).flatten(1)
    precision = (pred & near_target).sum(1) / pred.sum(1).clamp(min=1)
    recall = (target & near_pred).sum(1) / target.sum(1).clamp(min=1)
    f1 = 2 * precision * recall / (precision + recall).clamp(min=1e-12)
    empty = (pred.sum(1) == 0) & (target.sum(1) == 0)
    return torch.where(empty, torch.ones_like(f1), f1)


@dataclass
class ControlConfig:
    """The control section of a ControlNet run: which control image it reads, and how it trains."""

    type: str | None = None  # one of CONTROL_TYPES; required by family: controlnet
    zero_lr_scale: float = 1.0  # learning rate of the zero convs = train.lr x this
    hint_channels: list[int] = dataclasses.field(default_factory=lambda: [16, 32])

    POSITIVE = ("zero_lr_scale",)

    def validate(self):
        if self.type is not None and self.type not in CONTROL_TYPES:
            raise ConfigError(f"control.type {self.type!r} is not one of {', '.join(CONTROL_TYPES)}")


register_section("control", ControlConfig)


def control_training_data(cfg, dataset):
    """The training set with ``cond["image"]``, its control maps (from the pixel images, before
    any latent encoding), for a run with a ``control.type``; unchanged otherwise."""
    kind = cfg.control.type
    if kind is None:
        return dataset
    if dataset.kind != "image":
        raise ConfigError(f"control images are drawn from images; '{cfg.data.name}' holds points")
    if "image" in dataset.cond:
        raise ConfigError(f"data '{cfg.data.name}' already gives cond['image']; a ControlNet computes its own "
                          "(control.type)")
    return dataclasses.replace(dataset, cond={**dataset.cond, "image": extract_control(kind, dataset.x)})
