"""Diffusion core: paths (t <-> VE sigma), parameterizations, the Denoiser adapter."""

from .denoiser import NetDenoiser, expand_like, score
from .params import PARAMETERIZATIONS, get_parameterization
from .paths import ContinuousVE, ContinuousVP, DiscreteDDPM, GaussianPath, build_path, cosine_betas
from .sigmas import sigma_grid

__all__ = [
    "NetDenoiser", "expand_like", "score", "PARAMETERIZATIONS", "get_parameterization", "ContinuousVE", "ContinuousVP",
    "DiscreteDDPM", "GaussianPath", "build_path", "cosine_betas", "sigma_grid",
]
