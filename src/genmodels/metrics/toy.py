"""Metrics for 2-D toy distributions, where the truth is known.

- ``wasserstein``: exact W1 / W2 between two equal-size point sets (optimal transport between
  uniform empirical measures is an assignment problem: Birkhoff; solved by scipy's
  ``linear_sum_assignment``, checked against POT in the tests);
- ``mmd_rbf``: unbiased MMD^2 averaged over RBF kernels of several bandwidths;
- ``mode_coverage``: for the Gaussian mixtures, the GAN mode-collapse test (VEEGAN, Srivastava et
  al. 2017, Sec. 5.1): a sample is high quality when within 3 standard deviations of its nearest
  mode; a mode is covered when it holds at least a quarter of its fair share (n / K) of them;
- ``log_density``: mean exact log-density of samples under the data distribution (where it has
  one), floored per sample so one point off a bounded support does not make it -inf.
"""

from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from .frechet import _as_features
from .kid import mmd2_unbiased

__all__ = ["wasserstein", "mmd_rbf", "ModeCoverage", "mode_coverage", "LogDensity", "log_density",
           "MMD_BANDWIDTHS"]

MMD_BANDWIDTHS = (0.05, 0.1, 0.2, 0.5, 1.0, 2.0)  # data are standardised to unit variance per axis


def wasserstein(x, y, *, p: int = 2) -> float:
    """Exact W_p between the empirical measures of ``x`` [N, D] and ``y`` [M, D]; with N != M the
    first min(N, M) rows of each are used (pass shuffled sets)."""
    x, y = _as_features(x), _as_features(y)
    n = min(len(x), len(y))
    cost = torch.cdist(x[:n], y[:n]).pow(p).numpy()
    rows, cols = linear_sum_assignment(cost)
    return float(cost[rows, cols].mean() ** (1 / p))


def mmd_rbf(x, y, *, bandwidths=MMD_BANDWIDTHS) -> float:
    """Unbiased MMD^2 with k(a, b) = mean_h exp(-|a - b|^2 / (2 h^2)) over bandwidths h."""
    x, y = _as_features(x), _as_features(y)

    def kernel(a, b):
        d2 = torch.cdist(a, b).square()
        return sum(torch.exp(-d2 / (2 * h * h)) for h in bandwidths) / len(bandwidths)

    return mmd2_unbiased(kernel(x, x), kernel(y, y), kernel(x, y)).item()


@dataclass(frozen=True)
class ModeCoverage:
    covered: int  # modes with at least min_share of their fair share of high-quality samples
    modes: int
    high_quality: float  # fraction of samples within `radius` standard deviations of a mode
    counts: tuple  # high-quality samples per mode


def mode_coverage(samples, modes, mode_std, *, radius=3.0, min_share=0.25) -> ModeCoverage:
    x, modes = _as_features(samples), _as_features(modes)
    d = torch.cdist(x, modes)
    nearest = d.min(1)
    good = nearest.values < radius * mode_std
    counts = torch.bincount(nearest.indices[good], minlength=len(modes))
    covered = int((counts >= min_share * len(x) / len(modes)).sum())
    return ModeCoverage(covered, len(modes), good.double().mean().item(), tuple(counts.tolist()))


@dataclass(frozen=True)
class LogDensity:
    mean: float  # mean of max(log p(x), floor) over the samples, nats
    in_support: float  # fraction of samples where log p(x) > floor


def log_density(dist, samples, *, floor=-30.0) -> LogDensity:
    """Exact log-density of ``samples`` under a toy distribution with a ``log_prob``."""
    if dist.log_prob is None:
        raise ValueError(f"{dist.name} has no closed-form density")
    lp = dist.log_prob(torch.as_tensor(np.asarray(samples), dtype=torch.float64))
    inside = lp > floor
    return LogDensity(lp.clamp(min=floor).mean().item(), inside.double().mean().item())
