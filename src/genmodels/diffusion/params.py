"""What the network predicts. One object per choice defines both directions:

- ``target(x0, noise, alpha, sigma)``: the regression target for training;
- ``denoised(out, x_t, alpha, sigma)``: the x0 estimate from the network output, used by every
  sampler through the Denoiser, so no sampler or loss branches on the prediction type.

``x_t = alpha x0 + sigma noise``; alpha and sigma broadcast against x (shape [B, 1, ...]).
``x0_error_scale`` gives k with ``|out - target|^2 = k |denoised - x0|^2``, which turns a
weighting defined on x0 errors (Min-SNR) into one on this prediction's errors.
"""

from dataclasses import dataclass

from ..errors import ConfigError


@dataclass(frozen=True)
class EpsPrediction:
    """The network predicts the noise (Ho et al. 2020, Eq. 14)."""

    name: str = "eps"

    def target(self, *, x0, noise, alpha, sigma):
        return noise

    def denoised(self, out, *, x_t, alpha, sigma):
        return (x_t - sigma * out) / alpha

    def x0_error_scale(self, alpha, sigma):
        return (alpha / sigma) ** 2


@dataclass(frozen=True)
class X0Prediction:
    """The network predicts the clean data directly."""

    name: str = "x0"

    def target(self, *, x0, noise, alpha, sigma):
        return x0

    def denoised(self, out, *, x_t, alpha, sigma):
        return out

    def x0_error_scale(self, alpha, sigma):
        return alpha * 0 + 1


@dataclass(frozen=True)
class VPrediction:
    """v = alpha noise - sigma x0 (Salimans & Ho 2022, Sec. 4); exact for any alpha, sigma."""

    name: str = "v"

    def target(self, *, x0, noise, alpha, sigma):
        return alpha * noise - sigma * x0

    def denoised(self, out, *, x_t, alpha, sigma):
        return (alpha * x_t - sigma * out) / (alpha**2 + sigma**2)

    def x0_error_scale(self, alpha, sigma):
        return ((alpha**2 + sigma**2) / sigma) ** 2


@dataclass(frozen=True)
class VelocityPrediction:
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


PARAMETERIZATIONS = {"eps": EpsPrediction(), "x0": X0Prediction(), "v": VPrediction(),
                     "velocity": VelocityPrediction()}


def get_parameterization(name: str):
    try:
        return PARAMETERIZATIONS[name]
    except KeyError:
        raise ConfigError(f"unknown prediction '{name}'; allowed: {', '.join(PARAMETERIZATIONS)}") from None
