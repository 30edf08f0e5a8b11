"""Training objectives: ``objective(net, batch, generator=) -> (per-sample loss [B], logs)``."""

from .diffusion import DiffusionObjective

__all__ = ["DiffusionObjective"]
