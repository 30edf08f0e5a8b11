"""Kernel distance (KID, Binkowski et al. 2018, Sec. 3): the unbiased estimate of MMD^2 with the
polynomial kernel k(a, b) = (a.b / D + 1)^3, averaged over random subsets; reported as the mean
and the (population) standard deviation over subsets, as torchmetrics and clean-fid do.

    MMD^2_u = sum_{i != j} k(x_i, x_j) / (m (m - 1)) + sum_{i != j} k(y_i, y_j) / (n (n - 1))
              - 2 sum_{i, j} k(x_i, y_j) / (m n)

Unbiased: its expectation is 0 when both sets come from one distribution, so small values can be
negative; no sample-size floor as FD has.
"""

from dataclasses import dataclass

import torch

from .frechet import _as_features

__all__ = ["KID", "kid", "mmd2_unbiased", "polynomial_kernel"]


@dataclass(frozen=True)
class KID:
    mean: float
    std: float
    subsets: int
    subset_size: int


def polynomial_kernel(a, b, *, degree=3, gamma=None, coef=1.0):
    gamma = 1.0 / a.shape[1] if gamma is None else gamma
    return (a @ b.T * gamma + coef) ** degree


def mmd2_unbiased(k_xx, k_yy, k_xy) -> torch.Tensor:
    """Unbiased MMD^2 from the three kernel matrices (diagonals of k_xx, k_yy left out)."""
    m, n = len(k_xx), len(k_yy)
    xx = (k_xx.sum() - k_xx.diagonal().sum()) / (m * (m - 1))
    yy = (k_yy.sum() - k_yy.diagonal().sum()) / (n * (n - 1))
    return xx + yy - 2 * k_xy.sum() / (m * n)


def kid(real, fake, *, subsets=100, subset_size=1000, degree=3, gamma=None, coef=1.0, seed=0) -> KID:
    """KID between feature sets [N, D] and [M, D]; subsets of min(subset_size, N, M) rows of each
    are drawn without replacement by a generator seeded with ``seed``."""
    x, y = _as_features(real), _as_features(fake)
    size = min(subset_size, len(x), len(y))
    if size < 2:
        raise ValueError(f"KID needs at least 2 samples in each set, got {len(x)} and {len(y)}")
    g = torch.Generator().manual_seed(seed)
    kernel = dict(degree=degree, gamma=gamma, coef=coef)
    values = []
    for _ in range(subsets):
        a = x[torch.randperm(len(x), generator=g)[:size]]
        b = y[torch.randperm(len(y), generator=g)[:size]]
        values.append(mmd2_unbiased(polynomial_kernel(a, a, **kernel), polynomial_kernel(b, b, **kernel),
                                    polynomial_kernel(a, b, **kernel)))
    values = torch.stack(values)
    return KID(values.mean().item(), values.std(unbiased=False).item(), subsets, size)
