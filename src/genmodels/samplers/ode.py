"""Solvers of the probability-flow ODE dx/dsigma = (x - D(x, sigma)) / sigma (Karras et al. 2022,
Eq. 3 with s(t) = 1, sigma(t) = t)."""

from .base import sample_loop


def sample_euler(denoiser, x, sigmas, *, cond=None, callback=None, progress=False):
    """First-order Euler steps in sigma (Karras et al. 2022, Algorithm 1 without the Heun stage)."""

    def step(x, denoised, sigma, sigma_next):
        d = (x - denoised) / sigma
        return x + d * (sigma_next - sigma)

    return sample_loop(step, denoiser, x, sigmas, cond=cond, callback=callback, progress=progress)
