"""Anomaly detection: the AUROC statistic, held-out training classes, reconstruction scores and
maps on an exact denoiser, the likelihood seam, and the CLI verb on tiny runs."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from genmodels.config import load_config
from genmodels.data import exclude_classes, load_dataset
from genmodels.edit.anomaly import (anomaly_map_png, auroc, auroc_bootstrap_se, complexity_bpd, likelihood_scores,
                                    reconstruction_scores)
from genmodels.errors import ConfigError
from genmodels.images import read_parameters, to_uint8
from genmodels.samplers import generate
from tests.conftest import TINY_UNET
from tests.test_cli import assert_one_line_error, run_cli
from tests.test_seams import ToyVE


# ---- auroc --------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(5))
def test_auroc_equals_sklearn_on_random_scores_with_ties(seed):
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(seed)
    normal = rng.integers(0, 6, 70).astype(float)  # few distinct values: many ties within and across groups
    anomalous = rng.integers(2, 8, 30).astype(float)
    expected = roc_auc_score(np.r_[np.zeros(70), np.ones(30)], np.r_[normal, anomalous])
    assert auroc(normal, anomalous) == pytest.approx(expected, abs=1e-12)
    continuous = rng.normal(size=50), rng.normal(0.5, 1, 20)
    expected = roc_auc_score(np.r_[np.zeros(50), np.ones(20)], np.r_[continuous])
    assert auroc(*continuous) == pytest.approx(expected, abs=1e-12)


def test_auroc_closed_forms():
    assert auroc([0, 1, 2], [3, 4]) == 1.0  # perfect separation
    assert auroc([3, 4], [0, 1, 2]) == 0.0  # reversed
    assert auroc([5, 5, 5], [5, 5]) == 0.5  # all tied
    assert auroc([1, 2, 3], [1, 2, 3]) == 0.5  # identical distributions: the pairs are symmetric
    assert auroc([0, 2], [1]) == 0.5  # one pair above, one below
    assert auroc([0, 1], [1]) == 0.75  # one above, one tie counted 1/2


def test_bootstrap_se_is_zero_for_perfect_separation_and_shrinks_with_n():
    assert auroc_bootstrap_se([0, 1, 2], [5, 6]) == 0.0
    rng = np.random.default_rng(0)
    small = auroc_bootstrap_se(rng.normal(size=40), rng.normal(1, 1, 40), resamples=300)
    large = auroc_bootstrap_se(rng.normal(size=640), rng.normal(1, 1, 640), resamples=300)
    assert 2.5 < small / large < 6  # ~ sqrt(16) = 4


def test_complexity_orders_blank_digit_and_noise():
    digit = load_dataset("mnist", split="test").x[:1]
    blank, noise = -torch.ones_like(digit), torch.rand(digit.shape, generator=torch.Generator().manual_seed(0)) * 2 - 1
    bpd = complexity_bpd(torch.cat([blank, digit, noise]))
    assert bpd[0] < bpd[1] < bpd[2] and 7 < bpd[2] < 10  # uniform 8-bit noise: ~8 bits/dim plus PNG overhead


# ---- data.exclude_classes -----------------------------------------------------------------------
def test_exclude_classes_removes_exactly_that_class_in_order():
    train = load_dataset("mnist", split="train")
    kept = exclude_classes(train, [7])
    keep = train.y != 7
    assert 7 not in kept.y.tolist() and len(kept) == int(keep.sum()) == len(train) - int((train.y == 7).sum())
    assert torch.equal(kept.x, train.x[keep]) and torch.equal(kept.y, train.y[keep])
    assert exclude_classes(train, []) is train
    assert set(exclude_classes(train, [1, 7]).y.tolist()) == set(range(10)) - {1, 7}


def test_exclude_classes_errors():
    train = load_dataset("mnist", split="train")
    with pytest.raises(ConfigError, match=r"class 10 is out of range for mnist \(classes 0..9\)"):
        exclude_classes(train, [3, 10])
    with pytest.raises(ConfigError, match="has no class labels"):
        exclude_classes(load_dataset("8gaussians", n_points=100), [0])
    with pytest.raises(ConfigError, match="leaves no training items"):
        exclude_classes(train, list(range(10)))
    with pytest.raises(ConfigError, match="negative class"):
        load_config("mnist-ddpm", ["data.exclude_classes=[-1]"])
    with pytest.raises(ConfigError, match=r"data.exclude_classes\[0\]' must be int"):
        load_config("mnist-ddpm", ["data.exclude_classes=[seven]"])


def test_prepare_trains_without_the_class_and_records_it(tmp_path):
    from genmodels.train.run import prepare

    cfg = load_config("mnist-ddpm", TINY_UNET + ["data.exclude_classes=[7]", "train.device=cpu"])
    trainer = prepare(cfg, tmp_path / "run")
    labels = trainer.batches[0].cond["y"]
    assert 7 not in labels.tolist() and len(labels) == 4500 - int((load_dataset("mnist").y == 7).sum())
    record = json.loads((tmp_path / "run" / "config.json").read_text())
    assert record["config"]["data"]["exclude_classes"] == [7]


# ---- reconstruction on an exact denoiser ------------------------------------------------------
class GaussianPipe:
    """A pipeline whose denoiser is exact for a per-pixel Gaussian fitted to the MNIST training
    digits, D(x, sigma) = mu + v / (v + sigma^2) (x - mu), on the ToyVE path: what a perfect
    model of that Gaussian does, so its reconstructions are known to pull towards mu."""

    data_shape = (1, 28, 28)

    def __init__(self):
        x = load_dataset("mnist", split="train").x
        self.mu, self.var = x.mean(0), x.var(0) + 1e-3

    def denoiser(self, x, sigma, cond=None):
        s2 = torch.as_tensor(sigma, dtype=x.dtype) ** 2
        return self.mu + self.var / (self.var + s2) * (x - self.mu)

    def sample(self, n, *, seed, sampler, steps, eta, init_images, strength, labels, batch_size, progress):
        return generate(self.denoiser, ToyVE(), shape=self.data_shape, seeds=range(seed, seed + n), sampler=sampler,
                        steps=steps, eta=eta, init_images=init_images, strength=strength).clamp(-1, 1)


@pytest.fixture(scope="module")
def gaussian_pipe():
    return GaussianPipe()


def test_out_of_distribution_images_score_higher(gaussian_pipe):
    normal = load_dataset("mnist", split="test").x[:24]
    inverted = -normal  # white background, black ink: far from every pixel's mean
    rec = reconstruction_scores(gaussian_pipe, torch.cat([normal, inverted]), strengths=(0.3, 0.6), steps=20)
    assert rec.strengths == (0.3, 0.6) and rec.scores.shape == (2, 48)
    for scores in rec.scores:
        assert auroc(scores[:24], scores[24:]) == 1.0
        assert scores[24:].mean() > 5 * scores[:24].mean()
    # more noise, more of the image replaced by the model's mean: scores grow with strength
    assert (rec.scores[1] > rec.scores[0]).float().mean() > 0.9


def test_the_map_has_the_image_shape_and_lights_up_a_pasted_square(gaussian_pipe, tmp_path):
    digit = load_dataset("mnist", split="test").x[:4]
    corrupted = digit.clone()
    corrupted[:, :, 2:8, 2:8] = 1.0  # a bright square in the corner, where MNIST is always black
    rec = reconstruction_scores(gaussian_pipe, torch.cat([digit, corrupted]), strengths=(0.5,), steps=20,
                                repeats=2)
    maps = rec.maps[0]
    assert maps.shape == (8, 28, 28) and rec.recon.shape == (1, 8, 1, 28, 28)
    square = torch.zeros(28, 28, dtype=torch.bool)
    square[2:8, 2:8] = True
    inside, outside = maps[4:, square].mean(), maps[4:, ~square].mean()
    assert inside > 5 * outside
    assert (maps[4:, square].mean(1) > 5 * maps[:4, square].mean(1)).all()  # the clean digits' corners stay dark
    assert (rec.scores[0, 4:] > rec.scores[0, :4]).all()
    # the map is |x - x_hat| averaged over channels (one channel here) and repeats
    out = tmp_path / "map.png"
    vmax = anomaly_map_png(digit, rec.recon[0, :4], maps[:4], out, {"run": "toy"})
    assert vmax == pytest.approx(float(maps[:4].max()))
    params = read_parameters(out)
    assert params["run"] == "toy" and params["colormap"] == "magma" and params["rows"][2].startswith("map")


def test_deterministic_ddim_gives_the_same_map_twice_and_repeats_average(gaussian_pipe):
    x = load_dataset("mnist", split="test").x[:3]
    a = reconstruction_scores(gaussian_pipe, x, strengths=(0.4,), steps=10)
    b = reconstruction_scores(gaussian_pipe, x, strengths=(0.4,), steps=10)
    assert torch.equal(a.maps, b.maps)
    two = reconstruction_scores(gaussian_pipe, x, strengths=(0.4,), steps=10, repeats=2)
    second = reconstruction_scores(gaussian_pipe, x, strengths=(0.4,), steps=10, seed=3)  # repeat 2's seeds
    torch.testing.assert_close(two.scores, (a.scores + second.scores) / 2)


# ---- tiny trained runs: the likelihood seam and the CLI ----------------------------------------
@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    from genmodels.train.run import train

    root = tmp_path_factory.mktemp("anomaly")
    common = ["data.exclude_classes=[7]", "train.device=cpu", "train.batch_size=16", "train.images=32",
              "train.log_every_images=16"]
    train(load_config("mnist-flow", TINY_UNET + common), root / "flow")
    train(load_config("mnist-vae", common), root / "vae")
    return root


def test_per_image_likelihoods_average_to_the_reported_nll(tiny_runs):
    import genmodels

    x = load_dataset("mnist", split="test").x[:6]
    flow = genmodels.load(tiny_runs / "flow", device="cpu")
    per_image = likelihood_scores(flow, x, seed=1, ode_tol=1e-3)["ode_bpd"]
    mean = flow.nll_per_item(x, generator=torch.Generator().manual_seed(1), nll_method="ode", ode_tol=1e-3)
    assert per_image.shape == (6,) and torch.equal(per_image, mean["nll_bpd"].double())
    vae = genmodels.load(tiny_runs / "vae", device="cpu")
    scores = likelihood_scores(vae, x, seed=1, nll_k=8)
    reported = vae.nll_scores(x, generator=torch.Generator().manual_seed(1), nll_k=8)
    assert scores["iwae_bpd"].mean().item() == pytest.approx(reported["nll_bpd"], rel=1e-9)
    assert (scores["neg_elbo_bpd"] >= scores["iwae_bpd"] - 1e-9).all()  # IWAE_k is the tighter bound


def test_cli_prints_auroc_per_method_and_writes_the_map(tiny_runs, tmp_path, capsys):
    out = tmp_path / "map.png"
    code, stdout, err = run_cli(["anomaly", tiny_runs / "flow", "--test", 120, "--method", "recon,likelihood",
                                 "--strength", "0.3,0.5", "--steps", 10, "--ode-tol", 1e-2, "--device", "cpu",
                                 "--out", out], capsys)
    assert code == 0, err
    for name in ("recon@0.3", "recon@0.5", "ode_bpd"):
        assert f"  {name}: " in stdout
    assert "AUROC" in stdout and out.is_file()
    params = read_parameters(out)
    assert params["strength"] == 0.5 and len(params["images"]) == 8 and sum(params["anomalous"]) == 4
    code, stdout, err = run_cli(["anomaly", tiny_runs / "vae", "--test", 40, "--method", "recon,likelihood",
                                 "--nll-k", 4, "--anomaly-class", 1, "--device", "cpu", "--out", out], capsys)
    assert code == 0, err
    assert "note: class 1 was in this run's training data" in stdout
    for name in ("recon", "neg_elbo_bpd", "iwae_bpd"):
        assert f"  {name}: " in stdout


def test_cli_scores_one_input_image(tiny_runs, tmp_path, capsys):
    image = tmp_path / "digit.png"
    Image.fromarray(to_uint8(load_dataset("mnist", split="test").x[:1])[0, ..., 0]).save(image)
    code, stdout, err = run_cli(["anomaly", tiny_runs / "flow", "--input", image, "--strength", "0.4",
                                 "--steps", 10, "--device", "cpu", "--out", tmp_path / "m.png"], capsys)
    assert code == 0, err
    assert stdout.startswith("recon@0.4: ") and (tmp_path / "m.png").is_file()


def test_cli_errors_are_one_line(tiny_runs, tmp_path, capsys):
    run = tiny_runs / "flow"
    code, _, err = run_cli(["anomaly", run, "--out", tmp_path / "m.png"], capsys)
    assert_one_line_error(code, err, "--input IMAGE or --test N")
    code, _, err = run_cli(["anomaly", run, "--test", 4, "--strength", "0,1.5"], capsys)
    assert_one_line_error(code, err, "--strength", "(0, 1]")
    code, _, err = run_cli(["anomaly", run, "--test", 4, "--method", "nll"], capsys)
    assert_one_line_error(code, err, "--method 'nll'")
    code, _, err = run_cli(["anomaly", run, "--test", 3, "--anomaly-class", 7, "--steps", 5, "--device", "cpu"],
                           capsys)
    assert_one_line_error(code, err, "AUROC needs both")
