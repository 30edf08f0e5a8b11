"""Precision and recall (Kynkaanniemi et al. 2019) and density and coverage (Naeem et al. 2020)
from k-nearest-neighbour balls in feature space.

With r_k(v) the distance from a point to its k-th nearest neighbour in its own set (itself not
counted), B(v) the ball of radius r_k(v) around it:
- precision: fraction of fake samples inside some real ball (realism);
- recall: fraction of real samples inside some fake ball (diversity);
- density: (1 / k M) sum over fakes of the number of real balls containing it (can exceed 1);
- coverage: fraction of real balls that contain at least one fake.
Balls are open (strict <), as in the authors' code (github.com/clovaai/generative-evaluation-prdc).
"""

from dataclasses import dataclass

import torch

from .frechet import _as_features

__all__ = ["PRDC", "prdc", "knn_radii"]


@dataclass(frozen=True)
class PRDC:
    precision: float
    recall: float
    density: float
    coverage: float
    k: int


def _chunked_distances(a, b, fn, *, chunk=2048):
    """Apply ``fn`` to the Euclidean distance matrix in row chunks (never all N x M at once)."""
    return torch.cat([fn(torch.cdist(a[i:i + chunk], b)) for i in range(0, len(a), chunk)])


def knn_radii(features, k: int) -> torch.Tensor:
    """Distance from each row to its k-th nearest other row ([N], float64)."""
    f = _as_features(features)
    if len(f) <= k:
        raise ValueError(f"k-NN radii with k = {k} need more than {k} points, got {len(f)}")
    return _chunked_distances(f, f, lambda d: d.topk(k + 1, dim=1, largest=False).values[:, -1])


def prdc(real, fake, *, k=5, real_radii=None) -> PRDC:
    """Precision, recall, density, coverage of ``fake`` [M, D] against ``real`` [N, D].

    ``real_radii`` may pass cached ``knn_radii(real, k)`` (the reference set's are fixed).
    """
    x, y = _as_features(real), _as_features(fake)
    r_real = knn_radii(x, k) if real_radii is None else real_radii.to(torch.float64)
    r_fake = knn_radii(y, k)
    # per fake: how many real balls contain it; per real: is it in a fake ball / does its ball
    # hold a fake. Chunked over the real rows, accumulated.
    inside_count = torch.zeros(len(y), dtype=torch.float64)
    recall_hits = []
    covered = []
    for i in range(0, len(x), 2048):
        d = torch.cdist(x[i:i + 2048], y)  # [chunk, M]
        in_real_ball = d < r_real[i:i + 2048, None]
        inside_count += in_real_ball.sum(0)
        covered.append(in_real_ball.any(1))
        recall_hits.append((d < r_fake[None, :]).any(1))
    return PRDC(precision=(inside_count > 0).double().mean().item(),
                recall=torch.cat(recall_hits).double().mean().item(),
                density=(inside_count.sum() / (k * len(y))).item(),
                coverage=torch.cat(covered).double().mean().item(), k=k)
