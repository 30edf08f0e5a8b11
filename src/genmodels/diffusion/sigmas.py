"""Sigma grids for samplers: descending VE noise levels ending in 0.

Two families of layout. The timestep spacings (``leading``, ``trailing``, ``linspace``) pick
training timesteps of the path, as DDIM and Lin et al. 2024 ("Common diffusion noise schedules
and sample steps are flawed", Table 2) do. The noise-level spacings pick sigmas between the
path's largest and smallest noise level directly: ``karras`` (Karras et al. 2022, Eq. 5, with
``rho``) and ``logsnr`` (uniform in log-SNR = -2 log sigma, the DPM-Solver paper's choice).
"""

import torch

from ..errors import ConfigError

SIGMA_SPACINGS = ("karras", "logsnr")
TIMESTEP_SPACINGS = ("leading", "trailing", "linspace")


def sigma_grid(path, steps: int, *, spacing: str | None = None, rho: float = 7.0,
               sigma_max: float | None = None) -> torch.Tensor:
    """The ``steps`` noise levels a sampler visits, as VE sigmas, with a final 0 (the data), float64.

    ``spacing``: one of TIMESTEP_SPACINGS or SIGMA_SPACINGS; None takes the path's default.
    ``sigma_max`` caps the noise-level spacings' top (default: the path's largest level). The
    cosine DDPM's top level is ~2e4 (beta clipped at 0.999); a second-order step (Heun) across
    such a ratio extrapolates its end slope over the whole interval and fails, which is why EDM
    samples from sigma_max = 80 (docs/BENCHMARKS.md).
    """
    if spacing in SIGMA_SPACINGS:
        if steps < 1:
            raise ConfigError(f"steps must be >= 1, got {steps}")
        s_max = float(path.to_sigma(torch.tensor(1.0, dtype=torch.float64)))
        if sigma_max is not None:
            if sigma_max <= 0:
                raise ConfigError(f"sigma_max must be > 0, got {sigma_max}")
            s_max = min(s_max, float(sigma_max))
        s_min = float(path.to_sigma(torch.tensor(path.t_min, dtype=torch.float64)))
        sigmas = karras_sigmas(s_max, s_min, steps, rho) if spacing == "karras" else logsnr_sigmas(s_max, s_min, steps)
    elif sigma_max is not None:
        raise ConfigError(f"sigma_max applies to the noise-level spacings ({', '.join(SIGMA_SPACINGS)}), "
                          f"not to '{spacing or 'the default'}' timesteps")
    elif spacing is None or spacing in TIMESTEP_SPACINGS:
        kwargs = {} if spacing is None else {"spacing": spacing}
        sigmas = path.to_sigma(path.grid(steps, **kwargs))
    else:
        raise ConfigError(f"unknown spacing '{spacing}'; allowed: "
                          + ", ".join(TIMESTEP_SPACINGS + SIGMA_SPACINGS))
    return torch.cat([sigmas.to(torch.float64), sigmas.new_zeros(1, dtype=torch.float64)])


def karras_sigmas(sigma_max: float, sigma_min: float, steps: int, rho: float = 7.0) -> torch.Tensor:
    """Karras et al. 2022, Eq. 5: uniform in sigma^(1/rho), descending from sigma_max to sigma_min."""
    ramp = torch.linspace(0, 1, steps, dtype=torch.float64)
    hi, lo = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    sigmas = (hi + ramp * (lo - hi)) ** rho
    # the ends exactly: the power and its inverse round, and a start at sigma_max (start_sigma,
    # a restart's noise up to it) must find the grid's top there
    sigmas[-1], sigmas[0] = sigma_min, sigma_max  # in this order: one step is sigma_max
    return sigmas


def logsnr_sigmas(sigma_max: float, sigma_min: float, steps: int) -> torch.Tensor:
    """Uniform in log sigma (so in log-SNR), descending from sigma_max to sigma_min."""
    return torch.logspace(torch.log10(torch.tensor(sigma_max)).item(), torch.log10(torch.tensor(sigma_min)).item(),
                          steps, dtype=torch.float64)
