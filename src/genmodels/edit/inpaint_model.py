"""Inpainting with a model trained for it (the Stable Diffusion inpainting recipe).

A run with ``model.concat_cond: [mask, masked]`` (configs mnist-inpaint, emoji-inpaint) read the
mask and the masked image as extra input channels in training (``genmodels.data.masking``), so
inpainting is plain sampling with that conditioning: no per-step projection as RePaint needs.
The pixels outside the mask are pasted back from the input at the end, so they are kept exactly
(a latent run's decoder would otherwise blur them).

    pipe = genmodels.load("runs/mnist-inpaint")
    out = inpaint_with_model(pipe, images, "center", seed=0, steps=50)
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..cond import as_cond
from ..data.masking import inpaint_reads, masked_inputs
from ..errors import ConfigError
from .masks import latent_mask, resolve_mask

__all__ = ["inpaint_with_model", "model_cond"]


def model_cond(pipe, images: Tensor, mask: Tensor) -> dict:
    """The mask / masked conditioning the network reads for ``images`` under pixel ``mask``
    [N, 1, H, W]: built by ``masked_inputs`` on the pixels, or for a latent run on the encoded
    images with the mask carried to the latent grid (as in training)."""
    reads = inpaint_reads(pipe.cond_keys)
    if not reads:
        raise ConfigError("this run was not trained as an inpainting model (model.concat_cond); use RePaint "
                          "(genmodels.edit.inpaint)")
    x = images.to(pipe.device)
    if pipe.latent is not None:
        with torch.inference_mode():
            x = pipe.latent.encode(x)
    values = masked_inputs(x, latent_mask(mask.to(x.device), tuple(x.shape[2:])))
    return {k: values[k] for k in reads}


def inpaint_with_model(pipe, images, mask, *, seed: int = 0, **sample_kwargs) -> Tensor:
    """``images`` [N, C, H, W] in [-1, 1] with the ``mask`` region (1 = regenerate; a tensor, PNG
    path or spec, ``edit.masks``) drawn by the inpainting model ``pipe``, image i from seed
    ``seed + i``; outside the mask the result is the input, exactly. Other keywords go to
    ``pipe.sample`` (sampler, steps, labels, prompt, guidance, ...): guidance on labels or prompts
    keeps mask / masked in both halves."""
    images = torch.as_tensor(images, dtype=torch.float32)
    if images.ndim != 4 or tuple(images.shape[1:]) != tuple(pipe.data_shape):
        raise ConfigError(f"images must have shape [N, {', '.join(map(str, pipe.data_shape))}], "
                          f"got {list(images.shape)}")
    n = len(images)
    mask = resolve_mask(mask, n, tuple(images.shape[2:]))
    cond = {**as_cond(sample_kwargs.pop("cond", None)), **model_cond(pipe, images, mask)}
    sample_kwargs.setdefault("progress", False)
    drawn = pipe.sample(n, seed=seed, cond=cond, **sample_kwargs).to(images.device)
    return mask * drawn + (1 - mask) * images
