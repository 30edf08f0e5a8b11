"""Inpainting with any diffusion, flow, latent or text model: RePaint (Lugmayr et al. 2022) on
the sampler contract, or a trained inpainting model (``model.concat_cond: [mask, masked]``).

    out = inpaint(pipe, images, "center", seed=0)                        # RePaint, the run's sampler
    out = inpaint(pipe, images, mask, jump_length=5, jump_n_sample=3)    # with resampling jumps

RePaint runs the sampler down its grid from pure noise and, after every step, replaces the known
pixels (mask 0) by the original noised to the new level, x0 + sigma * eps (VE coordinates), so
the unknown region is generated in agreement with them. Pasting alone harmonises poorly: the
unknown region never influences the known one. The resampling jumps fix that: after every
``jump_length`` steps the state is diffused back up ``jump_length`` levels (forward noise,
x + sqrt(sigma_hi^2 - sigma_lo^2) * eps) and those steps are run again, ``jump_n_sample - 1``
extra times, so generated and known content meet several times at each noise level.

Two bugs of public ports are designed out and tested: the jumps go back up *after* the steps
they repeat (a resampling loop placed around each single step re-noises one level only), and the
known pixels are pasted after the final step too (sigma 0: exactly the input), so outside the
mask the output equals the input. Latent runs RePaint on latents with the mask carried to the
latent grid (``latent_mask``) and paste the original pixels back after decoding.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..data.loader import derive_seed
from ..errors import ConfigError
from ..samplers.base import SeededNoise
from .masks import latent_mask, resolve_mask

__all__ = ["INPAINT_METHODS", "REPAINT_DEFAULTS", "inpaint", "paste_back", "repaint_schedule", "repaint_walk"]

INPAINT_METHODS = ("auto", "repaint", "model")
# RePaint's defaults, measured (docs/BENCHMARKS.md, "Editing"): on the 500 MNIST test images and
# every mask, ancestral DDPM steps with jumps of 5 levels passed 3 times beat plain pasting with
# DDIM or DDPM at 50 steps on fd_cnn, seam and class accuracy, at 2.8x the network evaluations.
REPAINT_DEFAULTS = {"sampler": "ddpm", "jump_length": 5, "jump_n_sample": 3}
PASTE_STREAM = 6  # derive_seed(seed, PASTE_STREAM): the noise of the pasted known pixels and of the jumps


def repaint_schedule(steps: int, jump_length: int = 0, jump_n_sample: int = 1) -> list[tuple[int, int]]:
    """The walk over grid indices 0 (top) .. ``steps`` (sigma 0) as moves (from, to): down moves
    run the sampler, up moves re-noise. After every ``jump_length`` steps down (not after the
    last step) the walk goes back up ``jump_length`` levels and down again, ``jump_n_sample - 1``
    times; ``jump_length`` 0 or ``jump_n_sample`` 1 is one plain pass. Consecutive down moves
    are merged, so multistep samplers keep their history within a pass."""
    if jump_length < 0 or jump_n_sample < 1:
        raise ConfigError(f"jump_length must be >= 0 and jump_n_sample >= 1, got {jump_length} and {jump_n_sample}")
    if jump_length and jump_length > steps:
        raise ConfigError(f"jump_length {jump_length} is longer than the {steps} sampling steps")
    moves, at = [], 0
    jumps = jump_length > 0 and jump_n_sample > 1
    while at < steps:
        nxt = min(at + (jump_length if jumps else steps), steps)
        moves.append((at, nxt))
        if jumps and nxt < steps:
            for _ in range(jump_n_sample - 1):
                moves += [(nxt, nxt - jump_length), (nxt - jump_length, nxt)]
        at = nxt
    merged = [moves[0]]
    for move in moves[1:]:
        last = merged[-1]
        if move[0] < move[1] and last[0] < last[1] and last[1] == move[0]:
            merged[-1] = (last[0], move[1])
        else:
            merged.append(move)
    return merged


def repaint_walk(known: Tensor, mask: Tensor, seeds, *, jump_length: int = 0, jump_n_sample: int = 1):
    """A ``walk`` for ``generate`` / ``Pipeline.sample`` that inpaints ``known`` (the clean
    values, VE coordinates, [n, ...]) where ``mask`` (broadcastable to it) is 1 and keeps it where
    ``mask`` is 0; sample i reads row i of both and draws its paste and jump noise from its own
    stream (``seeds[i]``), apart from the sampler's, so an all-ones mask without jumps is plain
    sampling exactly."""
    seeds = list(seeds)

    def walk(x, sigmas, *, descend, denoiser, noise, cond, callback, samples):
        x0 = known[samples].to(x.device, x.dtype)
        keep = 1 - mask[samples].to(x.device, x.dtype)
        fresh = SeededNoise([derive_seed(s, PASTE_STREAM) for s in seeds[samples]], x.shape[1:], device=x.device)
        step = [0]  # the user's callback sees one running step count over the whole walk

        def paste(x, sigma):
            return x + keep * (x0 + float(sigma) * fresh() - x)

        def after(i, sigma, x, denoised):
            x = paste(x, sigma)
            if callback is not None:
                replaced = callback(step[0], sigma, x, denoised)
                x = x if replaced is None else replaced
            step[0] += 1
            return x

        x = paste(x, sigmas[0])
        for start, end in repaint_schedule(len(sigmas) - 1, jump_length, jump_n_sample):
            if start < end:
                x = descend(x, sigmas[start:end + 1], after)
            else:  # back up: forward diffusion from sigmas[start] to the higher sigmas[end]
                x = x + (sigmas[end] ** 2 - sigmas[start] ** 2).sqrt().to(x.dtype) * fresh()
        return x

    return walk


def paste_back(images: Tensor, out: Tensor, mask: Tensor) -> Tensor:
    """``out`` inside the mask, ``images`` exactly outside it."""
    return torch.where(mask.bool().expand_as(images), out, images)


def _check_images(pipe, images) -> Tensor:
    images = torch.as_tensor(images, dtype=torch.float32)
    if images.ndim == 3:
        images = images[None]
    shape = tuple(pipe.data_shape)
    if len(shape) != 3:
        raise ConfigError("editing works on image runs; this run's data are points")
    if tuple(images.shape[1:]) != shape:
        raise ConfigError(f"images of shape {tuple(images.shape[1:])} do not fit this model's {shape} "
                          "(C, H, W); resize them first")
    return images


def reads_masks(pipe) -> bool:
    """Whether the run is an inpainting model (its network reads the mask and the masked image)."""
    return {"mask", "masked"} <= set(getattr(pipe, "cond_keys", ()))


def inpaint_settings(pipe, *, method="auto", sampler=None, steps=None, eta=None, jump_length=None,
                     jump_n_sample=None) -> dict:
    """What ``inpaint`` runs with these options: the method, the sampler settings and RePaint's
    jumps, defaults filled in (recorded with the output)."""
    if method not in INPAINT_METHODS:
        raise ConfigError(f"unknown inpainting method '{method}'; choose one of {', '.join(INPAINT_METHODS)}")
    if method == "auto":
        method = "model" if reads_masks(pipe) else "repaint"
    if method == "model":
        if not reads_masks(pipe):
            raise ConfigError(f"'{pipe.run_dir}' was not trained as an inpainting model (its network reads no "
                              "mask: model.concat_cond: [mask, masked]); use --method repaint")
        if jump_length or (jump_n_sample or 1) != 1:
            raise ConfigError("resampling jumps are RePaint's; drop --jump-length / --jump-n-sample for the model")
        return {"method": method, **pipe.sample_settings(sampler=sampler, steps=steps, eta=eta),
                "jump_length": 0, "jump_n_sample": 1}
    settings = pipe.sample_settings(sampler=sampler or REPAINT_DEFAULTS["sampler"], steps=steps, eta=eta)
    if jump_length is None:  # the default jumps, shortened for a grid of fewer steps
        jump_length = min(REPAINT_DEFAULTS["jump_length"], settings["steps"])
    if jump_n_sample is None:
        jump_n_sample = REPAINT_DEFAULTS["jump_n_sample"]
    return {"method": method, **settings, "jump_length": jump_length, "jump_n_sample": jump_n_sample}


def inpaint(pipe, images, mask, *, method: str = "auto", seed: int = 0, sampler=None, steps=None, eta=None,
            jump_length: int | None = None, jump_n_sample: int | None = None, **sample_kwargs) -> Tensor:
    """Regenerate ``images`` ([N, C, H, W] in [-1, 1]) where ``mask`` is 1 (a tensor, PNG path
    or spec: ``genmodels.edit.masks``); image i uses seed ``seed + i``. ``method``: ``repaint``
    (any model), ``model`` (a run trained with ``model.concat_cond: [mask, masked]``) or ``auto``
    (the model when the run is one). ``steps``/``eta`` default to the run's, ``sampler`` to the
    run's for the model and to ``ddpm`` for RePaint; ``jump_length``/``jump_n_sample``: RePaint's
    resampling (module docstring), default 5 and 3 (``REPAINT_DEFAULTS``; 0 and 1: none). Other keywords go
    to ``pipe.sample`` (labels, prompt, guidance, callback, ...). Outside the mask the result is
    the input exactly."""
    from ..families.diffusion import Pipeline

    if not isinstance(pipe, Pipeline):
        raise ConfigError(f"inpainting needs a diffusion or flow run; this is a {pipe.config.family} run")
    images = _check_images(pipe, images)
    n = len(images)
    mask = resolve_mask(mask, n, tuple(images.shape[2:]))
    settings = inpaint_settings(pipe, method=method, sampler=sampler, steps=steps, eta=eta, jump_length=jump_length,
                                jump_n_sample=jump_n_sample)
    method, jump_length, jump_n_sample = (settings.pop(k) for k in ("method", "jump_length", "jump_n_sample"))
    if method == "model":
        from .inpaint_model import inpaint_with_model

        return inpaint_with_model(pipe, images, mask, seed=seed, **settings, **sample_kwargs)
    known, grid_mask = images, mask
    if pipe.latent is not None:
        known = pipe.latent.encode(images)
        grid_mask = latent_mask(mask, tuple(known.shape[2:]))
    walk = repaint_walk(known, grid_mask, range(seed, seed + n), jump_length=jump_length,
                        jump_n_sample=jump_n_sample)
    out = pipe.sample(n, seed=seed, walk=walk, **settings, **sample_kwargs)
    return paste_back(images, out, mask)


def evaluations(steps: int, jump_length: int = 0, jump_n_sample: int = 1) -> int:
    """Network evaluations of a RePaint walk with a one-evaluation-per-step sampler."""
    return sum(end - start for start, end in repaint_schedule(steps, jump_length, jump_n_sample) if start < end)
