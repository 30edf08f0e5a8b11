"""Sigma grids for samplers: descending VE noise levels ending in 0."""

import torch


def sigma_grid(path, steps: int, *, spacing: str | None = None) -> torch.Tensor:
    """The path's ``steps`` sampling times as VE sigmas, with a final 0 (the data), float64.

    ``spacing`` picks the timestep layout of discrete paths (leading | trailing | linspace);
    None takes the path's default.
    """
    kwargs = {} if spacing is None else {"spacing": spacing}
    t = path.grid(steps, **kwargs)
    return torch.cat([path.to_sigma(t), t.new_zeros(1)])
