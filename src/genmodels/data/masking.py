"""Inpainting training masks as a batch transform (the Stable Diffusion inpainting recipe).

A run whose network concatenates ``mask`` / ``masked`` to its input (``model.concat_cond:
[mask, masked]``) trains on random masks: every served batch gets ``cond["mask"]`` [B, 1, h, w]
(1 = regenerate), drawn per item by ``edit.masks.training_masks`` at the image size, and
``cond["masked"] = x * (1 - mask)``, where ``x`` is what the network denoises: pixels, or for a
latent run the latents, the mask carried to the latent grid by ``edit.masks.latent_mask``.
``masked_inputs`` is that formula, shared with inference (``edit.inpaint_model``), so training
and sampling build the extra channels the same way.

The masks come from a generator seeded by ``derive_seed(seed, epoch, pos, rank, MASK_STREAM)``
(``InfiniteBatches``' batch transforms), so a resumed run sees the same masks.

    inpaint:
      masks: [box, strokes, half, full]   # the kinds drawn uniformly (the default)
      full_rate: 0.25                     # optional: that share of items fully masked on top
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..config import register_section
from ..edit.masks import TRAINING_MASK_KINDS, latent_mask, training_masks
from ..errors import ConfigError

__all__ = ["INPAINT_KEYS", "MASK_STREAM", "InpaintConfig", "TrainingMasks", "batch_transforms", "full_mask_cond",
           "inpaint_reads", "masked_inputs"]

MASK_STREAM = 5  # derive_seed(seed, epoch, pos, rank, MASK_STREAM): each served batch's training masks
INPAINT_KEYS = ("mask", "masked")


@dataclass
class InpaintConfig:
    """The inpaint section: which random masks an inpainting model (``model.concat_cond`` with
    mask / masked) trains on."""

    masks: list | None = None  # kinds drawn uniformly per item; None: all of TRAINING_MASK_KINDS
    full_rate: float | None = None  # optional extra share of fully masked items (SD inpainting: 0.25)

    def validate(self):
        if self.masks is not None:
            unknown = sorted(set(self.masks) - set(TRAINING_MASK_KINDS))
            if unknown:
                raise ConfigError(f"inpaint.masks: unknown kind(s) {unknown}; choose from "
                                  f"{', '.join(TRAINING_MASK_KINDS)}")
        if self.full_rate is not None and not 0 <= self.full_rate <= 1:
            raise ConfigError(f"inpaint.full_rate must be in [0, 1], got {self.full_rate!r}")


register_section("inpaint", InpaintConfig)


def masked_inputs(x: Tensor, mask: Tensor) -> dict:
    """The inpainting conditioning of ``x`` [B, C, h, w] under ``mask`` [B, 1, h, w] (1 =
    regenerate): ``{"mask": mask, "masked": x * (1 - mask)}``; one formula for training and
    inference."""
    mask = mask.to(device=x.device, dtype=x.dtype)
    return {"mask": mask, "masked": x * (1 - mask)}


def inpaint_reads(keys) -> tuple:
    """Of the conditioning keys a network reads (or concatenates), the inpainting ones."""
    return tuple(k for k in INPAINT_KEYS if k in set(keys))


def full_mask_cond(keys, n: int, shape, device=None) -> dict:
    """The inpainting conditioning of plain sampling (everything regenerated, nothing kept) for
    the keys of ``keys`` a network reads: mask all ones, masked all zeros, at ``shape`` (C, h, w);
    what the ``full`` training masks teach. Empty for a network that reads neither."""
    reads = inpaint_reads(keys)
    if not reads:
        return {}
    c, h, w = shape
    out = masked_inputs(torch.zeros(n, c, h, w, device=device), torch.ones(n, 1, h, w, device=device))
    return {k: out[k] for k in reads}


@dataclass(frozen=True)
class TrainingMasks:
    """A batch transform: random masks of ``kinds`` drawn at the image size ``image_size`` (H, W),
    carried to the batch's grid (latent runs), with ``masked_inputs`` added to ``cond``.
    ``full_rate``: that share of items is fully masked whatever its kind. ``stream``: the seed
    stream ``InfiniteBatches`` draws this transform's generator from."""

    kinds: tuple
    image_size: tuple
    full_rate: float | None = None
    stream: int = MASK_STREAM

    def __call__(self, batch: dict, generator: torch.Generator) -> dict:
        x = batch["x"]
        mask = training_masks(self.kinds, len(x), tuple(self.image_size), generator)
        if self.full_rate:
            mask[torch.rand(len(x), generator=generator) < self.full_rate] = 1
        mask = latent_mask(mask, tuple(x.shape[2:]))
        return {**batch, "cond": {**batch.get("cond", {}), **masked_inputs(x, mask)}}


def batch_transforms(cfg, image_shape) -> tuple:
    """The batch transforms of a run (``InfiniteBatches(..., transforms=)``): the training masks
    when ``model.concat_cond`` reads mask / masked, drawn at the images' size ``image_shape``
    (C, H, W; the pixels even for a latent run). An inpaint section without such a network, or
    with no mask kinds, is a mistake."""
    reads = inpaint_reads(cfg.model.options.get("concat_cond") or ())
    section = cfg.inpaint
    if not reads:
        if section.masks is not None or section.full_rate is not None:
            raise ConfigError("the inpaint section is set but model.concat_cond holds neither mask nor masked; "
                              "add model.concat_cond=[mask,masked] or drop the inpaint section")
        return ()
    if len(image_shape) != 3:
        raise ConfigError(f"model.concat_cond {list(reads)} (inpainting) needs image data, but '{cfg.data.name}' "
                          f"has items of shape {tuple(image_shape)}")
    kinds = TRAINING_MASK_KINDS if section.masks is None else tuple(section.masks)
    if not kinds:
        raise ConfigError(f"model.concat_cond reads {list(reads)} but inpaint.masks is empty, so nothing makes the "
                          f"masks; list kinds from {', '.join(TRAINING_MASK_KINDS)} (or drop inpaint.masks)")
    return (TrainingMasks(kinds, tuple(image_shape[1:]), section.full_rate),)
