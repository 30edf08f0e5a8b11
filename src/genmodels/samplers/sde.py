"""DDIM with eta (Song et al. 2021) and DDPM's ancestral sampler (Ho et al. 2020, Algorithm 2)."""

import torch

from .base import ancestral_split, sample_loop


def sample_ddim(denoiser, x, sigmas, *, eta=0.0, noise=None, cond=None, callback=None, progress=False):
    """DDIM, Song et al. 2021 Eq. 12, in VE coordinates: x' = x0 + sigma_down eps + sigma_up z.

    eps = (x - x0) / sigma is the noise the denoiser implies. eta = 0 is deterministic (and equals
    Euler on the probability-flow ODE); eta = 1 is DDPM's ancestral sampling. ``noise()`` draws z
    (default: torch.randn_like; pass a SeededNoise for per-sample seeds).
    """
    noise = noise or (lambda: torch.randn_like(x))

    def step(x, denoised, sigma, sigma_next):
        sigma_down, sigma_up = ancestral_split(sigma, sigma_next, eta)
        eps = (x - denoised) / sigma
        x = denoised + sigma_down * eps
        return x + sigma_up * noise() if sigma_up > 0 else x

    return sample_loop(step, denoiser, x, sigmas, cond=cond, callback=callback, progress=progress)


def sample_ddpm(denoiser, x, sigmas, *, noise=None, cond=None, callback=None, progress=False):
    """DDPM ancestral sampling (Algorithm 2 with sigma_t^2 = beta-tilde_t): each step draws from the
    posterior q(x_{t-1} | x_t, x0 = D(x_t)). On the full T-step grid this is the paper's sampler;
    on a coarser grid it is the posterior between the visited steps (DDIM with eta = 1)."""
    return sample_ddim(denoiser, x, sigmas, eta=1.0, noise=noise, cond=cond, callback=callback,
                       progress=progress)


def sample_euler_ancestral(denoiser, x, sigmas, *, eta=1.0, noise=None, cond=None, callback=None,
                           progress=False):
    """k-diffusion's Euler ancestral: an Euler step to sigma_down, then fresh noise of std
    sigma_up (``ancestral_split``). In VE coordinates x + d (sigma_down - sigma) with
    d = (x - x0) / sigma is exactly DDIM's x0 + sigma_down eps, so this is DDIM with eta = 1 by
    default; it is listed under its own name because users of k-diffusion and diffusers look for
    it there (usually with a Karras grid)."""
    return sample_ddim(denoiser, x, sigmas, eta=eta, noise=noise, cond=cond, callback=callback,
                       progress=progress)
