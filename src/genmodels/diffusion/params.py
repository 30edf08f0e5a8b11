"""What the network predicts. One object per choice defines both directions:

- ``target(x0, noise, alpha, sigma)``: the regression target for training;
- ``denoised(out, x_t, alpha, sigma)``: the x0 estimate from the network output, used by every
  sampler through the Denoiser, so no sampler or loss branches on the prediction type.

``x_t = alpha x0 + sigma noise``; alpha and sigma broadcast against x (shape [B, 1, ...]).
``x0_error_scale`` gives k with ``|out - target|^2 = k |denoised - x0|^2``, which turns a
weighting defined on x0 errors (Min-SNR) into one on this prediction's errors.
``scale_input(x_t)`` is what the network sees (x_t itself, except under EDM's c_in).
"""

import dataclasses
import math
from dataclasses import dataclass

import torch

from ..errors import ConfigError


class Parameterization:
    """The network sees x_t as it is unless a parameterization preconditions its input."""

    def scale_input(self, x_t, *, alpha, sigma):
        return x_t


@dataclass(frozen=True)
class EpsPrediction(Parameterization):
    """The network predicts the noise (Ho et al. 2020, Eq. 14)."""

    name: str = "eps"

    def target(self, *, x0, noise, alpha, sigma):
        return noise

    def denoised(self, out, *, x_t, alpha, sigma):
        return (x_t - sigma * out) / alpha

    def x0_error_scale(self, alpha, sigma):
        return (alpha / sigma) ** 2


@dataclass(frozen=True)
class X0Prediction(Parameterization):
    """The network predicts the clean data directly."""

    name: str = "x0"

    def target(self, *, x0, noise, alpha, sigma):
        return x0

    def denoised(self, out, *, x_t, alpha, sigma):
        return out

    def x0_error_scale(self, alpha, sigma):
        return alpha * 0 + 1


@dataclass(frozen=True)
class VPrediction(Parameterization):
    """v = alpha noise - sigma x0 (Salimans & Ho 2022, Sec. 4); exact for any alpha, sigma."""

    name: str = "v"

    def target(self, *, x0, noise, alpha, sigma):
        return alpha * noise - sigma * x0

    def denoised(self, out, *, x_t, alpha, sigma):
        return (alpha * x_t - sigma * out) / (alpha**2 + sigma**2)

    def x0_error_scale(self, alpha, sigma):
        return ((alpha**2 + sigma**2) / sigma) ** 2


@dataclass(frozen=True)
class VelocityPrediction(Parameterization):
    """The flow-matching velocity u = dx_t/dt = noise - x0 of the straight path
    x_t = (1 - t) x0 + t noise (alpha = 1 - sigma), so x0 = x_t - sigma u. Only for paths with
    alpha + sigma = 1 (rectified flow); ``build`` checks."""

    name: str = "velocity"

    def target(self, *, x0, noise, alpha, sigma):
        return noise - x0

    def denoised(self, out, *, x_t, alpha, sigma):
        return x_t - sigma * out

    def x0_error_scale(self, alpha, sigma):
        return 1 / sigma**2


@dataclass(frozen=True)
class ScorePrediction(Parameterization):
    """Denoising score matching (Vincent 2011; Song et al. 2021, Eq. 7) with the weighting
    lambda = sigma_t^2: the network predicts sigma_t times the score of q(x_t | x0),
    sigma_t grad log q = -noise, as NCSN++ does by dividing its output by sigma. The x0 estimate
    is Tweedie's formula, x0 = (x_t + sigma_t^2 score) / alpha_t. (The same regression as eps
    with the score's sign; listed so a score model is named as such.)"""

    name: str = "score"

    def target(self, *, x0, noise, alpha, sigma):
        return -noise

    def denoised(self, out, *, x_t, alpha, sigma):
        return (x_t + sigma * out) / alpha

    def x0_error_scale(self, alpha, sigma):
        return (alpha / sigma) ** 2


@dataclass(frozen=True)
class EDMPreconditioning(Parameterization):
    """Karras et al. 2022, Table 1 (EDM column), on any path through its VE coordinates
    x = x_t / alpha = x0 + s noise, s = sigma / alpha:

        D(x; s) = c_skip(s) x + c_out(s) F(c_in(s) x)
        c_skip = sd^2 / (s^2 + sd^2), c_out = s sd / sqrt(s^2 + sd^2), c_in = 1 / sqrt(s^2 + sd^2)

    F regresses (x0 - c_skip x) / c_out, which weights the x0 error by EDM's
    lambda(s) = 1 / c_out^2, so the plain MSE on F is EDM's loss. With t_sampling=log_normal the
    training noise levels follow EDM's ln s ~ N(P_mean, P_std^2). c_noise stays the path's."""

    sigma_data: float = 0.5
    name: str = "edm"

    def coefficients(self, alpha, sigma):
        """(x, s) -> (c_skip, c_out, c_in) at the VE level s = sigma / alpha."""
        s2 = (sigma / alpha) ** 2
        sd2 = self.sigma_data**2
        norm = (s2 + sd2) ** 0.5
        return sd2 / (s2 + sd2), (sigma / alpha) * self.sigma_data / norm, 1 / norm

    def scale_input(self, x_t, *, alpha, sigma):
        return x_t / alpha * self.coefficients(alpha, sigma)[2]

    def target(self, *, x0, noise, alpha, sigma):
        c_skip, c_out, _ = self.coefficients(alpha, sigma)
        x = x0 + (sigma / alpha) * noise
        return (x0 - c_skip * x) / c_out

    def denoised(self, out, *, x_t, alpha, sigma):
        c_skip, c_out, _ = self.coefficients(alpha, sigma)
        return c_skip * (x_t / alpha) + c_out * out

    def x0_error_scale(self, alpha, sigma):
        return 1 / self.coefficients(alpha, sigma)[1] ** 2


@dataclass(frozen=True)
class ClippedPrediction(Parameterization):
    """``base`` with its x0 estimate clipped to [-bound, bound]: the DDPM reference code's
    sampling-time clipping (Ho et al. 2020), diffusers' ``clip_sample``. Samplers derive the noise
    from the clipped x0 (x = x0 + sigma noise), as diffusers' DDIM step does after clipping, and
    the DDPM posterior mean from x0 and x_t is the same step, so both agree with theirs."""

    base: Parameterization
    bound: float = 1.0

    @property
    def name(self) -> str:
        return self.base.name

    def scale_input(self, x_t, *, alpha, sigma):
        return self.base.scale_input(x_t, alpha=alpha, sigma=sigma)

    def target(self, *, x0, noise, alpha, sigma):
        return self.base.target(x0=x0, noise=noise, alpha=alpha, sigma=sigma)

    def denoised(self, out, *, x_t, alpha, sigma):
        return self.base.denoised(out, x_t=x_t, alpha=alpha, sigma=sigma).clamp(-self.bound, self.bound)

    def x0_error_scale(self, alpha, sigma):
        return self.base.x0_error_scale(alpha, sigma)


@dataclass(frozen=True)
class ConsistencyParameterization(EDMPreconditioning):
    """A consistency function (Song et al. 2023, Sec. 3 and Appendix C) in VE coordinates:

        f(x; s) = c_skip(s) x + c_out(s) F(c_in(s) x)
        c_skip = sd^2 / ((s - s_min)^2 + sd^2), c_out = (s - s_min) sd / sqrt(s^2 + sd^2),
        c_in = 1 / sqrt(s^2 + sd^2)

    so c_skip(s_min) = 1 and c_out(s_min) = 0: f(x, s_min) = x for any net F (the boundary
    condition), and the Denoiser's "x0 estimate" at any level is the consistency function. It is
    trained by the consistency family (``objectives.consistency``), not by denoising regression:
    ``target`` is EDM's form and has no finite value at s = s_min. ``sigma_min`` is the path's
    smallest level (``build.diffusion_parts`` sets it)."""

    sigma_min: float = 0.002
    name: str = "consistency"

    def coefficients(self, alpha, sigma):
        s = torch.as_tensor(sigma / alpha)
        sd2 = self.sigma_data**2
        # sigma_min in s's own dtype, so at the boundary the gap is exactly 0 (c_out = 0, c_skip =
        # 1); below it f is the identity too
        gap = (s - torch.as_tensor(self.sigma_min, dtype=s.dtype, device=s.device)).clamp(min=0)
        return sd2 / (gap**2 + sd2), gap * self.sigma_data / (s**2 + sd2) ** 0.5, 1 / (s**2 + sd2) ** 0.5


PARAMETERIZATIONS = {"eps": EpsPrediction(), "x0": X0Prediction(), "v": VPrediction(),
                     "score": ScorePrediction(), "edm": EDMPreconditioning(),
                     "velocity": VelocityPrediction(), "consistency": ConsistencyParameterization()}


def get_parameterization(name: str, *, sigma_data: float | None = None, sigma_min: float | None = None):
    """The parameterization ``name``; ``sigma_data`` sets EDM's (and the consistency function's)
    data standard deviation, ``sigma_min`` the consistency function's boundary level."""
    try:
        param = PARAMETERIZATIONS[name]
    except KeyError:
        raise ConfigError(f"unknown prediction '{name}'; allowed: {', '.join(PARAMETERIZATIONS)}") from None
    if name in ("edm", "consistency") and sigma_data is not None:
        if not (sigma_data > 0 and math.isfinite(sigma_data)):
            raise ConfigError(f"diffusion.sigma_data must be a positive number, got {sigma_data}")
        param = dataclasses.replace(param, sigma_data=sigma_data)
    if name == "consistency" and sigma_min is not None:
        param = dataclasses.replace(param, sigma_min=float(sigma_min))
    return param
