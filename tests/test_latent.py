"""Latent diffusion: a diffusion run on the cached latents of a frozen autoencoder run. The scale
factor over the whole training set, the latent cache, posterior draws, sampling (every sampler,
guidance, init images, inversion) decoded at the end, the composed-run checks, eval and the CLI."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

import genmodels
from genmodels.config import load_config
from genmodels.data import InfiniteBatches, load_dataset
from genmodels.data.datasets import Dataset
from genmodels.errors import CheckpointError, ConfigError
from genmodels.families.autoencoder import AutoencoderPipeline
from genmodels.families.latent import latent_std
from genmodels.samplers import SAMPLERS, generate
from genmodels.train.run import train
from tests.test_autoencoder import TINY_AE
from tests.test_cli import assert_one_line_error, run_cli

TINY_LDM = ["data.name=digits", "model.base_channels=16", "model.channel_mult=[1]", "model.num_res_blocks=1",
            "model.attn_resolutions=[]", "train.batch_size=32", "train.device=cpu", "train.images=3200",
            "train.log_every_images=640", "train.sample_every_images=3200", "train.warmup_images=0",
            "model.num_classes=auto", "diffusion.label_dropout=0.2"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("latent")
    train(load_config("fashion-ae", TINY_AE + ["train.images=3200", "ae.disc_start_images=1000000",
                                               "ae.perceptual=none"]), root / "ae")
    train(load_config("fashion-ldm", TINY_LDM + [f"latent.autoencoder={root / 'ae'}"]), root / "ldm")
    return root


def test_scale_factor_is_one_over_the_std_of_the_whole_training_set(runs):
    record = json.loads((runs / "ldm" / "config.json").read_text())
    scale = record["config"]["latent"]["scale_factor"]
    ae = genmodels.load(runs / "ae", device="cpu")
    train_x = load_dataset("digits", split="train").x
    latents = ae.encode(train_x)
    assert scale == pytest.approx(1 / latents.double().std().item(), rel=1e-5)
    assert 0.9 <= (latents * scale).std().item() <= 1.1
    # not a first batch's std: those differ from the whole set's
    assert abs(1 / latents[:32].std().item() - scale) > 1e-4
    assert record["data_shape"] == [1, 8, 8] and record["latent_shape"] == [2, 4, 4]
    assert set(record["bases"]) == {"latent.autoencoder"}


def test_latents_are_encoded_once_and_cached(runs, tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the encoder ran although the latents are cached")

    monkeypatch.setattr(AutoencoderPipeline, "posterior", refuse)
    overrides = TINY_LDM + [f"latent.autoencoder={runs / 'ae'}", "train.images=64"]
    train(load_config("fashion-ldm", overrides), tmp_path / "again")  # cache hit: no encoder call
    monkeypatch.setenv("GENMODELS_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(AssertionError, match="encoder ran"):
        train(load_config("fashion-ldm", overrides), tmp_path / "miss")


def test_posterior_draws_are_fresh_per_epoch_and_reproducible():
    x, std = torch.randn(8, 2, 2, 2), torch.rand(8, 2, 2, 2) + 0.5
    data = Dataset("latents", x, None, (), "image", x_std=std)
    a, b = InfiniteBatches(data, 8, seed=3), InfiniteBatches(data, 8, seed=3)
    first, again = next(a), next(b)
    torch.testing.assert_close(first["x"], again["x"])  # same seed, epoch, position: the same draw
    second = next(a)  # the next epoch: the same items, a new draw
    assert not torch.allclose(first["x"].sort(0).values, second["x"].sort(0).values)
    state = a.state_dict()
    resumed = InfiniteBatches(data, 8, seed=3)
    resumed.load_state_dict(state)
    torch.testing.assert_close(next(resumed)["x"], next(a)["x"])
    # the spread of the draws is x_std (zero means and one std, so the epochs' shuffling does not matter)
    spread = InfiniteBatches(Dataset("latents", torch.zeros(8, 2, 2, 2), None, (), "image",
                                     x_std=torch.full((8, 2, 2, 2), 0.7)), 8, seed=3)
    draws = torch.stack([next(spread)["x"] for _ in range(400)])
    assert draws.std(0).mean().item() == pytest.approx(0.7, rel=0.05)
    assert draws.mean().abs().item() < 0.02


def test_latent_std_adds_the_posterior_variance():
    mean, logvar = torch.randn(5000, 4) * 2, torch.full((5000, 4), -1.0)
    draws = mean + (0.5 * logvar).exp() * torch.randn(5000, 4)
    assert latent_std(mean, logvar, "mean") == pytest.approx(mean.double().std().item(), rel=1e-6)
    assert latent_std(mean, logvar, "posterior") == pytest.approx(draws.std().item(), rel=0.02)


def test_sampling_runs_on_latents_and_decodes(runs):
    pipe = genmodels.load(runs / "ldm", device="cpu")
    assert pipe.latent is not None and pipe.latent_shape == (2, 4, 4) and pipe.data_shape == (1, 8, 8)
    x = pipe.sample(6, seed=5, sampler="ddim", steps=8, progress=False)
    assert x.shape == (6, 1, 8, 8) and x.abs().max() <= 1
    cond = pipe.conditioning(6)
    z = generate(pipe.denoiser, pipe.path, shape=(2, 4, 4), seeds=range(5, 11), sampler="ddim", steps=8,
                 cond=cond or None)
    torch.testing.assert_close(x, pipe.latent.decode(z).clamp(-1, 1))  # what sample does, by hand
    ae = genmodels.load(runs / "ae", device="cpu")
    torch.testing.assert_close(pipe.latent.decode(z), ae.decode(z / pipe.latent.scale))


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
def test_every_sampler_works_in_latent_space(runs, sampler):
    pipe = genmodels.load(runs / "ldm", device="cpu")
    x = pipe.sample(3, seed=0, sampler=sampler, steps=4, progress=False)
    assert x.shape == (3, 1, 8, 8) and torch.isfinite(x).all()


def test_guidance_init_images_and_inversion_in_latent_space(runs):
    pipe = genmodels.load(runs / "ldm", device="cpu")
    guided = pipe.sample(4, seed=0, steps=6, labels=[1, 2, 3, 4], guidance=3.0, progress=False)
    assert guided.shape == (4, 1, 8, 8)
    test = load_dataset("digits", split="test").x[:4]
    # a little noise on the images' latents and back: close to the autoencoder's reconstruction
    edited = pipe.sample(4, seed=0, steps=20, init_images=test, strength=0.05, labels=0, guidance=1.0,
                         progress=False)
    recon = genmodels.load(runs / "ae", device="cpu").reconstruct(test)
    assert (edited - recon).abs().mean() < 0.5 * (edited - recon.flip(0)).abs().mean()
    noise, back, rmse = pipe.invert(test, steps=20, labels=[0, 1, 2, 3])
    assert noise.shape == (4, 2, 4, 4) and back.shape == (4, 1, 8, 8) and rmse < 0.2


def test_a_latent_run_has_no_image_likelihood(runs):
    pipe = genmodels.load(runs / "ldm", device="cpu")
    with pytest.raises(ConfigError, match="no image likelihood"):
        pipe.nll_scores(load_dataset("digits", split="test").x[:2])


def test_a_changed_autoencoder_is_refused(runs, tmp_path):
    import shutil

    ae, ldm = tmp_path / "ae", tmp_path / "ldm"
    shutil.copytree(runs / "ae", ae)
    train(load_config("fashion-ldm", TINY_LDM + [f"latent.autoencoder={ae}", "train.images=64"]), ldm)
    genmodels.load(ldm, device="cpu")
    weights = load_file(ae / "ema.safetensors")
    key = next(iter(weights))
    weights[key] = weights[key] + 1
    save_file(weights, ae / "ema.safetensors")
    with pytest.raises(CheckpointError, match="latent.autoencoder"):
        genmodels.load(ldm, device="cpu")


def test_resume_keeps_the_scale_factor(runs, tmp_path):
    overrides = TINY_LDM + [f"latent.autoencoder={runs / 'ae'}", "train.log_every_images=64"]
    train(load_config("fashion-ldm", overrides + ["train.images=128"]), tmp_path / "r")
    first = json.loads((tmp_path / "r" / "config.json").read_text())["config"]["latent"]["scale_factor"]
    train(load_config("fashion-ldm", overrides + ["train.images=256"]), tmp_path / "r", resume=True)
    assert json.loads((tmp_path / "r" / "config.json").read_text())["config"]["latent"]["scale_factor"] == first


def test_cli_sample_eval_on_a_latent_run_and_bad_input(runs, tmp_path, capsys):
    code, out, err = run_cli(["sample", runs / "ldm", "--n", "8", "--steps", "5", "--class", "3",
                              "--out", tmp_path / "s.png"], capsys)
    assert code == 0 and (tmp_path / "s.png").is_file(), err
    code, out, err = run_cli(["eval", runs / "ldm", "--n", "64", "--seeds", "0", "--steps", "5",
                              "--metrics", "fd_cnn,kid"], capsys)
    assert code == 0 and "fd_cnn" in out, err
    code, out, err = run_cli(["train", "fashion-ldm", f"latent.autoencoder={runs / 'ae'}", "data.name=mnist",
                              "--out", tmp_path / "bad"], capsys)
    assert_one_line_error(code, err, "latent.autoencoder", "(1, 8, 8)", "data.image_size")
    code, out, err = run_cli(["train", "fashion-ldm", f"latent.autoencoder={runs / 'ldm'}", "data.name=digits",
                              "--out", tmp_path / "bad2"], capsys)
    assert_one_line_error(code, err, "must be an autoencoder run")
