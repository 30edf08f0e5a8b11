"""Pairing noise with data inside a batch, the step OT-CFM adds to flow matching (Tong et al.
2024; Pooladian et al. 2023): replace independent pairs by a minibatch optimal-transport plan for
the squared Euclidean cost, so the paths to learn cross less and are straighter.

- ``ot``: the exact plan, a permutation (scipy's linear_sum_assignment: Hungarian/LAPJV); both
  marginals are kept exactly.
- ``sinkhorn``: the entropic plan (POT's ``ot.sinkhorn``, regularisation relative to the mean
  cost); each data point draws its partner from its row of the plan, so the data marginal is
  exact and the noise marginal holds in expectation.
"""

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from ..errors import ConfigError

COUPLINGS = ("independent", "ot", "sinkhorn")


def squared_costs(x0, noise):
    return torch.cdist(x0.flatten(1).double(), noise.flatten(1).double()).square()


def ot_permutation(x0, noise) -> torch.Tensor:
    """perm such that noise[perm[i]] is x0[i]'s partner under the exact minibatch OT plan."""
    rows, cols = linear_sum_assignment(squared_costs(x0, noise).cpu().numpy())
    perm = np.empty_like(cols)
    perm[rows] = cols
    return torch.from_numpy(perm).to(x0.device)


def sinkhorn_partners(x0, noise, *, generator, reg=0.05) -> torch.Tensor:
    try:
        import ot
    except ImportError:
        raise ConfigError("diffusion.coupling=sinkhorn needs POT: pip install pot") from None
    cost = squared_costs(x0, noise).cpu().numpy()
    n = len(cost)
    uniform = np.full(n, 1.0 / n)
    plan = torch.from_numpy(ot.sinkhorn(uniform, uniform, cost / cost.mean(), reg))
    rows = (plan / plan.sum(1, keepdim=True)).clamp(min=0)
    return torch.multinomial(rows.float(), 1, generator=generator).squeeze(1).to(x0.device)


def couple(x0, noise, method: str, *, generator) -> torch.Tensor:
    """``noise`` reordered so that noise[i] is x0[i]'s partner under ``method``."""
    if method == "independent":
        return noise
    if method == "ot":
        return noise[ot_permutation(x0, noise)]
    if method == "sinkhorn":
        return noise[sinkhorn_partners(x0, noise, generator=_cpu(generator))]
    raise ConfigError(f"unknown coupling '{method}'; allowed: {', '.join(COUPLINGS)}")


def _cpu(generator):
    # multinomial runs on the CPU plan; a CUDA generator cannot drive it
    if generator.device.type == "cpu":
        return generator
    return torch.Generator().manual_seed(int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device)))
