"""The GAN family on the shared trainer: it learns (8 gaussians, edges -> MNIST), checkpoints,
resumes exactly, reloads, samples per seed, and the CLI drives it."""

import json

import pytest
import torch

import genmodels
from genmodels.cli import main
from genmodels.config import load_config
from genmodels.data import TOY_DISTRIBUTIONS
from genmodels.errors import ConfigError
from genmodels.metrics.toy import mode_coverage
from genmodels.train.run import prepare, train

QUIET = ["train.device=cpu", "train.sample_every_images=100000000", "train.checkpoint_every_images=100000000"]


def rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    """toy-gan as shipped (non-saturating + R1, 1,000 steps of 256)."""
    run_dir = tmp_path_factory.mktemp("gan") / "toy"
    torch.set_num_threads(1)  # tiny MLPs: faster on one thread
    try:
        train(load_config("toy-gan", QUIET), run_dir)
    finally:
        torch.set_num_threads(2)
    return run_dir


def test_non_saturating_with_r1_covers_the_eight_modes(toy_run):
    dist = TOY_DISTRIBUTIONS["8gaussians"]
    x = genmodels.load(toy_run, device="cpu").sample(2000, seed=0)
    m = mode_coverage(x, dist.modes, dist.mode_std)
    # measured 8/8 modes with 0.78-0.88 of samples within 3 std (seeds 0, 1); an untrained G
    # puts its points in a blob around the origin, 0 modes
    assert m.covered >= 7, m
    assert m.high_quality > 0.5, m


def test_gan_logs_what_practitioners_watch(toy_run):
    row = rows(toy_run)[-1]
    for key in ("loss_D", "loss_G", "d_real", "d_fake", "grad_norm_D", "grad_norm_G", "r1"):
        assert key in row and row[key] == row[key], (key, row)
    assert row["d_real"] > row["d_fake"]  # D tells them apart, a little


def test_samples_depend_only_on_their_seed(toy_run):
    pipe = genmodels.load(toy_run, device="cpu")
    a = pipe.sample(10, seed=5, batch_size=3)
    b = pipe.sample(4, seed=7, batch_size=64)
    torch.testing.assert_close(a[2:6], b)
    assert pipe.sample(3, seed=5, truncation=0.5).abs().max() < 10
    with pytest.raises(ConfigError, match="not class-conditional"):
        pipe.sample(2, labels=1)


def test_resume_equals_the_uninterrupted_run(tmp_path):
    base = QUIET + ["train.batch_size=64", "gan.n_critic=2", "train.log_every_images=64"]
    train(load_config("toy-gan", base + ["train.images=640"]), tmp_path / "full")
    train(load_config("toy-gan", base + ["train.images=320"]), tmp_path / "half")
    cfg = load_config("toy-gan", base + ["train.images=640"])
    prepare(cfg, tmp_path / "half", resume=True).fit()
    full = genmodels.load(tmp_path / "full", device="cpu", weights="model").sample(8, seed=0)
    resumed = genmodels.load(tmp_path / "half", device="cpu", weights="model").sample(8, seed=0)
    torch.testing.assert_close(full, resumed)
    torch.testing.assert_close(genmodels.load(tmp_path / "full", device="cpu").sample(8, seed=0),
                               genmodels.load(tmp_path / "half", device="cpu").sample(8, seed=0))
    # n_critic = 2: G's loss is logged on every other step, D's on each
    assert all("loss_G" in r for r in rows(tmp_path / "full") if r.get("step", 0) % 2 == 0)


def test_pix2pix_learns_edges_to_mnist(tmp_path):
    cfg = load_config("edges2mnist-pix2pix", QUIET + [
        "train.batch_size=16", "train.images=3200", "train.log_every_images=320", "model.base_channels=8",
        "gan.discriminator.base_channels=8", "train.lr=1e-3"])
    train(cfg, tmp_path / "p2p")
    l1 = [r["l1"] for r in rows(tmp_path / "p2p") if "l1" in r]
    # the first 20 steps vs the last: measured 0.55 -> 0.17 (mean |G(edges) - x| in [-1, 1] units)
    assert l1[-1] < 0.6 * l1[0], l1
    pipe = genmodels.load(tmp_path / "p2p", device="cpu")
    from genmodels.data import load_dataset

    test = load_dataset("edges:mnist", split="test")
    out = pipe.translate(test.cond["image"][:64])
    err = (out - test.x[:64]).abs().mean().item()
    blank = (-torch.ones_like(test.x[:64]) - test.x[:64]).abs().mean().item()
    assert err < 0.7 * blank, (err, blank)  # better than an all-black guess on unseen digits
    with pytest.raises(ConfigError, match="take"):
        pipe.translate(torch.zeros(1, 3, 28, 28))
    # sample() translates its inputs: the test split's first n, or the given ones (one for all)
    torch.testing.assert_close(pipe.sample(3), pipe.translate(test.cond["image"][:3]))
    one = pipe.sample(3, cond={"image": test.cond["image"][5:6]})
    assert one.shape == (3, 1, 28, 28) and torch.equal(one[0], one[2])
    # the CLI: an edge-map PNG, and a digit PNG whose edges it takes itself
    from genmodels.images import save_images

    save_images(test.cond["image"][:1], tmp_path / "edges")
    save_images(test.x[:1], tmp_path / "digit")
    for name, extra in (("edges", []), ("digit", ["--edges"])):
        png = next((tmp_path / name).glob("*.png"))
        main(["translate", str(tmp_path / "p2p"), "--input", str(png), *extra, "--out", str(tmp_path / f"{name}-out.npz")])
    from genmodels.images import load_image_set

    a, b = load_image_set(tmp_path / "edges-out.npz"), load_image_set(tmp_path / "digit-out.npz")
    # Sobel of the saved digit is the saved edge map up to 8-bit rounding, and so are the outputs
    assert (a - b).abs().mean() < 0.05 and (a - out[:1]).abs().mean() < 0.05


def test_config_errors_name_the_field(tmp_path):
    with pytest.raises(ConfigError, match="gan.loss"):
        load_config("toy-gan", ["gan.loss=wgan-gp"])
    with pytest.raises(ConfigError, match="needs image data"):
        prepare(load_config("mnist-dcgan", QUIET + ["data.name=8gaussians"]), tmp_path / "x")
    with pytest.raises(ConfigError, match="paired data"):
        prepare(load_config("edges2mnist-pix2pix", QUIET + ["data.name=mnist"]), tmp_path / "y")


def test_cli_trains_samples_and_translates(tmp_path, capsys):
    run = tmp_path / "cgan"
    main(["train", "mnist-cgan", "--out", str(run), "train.images=64", "train.batch_size=32",
          "model.base_channels=8", "gan.discriminator.base_channels=8", *QUIET])
    main(["sample", str(run), "--n", "8", "--class", "3", "--truncation", "0.7", "--out", str(tmp_path / "s.png")])
    assert (tmp_path / "s.png").is_file()
    main(["sample", str(run), "--class", "all", "--per-class", "2", "--out", str(tmp_path / "all.png")])
    assert "grid of 20 samples" in capsys.readouterr().out


def test_stylegan_and_progressive_runs_train_and_sample(tmp_path):
    tiny = QUIET + ["train.batch_size=8", "train.images=48", "data.name=mnist"]
    train(load_config("fashion-stylegan", tiny + ["model.base_channels=4", "model.w_dim=8", "gan.z_dim=8",
                                                  "gan.discriminator.base_channels=4"]), tmp_path / "style")
    main(["sample", str(tmp_path / "style"), "--mix", "3,8", "--psi", "0.7", "--out", str(tmp_path / "mix.png")])
    pipe = genmodels.load(tmp_path / "style", device="cpu")
    strip = pipe.style_mixing(3, 8)
    torch.testing.assert_close(strip[0:1], pipe.sample(1, seed=3))
    torch.testing.assert_close(strip[-1:], pipe.sample(1, seed=8))
    assert not torch.allclose(strip[1], strip[0])
    with pytest.raises(ConfigError, match="do not apply"):
        pipe.sample(2, steps=10)
    grow = ["model.progressive=true", "model.norm=pixel", "model.equalized_lr=true", "gan.grow_images=16",
            "gan.discriminator.progressive=true", "gan.discriminator.equalized_lr=true",
            "model.base_channels=4", "gan.discriminator.base_channels=4", "gan.z_dim=8"]
    train(load_config("mnist-dcgan", tiny + grow), tmp_path / "grow")
    pipe = genmodels.load(tmp_path / "grow", device="cpu")
    # 48 images at 16 per stage: stable 7x7, fade to 14, stable 14 -> G's buffers say so
    assert int(pipe.net.stage) == 1 and float(pipe.net.alpha) == 1.0
    x = pipe.sample(2, seed=0)
    torch.testing.assert_close(x, torch.nn.functional.interpolate(x[:, :, ::2, ::2], scale_factor=2.0))


@pytest.mark.slow
@pytest.mark.skipif(not __import__("os").environ.get("GENMODELS_SLOW_TESTS"),
                    reason="trains mnist-cgan for 4 minutes; set GENMODELS_SLOW_TESTS=1 (1-minute runs "
                           "scored 11.6 % and 13.0 %, not separable from chance at n = 500)")
def test_conditional_gan_samples_are_their_class_above_chance(tmp_path):
    """mnist-cgan trained 4 minutes: the evaluation CNN reads 1,000 samples (100 per class) as
    their requested class far above the 10 % of chance (3 standard errors: 13 %). Measured:
    19.8 % (docs/BENCHMARKS.md)."""
    from genmodels.evaluation import evaluate_run

    train(load_config("mnist-cgan", ["train.minutes=4", "train.device=cpu"]), tmp_path / "run")
    result = evaluate_run(tmp_path / "run", metrics="cacc", n=1000, seeds=[0], progress=False)
    assert result.as_json()["cacc"] > 0.13, result.as_json()
