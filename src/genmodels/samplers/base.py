"""What every sampler shares: the step loop and its callback, per-sample seeded noise, DDIM's
noise split, EDM's churn.

The step callback, which every sampler takes: ``callback(i, sigma, x, denoised) -> x | None`` is
called after step ``i`` with the new state ``x`` at its noise level ``sigma`` (the grid's
``sigmas[i + 1]``; 0 after the last step) and the x0 estimate ``denoised`` the step used. If it
returns a tensor, sampling continues from that instead of ``x`` (inpainting pastes the known
pixels, noised to ``sigma``); it may report progress; it cancels by raising ``SamplingCancelled``.
"""

import math

import torch

from ..progress import progress_bar

from ..errors import GenmodelsError


class SamplingCancelled(GenmodelsError):
    """Raised by a step callback to stop sampling at the end of the current step."""


def after_step(callback, i, sigma, x, denoised):
    """Run the step callback (if any) and return the state to continue from."""
    if callback is None:
        return x
    replaced = callback(i, sigma, x, denoised)
    return x if replaced is None else replaced


def sample_loop(step, denoiser, x, sigmas, *, cond=None, churn=None, callback=None, progress=False,
                desc="sampling"):
    """Run ``x = step(x, denoised, sigma, sigma_next)`` down a descending ``sigmas`` grid.

    ``denoised = denoiser(x, sigma, cond)`` is evaluated once per step here; a step that needs
    more evaluations (Heun) closes over the denoiser itself. ``churn(x, sigma) -> (x, sigma_hat)``
    optionally raises the noise level before the evaluation (EDM's stochastic sampler); the step
    then runs from sigma_hat. ``callback``: the step callback (module docstring).
    """
    # Kept on the CPU: 0-dim CPU tensors act as scalars on any device, and branching on them
    # (sigma_up > 0) costs no host sync in the loop.
    sigmas = torch.as_tensor(sigmas, dtype=torch.float64).cpu()
    for i in progress_bar(range(len(sigmas) - 1), desc=desc, disable=not progress, leave=False):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        if churn is not None:
            x, sigma = churn(x, sigma)
        denoised = denoiser(x, sigma, cond)
        x = after_step(callback, i, sigma_next, step(x, denoised, sigma, sigma_next), denoised)
    return x


class SeededNoise:
    """Standard normal noise drawn per sample from its own seed, so sample i is the same whatever
    the batch it is drawn in (EDM's per-seed generators). Each call draws the next tensor.

    Drawn on the CPU and moved, so a seed gives the same image on every device.
    """

    def __init__(self, seeds, shape, *, device="cpu", dtype=torch.float32):
        self.generators = [torch.Generator().manual_seed(int(s)) for s in seeds]
        self.shape, self.device, self.dtype = tuple(shape), device, dtype

    def __call__(self) -> torch.Tensor:
        draws = [torch.randn(self.shape, generator=g) for g in self.generators]
        return torch.stack(draws).to(device=self.device, dtype=self.dtype)


def ancestral_split(sigma, sigma_next, eta):
    """Split the move sigma -> sigma_next into a deterministic part (to ``sigma_down``) and fresh
    noise of std ``sigma_up``, with sigma_down^2 + sigma_up^2 = sigma_next^2.

    DDIM's sigma_t(eta) (Song et al. 2021, Eq. 16) written in VE coordinates:
    sigma_up = eta * sqrt(sigma_next^2 (sigma^2 - sigma_next^2) / sigma^2). eta = 1 is the DDPM
    posterior q(x_{t-1} | x_t, x0) with variance beta-tilde; eta = 0 adds no noise.
    """
    if eta == 0:
        return sigma_next, sigma_next * 0
    sigma_up = (eta * (sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2).sqrt()).clamp(max=sigma_next)
    sigma_down = (sigma_next**2 - sigma_up**2).sqrt()
    return sigma_down, sigma_up


def to_d(x, denoised, sigma):
    """The probability-flow ODE's slope dx/dsigma = (x - D(x, sigma)) / sigma (Karras et al. Eq. 3)."""
    return (x - denoised) / sigma


def edm_churn(noise, *, steps, s_churn=0.0, s_tmin=0.0, s_tmax=math.inf, s_noise=1.0):
    """EDM Algorithm 2, lines 4-6: inside [s_tmin, s_tmax] raise sigma to sigma (1 + gamma),
    gamma = min(s_churn / steps, sqrt 2 - 1), adding the matching fresh noise (scaled by
    s_noise). Returns None when s_churn is 0 (the deterministic sampler)."""
    if s_churn <= 0:
        return None
    gamma = min(s_churn / steps, math.sqrt(2) - 1)

    def churn(x, sigma):
        if not s_tmin <= float(sigma) <= s_tmax:
            return x, sigma
        sigma_hat = sigma * (1 + gamma)
        return x + noise() * s_noise * (sigma_hat**2 - sigma**2).sqrt(), sigma_hat

    return churn
