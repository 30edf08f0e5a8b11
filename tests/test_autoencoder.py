"""The autoencoder family: shapes, the KL's closed form, Esser et al.'s adaptive weight, the two
training bugs of diffusers' AutoencoderKL script (perceptual term without gradient, a discriminator
that never steps), learning on digits, VQ code usage, the pipeline and the CLI."""

import json
import math

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import genmodels
from genmodels.config import load_config
from genmodels.data import load_dataset
from genmodels.errors import ConfigError
from genmodels.families.autoencoder import AutoencoderPipeline, psnr
from genmodels.nn.autoencoder import Autoencoder, Posterior
from genmodels.nn.gan import PatchDiscriminator
from genmodels.objectives.autoencoder import AutoencoderObjective, FeatureMatching, adaptive_weight
from genmodels.train.run import train
from tests.test_cli import assert_one_line_error, run_cli

# digits (8x8): a 2 x 4 x 4 latent at f = 2, seconds per run
TINY_AE = ["data.name=digits", "model.base_channels=8", "model.channel_mult=[1, 2]", "latent.factor=2",
           "latent.channels=2", "train.batch_size=32", "train.device=cpu", "train.log_every_images=320",
           "train.sample_every_images=100000", "train.warmup_images=0", "train.lr=3e-3",
           "train.ema_halflife_images=500", "ae.perceptual=discriminator"]


def rows(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if "loss" in json.loads(line)]


@pytest.mark.parametrize("kind", ["kl", "vq"])
@pytest.mark.parametrize("size,factor,latent", [(64, 2, 32), (64, 4, 16), (64, 8, 8), (28, 4, 7)])
def test_latent_shape_follows_the_factor(kind, size, factor, latent):
    ae = Autoencoder(channels=3, image_size=size, latent_channels=4, factor=factor, kind=kind, base_channels=8,
                     codebook_size=16)
    out = ae(torch.randn(2, 3, size, size))
    assert out.z.shape == (2, 4, latent, latent) and ae.latent_shape == (4, latent, latent)
    assert out.recon.shape == (2, 3, size, size) and out.reg.shape == (2,)
    assert ae.decode(out.z).shape == (2, 3, size, size)


def test_bad_factor_and_size_are_refused():
    with pytest.raises(ConfigError, match="power of two"):
        Autoencoder(factor=3)
    with pytest.raises(ConfigError, match="not divisible"):
        Autoencoder(image_size=28, factor=8)


def test_kl_equals_torch_distributions():
    mean, logvar = torch.randn(3, 4, 2, 2), torch.randn(3, 4, 2, 2)
    q = torch.distributions.Normal(mean, (0.5 * logvar).exp())
    p = torch.distributions.Normal(torch.zeros_like(mean), torch.ones_like(mean))
    expected = torch.distributions.kl_divergence(q, p).flatten(1).sum(1)
    torch.testing.assert_close(Posterior(mean, logvar).kl(), expected, rtol=1e-5, atol=1e-5)


def test_adaptive_weight_is_the_ratio_of_gradient_norms():
    """rec = sum((w a - t)^2), gan = sum(c w): gradients 2 a (w a - t) and c in closed form."""
    w = nn.Parameter(torch.tensor([0.5, -1.0, 2.0]))
    a, t, c = torch.tensor([1.0, 2.0, -1.0]), torch.tensor([0.0, 1.0, 1.0]), torch.tensor([0.3, -0.4, 1.2])
    rec, gan = (w * a - t).square().sum(), (c * w).sum()
    expected = (2 * a * (w.detach() * a - t)).norm() / (c.norm() + 1e-4)
    torch.testing.assert_close(adaptive_weight(rec, gan, w), expected)
    # a vanishing GAN gradient is clamped, not infinite
    assert adaptive_weight((w * a - t).square().sum(), (0 * w).sum(), w).item() == pytest.approx(1e4)


def test_perceptual_term_trains_the_autoencoder():
    """diffusers' bug: the perceptual term under no_grad trains nothing. Here it changes the
    autoencoder's gradient, and its own gradient on the reconstruction is non-zero."""
    torch.manual_seed(0)
    ae = Autoencoder(channels=1, image_size=8, latent_channels=2, factor=2, base_channels=8)
    D = PatchDiscriminator(channels=1, cond_channels=0, image_size=8, base_channels=8)
    critic = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU())
    perceptual = FeatureMatching(critic.requires_grad_(False), name="test")
    x = torch.rand(4, 1, 8, 8) * 2 - 1
    recon = (x + 0.3 * torch.randn_like(x)).requires_grad_(True)
    (g,) = torch.autograd.grad(perceptual(x, recon).sum(), recon)
    assert g.abs().sum() > 0

    def grads(weight):
        objective = AutoencoderObjective(perceptual=perceptual, perceptual_weight=weight, disc_weight=0)
        ae.zero_grad()
        loss, logs = objective.ae_loss(ae, D, {"x": x}, generator=torch.Generator().manual_seed(1),
                                       last_layer=ae.last_layer)
        loss.mean().backward()
        return torch.cat([p.grad.flatten() for p in ae.parameters() if p.grad is not None]), logs

    without, _ = grads(0.0)
    with_term, logs = grads(1.0)
    assert "perceptual" in logs and logs["perceptual"].mean() > 0
    assert (with_term - without).abs().max() > 1e-6
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in critic.parameters())  # the critic is frozen


def test_feature_cnn_perceptual_term_in_training(tmp_path):
    """ae.perceptual=feature_cnn: the dataset feature CNN's features (digits' CNN), frozen."""
    train(load_config("fashion-ae", TINY_AE + ["train.images=128", "ae.perceptual=feature_cnn",
                                               "train.log_every_images=64"]), tmp_path / "run")
    logged = rows(tmp_path / "run")
    assert all(r["perceptual"] > 0 for r in logged)
    with pytest.raises(ConfigError, match="ae.perceptual=discriminator"):
        train(load_config("fashion-ae", TINY_AE + ["train.images=64", "ae.perceptual=feature_cnn",
                                                   "data.name=edges:mnist"]), tmp_path / "bad")


def test_feature_matching_is_zero_for_equal_images_and_matches_channels():
    critic = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 64, 2), nn.ReLU())
    perceptual = FeatureMatching(critic, name="rgb", size=8, channels=3)
    x = torch.rand(2, 1, 16, 16)
    assert perceptual(x, x).abs().max() == 0  # grey 16 px in, RGB 8 px seen; the Linear after Flatten unused
    assert perceptual(x, x.flip(-1)).min() > 0


def test_unconditional_patch_discriminator_refuses_conditioning():
    D = PatchDiscriminator(channels=3, cond_channels=0, image_size=16, base_channels=4)
    assert D(torch.randn(2, 3, 16, 16)).shape == (2, 1, 4, 4) and D.cond_keys == frozenset()
    with pytest.raises(ValueError, match="does not read"):
        D(torch.randn(2, 3, 16, 16), {"image": torch.randn(2, 3, 16, 16)})


def test_discriminator_steps_in_its_phase_only_after_its_start(tmp_path):
    """diffusers' second bug: a discriminator optimizer that never steps. D's weights move once
    the GAN terms are on, and stay at their initial values before disc_start_images."""
    common = TINY_AE + ["train.images=320", "train.log_every_images=160"]
    train(load_config("fashion-ae", common + ["ae.disc_start_images=1000000"]), tmp_path / "late")
    train(load_config("fashion-ae", common + ["ae.disc_start_images=160"]), tmp_path / "early")
    late, early = load_file(tmp_path / "late" / "model.safetensors"), load_file(tmp_path / "early" / "model.safetensors")
    d_keys = [k for k in late if k.startswith("D.")]
    assert d_keys
    init = genmodels.families.get_family("autoencoder")
    cfg = genmodels.families.load_run(tmp_path / "late", device="cpu").config
    torch.manual_seed(cfg.train.seed)  # prepare() draws the weights right after this seed
    built = init.build(cfg, cfg.model.options)
    assert all(torch.equal(late[k], built["D"].state_dict()[k[2:]]) for k in d_keys)  # never stepped
    assert any(not torch.equal(late[k], early[k]) for k in d_keys)  # stepped in its phase
    late_rows, early_rows = rows(tmp_path / "late"), rows(tmp_path / "early")
    assert not any("d_loss" in r for r in late_rows)
    assert "d_loss" not in early_rows[0] and {"d_loss", "g_loss", "adaptive_weight"} <= early_rows[-1].keys()
    assert early_rows[-1]["adaptive_weight"] > 0


@pytest.fixture(scope="module")
def digits_ae(tmp_path_factory):
    run = tmp_path_factory.mktemp("ae") / "digits"
    # the GAN and perceptual terms are tested above; here plain L1 + KL keeps the fixture fast
    train(load_config("fashion-ae", TINY_AE + ["train.images=6400", "ae.disc_start_images=1000000",
                                               "ae.perceptual=none"]), run)
    return run


def test_autoencoder_learns_to_reconstruct_digits(digits_ae):
    """Held-out digits: about 21 dB after 6,400 images (measured), against about 8 dB untrained."""
    ae = genmodels.load(digits_ae, device="cpu")
    assert isinstance(ae, AutoencoderPipeline) and ae.latent_shape == (2, 4, 4)
    test = load_dataset("digits", split="test")
    scores = ae.reconstruction_scores(test.x)
    assert scores["psnr"] > 18, scores
    assert scores["psnr"] == pytest.approx(psnr(test.x, ae.reconstruct(test.x)).mean().item())
    untrained = AutoencoderPipeline(None, ae.config, Autoencoder(**ae.config.model.options).eval(), ae.data_shape, (),
                                    torch.device("cpu"))
    assert scores["psnr"] > untrained.reconstruction_scores(test.x)["psnr"] + 6
    assert {"rec", "kl", "latent_std", "grad_norm_ae"} <= rows(digits_ae)[0].keys()


def test_sample_is_the_reconstruction_of_held_out_images(digits_ae):
    ae = genmodels.load(digits_ae, device="cpu")
    test = load_dataset("digits", split="test")
    torch.testing.assert_close(ae.sample(5), ae.reconstruct(test.x[:5]))
    with pytest.raises(ConfigError, match="no labels"):
        ae.sample(2, labels=1)
    with pytest.raises(ConfigError, match="do\\(es\\) not apply"):
        ae.sample(2, steps=10)
    with pytest.raises(ConfigError, match="latents must have shape"):
        ae.decode(torch.zeros(1, 3, 4, 4))


def test_vq_autoencoder_logs_code_usage_and_decodes_its_codes(tmp_path):
    train(load_config("mnist-vqae", TINY_AE + ["train.images=1600", "ae.codebook_size=32"]), tmp_path / "vq")
    logged = rows(tmp_path / "vq")
    assert {"commit", "perplexity", "code_usage"} <= logged[-1].keys()
    assert 0 < logged[-1]["code_usage"] <= 1 and logged[-1]["perplexity"] >= 1
    ae = genmodels.load(tmp_path / "vq", device="cpu")
    x = load_dataset("digits", split="test").x[:6]
    codes = ae.codes(x)
    assert codes.shape == (6, 4, 4) and codes.max() < 32
    torch.testing.assert_close(ae.reconstruct(x), ae.net.decode(ae.net.quantizer.lookup(codes)).clamp(-1, 1))
    scores = ae.reconstruction_scores(x)
    assert 0 < scores["code_usage"] <= 1


def test_cli_reconstruct_and_eval_an_autoencoder_run(digits_ae, tmp_path, capsys):
    code, out, err = run_cli(["reconstruct", digits_ae, "--n", "8", "--out", tmp_path / "r.png"], capsys)
    assert code == 0 and "PSNR" in out and (tmp_path / "r.png").is_file(), err
    code, out, err = run_cli(["eval", digits_ae, "--n", "100", "--seeds", "0"], capsys)
    assert code == 0, err
    for metric in ("psnr", "rfd_cnn", "latent_std", "fd_cnn"):
        assert metric in out, out
    code, out, err = run_cli(["train", "fashion-ae", "data.name=digits", "model.network=unet", "--out",
                              tmp_path / "bad"], capsys)
    assert_one_line_error(code, err, "model.network=autoencoder")


def test_psnr_closed_form():
    x = torch.zeros(1, 1, 4, 4)
    assert psnr(x, x + 0.2).item() == pytest.approx(10 * math.log10(1 / 0.01))  # error 0.1 in [0, 1]
