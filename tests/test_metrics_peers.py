"""Metrics against peer implementations on the same inputs: torchmetrics (FID, KID, Inception
Score), the PRDC authors' code and POT. They are test oracles: ``scripts/test`` requires them
(tests/conftest.py), a plain pytest run skips the tests whose oracle is missing."""

import pytest
from torch import nn

from genmodels.metrics import classifier_score, fd, kid, prdc, wasserstein
from test_metrics import gaussian


def peer(module, package=None):
    """``module`` of a peer library; skips the test (a plain pytest run) when it is missing."""
    return pytest.importorskip(module, reason=f"{package or module.split('.')[0]} is a test oracle: "
                                              "scripts/setup test installs it")


# ---- torchmetrics ----------------------------------------------------------------------------
def test_fd_equals_torchmetrics_on_the_same_features():
    FrechetInceptionDistance = peer("torchmetrics.image.fid").FrechetInceptionDistance

    class Identity(nn.Module):
        num_features = 64

        def forward(self, x):
            return x

    real, fake = gaussian(700, 64, seed=0), gaussian(500, 64, seed=1, shift=0.3, scale=1.2)
    oracle = FrechetInceptionDistance(feature=Identity())
    oracle.update(real, real=True)
    oracle.update(fake, real=False)
    assert fd(real, fake) == pytest.approx(oracle.compute().item(), rel=1e-3)


def test_kid_equals_torchmetrics():
    KernelInceptionDistance = peer("torchmetrics.image.kid").KernelInceptionDistance

    class Identity(nn.Module):
        def forward(self, x):
            return x

    real, fake = gaussian(300, 32, seed=0), gaussian(300, 32, seed=1, shift=0.2)
    oracle = KernelInceptionDistance(feature=Identity(), subsets=1, subset_size=300)
    oracle.update(real, real=True)
    oracle.update(fake, real=False)
    mean, _ = oracle.compute()  # one subset of all rows: its random permutation cannot matter
    assert kid(real, fake, subsets=1, subset_size=300).mean == pytest.approx(mean.item(), rel=1e-6)


def test_classifier_score_equals_torchmetrics():
    InceptionScore = peer("torchmetrics.image.inception").InceptionScore

    logits = gaussian(500, 10, seed=0, scale=3.0)
    oracle = InceptionScore(feature=nn.Identity(), splits=1)
    oracle.update(logits)
    assert classifier_score(logits, splits=1).mean == pytest.approx(oracle.compute()[0].item(), rel=1e-5)


# ---- the PRDC authors' implementation ---------------------------------------------------------
def test_prdc_equals_the_authors_implementation():
    compute_prdc = peer("prdc").compute_prdc

    real, fake = gaussian(400, 10, seed=0), gaussian(300, 10, seed=1, shift=0.4, scale=0.8)
    expected = compute_prdc(real.numpy(), fake.numpy(), nearest_k=5)
    got = prdc(real, fake, k=5)
    for key in ("precision", "recall", "density", "coverage"):
        assert getattr(got, key) == pytest.approx(expected[key], abs=1e-12), key


# ---- POT -------------------------------------------------------------------------------------
@pytest.mark.parametrize("p", [1, 2])
def test_wasserstein_equals_pot(p):
    ot = peer("ot", "POT")

    x, y = gaussian(150, 2, seed=0), gaussian(150, 2, seed=1, shift=0.5, scale=0.7)
    cost = ot.dist(x.numpy(), y.numpy(), metric="euclidean") ** p
    expected = ot.emd2(ot.unif(150), ot.unif(150), cost) ** (1 / p)
    assert wasserstein(x, y, p=p) == pytest.approx(expected, rel=1e-9)
