"""Frechet distance between Gaussians fitted to two feature sets (Heusel et al. 2017, Eq. 6;
Dowson & Landau 1982):

    FD = |mu_1 - mu_2|^2 + tr(S_1 + S_2 - 2 (S_1 S_2)^(1/2))

In float64, with the matrix square root taken the stable way: tr (S_1 S_2)^(1/2) equals
tr (A S_2 A)^(1/2) with A = S_1^(1/2), and A S_2 A is symmetric positive semi-definite, so both
roots come from ``eigh`` with tiny negative eigenvalues (round-off) clamped to 0. No complex
parts to discard and no ill-conditioned ``sqrtm`` iterations.
"""

from dataclasses import dataclass

import torch

from ..errors import DataError

__all__ = ["GaussianStats", "gaussian_stats", "frechet_distance", "fd"]


@dataclass(frozen=True, eq=False)
class GaussianStats:
    """Mean [D] and unbiased covariance [D, D] (float64) of ``n`` feature vectors."""

    mu: torch.Tensor
    sigma: torch.Tensor
    n: int


def gaussian_stats(features) -> GaussianStats:
    f = _as_features(features)
    if len(f) < 2:
        raise DataError(f"a covariance needs at least 2 feature vectors, got {len(f)}")
    return GaussianStats(f.mean(0), torch.cov(f.T).reshape(f.shape[1], f.shape[1]), len(f))


def _sqrt_psd(m):
    """Symmetric square root of a symmetric positive semi-definite matrix."""
    eigenvalues, vectors = torch.linalg.eigh((m + m.T) / 2)
    return (vectors * eigenvalues.clamp(min=0).sqrt()) @ vectors.T


def frechet_distance(a: GaussianStats, b: GaussianStats) -> float:
    """FD between N(a.mu, a.sigma) and N(b.mu, b.sigma)."""
    if a.mu.shape != b.mu.shape:
        raise DataError(f"feature dimensions differ: {a.mu.shape[0]} vs {b.mu.shape[0]}")
    root_a = _sqrt_psd(a.sigma)
    middle = root_a @ b.sigma @ root_a
    tr_sqrt = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp(min=0).sqrt().sum()
    value = (a.mu - b.mu).square().sum() + a.sigma.trace() + b.sigma.trace() - 2 * tr_sqrt
    return float(value.clamp(min=0))  # >= 0 exactly; round-off can dip below for a == b


def fd(real, fake) -> float:
    """Frechet distance between two feature sets [N, D] and [M, D] (or their GaussianStats)."""
    a = real if isinstance(real, GaussianStats) else gaussian_stats(real)
    b = fake if isinstance(fake, GaussianStats) else gaussian_stats(fake)
    return frechet_distance(a, b)


def _as_features(features) -> torch.Tensor:
    f = torch.as_tensor(features).to(torch.float64)
    if f.ndim != 2:
        raise DataError(f"features must be a matrix [N, D], got shape {tuple(f.shape)}")
    if not torch.isfinite(f).all():
        raise DataError("features contain NaN or inf (diverged samples?); cannot compare them")
    return f
