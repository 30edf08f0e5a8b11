"""Solvers of the probability-flow ODE dx/dsigma = (x - D(x, sigma)) / sigma (Karras et al. 2022,
Eq. 3 with s(t) = 1, sigma(t) = t): Euler, Heun (EDM Algorithm 2) and an adaptive Dormand-Prince
5(4) solver."""

import math

import torch

from ..progress import progress_bar
from .base import after_step, edm_churn, sample_loop, to_d


def _churn(noise, x, sigmas, s_churn, s_tmin, s_tmax, s_noise):
    noise = noise or (lambda: torch.randn_like(x))
    return edm_churn(noise, steps=len(sigmas) - 1, s_churn=s_churn, s_tmin=s_tmin, s_tmax=s_tmax,
                     s_noise=s_noise)


def sample_euler(denoiser, x, sigmas, *, s_churn=0.0, s_tmin=0.0, s_tmax=math.inf, s_noise=1.0,
                 noise=None, cond=None, callback=None, progress=False):
    """First-order Euler steps in sigma (EDM Algorithm 2 without the Heun correction); with
    ``s_churn`` > 0, EDM's stochastic churn before each step."""

    def step(x, denoised, sigma, sigma_next):
        return x + to_d(x, denoised, sigma) * (sigma_next - sigma)

    return sample_loop(step, denoiser, x, sigmas, cond=cond, callback=callback, progress=progress,
                       churn=_churn(noise, x, sigmas, s_churn, s_tmin, s_tmax, s_noise))


def sample_heun(denoiser, x, sigmas, *, s_churn=0.0, s_tmin=0.0, s_tmax=math.inf, s_noise=1.0,
                noise=None, cond=None, callback=None, progress=False):
    """EDM Algorithm 2: Euler predictor, trapezoidal corrector with a second evaluation at
    sigma_next; the last step (to sigma = 0) is plain Euler. 2 N - 1 evaluations for N steps."""
    return sample_loop(heun_step(denoiser, cond), denoiser, x, sigmas, cond=cond, callback=callback,
                       progress=progress, churn=_churn(noise, x, sigmas, s_churn, s_tmin, s_tmax, s_noise))


def heun_step(denoiser, cond=None):
    """The step of ``sample_heun`` for ``sample_loop`` (it makes the second evaluation itself)."""

    def step(x, denoised, sigma, sigma_next):
        d = to_d(x, denoised, sigma)
        x_euler = x + d * (sigma_next - sigma)
        if sigma_next == 0:
            return x_euler
        d_next = to_d(x_euler, denoiser(x_euler, sigma_next, cond), sigma_next)
        return x + (d + d_next) / 2 * (sigma_next - sigma)

    return step


# Dormand & Prince 1980, RK5(4)7FM: nodes, stage weights, 5th-order weights, and the difference
# between the 5th- and the embedded 4th-order weights (the error estimate).
_DP_C = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0)
_DP_A = (
    (),
    (1 / 5,),
    (3 / 40, 9 / 40),
    (44 / 45, -56 / 15, 32 / 9),
    (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
    (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
    (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84),
)
_DP_B5 = _DP_A[6] + (0.0,)
_DP_B4 = (5179 / 57600, 0.0, 7571 / 16695, 393 / 640, -92097 / 339200, 187 / 2100, 1 / 40)
_DP_E = tuple(b5 - b4 for b5, b4 in zip(_DP_B5, _DP_B4))


def sample_rk45(denoiser, x, sigmas, *, rtol=1e-3, atol=1e-3, first_step=None, max_steps=10_000,
                stats=None, cond=None, callback=None, progress=False):
    """Adaptive Dormand-Prince 5(4) on the probability-flow ODE from sigmas[0] down to the grid's
    smallest nonzero sigma, then the jump x -> D(x, sigma_min) to the data.

    Integrates in u = log sigma, where the ODE reads dx/du = x - D(x, e^u): the step size then
    tracks the relative change of noise level. The step is accepted when the RMS of the error
    estimate scaled by atol + rtol max(|x|, |x_new|) is <= 1 (Hairer et al., II.4), with the
    usual controller h <- h min(10, max(0.2, 0.9 err^(-1/5))). The interior of ``sigmas`` is
    ignored except to size the first step. ``stats`` (a dict) receives nfe, accepted, rejected.
    The step callback runs after each accepted step (``denoised`` is then the estimate at the new
    point) and once more after the final jump to the data.
    """
    sigmas = torch.as_tensor(sigmas, dtype=torch.float64).cpu()
    nonzero = sigmas[sigmas > 0]
    u, u_end = math.log(nonzero[0]), math.log(nonzero[-1])
    nfe = accepted = rejected = 0

    def f(x, u):
        nonlocal nfe
        nfe += 1
        sigma = torch.tensor(math.exp(u), dtype=torch.float64)
        return x - denoiser(x, sigma, cond)

    h = -(first_step if first_step is not None else (u - u_end) / max(len(nonzero) - 1, 1))
    k1 = f(x, u)
    bar = progress_bar(total=u - u_end, desc="sampling (rk45)", disable=not progress, leave=False)
    while u > u_end + 1e-12 and accepted + rejected < max_steps:
        h = max(h, u_end - u)  # h < 0: never step past the end
        ks = [k1]
        for c, a in zip(_DP_C[1:], _DP_A[1:]):
            xi = x + h * sum(aj * kj for aj, kj in zip(a, ks) if aj != 0)
            ks.append(f(xi, u + c * h))
        x_new = xi  # the 7th stage point is the 5th-order solution (FSAL)
        err = h * sum(e * k for e, k in zip(_DP_E, ks) if e != 0)
        scale = atol + rtol * torch.maximum(x.abs(), x_new.abs())
        err_norm = (err / scale).square().mean().sqrt().item()
        if err_norm <= 1:
            accepted += 1
            bar.update(-h)
            u, k1 = u + h, ks[-1]
            replaced = after_step(callback, accepted - 1, torch.tensor(math.exp(u), dtype=torch.float64),
                                  x_new, x_new - k1)
            if replaced is not x_new:  # the slope belongs to the state the callback replaced
                k1 = f(replaced, u)
            x = replaced
        else:
            rejected += 1
        h *= min(10.0, max(0.2, 0.9 * (err_norm + 1e-10) ** -0.2))
    bar.close()
    denoised = x - k1  # D(x, sigma_min): the final jump to sigma = 0, with the stored evaluation
    x = after_step(callback, accepted, torch.zeros((), dtype=torch.float64), denoised, denoised)
    if stats is not None:
        stats.update(nfe=nfe, accepted=accepted, rejected=rejected)
    return x
