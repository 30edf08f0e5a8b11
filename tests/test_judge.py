"""The self-supervised judge (metrics/ssl.py): its loss against a direct formula, that training
it makes instances retrievable, and that fd_ssl reaches the protocol and the CLI."""

import math

import pytest
import torch
import torch.nn.functional as F

from genmodels.data import load_dataset
from genmodels.metrics import compare_images
from genmodels.metrics.features import FeatureCNN, random_affine
from genmodels.metrics.registry import METRICS, EvalInputs, default_metrics
from genmodels.metrics.ssl import SSL_RECIPES, SslRecipe, build_ssl_encoder, nt_xent


def nt_xent_by_loop(z1, z2, tau):
    """SimCLR's loss written out term by term (Chen et al. 2020, Eq. 1, averaged over 2N anchors)."""
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    n, total = len(z1), 0.0
    for i in range(2 * n):
        j = (i + n) % (2 * n)
        num = math.exp(float(z[i] @ z[j]) / tau)
        den = sum(math.exp(float(z[i] @ z[k]) / tau) for k in range(2 * n) if k != i)
        total += -math.log(num / den)
    return total / (2 * n)


def test_nt_xent_equals_the_papers_formula_and_rewards_matching_views():
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    assert nt_xent(z1, z2, 0.3).item() == pytest.approx(nt_xent_by_loop(z1, z2, 0.3), rel=1e-5)
    # views that agree give a lower loss than unrelated ones; orthogonal one-hot pairs: the closed form
    assert nt_xent(z1, z1 + 0.01 * z2, 0.3) < nt_xent(z1, z2, 0.3)
    eye = torch.eye(4)
    expected = -math.log(math.exp(1 / 0.5) / (math.exp(1 / 0.5) + 6 * math.exp(0)))
    assert nt_xent(eye, eye, 0.5).item() == pytest.approx(expected, rel=1e-6)


@pytest.fixture(scope="module")
def digits_encoder():
    recipe = SslRecipe(epochs=6, width=8, feature_dim=32, projection_dim=16, batch_size=128, shift=1, rotate=8,
                       scale=0.1)
    net, info = build_ssl_encoder("digits", recipe=recipe, progress=False)
    return net, info, recipe


def retrieval(net, x, recipe, seed):
    """Share of augmented views whose nearest clean image (cosine, in the features) is their own."""
    views = random_affine(x, recipe.augmentation(), generator=torch.Generator().manual_seed(seed))
    with torch.inference_mode():
        a, b = F.normalize(net.features(views), dim=1), F.normalize(net.features(x), dim=1)
    return ((a @ b.T).argmax(1) == torch.arange(len(x))).double().mean().item()


def test_training_makes_each_image_findable_from_an_augmented_view(digits_encoder):
    net, info, recipe = digits_encoder
    x = load_dataset("digits", split="test").x[:150]
    torch.manual_seed(0)
    untrained = FeatureCNN(image_size=8, num_classes=1, width=8, feature_dim=32).eval()
    trained, chance = retrieval(net, x, recipe, 1), retrieval(untrained, x, recipe, 1)
    # instance discrimination: the view finds its own image among 150 (chance 1/150) far more
    # often after training than through random features
    assert trained > chance + 0.15, (trained, chance)
    assert info["kind"] == "ssl" and info["n_train"] > 0


def test_the_encoder_keeps_within_class_variation_a_classifier_may_drop(digits_encoder):
    """Two different images of one class stay apart: their feature distance is a large share of
    the distance between classes (a collapsed classifier layer would put it near 0)."""
    net, _, _ = digits_encoder
    test = load_dataset("digits", split="test")
    with torch.inference_mode():
        f = F.normalize(net.features(test.x), dim=1)
    d = torch.cdist(f, f)
    same = test.y[:, None] == test.y[None]
    off = ~torch.eye(len(f), dtype=torch.bool)
    within, between = d[same & off].mean(), d[~same].mean()
    assert 0.5 < within / between < 1.0, (within.item(), between.item())


def test_fd_ssl_is_a_default_image_metric_and_names_its_values():
    assert "fd_ssl" in default_metrics("image") and "fd_ssl" in METRICS
    # a dataset without an encoder recipe gives nothing rather than a wrong number
    assert METRICS["fd_ssl"].compute(EvalInputs("image", samples=torch.zeros(4, 1, 8, 8), dataset="digits")) == {}
    assert "digits" not in SSL_RECIPES


def test_fd_ssl_sees_blur_and_blends_in_compare_images(monkeypatch, digits_encoder):
    """compare_images routes fd_ssl through the dataset's encoder on the given real set (here the
    tiny digits encoder, registered for the test): a set against itself is 0, a blurred or
    blended copy is far."""
    import genmodels.metrics.ssl as ssl

    net, info, recipe = digits_encoder
    monkeypatch.setitem(ssl.SSL_RECIPES, "digits", recipe)
    monkeypatch.setattr(ssl, "_load_or_build", lambda dataset, rebuild, progress: (net, info))
    test = load_dataset("digits", split="all").x
    real, other = test[:800], test[800:1600]
    same = compare_images(real, other, features="digits", metrics=["fd_ssl"], progress=False)
    blended = compare_images(real, 0.5 * (other + other.roll(1, 0)), features="digits", metrics=["fd_ssl"],
                             progress=False)
    assert compare_images(real, real, features="digits", metrics=["fd_ssl"], progress=False)["fd_ssl"] == \
        pytest.approx(0.0, abs=1e-6)
    assert blended["fd_ssl"] > 3 * same["fd_ssl"], (blended, same)
    assert set(same) >= {"fd_ssl", "kid_ssl"}
