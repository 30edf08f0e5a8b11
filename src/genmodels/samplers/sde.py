"""Stochastic samplers: DDIM with eta (Song et al. 2021) and DDPM's ancestral sampler (Ho et al.
2020, Algorithm 2); the score-SDE samplers of Song et al. 2021 (Euler-Maruyama on the reverse
SDE, predictor-corrector with a Langevin corrector); Restart sampling (Xu et al. 2023)."""

import math

import torch

from ..diffusion.denoiser import score
from ..diffusion.sigmas import karras_sigmas
from ..errors import ConfigError
from .base import ancestral_split, sample_loop
from .ode import heun_step


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


def restart_plan(*, restart_interval=(0.06, 0.30), restart_k=2, restart_steps=2, restarts=None) -> list:
    """The restart intervals of ``sample_restart`` as [(sigma_min, sigma_max, k, steps), ...]:
    ``restarts`` when given, else the one interval ``restart_interval`` with ``restart_k`` and
    ``restart_steps``; validated."""
    if restarts is None:
        if restart_interval is None or len(restart_interval) != 2:
            raise ConfigError(f"restart_interval must be (sigma_min, sigma_max), got {restart_interval!r}")
        restarts = [(*restart_interval, restart_k, restart_steps)]
    plan = []
    for entry in restarts:
        try:
            lo, hi, k, steps = entry
            lo, hi = float(lo), float(hi)
        except (TypeError, ValueError):
            raise ConfigError(f"a restart is (sigma_min, sigma_max, k, steps), got {entry!r}") from None
        if not 0 < lo < hi:
            raise ConfigError(f"a restart interval needs 0 < sigma_min < sigma_max, got [{lo}, {hi}]")
        if int(k) != k or k < 0 or int(steps) != steps or steps < 1:
            raise ConfigError(f"a restart needs an integer k >= 0 and steps >= 1, got k={k}, steps={steps}")
        plan.append((lo, hi, int(k), int(steps)))
    return plan


def restart_branches(sigmas, plan, *, rho=7.0) -> dict:
    """Where ``sample_restart`` restarts on the grid ``sigmas``: {grid level: [(k, restart grid)]}.

    Each interval branches from the level nearest its sigma_min (in log sigma) among those a step
    arrives at (not the grid's top, not 0) below its sigma_max: the restart starts on the main
    grid, as common implementations snap t_min to it; its restart grid descends from sigma_max to
    that level in ``steps`` Karras steps (Eq. 5 with ``rho``). An interval above the grid's top, or with no level below its
    sigma_max, is never reached and is left out."""
    sigmas = torch.as_tensor(sigmas, dtype=torch.float64).cpu()
    arrivals = sigmas[1:][sigmas[1:] > 0]
    branches = {}
    for lo, hi, k, steps in plan:
        below = arrivals[arrivals < hi]
        if k == 0 or lo > sigmas[0] or len(below) == 0:
            continue
        level = below[(below.log() - math.log(lo)).abs().argmin()]
        grid = karras_sigmas(hi, float(level), steps + 1, rho)
        branches.setdefault(float(level), []).append((k, grid))
    return branches


def restart_evaluations(steps, *, sigmas=None, rho=7.0, **plan) -> int:
    """Network evaluations of ``sample_restart``: 2 N - 1 for the N main Heun steps, plus 2 per
    Heun step of each restart pass. Without the grid ``sigmas`` every interval counts as reached."""
    if sigmas is None:
        extra = sum(k * steps_r for _, _, k, steps_r in restart_plan(**plan))
    else:
        extra = sum(k * (len(grid) - 1) for runs in restart_branches(sigmas, restart_plan(**plan), rho=rho).values()
                    for k, grid in runs)
    return 2 * steps - 1 + 2 * extra


def sample_restart(denoiser, x, sigmas, *, restart_interval=(0.06, 0.30), restart_k=2, restart_steps=2,
                   restarts=None, rho=7.0, noise=None, cond=None, callback=None, progress=False):
    """Restart sampling (Xu et al. 2023, "Restart Sampling for Improving Generative Processes",
    Algorithm 1): Heun steps of the probability-flow ODE down the grid (EDM Algorithm 2, the
    last step Euler); on reaching the level sigma_min of a restart interval, K times: add forward
    noise back up to sigma_max, x <- x + sqrt(sigma_max^2 - sigma_min^2) z (in VE coordinates
    exactly the forward process), and integrate the ODE back down to sigma_min in ``steps``
    Heun steps. The noise contracts the error the coarse ODE steps accumulated above sigma_min
    (the paper's Theorem 2) while the ODE keeps each pass's error small.

    The interval is ``restart_interval`` = (sigma_min, sigma_max) with ``restart_k`` passes of
    ``restart_steps`` steps; ``restarts`` = [(sigma_min, sigma_max, k, steps), ...] gives several
    instead. Where they branch: ``restart_branches``. The restart passes happen inside the main
    step that arrives at sigma_min, so the step callback sees the grid's steps only, after the
    restarts. Evaluations: 2 N - 1 + 2 sum(k * steps) (``restart_evaluations``).
    """
    branches = restart_branches(sigmas, restart_plan(restart_interval=restart_interval, restart_k=restart_k,
                                                     restart_steps=restart_steps, restarts=restarts), rho=rho)
    noise = noise or (lambda: torch.randn_like(x))
    ode_step = heun_step(denoiser, cond)

    def step(x, denoised, sigma, sigma_next):
        x = ode_step(x, denoised, sigma, sigma_next)
        for k, grid in branches.get(float(sigma_next), ()):
            for _ in range(k):
                x = x + noise() * (grid[0] ** 2 - grid[-1] ** 2).sqrt()
                x = sample_loop(ode_step, denoiser, x, grid, cond=cond)
        return x

    return sample_loop(step, denoiser, x, sigmas, cond=cond, callback=callback, progress=progress)
