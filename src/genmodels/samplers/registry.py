"""The sampler registry: name -> sampler function, and the call that passes each only the
options it takes."""

import inspect

from ..errors import ConfigError
from .consistency import sample_consistency
from .multistep import sample_dpmpp_2m, sample_dpmpp_2m_sde, sample_unipc
from .ode import sample_euler, sample_heun, sample_rk45
from .sde import sample_ddim, sample_ddpm, sample_euler_ancestral, sample_euler_maruyama, sample_pc

SAMPLERS = {
    "ddim": sample_ddim,
    "ddpm": sample_ddpm,
    "euler": sample_euler,
    "euler_ancestral": sample_euler_ancestral,
    "heun": sample_heun,
    "dpmpp_2m": sample_dpmpp_2m,
    "dpmpp_2m_sde": sample_dpmpp_2m_sde,
    "unipc": sample_unipc,
    "rk45": sample_rk45,
    "euler_maruyama": sample_euler_maruyama,
    "pc": sample_pc,
    "consistency": sample_consistency,
}


# what every sampler takes from ``run_sampler``'s caller; the rest are its own options
SHARED_PARAMS = ("denoiser", "x", "sigmas", "noise", "cond", "callback", "progress")


def evaluations(name: str, steps: int, *, corrector_steps: int = 1) -> int:
    """Network evaluations a fixed-grid sampler spends on ``steps`` steps (rk45 adapts: it reports
    its own count in ``stats``)."""
    if name == "heun":
        return 2 * steps - 1
    return (1 + corrector_steps) * steps if name == "pc" else steps


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
