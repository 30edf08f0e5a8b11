"""Training objectives: ``objective(net, batch, generator=) -> (per-sample loss [B], logs)``."""

from .classifier import NoisyClassifierObjective
from .diffusion import DiffusionObjective
from .vae import VAEObjective

__all__ = ["DiffusionObjective", "NoisyClassifierObjective", "VAEObjective"]
