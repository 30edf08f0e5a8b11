"""The sampler registry: name -> sampler function, the grid a sampler gets when none is named,
the network evaluations it spends, and the call that passes each only the options it takes."""

import inspect

from ..errors import ConfigError
from .consistency import sample_consistency
from .multistep import sample_dpmpp_2m, sample_dpmpp_2m_sde, sample_dpmpp_3m_sde, sample_unipc
from .ode import sample_euler, sample_heun, sample_rk45
from .sde import (restart_evaluations, sample_ddim, sample_ddpm, sample_euler_ancestral, sample_euler_maruyama,
                  sample_pc, sample_restart)

SAMPLERS = {
    "ddim": sample_ddim,
    "ddpm": sample_ddpm,
    "euler": sample_euler,
    "euler_ancestral": sample_euler_ancestral,
    "heun": sample_heun,
    "dpmpp_2m": sample_dpmpp_2m,
    "dpmpp_2m_sde": sample_dpmpp_2m_sde,
    "dpmpp_3m_sde": sample_dpmpp_3m_sde,
    "unipc": sample_unipc,
    "rk45": sample_rk45,
    "euler_maruyama": sample_euler_maruyama,
    "pc": sample_pc,
    "restart": sample_restart,
    "consistency": sample_consistency,
}

# The grid (sigma_grid's spacing and sigma_max) a sampler gets when the caller names no spacing;
# a sampler not listed gets the path's default. Stochastic few-step samplers want steps at high
# noise: trailing timesteps start at the last training step. Restart's Heun steps cannot cross
# a cosine DDPM's top level (~2e4) in one step (README: Heun needs a capped grid), hence Karras
# from 80, EDM's sigma_max.
DEFAULT_GRIDS = {
    "dpmpp_3m_sde": {"spacing": "trailing"},
    "restart": {"spacing": "karras", "sigma_max": 80.0},
}


def grid_settings(name: str, spacing: str | None = None, sigma_max: float | None = None) -> dict:
    """``spacing`` and ``sigma_max`` for ``sigma_grid`` when sampling with ``name``: the given
    spacing (with the given sigma_max), else the sampler's DEFAULT_GRIDS entry (the given
    sigma_max replacing its own), else the path's default grid."""
    default = DEFAULT_GRIDS.get(name) if spacing is None else None
    if default is None:
        return {"spacing": spacing, "sigma_max": sigma_max}
    return {"spacing": default["spacing"], "sigma_max": default.get("sigma_max") if sigma_max is None else sigma_max}


# what every sampler takes from ``run_sampler``'s caller; the rest are its own options
SHARED_PARAMS = ("denoiser", "x", "sigmas", "noise", "cond", "callback", "progress")


def evaluations(name: str, steps: int, *, sigmas=None, **options) -> int:
    """Network evaluations a fixed-grid sampler spends on ``steps`` steps with its ``options``
    (rk45 adapts: it reports its own count in ``stats``). ``sigmas``, the grid, makes restart's
    count exact when an interval lies outside it (``restart_evaluations``)."""
    get_sampler(name)
    if name == "heun":
        return 2 * steps - 1
    if name == "pc":
        return (1 + options.get("corrector_steps", 1)) * steps
    if name == "restart":
        return restart_evaluations(steps, sigmas=sigmas, **options)
    return steps


def get_sampler(name: str):
    try:
        return SAMPLERS[name]
    except KeyError:
        raise ConfigError(f"unknown sampler '{name}'; allowed: {', '.join(SAMPLERS)}") from None


def run_sampler(name, denoiser, x, sigmas, *, noise=None, eta=None, **kwargs):
    """Call sampler ``name`` passing only the options it takes (stochastic ones take ``noise``)."""
    sampler = get_sampler(name)
    params = inspect.signature(sampler).parameters
    if "noise" in params:
        kwargs["noise"] = noise
    if eta is not None:
        if "eta" in params:
            kwargs["eta"] = eta
        elif eta != 0:
            raise ConfigError(f"sampler '{name}' takes no eta; eta is for: "
                              + ", ".join(n for n, f in SAMPLERS.items() if "eta" in inspect.signature(f).parameters))
    unknown = [k for k in kwargs if k not in params]
    if unknown:
        raise ConfigError(f"sampler '{name}' takes no option '{unknown[0]}'; its options: "
                          + ", ".join(p for p in params if p not in SHARED_PARAMS))
    return sampler(denoiser, x, sigmas, **kwargs)
