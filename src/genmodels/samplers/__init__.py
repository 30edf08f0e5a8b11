"""Samplers: plain functions ``sampler(denoiser, x, sigmas, **options) -> x0`` over a Denoiser and a
descending VE sigma grid ending in 0 (ARCHITECTURE.md)."""

import inspect

from ..errors import ConfigError
from .base import SeededNoise, StepInfo, ancestral_split, sample_loop
from .ode import sample_euler
from .sde import sample_ddim, sample_ddpm

SAMPLERS = {"ddim": sample_ddim, "ddpm": sample_ddpm, "euler": sample_euler}


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
    return sampler(denoiser, x, sigmas, **kwargs)


__all__ = ["SAMPLERS", "SeededNoise", "StepInfo", "ancestral_split", "get_sampler", "run_sampler",
           "sample_ddim", "sample_ddpm", "sample_euler", "sample_loop"]
