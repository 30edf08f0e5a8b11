"""Metrics against closed forms; against peers (torchmetrics, POT, prdc) in test_metrics_peers.py."""

import math

import numpy as np
import pytest
import scipy.linalg
import torch

from genmodels.data import TOY_DISTRIBUTIONS
from genmodels.errors import DataError
from genmodels.metrics import (GaussianStats, classifier_score, conditional_accuracy, fd,
                               frechet_distance, kid, log_density, mmd_rbf, mode_coverage, prdc)


def gaussian(n, d, *, seed, shift=0.0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64) * scale + shift


def random_spd(d, seed):
    a = gaussian(d, d, seed=seed)
    return a @ a.T / d + 0.1 * torch.eye(d, dtype=torch.float64)


# ---- Frechet distance --------------------------------------------------------------------
def test_fd_of_two_gaussians_equals_the_closed_form():
    d = 6
    mu1, mu2 = gaussian(1, d, seed=0)[0], gaussian(1, d, seed=1)[0]
    s1, s2 = random_spd(d, 2), random_spd(d, 3)
    # scipy's general (Schur) sqrtm of the non-symmetric product: an independent route
    expected = ((mu1 - mu2).square().sum() + s1.trace() + s2.trace()
                - 2 * np.trace(scipy.linalg.sqrtm((s1 @ s2).numpy())).real).item()
    got = frechet_distance(GaussianStats(mu1, s1, 10), GaussianStats(mu2, s2, 10))
    assert got == pytest.approx(expected, rel=1e-9)
    # commuting (diagonal) covariances: |mu1 - mu2|^2 + sum (sqrt a - sqrt b)^2
    a, b = torch.rand(d, dtype=torch.float64) + 0.5, torch.rand(d, dtype=torch.float64) + 0.5
    got = frechet_distance(GaussianStats(mu1, torch.diag(a), 10), GaussianStats(mu2, torch.diag(b), 10))
    assert got == pytest.approx(((mu1 - mu2).square().sum() + (a.sqrt() - b.sqrt()).square().sum()).item(), rel=1e-12)


def test_fd_of_a_set_with_itself_is_zero_even_when_the_covariance_is_singular():
    x = gaussian(50, 128, seed=0)  # 50 points in 128 dimensions: rank-49 covariance
    # sqrt is not Lipschitz at 0: round-off of ~1e-16 in the 79 null eigenvalues costs ~1e-6
    assert fd(x, x) == pytest.approx(0.0, abs=1e-5)
    assert fd(x, x + 1.0) == pytest.approx(128.0, abs=1e-5)  # a pure shift costs |shift|^2


def test_fd_rejects_bad_features():
    with pytest.raises(DataError, match="NaN"):
        fd(torch.full((10, 3), float("nan")), gaussian(10, 3, seed=0))
    with pytest.raises(DataError, match="dimensions differ"):
        fd(gaussian(10, 3, seed=0), gaussian(10, 4, seed=1))


# ---- KID ---------------------------------------------------------------------------------
def test_kid_is_unbiased_for_two_samples_of_one_distribution():
    values = [kid(gaussian(100, 16, seed=2 * i), gaussian(100, 16, seed=2 * i + 1), subsets=1,
                  subset_size=100).mean for i in range(200)]
    values = torch.tensor(values)
    stderr = values.std() / math.sqrt(len(values))
    assert abs(values.mean()) < 3 * stderr, (values.mean(), stderr)
    # a biased (V-statistic) estimate would sit well above 0 here; a real shift is far above
    assert kid(gaussian(100, 16, seed=0), gaussian(100, 16, seed=1, shift=0.5)).mean > 20 * stderr


# ---- precision / recall / density / coverage ----------------------------------------------
def test_prdc_extremes():
    x = gaussian(200, 4, seed=0)
    same = prdc(x, x.clone(), k=3)
    assert same.precision == same.recall == same.coverage == 1.0
    far = prdc(x, x + 100.0, k=3)
    assert far.precision == far.recall == far.density == far.coverage == 0.0


# ---- classifier score, conditional accuracy --------------------------------------------------
def test_classifier_score_bounds():
    """exp E KL(p(y|x) || p(y)) is 1 without information and the class count for confident,
    balanced predictions."""
    assert classifier_score(torch.zeros(100, 10)).mean == pytest.approx(1.0)  # no information
    one_hot = 50.0 * torch.eye(10).repeat(10, 1)  # confident, every class equally often
    assert classifier_score(one_hot, splits=1).mean == pytest.approx(10.0, rel=1e-6)
    # confident but always the same class: no diversity, a score of 1 again
    assert classifier_score(50.0 * torch.eye(10)[[3] * 100], splits=1).mean == pytest.approx(1.0, abs=1e-6)


def test_conditional_accuracy():
    logits = torch.eye(4)[[0, 1, 2, 3, 0]]
    assert conditional_accuracy(logits, torch.tensor([0, 1, 2, 0, 0])) == pytest.approx(0.8)


# ---- toy 2-D ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["8gaussians", "25gaussians", "checkerboard", "rings"])
def test_exact_toy_density_integrates_to_one(name):
    dist = TOY_DISTRIBUTIONS[name]
    # midpoint rule; the checkerboard's cell edges (multiples of its cell side) fall on grid lines
    h = dist.cell / 200 if name == "checkerboard" else 0.005
    half = round(3.5 / h)
    axis = (torch.arange(-half, half, dtype=torch.float64) + 0.5) * h
    grid = torch.cartesian_prod(axis, axis)
    total = sum(dist.log_prob(chunk).exp().sum().item() for chunk in grid.split(500_000)) * h * h
    assert total == pytest.approx(1.0, abs=2e-3)


def test_mode_coverage_of_real_and_collapsed_samples():
    dist = TOY_DISTRIBUTIONS["8gaussians"]
    x = dist.sample(20_000, generator=torch.Generator().manual_seed(0))
    real = mode_coverage(x, dist.modes, dist.mode_std)
    p = 1 - math.exp(-4.5)  # P(|z| < 3) for a 2-D standard normal
    assert real.covered == 8
    assert real.high_quality == pytest.approx(p, abs=3 * math.sqrt(p * (1 - p) / 20_000))
    collapsed = mode_coverage(x[(x - dist.modes[0]).norm(dim=1) < 0.3], dist.modes, dist.mode_std)
    assert collapsed.covered == 1 and collapsed.high_quality == 1.0


def test_mmd_and_log_density_rank_a_shifted_model_below_the_data():
    dist = TOY_DISTRIBUTIONS["8gaussians"]
    g = torch.Generator().manual_seed(0)
    a, b = dist.sample(1000, generator=g), dist.sample(1000, generator=g)
    assert abs(mmd_rbf(a, b)) < 0.005 < mmd_rbf(a, b + 0.3)
    assert log_density(dist, b).mean > log_density(dist, b + 0.3).mean
    assert log_density(dist, b).in_support == 1.0
    checker = TOY_DISTRIBUTIONS["checkerboard"]
    off = log_density(checker, torch.tensor([[-1.5, -1.5], [10.0, 10.0]]))  # one off the board
    assert off.in_support == 0.5 and math.isfinite(off.mean)
