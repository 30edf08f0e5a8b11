"""Draw samples per seed with any sampler, from pure noise or from a given state mid-way.

    x = generate(denoiser, path, shape=(1, 28, 28), seeds=range(16), sampler="ddim", steps=50)
    x = generate(..., init_images=x0, strength=0.6)        # SDEdit / img2img (Meng et al. 2022)
    x = generate(..., x_start=x_s, start_sigma=2.0)         # continue from a noisy state
"""

from __future__ import annotations

import inspect

import torch

from ..cond import as_cond, map_values
from ..diffusion import sigma_grid
from ..errors import ConfigError
from ..train.distributed import Dist
from .base import SeededNoise
from .registry import grid_settings, run_sampler


def start_index(sigmas: torch.Tensor, *, strength: float | None = None, start_sigma: float | None = None) -> torch.Tensor:
    """The part of a descending grid (ending in 0) that sampling from mid-way runs.

    ``strength`` in (0, 1]: the last ``int(strength * steps)`` steps, as diffusers' img2img
    (strength 1 = the whole grid). ``start_sigma``: every level below it, with ``start_sigma``
    itself prepended as the first (a partial first step when it falls between two levels).
    """
    steps = len(sigmas) - 1
    if strength is not None and start_sigma is not None:
        raise ConfigError("give strength or start_sigma, not both")
    if strength is not None:
        if not 0 < strength <= 1:
            raise ConfigError(f"strength must lie in (0, 1], got {strength}")
        keep = int(steps * strength)
        if keep < 1:
            raise ConfigError(f"strength {strength} of {steps} steps runs no step; raise it to at least {1 / steps:.3g}")
        return sigmas[steps - keep:]
    if start_sigma is None:
        return sigmas
    if not 0 < start_sigma <= float(sigmas[0]):
        raise ConfigError(f"start_sigma must lie in (0, {float(sigmas[0]):.4g}] (the grid's top), got {start_sigma}")
    below = sigmas[sigmas < start_sigma]
    return torch.cat([sigmas.new_tensor([start_sigma]), below])


def check_grid(sigmas) -> torch.Tensor:
    """A given sampling grid as float64, checked: strictly descending, positive, ending in 0."""
    grid = torch.as_tensor(sigmas, dtype=torch.float64).cpu().reshape(-1)
    if len(grid) < 2 or grid[-1] != 0 or (grid[:-1] <= 0).any() or (grid[1:] >= grid[:-1]).any():
        raise ConfigError(f"a sampling grid must be positive noise levels, strictly descending, then 0; got "
                          f"{[round(float(s), 6) for s in grid]}")
    return grid


@torch.inference_mode()
def generate(denoiser, path, *, shape, seeds, sampler="ddim", steps=50, eta=None, spacing=None,
             sigma_max=None, cond=None, batch_size=64, device="cpu", progress=False, options=None,
             x_start=None, init_images=None, start_sigma=None, strength=None, callback=None, walk=None,
             sigmas=None, dist: Dist = Dist()) -> torch.Tensor:
    """Draw one sample per seed; sample i depends only on seeds[i] (and its conditioning).

    ``spacing`` / ``sigma_max``: the grid (``sigma_grid``); without a spacing, the sampler's own
    default grid where it has one (``samplers.DEFAULT_GRIDS``), else the path's.
    ``cond``: conditioning values with one row per seed (``genmodels.cond``), sliced per batch.
    ``options`` go to the sampler (e.g. ``s_churn`` for heun, ``order`` for unipc, ``rtol`` for
    rk45). Starts from x_1 ~ N(0, 1) at the grid's top, in VE coordinates x = x_1 / alpha, unless:

    - ``x_start`` [n, *shape]: the state (VE coordinates) to start from at ``start_sigma`` (or at
      the level ``strength`` picks);
    - ``init_images`` [n, *shape]: clean images noised to that level with each seed's noise,
      x = x0 + sigma * noise (SDEdit, img2img); from the grid's top (strength 1) the start is
      plain sampling's, the image dropped.

    Either way each seed's first noise draw is the one plain sampling starts from, so the rest of
    its noise stream (stochastic samplers) is the same, and ``x_start`` at the grid's top equal to
    that start reproduces plain sampling exactly. ``callback(i, sigma, x, denoised) -> x | None``
    is the step callback (``samplers.base``); called per batch, with ``samples=`` the batch's
    slice of the seeds when it takes that keyword.

    ``walk(x, sigmas, *, descend, denoiser, noise, cond, callback, samples) -> x`` replaces the
    one pass of the sampler down the grid, for algorithms that walk it their own way (RePaint's
    resampling jumps, DDRM's spectral steps). It gets the batch's start and grid;
    ``descend(x, sigmas, callback=None) -> x`` runs the chosen sampler down any descending part
    of a grid with the batch's noise stream and conditioning; ``denoiser``, ``noise`` (the seeds'
    stream after the first draw) and ``cond`` for steps of its own; the step callback; and
    ``samples``, the batch's slice of the seeds (to index per-sample data).

    Under torchrun (``dist``) rank r draws batches r, r + world_size, ... of the seeds, the same
    batches one process would draw, and every rank returns all samples: the result equals one
    process's. Returns float32 on the CPU, shape [len(seeds), *shape].

    ``sigmas``: an explicit descending grid ending in 0 instead of ``steps`` levels of ``spacing``
    (a consistency model's few hand-placed levels).
    """
    if sigmas is None:
        sigmas = sigma_grid(path, steps, **grid_settings(sampler, spacing, sigma_max))
    else:
        sigmas = check_grid(sigmas)
    full_top = sigmas[0]
    seeds = list(seeds)
    mid_way = x_start is not None or init_images is not None
    if x_start is not None and init_images is not None:
        raise ConfigError("give x_start (a noisy state) or init_images (clean images to noise), not both")
    if mid_way:
        if start_sigma is None and strength is None:
            raise ConfigError("starting mid-way needs start_sigma or strength")
        sigmas = start_index(sigmas, strength=strength, start_sigma=start_sigma)
        given = x_start if x_start is not None else init_images
        if tuple(given.shape) != (len(seeds), *shape):
            raise ConfigError(f"{'x_start' if x_start is not None else 'init_images'} must have shape "
                              f"{[len(seeds), *shape]}, got {list(given.shape)}")
    elif start_sigma is not None or strength is not None:
        raise ConfigError("start_sigma / strength need x_start or init_images to start from")
    # From the grid's top (strength 1) the image is dropped: plain sampling's prior neglects the
    # data's weight alpha there too (0.08 on a 20-step cosine grid), so strength 1 is plain sampling
    from_top = init_images is not None and float(sigmas[0]) == float(full_top)
    cond = as_cond(cond)
    wants_samples = callback is not None and "samples" in inspect.signature(callback).parameters

    def draw(batch: slice) -> torch.Tensor:
        noise = SeededNoise(seeds[batch], shape, device=device)
        first = noise()
        if x_start is not None:
            x = x_start[batch].to(device=device, dtype=first.dtype)
        elif init_images is not None and not from_top:
            x = init_images[batch].to(device=device, dtype=first.dtype) + float(sigmas[0]) * first
        else:
            x = first * path.prior_std(sigmas[0]).item()
        step_callback = callback
        if wants_samples:
            step_callback = lambda i, sigma, x, denoised: callback(i, sigma, x, denoised, samples=batch)  # noqa: E731
        batch_cond = map_values(lambda v: v[batch].to(device), cond) if cond else None

        def descend(x, grid, callback=None):
            return run_sampler(sampler, denoiser, x, grid, noise=noise, eta=eta, cond=batch_cond, callback=callback,
                               progress=progress and dist.is_main and walk is None, **(options or {}))

        if walk is None:
            x = descend(x, sigmas, step_callback)
        else:
            x = walk(x, sigmas, descend=descend, denoiser=denoiser, noise=noise, cond=batch_cond,
                     callback=step_callback, samples=batch)
        return x.float().cpu()

    return dist.map_batches(len(seeds), batch_size, draw)
