"""DDIM inversion (Song et al. 2021, Sec. 4.3; Mokady et al. 2023): run the deterministic
sampler's ODE upward, image -> noise, so that sampling the result gives the image back."""

import torch

from .base import sample_loop, to_d


def ddim_invert(denoiser, x0, sigmas, *, cond=None, callback=None, progress=False):
    """Map images ``x0`` to the VE noise at sigmas[0] that DDIM (eta = 0) on the same ``sigmas``
    maps back to them, up to the discretisation error.

    ``sigmas`` is the sampler's descending grid ending in 0. The image is taken as the state at
    the smallest nonzero sigma; each step from sigma to the next larger one is an Euler step
    evaluated at the lower end (the usual inversion approximation: it assumes D changes little
    over a step, so more steps give a smaller round-trip error; ``round_trip_error`` reports it).
    """
    sigmas = torch.as_tensor(sigmas, dtype=torch.float64).cpu()
    up = sigmas[sigmas > 0].flip(0)

    def step(x, denoised, sigma, sigma_next):
        return x + to_d(x, denoised, sigma) * (sigma_next - sigma)

    return sample_loop(step, denoiser, x0, up, cond=cond, callback=callback, progress=progress,
                       desc="inverting")


@torch.inference_mode()
def round_trip_error(denoiser, x0, sigmas, *, cond=None):
    """(noise, reconstruction, RMS error) of invert-then-sample with DDIM on ``sigmas``."""
    from .sde import sample_ddim

    noise = ddim_invert(denoiser, x0, sigmas, cond=cond)
    recon = sample_ddim(denoiser, noise.clone(), sigmas, cond=cond)
    return noise, recon, (recon - x0).square().mean().sqrt().item()
