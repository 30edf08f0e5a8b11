"""Consistency sampling (Song et al. 2023, Algorithm 1): one network evaluation per level.

The Denoiser of a consistency model returns the consistency function f(x, sigma), the end of the
probability-flow ODE trajectory through x at sigma_min. One step maps pure noise at the grid's
top straight to data; each further level re-noises that estimate to the level and maps it back:

    x0 = f(x, sigma_0);  for sigma in sigmas[1:-1]:  x = x0 + sqrt(sigma^2 - sigma_min^2) z,  x0 = f(x, sigma)

In DDIM's terms (``ancestral_split``) each step is ancestral re-noising with sigma_down = 0: the
denoiser's noise estimate is dropped and all of the next level's noise is fresh.
"""

import torch

from .base import sample_loop


def sample_consistency(denoiser, x, sigmas, *, sigma_min=0.0, noise=None, cond=None, callback=None,
                       progress=False):
    """Multistep consistency sampling down ``sigmas`` (descending, ending in 0): network
    evaluations = len(sigmas) - 1, so a grid [sigma_max, 0] is one-step generation. ``sigma_min``:
    the level f maps to (its output already carries that much noise, so re-noising to sigma adds
    sqrt(sigma^2 - sigma_min^2)). ``noise()`` draws z (a SeededNoise for per-sample seeds)."""
    noise = noise or (lambda: torch.randn_like(x))

    def step(x, denoised, sigma, sigma_next):
        if sigma_next == 0:
            return denoised
        return denoised + (sigma_next**2 - sigma_min**2).clamp(min=0).sqrt().to(x.dtype) * noise()

    return sample_loop(step, denoiser, x, sigmas, cond=cond, callback=callback, progress=progress,
                       desc="consistency sampling")
