"""The VAE family: ELBO terms by hand, IWAE bounds ordered and exact on probabilistic PCA,
training, free bits, resume, and the CLI from train to eval."""

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from torch import nn

import genmodels
from genmodels.config import load_config
from genmodels.errors import ConfigError, DataError
from genmodels.families.vae import VAEPipeline, interpolate_latents
from genmodels.metrics.likelihood import BIN_WIDTH
from genmodels.nn.vae_nets import _VAE
from genmodels.objectives.vae import (Bernoulli, DiscretizedGaussian, DiscretizedLogistic, Gaussian, VAEObjective,
                                      active_units, free_bits_kl, gaussian_kl, iwae_bound)
from genmodels.train.run import train
from tests.test_cli import assert_one_line_error, run_cli


class LinearVAE(_VAE):
    """encode: x -> (mu, logvar) by one linear map; decode: z -> params by another."""

    def __init__(self, dim, latent_dim, params_per_channel):
        super().__init__()
        self.image_shape, self.latent_dim = (dim,), latent_dim
        self.encoder = nn.Linear(dim, 2 * latent_dim, dtype=torch.float64)
        self.decoder = nn.Linear(latent_dim, params_per_channel * dim, dtype=torch.float64)


def tiny_linear_vae(params_per_channel):
    torch.manual_seed(3)
    net = LinearVAE(3, 2, params_per_channel)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, dtype=torch.float64) * 0.5)
    return net


def hand_terms(net, x, eps):
    """(reconstruction terms' inputs, KL) computed with plain Python floats."""
    We, be = net.encoder.weight.tolist(), net.encoder.bias.tolist()
    Wd, bd = net.decoder.weight.tolist(), net.decoder.bias.tolist()
    out = []
    for xi, ei in zip(x.tolist(), eps.tolist()):
        h = [sum(w * v for w, v in zip(row, xi)) + b for row, b in zip(We, be)]
        mu, logvar = h[:2], h[2:]
        z = [m + math.exp(0.5 * lv) * e for m, lv, e in zip(mu, logvar, ei)]
        params = [sum(w * v for w, v in zip(row, z)) + b for row, b in zip(Wd, bd)]
        kl = sum(0.5 * (m * m + math.exp(lv) - 1 - lv) for m, lv in zip(mu, logvar))
        out.append((params, kl))
    return out


def test_elbo_terms_equal_hand_computation_bernoulli():
    net = tiny_linear_vae(1)
    x = torch.tensor([[1.0, -1.0, 1.0], [-1.0, -1.0, 1.0]], dtype=torch.float64)
    loss, logs = VAEObjective(Bernoulli("threshold"), beta=0.5)(net, {"x": x}, generator=torch.Generator().manual_seed(7))
    eps = torch.randn((2, 2), generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    for i, (logits, kl) in enumerate(hand_terms(net, x, eps)):
        bits = [(v + 1) / 2 for v in x[i].tolist()]
        log_lik = sum(b * math.log(1 / (1 + math.exp(-l))) + (1 - b) * math.log(1 - 1 / (1 + math.exp(-l)))
                      for b, l in zip(bits, logits))
        assert logs["recon"][i].item() == pytest.approx(-log_lik, rel=1e-6)
        assert logs["kl"][i].item() == pytest.approx(kl, rel=1e-6)
        assert loss[i].item() == pytest.approx(-log_lik + 0.5 * kl, rel=1e-6)  # beta weighs the KL
        assert logs["neg_elbo"][i].item() == pytest.approx(-log_lik + kl, rel=1e-6)


def test_elbo_terms_equal_hand_computation_gaussian():
    net = tiny_linear_vae(2)
    x = torch.tensor([[0.2, -0.4, 0.9], [-1.0, 0.0, 0.5]], dtype=torch.float64)
    loss, logs = VAEObjective(Gaussian())(net, {"x": x}, generator=torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)  # the objective draws the dequantization, then eps
    x_deq = x + (torch.rand(x.shape, generator=g, dtype=torch.float64) - 0.5) * BIN_WIDTH
    eps = torch.randn((2, 2), generator=g, dtype=torch.float64)
    for i, (params, kl) in enumerate(hand_terms(net, x_deq, eps)):
        means, log_s = params[:3], params[3:]
        log_lik = sum(-0.5 * ((v - m) / math.exp(ls)) ** 2 - ls - 0.5 * math.log(2 * math.pi)
                      for v, m, ls in zip(x_deq[i].tolist(), means, log_s))
        assert logs["recon"][i].item() == pytest.approx(-log_lik, rel=1e-6)
        assert loss[i].item() == pytest.approx(-log_lik + kl, rel=1e-6)


@pytest.mark.parametrize("likelihood", [DiscretizedLogistic(), DiscretizedGaussian()])
def test_discretized_likelihoods_sum_to_one_over_the_256_bins(likelihood):
    bins = torch.arange(256, dtype=torch.float64) / 127.5 - 1
    for mean, log_s in [(0.0, -3.0), (0.93, -5.0), (-1.2, -1.0), (0.4, 1.0)]:
        params = torch.tensor([[mean, log_s]], dtype=torch.float64).expand(256, 2)[:, :, None]
        log_p = likelihood.log_prob(params, bins[:, None, None])
        assert torch.logsumexp(log_p, 0).item() == pytest.approx(0.0, abs=1e-6), (mean, log_s)


def test_kl_and_free_bits():
    mu, logvar = torch.tensor([[0.5, 0.0, 2.0]]), torch.tensor([[0.0, -1.0, 0.3]])
    expected = [0.125, 0.5 * (math.exp(-1) - 1 + 1), 0.5 * (4 + math.exp(0.3) - 1 - 0.3)]
    assert gaussian_kl(mu, logvar)[0].tolist() == pytest.approx(expected)
    kl_units = torch.tensor([[0.1, 2.0, 0.0], [0.3, 1.0, 0.05]], requires_grad=True)  # batch means .2 1.5 .025
    term = free_bits_kl(kl_units, 0.25)
    assert term.mean().item() == pytest.approx(0.25 + 1.5 + 0.25)  # sum_j max(floor, mean KL_j)
    term.sum().backward()
    assert kl_units.grad.tolist() == [[0.0, 1.0, 0.0], [0.0, 1.0, 0.0]]  # no push below the floor


def test_active_units_counts_units_whose_posterior_mean_varies():
    mu = torch.stack([torch.linspace(-1, 1, 50), torch.full((50,), 0.3), 0.05 * torch.linspace(-1, 1, 50)], 1)
    count, variance = active_units(mu)
    assert count == 1 and variance[0] > 0.01 and variance[1] == 0 and variance[2] < 0.01


# ---- likelihood bounds on probabilistic PCA ----------------------------------------------------
def ppca(dim=4, latent=2, s=0.5, q_inflate=1.5):
    """A linear-Gaussian VAE p(x|z) = N(Wz + b, s^2 I), with q = the exact posterior's mean and
    inflated diagonal variance, and its exact marginal p(x) = N(b, W W^T + s^2 I)."""
    g = torch.Generator().manual_seed(0)
    W, b = torch.randn(dim, latent, generator=g, dtype=torch.float64), torch.randn(dim, generator=g, dtype=torch.float64)
    net = LinearVAE(dim, latent, 2)
    M = W.T @ W + s**2 * torch.eye(latent, dtype=torch.float64)
    A = torch.linalg.solve(M, W.T)  # posterior mean = A (x - b)
    post_var = (s**2 * torch.linalg.inv(M)).diagonal()
    with torch.no_grad():
        net.encoder.weight.zero_()
        net.encoder.weight[:latent] = A
        net.encoder.bias.copy_(torch.cat([-A @ b, torch.log(q_inflate * post_var)]))
        net.decoder.weight.zero_()
        net.decoder.weight[:dim] = W
        net.decoder.bias.copy_(torch.cat([b, torch.full((dim,), math.log(s), dtype=torch.float64)]))
    marginal = torch.distributions.MultivariateNormal(b, W @ W.T + s**2 * torch.eye(dim, dtype=torch.float64))
    x = b + torch.randn(20, dim, generator=g, dtype=torch.float64) @ torch.linalg.cholesky(marginal.covariance_matrix).T
    return net, x, marginal.log_prob(x)


def ppca_elbo(net, x):
    """The ELBO of the linear-Gaussian model in closed form: E_q log N(x; Wz + b, s^2 I) - KL."""
    mu, logvar = net.encode(x)
    W, bias = net.decoder.weight[:x.shape[1]], net.decoder.bias
    b, log_s = bias[:x.shape[1]], bias[x.shape[1]:]
    residual = (x - mu @ W.T - b).square() + (logvar.exp() @ W.square().T)  # E_q (x - Wz - b)^2
    expected_log_lik = (-0.5 * residual / torch.exp(2 * log_s) - log_s - 0.5 * math.log(2 * math.pi)).sum(1)
    return expected_log_lik - gaussian_kl(mu, logvar).sum(1)


@torch.no_grad()
def test_iwae_bounds_are_ordered_in_expectation():
    net, x, log_px = ppca(q_inflate=3.0)
    elbo = ppca_elbo(net, x).mean().item()
    estimate = iwae_bound(net, Gaussian(), x, 5000, generator=torch.Generator().manual_seed(0)).elbo.mean().item()
    assert estimate == pytest.approx(elbo, abs=0.02)  # the mean log-weight estimates the ELBO
    means = {k: np.mean([iwae_bound(net, Gaussian(), x, k, generator=torch.Generator().manual_seed(s)).log_px.mean().item()
                         for s in range(20)]) for k in (1, 5, 50)}
    assert means[1] == pytest.approx(elbo, abs=0.15)  # IWAE_1 is the ELBO (400 draws: noisy)
    assert elbo + 0.1 < means[5] < means[50] <= log_px.mean().item() + 0.01, (elbo, means, log_px.mean())


@torch.no_grad()
def test_iwae_approaches_the_exact_ppca_likelihood_as_k_grows():
    net, x, log_px = ppca()
    gaps = {k: (log_px - iwae_bound(net, Gaussian(), x, k, generator=torch.Generator().manual_seed(1),
                                    max_batch=2000).log_px).abs().mean().item() for k in (1, 10, 100, 5000)}
    assert gaps[1] > gaps[10] > gaps[100] > gaps[5000] and gaps[5000] < 0.01, gaps


def test_slerp_and_linear_paths_hit_both_endpoints():
    za, zb = torch.tensor([3.0, 0.0]), torch.tensor([0.0, 1.0])
    for method in ("linear", "slerp"):
        path = interpolate_latents(za, zb, steps=5, method=method)
        assert torch.allclose(path[0], za) and torch.allclose(path[-1], zb)
    slerp = interpolate_latents(za, zb, steps=5, method="slerp")
    angles = torch.atan2(slerp[:, 1], slerp[:, 0])
    assert torch.allclose(angles.diff(), torch.full((4,), math.pi / 8), atol=1e-6)  # equal angles
    assert slerp.norm(dim=1).tolist() == pytest.approx([3.0, 2.5, 2.0, 1.5, 1.0])
    with pytest.raises(ConfigError, match="linear or slerp"):
        interpolate_latents(za, zb, steps=3, method="cubic")


# ---- training ----------------------------------------------------------------------------------
TINY_VAE = ["model.hidden=64", "model.latent_dim=8", "train.batch_size=50", "train.device=cpu",
            "train.log_every_images=500", "train.sample_every_images=100000", "vae.kl_warmup_images=0",
            "train.checkpoint_every_images=100000"]


def rows(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if "loss" in json.loads(line)]


def test_training_lowers_the_negative_elbo_and_logs_both_terms(tmp_path):
    train(load_config("mnist-vae-bernoulli", TINY_VAE + ["train.images=10000"]), tmp_path / "run")
    logged = rows(tmp_path / "run")
    assert {"recon", "kl", "neg_elbo", "kl_unit_min", "kl_units_above_0.01", "grad_norm_vae"} <= logged[0].keys()
    assert logged[-1]["neg_elbo"] < 0.75 * logged[0]["neg_elbo"], (logged[0]["neg_elbo"], logged[-1]["neg_elbo"])
    assert all(r["neg_elbo"] == pytest.approx(r["recon"] + r["kl"], rel=1e-5) for r in logged)


def test_free_bits_keeps_every_unit_above_the_floor(tmp_path):
    """beta = 4 collapses most units; free bits at 0.5 nats keeps each unit's KL near the floor
    (measured on held-out images: 0.45-0.48 per unit, against < 0.02 for 6 of 8 units without)."""
    common = TINY_VAE + ["train.images=30000", "vae.beta=4", "train.log_every_images=5000"]
    train(load_config("mnist-vae-bernoulli", common), tmp_path / "plain")
    train(load_config("mnist-vae-bernoulli", common + ["vae.free_bits=0.5"]), tmp_path / "free")
    x = load_dataset_x("mnist")[:200]
    kl = {}
    for name in ("plain", "free"):
        vae = genmodels.load(tmp_path / name, device="cpu")
        kl[name] = gaussian_kl(*vae.encode(x)).mean(0)
    assert (kl["plain"] < 0.05).sum() >= 4, kl["plain"]
    assert kl["free"].min() > 0.4, kl["free"]


def test_resume_equals_uninterrupted_run(tmp_path):
    common = TINY_VAE + ["vae.kl_warmup_images=400", "train.batch_size=20", "train.log_every_images=40",
                         "train.ema_rampup=0.5"]
    train(load_config("mnist-vae", common + ["model.base_channels=4", "model.hidden=16", "train.images=400"]), tmp_path / "a")
    train(load_config("mnist-vae", common + ["model.base_channels=4", "model.hidden=16", "train.images=200"]), tmp_path / "b")
    train(load_config("mnist-vae", common + ["model.base_channels=4", "model.hidden=16", "train.images=400"]),
          tmp_path / "b", resume=True)
    assert [r["loss"] for r in rows(tmp_path / "a")] == [r["loss"] for r in rows(tmp_path / "b")]
    # the warm-up resumed where it stopped: the last row averages the weights at 360 and 380 images
    assert rows(tmp_path / "b")[-1]["kl_weight"] == pytest.approx((360 + 380) / 2 / 400)
    for name in ("model.safetensors", "ema.safetensors"):
        a, b = load_file(tmp_path / "a" / name), load_file(tmp_path / "b" / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    with pytest.raises(ConfigError, match="'vae' section"):
        train(load_config("mnist-vae", common + ["model.base_channels=4", "model.hidden=16", "train.images=600",
                                                 "vae.beta=2"]), tmp_path / "b", resume=True)


# ---- the command line ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def digits_vae(tmp_path_factory):
    run = tmp_path_factory.mktemp("vae") / "digits"
    code = _cli(["train", "mnist-vae", "data.name=digits", "model.base_channels=8", "model.hidden=32",
                 "train.images=800", "train.batch_size=50", "train.device=cpu", "train.sample_every_images=400",
                 "--out", run])
    assert code == 0
    return run


def _cli(args):
    from genmodels.cli import main

    try:
        main(list(map(str, args)))
    except SystemExit as e:
        return e.code
    return 0


def test_cli_train_sample_interpolate_reconstruct_eval(digits_vae, tmp_path, capsys):
    assert sorted(p.name for p in (digits_vae / "samples").iterdir()) == ["000000400.png", "000000800.png"]
    code, out, err = run_cli(["sample", digits_vae, "--n", "12", "--out", tmp_path / "s.npz"], capsys)
    assert code == 0 and "ms per sample" in out, err
    assert np.load(tmp_path / "s.npz")["arr_0"].shape == (12, 8, 8, 1)
    vae = genmodels.load(digits_vae, device="cpu")
    assert isinstance(vae, VAEPipeline)
    # per-sample seeds: the same latents in any batch (matmul rounding may differ with the batch size)
    assert torch.allclose(vae.sample(5, seed=3), vae.sample(12, seed=0, batch_size=4)[3:8], atol=1e-6)
    Image.fromarray(np.full((8, 8), 200, np.uint8)).save(tmp_path / "a.png")
    code, out, err = run_cli(["interpolate", digits_vae, "--a", tmp_path / "a.png", "--b", "test:3", "--steps", "6",
                              "--out", tmp_path / "i.png"], capsys)
    assert code == 0 and "linear and slerp" in out, err
    assert Image.open(tmp_path / "i.png").size[0] > Image.open(tmp_path / "i.png").size[1] > 0
    code, out, err = run_cli(["reconstruct", digits_vae, "--n", "8", "--out", tmp_path / "r.png"], capsys)
    assert code == 0 and "reconstructions" in out, err
    code, out, err = run_cli(["eval", digits_vae, "--metrics", "fd_cnn,kid,prdc,nll", "--n", "100", "--seeds", "0,1",
                              "--nll-n", "30", "--nll-k", "50", "--json"], capsys)
    assert code == 0, err
    result = json.loads(out)
    assert result["nll_method"] == "iwae" and result["nll_k"] == 50 and "sampler" not in result
    # the IWAE_50 bound and ELBO of the first 30 test images, one draw per seed, averaged over seeds
    x = load_dataset_x("digits")[:30]
    bounds = [vae.iwae(x, k=50, generator=torch.Generator().manual_seed(seed)) for seed in (0, 1)]
    assert result["nll_nats"] == pytest.approx(-np.mean([b.log_px.mean().item() for b in bounds]), rel=1e-9)
    assert result["neg_elbo_nats"] == pytest.approx(-np.mean([b.elbo.mean().item() for b in bounds]), rel=1e-9)
    # the ELBO (a mean of log p(x, z) / q(z|x) over 100 draws of z per image) against E_q[-log p(x|z)]
    # + the closed-form KL: 0.03 apart, its standard error is 0.014 (log-weights' std 0.77)
    assert result["neg_elbo_nats"] == pytest.approx(closed_form_kl_neg_elbo(vae, x), abs=0.1)
    assert result["nll_bpd"] == pytest.approx(result["nll_nats"] / (64 * math.log(2)), rel=1e-9)
    # Burda et al.'s count on the same images; the two seeds sample different images
    assert result["active_units"] == (vae.encode(x)[0].double().var(0) > 0.01).sum().item()
    assert {"precision", "recall", "density", "coverage"} <= result.keys()
    assert result["fd_cnn"] > 0 and result["per_seed"][0]["fd_cnn"] != result["per_seed"][1]["fd_cnn"]
    code, out, err = run_cli(["report", digits_vae, "--device", "cpu"], capsys)
    assert code == 0 and "VAE on digits" in (digits_vae / "report.html").read_text(), err
    mu, logvar = vae.encode(load_dataset_x("digits")[:4])
    assert mu.shape == logvar.shape == (4, 32) and vae.decode(mu).shape == (4, 1, 8, 8)


@torch.no_grad()
def closed_form_kl_neg_elbo(vae, x, draws=400):
    """-ELBO = E_q[-log p(x|z)] (Monte Carlo, ``draws`` z per image) + KL(q(z|x) || N(0, I)) in
    closed form: no log q(z|x) or log p(z) evaluated, unlike the IWAE's log-weights."""
    mu, logvar = vae.encode(x)
    eps = torch.randn(draws, *mu.shape, generator=torch.Generator().manual_seed(5))
    z = (mu + torch.exp(0.5 * logvar) * eps).reshape(draws * len(x), -1)
    log_lik = vae.likelihood.log_prob(vae.net.decode(z), x.repeat(draws, 1, 1, 1)).double().reshape(draws, len(x))
    return -(log_lik.mean(0) - gaussian_kl(mu.double(), logvar.double()).sum(1)).mean().item()


def load_dataset_x(name):
    from genmodels.data import load_dataset

    return load_dataset(name, split="test").x


def test_cli_bad_input_names_the_problem(digits_vae, tmp_path, capsys):
    Image.fromarray(np.zeros((10, 12), np.uint8)).save(tmp_path / "big.png")
    code, _, err = run_cli(["interpolate", digits_vae, "--a", tmp_path / "big.png", "--b", "test:0"], capsys)
    assert_one_line_error(code, err, "big.png", "12x10", "8x8")
    code, _, err = run_cli(["interpolate", digits_vae, "--a", "test:9999", "--b", "test:0"], capsys)
    assert_one_line_error(code, err, "test:9999", "0..178")
    code, _, err = run_cli(["interpolate", digits_vae, "--a", tmp_path / "missing.png", "--b", "test:0"], capsys)
    assert_one_line_error(code, err, "missing.png", "does not exist")
    code, _, err = run_cli(["sample", digits_vae, "--sampler", "heun"], capsys)
    assert_one_line_error(code, err, "--sampler is a sample option of", "diffusion", "this is a vae run", "--temperature")
    code, _, err = run_cli(["train", "mnist-vae", "vae.likelihood=poisson", "--out", tmp_path / "r"], capsys)
    assert_one_line_error(code, err, "vae.likelihood", "bernoulli, gaussian, logistic")
    code, _, err = run_cli(["train", "mnist-vae", "model.network=unet", "--out", tmp_path / "r"], capsys)
    assert_one_line_error(code, err, "family 'vae'", "vae_mlp")
    code, _, err = run_cli(["train", "mnist-vae", "vae.free_bits=-1", "--out", tmp_path / "r"], capsys)
    assert_one_line_error(code, err, "vae.free_bits", ">= 0")
    with pytest.raises(DataError, match=r"shape \(1, 28, 28\) do not fit this VAE's \(1, 8, 8\)"):
        genmodels.load(digits_vae, device="cpu").encode(torch.zeros(2, 1, 28, 28))
