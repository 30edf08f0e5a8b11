"""Stochastic samplers: DDIM with eta (Song et al. 2021) and DDPM's ancestral sampler (Ho et al.
2020, Algorithm 2); the score-SDE samplers of Song et al. 2021 (Euler-Maruyama on the reverse
SDE, predictor-corrector with a Langevin corrector)."""

import torch

from ..diffusion.denoiser import score
from ..errors import ConfigError
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


def sample_euler_maruyama(denoiser, x, sigmas, *, noise=None, cond=None, callback=None, progress=False):
    """The reverse-time SDE of Song et al. 2021 (Eq. 6) by Euler-Maruyama, in VE coordinates where
    every Gaussian path's forward SDE is dx = sqrt(d sigma^2 / dt) dw (VP and the rest are a
    rescaling of it): from sigma to sigma' the step adds (sigma^2 - sigma'^2) times the score and
    fresh noise of the same variance,

        x' = x + (sigma^2 - sigma'^2) grad log p_sigma(x) + sqrt(sigma^2 - sigma'^2) z,

    Song's "reverse diffusion" predictor (diffusers' ScoreSdeVeScheduler.step_pred). The score
    comes from the Denoiser by Tweedie, grad log p = (D - x) / sigma^2, so it runs on any model.
    The last step to sigma' = 0 adds no noise and returns D(x): Song's final denoising step."""
    step = reverse_diffusion_step(noise or (lambda: torch.randn_like(x)))
    return sample_loop(step, denoiser, x, sigmas, cond=cond, callback=callback, progress=progress)


def reverse_diffusion_step(noise):
    """The step of ``sample_euler_maruyama`` for ``sample_loop``."""

    def step(x, denoised, sigma, sigma_next):
        drop = sigma**2 - sigma_next**2  # the variance this step removes
        x = x + (drop / sigma**2) * (denoised - x)
        return x + drop.sqrt() * noise() if sigma_next > 0 else x

    return step


def langevin_corrector(denoiser, noise, *, snr=0.16, steps=1, step_rule="sigma", cond=None):
    """Song et al. 2021, Algorithm 4 (the corrector of predictor-corrector sampling): ``steps``
    Langevin MCMC moves at a fixed noise level sigma,

        x <- x + eps g + sqrt(2 eps) z,  g = grad log p_sigma(x),

    with the step size eps from ``step_rule``:

    - ``song``: eps = 2 (snr |z| / |g|)^2 with both norms averaged over the batch, exactly Song's
      code and diffusers' ScoreSdeVeScheduler.step_correct; a sample then depends on the batch
      it is drawn in. (Per-sample norms fail in low dimension: |g| -> 0 near a mode gives huge
      steps; measured W2 2.9 instead of 0.3 on 8 gaussians, docs/BENCHMARKS.md.)
    - ``sigma`` (default): eps = 2 (snr sigma)^2, the same rule where |z|^2 ~ d and
      |g|^2 ~ d / sigma^2 concentrate (high dimension), as NCSN's annealed Langevin
      (eps proportional to sigma^2, Song & Ermon 2019); sample i stays independent of the batch.

    Returns ``churn(x, sigma) -> (x, sigma)`` for ``sample_loop``."""
    if step_rule not in ("sigma", "song"):
        raise ConfigError(f"unknown Langevin step_rule '{step_rule}'; allowed: sigma, song")

    def correct(x, sigma):
        for _ in range(steps):
            grad = score(denoiser, x, sigma, cond)
            z = noise()
            if step_rule == "song":
                ratio = z.flatten(1).norm(dim=1).mean() / grad.flatten(1).norm(dim=1).mean()
                eps = 2 * (snr * ratio) ** 2
            else:
                eps = 2 * (snr * sigma) ** 2
            eps = torch.as_tensor(eps, device=x.device).to(x.dtype)
            x = x + eps * grad + (2 * eps).sqrt() * z
        return x, sigma

    return correct


def sample_pc(denoiser, x, sigmas, *, snr=0.16, corrector_steps=1, step_rule="sigma", noise=None, cond=None,
              callback=None, progress=False):
    """Predictor-corrector sampling (Song et al. 2021, Algorithm 2/3): at each noise level,
    ``corrector_steps`` Langevin moves (``langevin_corrector`` with ``snr`` and ``step_rule``;
    Song's snr is 0.16 for VE on CIFAR-10), then one reverse-diffusion predictor step
    (``sample_euler_maruyama``) to the next level. Network evaluations: (1 + corrector_steps)
    per step."""
    noise = noise or (lambda: torch.randn_like(x))
    if corrector_steps < 0 or snr <= 0:
        raise ConfigError(f"pc needs corrector_steps >= 0 and snr > 0, got {corrector_steps}, {snr}")
    correct = langevin_corrector(denoiser, noise, snr=snr, steps=corrector_steps, step_rule=step_rule,
                                 cond=cond) if corrector_steps else None
    return sample_loop(reverse_diffusion_step(noise), denoiser, x, sigmas, cond=cond, churn=correct,
                       callback=callback, progress=progress)
