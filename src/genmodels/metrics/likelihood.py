"""Likelihoods, in bits per dimension of the 8-bit data.

Images in genmodels are ``k / 127.5 - 1`` for pixel values k = 0..255: bins of width
``BIN_WIDTH = 2 / 255`` centred on the data. Two estimators:

- ``ddpm_vlb``: the variational bound of a discrete DDPM (Ho et al. 2020, Eq. 5) with the
  discretized Gaussian decoder (Eq. 13), a bound on -log P(k) of the discrete pixels directly;
- ``ode_log_likelihood``: log p(x) of a continuous model through the probability-flow ODE
  (Song et al. 2021, Eq. 39 / Appendix D.2; Grathwohl et al. 2019), with the divergence exact in
  low dimension and Hutchinson's estimate otherwise, integrated by scipy's adaptive RK45. On
  uniformly dequantized data (``dequantize``), ``bits_per_dim`` turns it into a bound on the
  discrete -log P(k): -log P(k) <= E_u[-log p(x + u)] - D log(bin width) (Theis et al. 2016).

VAEs plug their IWAE bound into the same ``bits_per_dim``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy.integrate import solve_ivp

from ..cond import map_values
from ..errors import DataError
from ..progress import progress_bar

__all__ = ["BIN_WIDTH", "dequantize", "bits_per_dim", "discretized_gaussian_log_likelihood",
           "normal_kl", "ddpm_vlb", "DDPMBound", "ode_log_likelihood", "ODELikelihood",
           "gaussian_log_prob", "ode_sigma_range"]

BIN_WIDTH = 2 / 255
LN2 = math.log(2)


def dequantize(x, *, generator=None, bin_width=BIN_WIDTH):
    """x + (u - 1/2) * bin_width with u ~ U[0, 1): uniform noise over each pixel's bin."""
    u = torch.rand(x.shape, generator=generator, dtype=torch.float64).to(x.device)
    return x + (u.to(x.dtype) - 0.5) * bin_width


def bits_per_dim(log_px, dims: int, *, bin_width=BIN_WIDTH):
    """-log2 P(k) / D of the discrete data from a density log p(x) [nats] of dequantized data."""
    return -(torch.as_tensor(log_px, dtype=torch.float64) + dims * math.log(bin_width)) / (dims * LN2)


def gaussian_log_prob(x, std):
    """log N(x; 0, std^2 I) summed over all but the batch dimension."""
    d = x[0].numel()
    return -0.5 * x.flatten(1).square().sum(1) / std**2 - d * (math.log(std) + 0.5 * math.log(2 * math.pi))


# ---- discrete DDPM: the variational bound -------------------------------------------------
def normal_kl(mean1, logvar1, mean2, logvar2):
    """KL(N(mean1, exp logvar1) || N(mean2, exp logvar2)), elementwise."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2)
                  + (mean1 - mean2).square() * torch.exp(-logvar2))


def _log1mexp(a):
    """log(1 - exp(a)) for a <= 0, accurate at both ends (Maechler 2012)."""
    return torch.where(a > -math.log(2), torch.log(-torch.expm1(a)), torch.log1p(-torch.exp(a)))


def discretized_gaussian_log_likelihood(x, *, mean, log_std, bin_width=BIN_WIDTH):
    """log P(x) of the bin [x - w/2, x + w/2] under N(mean, exp(log_std)^2), elementwise, with the
    outermost bins (x = -1, x = 1) extended to -inf / +inf (Ho et al. 2020, Eq. 13).

    Computed from log Phi on the side of the mean where the bin lies, so bins far in a tail keep
    their relative accuracy (no difference of two CDFs that round to 0 or 1).
    """
    inv_std = torch.exp(-torch.as_tensor(log_std, dtype=torch.float64))
    lo = (x - mean - bin_width / 2) * inv_std
    hi = (x - mean + bin_width / 2) * inv_std
    log_cdf = torch.special.log_ndtr
    left = x - mean <= 0  # use Phi(hi) - Phi(lo) left of the mean, Phi(-lo) - Phi(-hi) right of it
    near, far = torch.where(left, hi, -lo), torch.where(left, lo, -hi)
    log_mass = log_cdf(near) + _log1mexp(log_cdf(far) - log_cdf(near))
    edge = 1 - bin_width / 2
    return torch.where(x < -edge, log_cdf(hi), torch.where(x > edge, log_cdf(-lo), log_mass))


@dataclass(frozen=True, eq=False)
class DDPMBound:
    """Per-image bound in nats and bits/dim, and the mean of each term over the batch."""

    nats: torch.Tensor  # [B]
    bits_per_dim: torch.Tensor  # [B]
    prior: float  # L_T
    decoder: float  # L_0
    diffusion: float  # sum of the L_{t-1}, t >= 2 (estimated when fewer steps are visited)


def ddpm_vlb(denoiser, path, x0, *, cond=None, steps=None, clip_denoised=True, generator=None,
             progress=False) -> DDPMBound:
    """Ho et al. 2020, Eq. 5: L_T + sum_{t>1} KL(q(x_{t-1}|x_t,x0) || p(x_{t-1}|x_t)) + L_0.

    ``path`` is a DiscreteDDPM (Ho's t = step n + 1), ``denoiser`` the VE Denoiser D(x, sigma).
    p(x_{t-1}|x_t) has the posterior mean at x0 = D(x_t) (clipped to [-1, 1]) and the posterior
    variance beta-tilde_t (the ``ddpm`` sampler's); the decoder's variance is beta-tilde of the
    second step, as in Nichol & Dhariwal's code (beta-tilde_1 = 0). ``steps`` None visits all T
    steps (T network calls per image); an integer K visits K random steps of 2..T and scales
    their sum by (T - 1) / K, an unbiased estimate. Computed on the denoiser's device; the
    per-image bounds come back on the CPU.
    """
    # every tensor lives where the denoiser computes (its parameters' device, else x0's)
    device, f64 = next(iter(_params(denoiser)), x0).device, torch.float64
    T = path.timesteps
    abar = path.alphas_cumprod.to(device, f64)
    betas = path.betas.to(device, f64)
    sigmas = path.sigmas.to(device, f64)
    abar_prev = torch.cat([abar.new_ones(1), abar[:-1]])
    post_var = betas * (1 - abar_prev) / (1 - abar)  # beta-tilde; 0 at the first step
    post_logvar = torch.log(torch.cat([post_var[1:2], post_var[1:]]))
    coef_x0 = betas * abar_prev.sqrt() / (1 - abar)  # Ho et al. Eq. 7
    coef_xt = (1 - abar_prev) * (1 - betas).sqrt() / (1 - abar)
    x0 = x0.to(device, f64)
    dims = x0[0].numel()
    cond = map_values(lambda v: v.to(device), cond) or None
    # noise is drawn on the generator's device (the CPU by default) and moved: the same seed
    # gives the same bound wherever the model runs
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    dtype = next(iter(_params(denoiser)), torch.empty(0, dtype=torch.float32)).dtype

    def posterior_mean(x0_, x_t, n):
        return coef_x0[n] * x0_ + coef_xt[n] * x_t

    def denoise(x_t, n):
        with torch.inference_mode():
            out = denoiser((x_t / abar[n].sqrt()).to(dtype), sigmas[n], cond).to(f64)
        return out.clamp(-1, 1) if clip_denoised else out

    def sample_q(n):
        noise = torch.randn(x0.shape, generator=g, dtype=f64, device=g.device).to(device)
        return abar[n].sqrt() * x0 + (1 - abar[n]).sqrt() * noise

    def per_image(t):
        return t.flatten(1).sum(1)

    zero = x0.new_zeros(())
    prior = per_image(normal_kl(abar[-1].sqrt() * x0, torch.log(1 - abar[-1]), zero, zero))
    x_t = sample_q(0)
    decoder = -per_image(discretized_gaussian_log_likelihood(
        x0, mean=denoise(x_t, 0), log_std=0.5 * post_logvar[0]))
    if steps is None:
        visit, scale = torch.arange(1, T), 1.0
    else:
        if not 1 <= steps <= T - 1:
            raise DataError(f"steps must lie in 1..{T - 1} for a {T}-step DDPM, got {steps}")
        visit, scale = torch.randperm(T - 1, generator=g, device=g.device).cpu()[:steps] + 1, (T - 1) / steps
    diffusion = torch.zeros(len(x0), dtype=f64, device=device)
    for n in progress_bar(visit.tolist(), desc="DDPM bound", disable=not progress, leave=False):
        x_t = sample_q(n)
        true_mean = posterior_mean(x0, x_t, n)
        model_mean = posterior_mean(denoise(x_t, n), x_t, n)
        # equal variances: the KL is the squared mean difference over twice the variance
        diffusion += per_image((true_mean - model_mean).square()) / (2 * post_var[n])
    total = (prior + decoder + scale * diffusion).cpu()
    return DDPMBound(total, total / (dims * LN2), prior.mean().item(), decoder.mean().item(),
                     (scale * diffusion).mean().item())


def _params(module):
    return module.parameters() if isinstance(module, torch.nn.Module) else ()


# ---- continuous models: the probability-flow ODE ------------------------------------------
ODE_T_MIN = 1e-3  # Song et al. 2021's epsilon for likelihoods; the straight path's t_min is 0 (s = 0)


def ode_sigma_range(path) -> tuple[float, float, float]:
    """(sigma_min, sigma_max, prior_std) of ``path`` for ``ode_log_likelihood``: from the path's
    t_min (at least ODE_T_MIN, since log sigma = -inf at clean data) to t = 1, where the prior
    is the marginal of x = x0 + sigma_max z in VE coordinates for data of unit variance,
    N(0, (sigma_max^2 + 1) I). (Not the sampler's start: the straight path starts sampling from
    x_t = noise, x = noise / alpha, whose std 1 + sigma_max is 0.1 % too wide at t_max.)"""
    f64 = torch.float64
    sigma_min = path.to_sigma(torch.tensor(max(path.t_min, ODE_T_MIN), dtype=f64)).item()
    sigma_max = path.to_sigma(torch.tensor(1.0, dtype=f64)).item()
    return sigma_min, sigma_max, math.hypot(sigma_max, 1.0)


@dataclass(frozen=True, eq=False)
class ODELikelihood:
    log_px: torch.Tensor  # [B] nats, log density at sigma_min
    prior_log_p: torch.Tensor  # [B] log density of the ODE's end point under the prior
    nfe: int  # denoiser evaluations (each with one backward pass per trace probe or dimension)


def ode_log_likelihood(denoiser, x, *, sigma_min, sigma_max, prior_log_prob=None, prior_std=None,
                       cond=None, divergence="auto", probes=1, generator=None, rtol=1e-5, atol=1e-5,
                       progress=False) -> ODELikelihood:
    """log p(x) by integrating the probability-flow ODE from sigma_min to sigma_max.

    In VE coordinates with u = log sigma the ODE is dx/du = x - D(x, sigma), and
    log p_min(x) = log p_max(x(sigma_max)) + int div_x (x - D(x, sigma)) du. The prior at
    sigma_max is ``prior_log_prob(x) -> [B]``, or N(0, prior_std^2 I). ``divergence``: "exact"
    (one backward pass per dimension), "hutchinson" (``probes`` Rademacher probes, drawn once and
    fixed for the whole solve, FFJORD's estimator; the estimate's variance falls as 1/probes),
    or "auto" (exact up to 16 dimensions). scipy integrates on the CPU; each evaluation moves
    the state to the denoiser's device (its parameters', else x's) and back; the results are
    CPU tensors.
    """
    if prior_log_prob is None:
        if prior_std is None:
            raise ValueError("give prior_log_prob or prior_std")
        prior_log_prob = lambda z: gaussian_log_prob(z, float(prior_std))  # noqa: E731
    shape, b = tuple(x.shape), x.shape[0]
    dims = x[0].numel()
    exact = dims <= 16 if divergence == "auto" else divergence == "exact"
    if divergence not in ("auto", "exact", "hutchinson"):
        raise ValueError(f"divergence must be auto, exact or hutchinson, got {divergence!r}")
    # the denoiser computes in its parameters' dtype and device (a plain function: x's)
    home = next(iter(_params(denoiser)), x)
    dtype, device = home.dtype, home.device
    cond = map_values(lambda v: v.to(device), cond) or None
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    if probes < 1:
        raise ValueError(f"probes must be >= 1, got {probes}")
    # drawn on the generator's device and moved: the same probes wherever the model runs
    probe = None if exact else \
        (torch.randint(0, 2, (probes, *shape), generator=g, device=g.device) * 2 - 1).to(device, dtype)
    nfe = 0
    u0, u1 = math.log(sigma_min), math.log(sigma_max)
    bar = progress_bar(total=1000, desc="ODE likelihood", disable=not progress, leave=False)

    def rhs(u, state):
        nonlocal nfe
        nfe += 1
        bar.update(int(1000 * (u - u0) / (u1 - u0)) - bar.n)
        xt = torch.from_numpy(state[:-b]).view(shape).to(device, dtype).requires_grad_(True)
        with torch.enable_grad():
            drift = xt - denoiser(xt, torch.tensor(math.exp(u), dtype=torch.float64, device=device), cond)
            div = _divergence(drift, xt, probe)
        out = torch.cat([drift.detach().flatten(), div.detach()])
        return out.to("cpu", torch.float64).numpy()

    start = np.concatenate([x.detach().to("cpu", torch.float64).flatten().numpy(), np.zeros(b)])
    solution = solve_ivp(rhs, (u0, u1), start, method="RK45", rtol=rtol, atol=atol)
    bar.close()
    if not solution.success:
        raise DataError(f"the probability-flow ODE solver failed: {solution.message}")
    end = torch.from_numpy(solution.y[:, -1])
    z, delta = end[:-b].view(shape), end[-b:]
    prior = prior_log_prob(z).to(torch.float64)
    return ODELikelihood(prior + delta, prior, nfe)


def _divergence(f, x, probe):
    """Per-sample div_x f: exact (a backward pass per dimension) or the mean of z^T (df/dx) z over
    the probes z in ``probe`` [K, *x.shape] (one backward pass each)."""
    if probe is not None:
        total = 0
        for k, z in enumerate(probe):
            (vjp,) = torch.autograd.grad(f, x, z, retain_graph=k < len(probe) - 1)
            total = total + (vjp * z).flatten(1).sum(1)
        return total / len(probe)
    flat_f = f.flatten(1)
    div = torch.zeros(len(f), dtype=f.dtype, device=f.device)
    for i in range(flat_f.shape[1]):
        (grad,) = torch.autograd.grad(flat_f[:, i].sum(), x, retain_graph=i < flat_f.shape[1] - 1)
        div += grad.flatten(1)[:, i]
    return div
