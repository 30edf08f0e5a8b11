"""The evaluation protocol end to end: feature CNNs (accuracy, determinism, cache), the sanity
ordering of fd_cnn on MNIST, `genmodels eval` on runs and on image sets, and its errors."""

import json
import os
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from genmodels.config import load_config
from genmodels.data import load_dataset
from genmodels.errors import DataError
from genmodels.images import save_images, save_npz
from genmodels.metrics import fd, feature_net
from genmodels.metrics.features import (_read_info, dataset_feature_cnn, feature_cnn_path,
                                        weights_hash)
from genmodels.train.run import train
from tests.conftest import TINY_UNET
from tests.test_cli import assert_one_line_error, run_cli

TINY_DIGITS = TINY_UNET + ["model.attn_resolutions=[]", "data.name=digits", "train.images=64", "train.batch_size=16",
                           "train.device=cpu", "sample.steps=5", "train.eval_every_images=32", "train.eval_n=20"]


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("eval") / "digits"
    train(load_config("mnist-ddpm", TINY_DIGITS), run)
    return run


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("eval") / "toy"
    train(load_config("toy-ddpm", ["train.images=512", "train.device=cpu", "sample.steps=10",
                                   "train.eval_every_images=256", "train.eval_n=100"]), run)
    return run


# ---- feature networks ------------------------------------------------------------------
def test_digits_feature_cnn_is_deterministic_cached_and_rebuilt_when_stale(monkeypatch):
    net, info = dataset_feature_cnn("digits", rebuild=True, progress=False)
    again, _ = dataset_feature_cnn("digits", rebuild=True, progress=False)
    assert weights_hash(net) == weights_hash(again)
    assert info["test_accuracy"] >= 0.95
    path = feature_cnn_path("digits")
    assert _read_info(path)["data_sha256"] == info["data_sha256"]
    built = []
    import genmodels.metrics.features as features

    real_build = features.build_feature_cnn
    monkeypatch.setattr(features, "build_feature_cnn",
                        lambda *a, **k: built.append(1) or real_build(*a, **k))
    feature_net("digits", progress=False)
    assert built == []  # a valid cache file is loaded, not retrained
    monkeypatch.setattr(features, "data_hash", lambda dataset: "changed data")
    feature_net("digits", progress=False)
    assert built == [1]


def test_a_damaged_feature_cnn_file_is_rebuilt_in_the_cache_and_named_elsewhere(monkeypatch, tmp_path):
    import genmodels.metrics.features as features

    monkeypatch.setenv("GENMODELS_CACHE", str(tmp_path))
    net = features.FeatureCNN(image_size=8)
    monkeypatch.setattr(features, "build_feature_cnn",
                        lambda *a, **k: (net, {"test_accuracy": 0.99, "data_sha256": "x", "config": net.config}))
    cached = feature_cnn_path("digits")
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"cut")
    assert feature_net("digits", progress=False).module is net
    assert _read_info(cached)["data_sha256"] == "x"  # rewritten
    (tmp_path / "mine.safetensors").write_bytes(cached.read_bytes()[:100])
    with pytest.raises(DataError, match="mine.safetensors is not a genmodels feature CNN file"):
        feature_net(str(tmp_path / "mine.safetensors"), progress=False)


def test_a_feature_cnn_below_its_accuracy_target_is_refused(monkeypatch, tmp_path):
    import genmodels.metrics.features as features

    monkeypatch.setenv("GENMODELS_CACHE", str(tmp_path))
    net = features.FeatureCNN(image_size=8)
    monkeypatch.setattr(features, "build_feature_cnn",
                        lambda *a, **k: (net, {"test_accuracy": 0.5, "data_sha256": "x"}))
    with pytest.raises(DataError, match="50.0 % test accuracy, below its 95 % target"):
        feature_net("digits", progress=False)
    assert not feature_cnn_path("digits").exists()


@pytest.fixture(scope="module")
def mnist_net():
    return feature_net("mnist", progress=False)


@pytest.mark.slow
def test_mnist_feature_cnn_accuracy_and_the_sanity_ordering(mnist_net):
    """fd_cnn(test vs train) < fd_cnn(test vs blurred train) < fd_cnn(test vs noise)."""
    assert mnist_net.info["test_accuracy"] >= 0.97
    test = load_dataset("mnist", split="test").x
    train_x = load_dataset("mnist", split="train").x[:2000]
    blurred = F.avg_pool2d(train_x, 3, stride=1, padding=1, count_include_pad=False)
    noise = torch.rand(train_x.shape, generator=torch.Generator().manual_seed(0)) * 2 - 1
    f = mnist_net.features
    ref = f(test)
    scores = [fd(ref, f(x)) for x in (train_x, blurred, noise)]
    assert scores[0] < scores[1] < scores[2], scores
    assert scores[0] < 0.2 * scores[1]


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("GENMODELS_SLOW_TESTS"),
                    reason="trains the Fashion CNN (~60 s); set GENMODELS_SLOW_TESTS=1. Every build "
                           "also refuses to cache a network below its accuracy target")
def test_fashion_feature_cnn_reaches_90_percent():
    from genmodels.data.datasets import FASHION_DIR

    if not FASHION_DIR.is_dir():
        pytest.skip("Fashion-MNIST is not installed")
    assert feature_net("fashion", progress=False).info["test_accuracy"] >= 0.90


# ---- genmodels eval RUN_DIR --------------------------------------------------------------
def test_eval_run_json_is_deterministic_and_logged(digits_run, capsys):
    args = ["eval", digits_run, "--metrics", "fd_cnn,kid,prdc,cs,nll", "--n", "40", "--seeds", "0,1",
            "--nll-n", "4", "--nll-steps", "5", "--json"]
    code, out, err = run_cli(args, capsys)
    assert code == 0, err
    result = json.loads(out)
    for key in ("fd_cnn", "kid", "kid_std", "precision", "recall", "density", "coverage", "cs", "nll_bpd"):
        assert isinstance(result[key], float), key
        assert key in result["std"]
    assert result["features"] == "digits-CNN" and result["reference"].startswith("digits all (1797")
    assert len(result["per_seed"]) == 2 and result["per_seed"][0] != result["per_seed"][1]
    assert 0 < result["nll_bpd"] < 100
    code, out2, _ = run_cli(args, capsys)
    assert json.loads(out2)["per_seed"] == result["per_seed"]  # fixed seeds: the same numbers
    rows = [json.loads(line) for line in (digits_run / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if r.get("eval") == "full"]
    assert len(evals) == 2 and evals[0]["fd_cnn"] == result["fd_cnn"] and evals[0]["images"] == 64


def test_eval_run_table(digits_run, capsys):
    code, out, err = run_cli(["eval", digits_run, "--metrics", "fd_cnn", "--n", "20", "--seeds", "3",
                              "--no-log"], capsys)
    assert code == 0, err
    assert "features: digits-CNN" in out and "fd_cnn" in out


def test_eval_toy_run(toy_run, capsys):
    code, out, err = run_cli(["eval", toy_run, "--metrics", "w1,w2,mmd,modes,loglik,nll", "--n", "200",
                              "--seeds", "0", "--nll-n", "8", "--json"], capsys)
    assert code == 0, err
    result = json.loads(out)
    for key in ("w1", "w2", "mmd", "modes_covered", "high_quality", "loglik", "loglik_data", "nll"):
        assert key in result, key
    assert result["modes"] == 8 and result["w1"] <= result["w2"] + 1e-12  # W1 <= W2 (Jensen)


# ---- the trainer's proxy rows ------------------------------------------------------------
def test_trainer_writes_proxy_rows(digits_run, toy_run):
    def proxy_rows(run):
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        return [r for r in rows if r.get("eval") == "proxy"]

    rows = proxy_rows(digits_run)
    assert [r["images"] for r in rows] == [32, 64]
    assert all(r["n"] == 20 and r["fd_cnn"] > 0 and "kid" in r for r in rows)
    rows = proxy_rows(toy_run)
    assert [r["images"] for r in rows] == [256, 512] and all(r["w2"] > 0 and "mmd" in r for r in rows)


# ---- genmodels eval --real --fake --------------------------------------------------------
def test_eval_image_sets_from_npz_and_folder(tmp_path, capsys):
    real = load_dataset("digits", split="test").x
    save_npz(real, tmp_path / "real.npz")
    save_images(real, tmp_path / "same")
    save_images(torch.flip(real, dims=[3]), tmp_path / "mirrored")
    code, out, err = run_cli(["eval", "--real", tmp_path / "real.npz", "--fake", tmp_path / "same", "--json"], capsys)
    assert code == 0, err
    same = json.loads(out)
    assert same["features"] == "digits-CNN" and same["n_real"] == same["n_fake"] == 179
    assert same["fd_cnn"] == pytest.approx(0, abs=1e-6) and same["precision"] == 1.0
    code, out, err = run_cli(["eval", "--real", tmp_path / "real.npz", "--fake", tmp_path / "mirrored",
                              "--features", "digits", "--metrics", "fd_cnn,kid"], capsys)
    assert code == 0, err
    assert "features: digits-CNN" in out and "kid" in out


def _rgb(x, size):
    """Gray images [N, 1, H, W] as RGB [N, 3, size, size] whose channels differ."""
    x = F.interpolate(x, size=(size, size), mode="nearest")
    return torch.cat([x, x.flip(3), -x], dim=1)


def _luma_then_resize_by_pil(x, size):
    """The conversion --convert promises, computed independently: luma by its ITU-R 601 formula,
    then PIL's bilinear resize (antialiased when shrinking) of float images."""
    luma = 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]
    resized = [np.asarray(Image.fromarray(image.numpy()).resize((size, size), Image.Resampling.BILINEAR))
               for image in luma]
    return torch.from_numpy(np.stack(resized))[:, None]


def test_eval_refuses_images_of_another_shape_before_building_the_network(tmp_path, capsys, monkeypatch):
    def no_training(*args, **kwargs):
        raise AssertionError("the feature CNN was trained before the shapes were checked")

    monkeypatch.setattr("genmodels.metrics.features.build_feature_cnn", no_training)
    rgb = _rgb(load_dataset("mnist", split="test").x[:20], 32)
    save_npz(rgb, tmp_path / "rgb.npz")
    save_npz(rgb[:, :1, :28, :28], tmp_path / "gray.npz")
    code, _, err = run_cli(["eval", "--real", tmp_path / "rgb.npz", "--fake", tmp_path / "rgb.npz",
                            "--features", "mnist"], capsys)
    assert code == 2
    assert_one_line_error(code, err, "real and fake images are 3x32x32 but mnist-CNN takes 1x28x28",
                          "pass --convert", "RGB -> ITU-R 601 luma, antialiased bilinear resize to 28x28",
                          "--features FILE")
    code, _, err = run_cli(["eval", "--real", tmp_path / "gray.npz", "--fake", tmp_path / "rgb.npz",
                            "--features", "mnist"], capsys)
    assert_one_line_error(code, err, "fake images are 3x32x32 but mnist-CNN takes 1x28x28")
    code, _, err = run_cli(["eval", tmp_path, "--convert"], capsys)
    assert_one_line_error(code, err, "--convert is for --real/--fake")


def test_eval_convert_scores_equal_converting_by_hand(tmp_path, capsys):
    from genmodels.images import load_image_set
    from genmodels.metrics import compare_images

    digits = load_dataset("digits", split="test").x
    save_npz(_rgb(digits, 16), tmp_path / "real.npz")
    save_npz(_rgb(digits.flip(2), 16), tmp_path / "fake.npz")
    args = ["eval", "--real", tmp_path / "real.npz", "--fake", tmp_path / "fake.npz", "--features", "digits",
            "--metrics", "fd_cnn,kid,prdc,cs", "--convert"]
    code, out, err = run_cli(args + ["--json"], capsys)
    assert code == 0, err
    converted = json.loads(out)
    assert converted["converted"] == ("converted real and fake images 3x16x16 -> 1x8x8 (RGB -> ITU-R 601 "
                                      "luma, antialiased bilinear resize to 8x8) for digits-CNN")
    by_hand = compare_images(*(_luma_then_resize_by_pil(load_image_set(tmp_path / f), 8)
                               for f in ("real.npz", "fake.npz")),
                             features="digits", metrics=["fd_cnn", "kid", "prdc", "cs"], progress=False)
    assert by_hand["converted"] is None
    for key in ("fd_cnn", "kid", "precision", "recall", "density", "coverage", "cs"):
        assert converted[key] == pytest.approx(by_hand[key], rel=1e-4, abs=1e-6), key
    assert converted["fd_cnn"] > 1  # the mirrored digits are far apart, so the equality is not vacuous
    code, out, err = run_cli(args, capsys)
    assert code == 0, err
    assert out.splitlines()[0] == converted["converted"]


def test_runs_of_resized_rgb_data_are_evaluated_by_the_protocols_conversion(tmp_path, capsys):
    """The run's own dataset at another size and channel count than its CNN's is converted
    without asking, in the trainer's proxy rows and in genmodels eval."""
    run = tmp_path / "rgb16"
    train(load_config("mnist-ddpm", TINY_DIGITS + ["data.channels=3", "data.image_size=16"]), run)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["images"] for r in rows if r.get("eval") == "proxy"] == [32, 64]
    code, out, err = run_cli(["eval", run, "--n", "20", "--seeds", "0", "--metrics", "fd_cnn,kid",
                              "--no-log", "--json"], capsys)
    assert code == 0, err
    assert json.loads(out)["fd_cnn"] > 0


def test_eval_errors_are_one_line(tmp_path, digits_run, capsys):
    save_npz(torch.zeros(4, 1, 28, 28), tmp_path / "mnistlike.npz")
    cases = [
        (["eval", digits_run, "--metrics", "fid2"], ["unknown metric", "fd_cnn"]),
        (["eval", digits_run, "--metrics", "cacc", "--n", "4"], ["class-conditional"]),
        (["eval", digits_run, "--seeds", "a,b"], ["--seeds"]),
        (["eval", tmp_path / "missing"], ["does not exist"]),
        (["eval", "--real", tmp_path / "mnistlike.npz"], ["--real and --fake"]),
        (["eval", "--real", tmp_path / "nope.npz", "--fake", tmp_path / "mnistlike.npz"], ["nope.npz"]),
        (["eval", "--real", tmp_path / "mnistlike.npz", "--fake", tmp_path / "mnistlike.npz"], ["--features"]),
        (["eval", "--real", tmp_path / "mnistlike.npz", "--fake", tmp_path / "mnistlike.npz",
          "--features", "imagenet"], ["imagenet", "mnist"]),
    ]
    for args, fragments in cases:
        code, _, err = run_cli(args, capsys)
        assert_one_line_error(code, err, *fragments)


def test_eval_nll_by_the_ode_on_a_ddpm_run(digits_run, capsys):
    code, out, err = run_cli(["eval", digits_run, "--metrics", "nll", "--nll-method", "ode", "--nll-n", "2",
                              "--seeds", "0", "--no-log", "--json"], capsys)
    assert code == 0, err
    result = json.loads(out)
    assert result["nll_method"] == "ode" and result["nll_nfe"] > 10 and 0 < result["nll_bpd"] < 100


class _InceptionStandIn(torch.nn.Module):
    """The calling convention of the TorchScript Inception export: uint8-range RGB in, features out."""

    def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        assert x.shape[1:] == (3, 299, 299)
        return F.adaptive_avg_pool2d(x / 255.0, 4).flatten(1)


def test_torchscript_feature_networks(tmp_path):
    from genmodels.metrics import compare_images

    real = load_dataset("digits", split="test").x[:40]
    fake = torch.flip(real, dims=[2])
    with warnings.catch_warnings():  # torch 2.x deprecates TorchScript; the Inception exports use it
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.script(_InceptionStandIn()).save(str(tmp_path / "inception-2015-12-05.pt"))
    with pytest.raises(DataError, match="images are 1x8x8 but Inception .* takes 3x299x299; pass --convert"):
        compare_images(real, fake, features=str(tmp_path / "inception-2015-12-05.pt"), progress=False)
    scores = compare_images(real, fake, features=str(tmp_path / "inception-2015-12-05.pt"),
                            metrics=["fd_cnn", "kid"], convert=True, progress=False)
    assert scores["features"].startswith("Inception") and scores["fd_inception"] > 0
    # any other TorchScript file must say what input size it takes
    other = tmp_path / "other.pt"
    other.write_bytes((tmp_path / "inception-2015-12-05.pt").read_bytes())
    with pytest.raises(DataError, match="image_shape"):
        compare_images(real, fake, features=str(other), progress=False)
    junk = tmp_path / "junk.pt"
    junk.write_text("not a TorchScript archive")
    with pytest.raises(DataError, match="TorchScript"):
        compare_images(real, fake, features=str(junk), progress=False)


def test_eval_class_conditional_run_reports_conditional_accuracy(tmp_path, capsys):
    run = tmp_path / "cond"
    train(load_config("mnist-ddpm", TINY_DIGITS[:-2] + ["model.num_classes=auto"]), run)
    code, out, err = run_cli(["eval", run, "--n", "30", "--seeds", "0", "--no-log", "--json"], capsys)
    assert code == 0, err
    result = json.loads(out)
    assert "cacc" in result["metrics"] and 0.0 <= result["cacc"] <= 1.0
