"""The command line: outputs in each form, and one clear line (no traceback) for bad input."""

import shutil

import numpy as np
import pytest
from PIL import Image

import genmodels
from genmodels.cli import main
from genmodels.config import load_config
from genmodels.data import load_dataset
from genmodels.train.run import train


def run_cli(args, capsys):
    """Run ``genmodels ARGS`` in-process; returns (exit code, stdout, stderr)."""
    try:
        main(list(map(str, args)))
        code = 0
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, err, *fragments):
    assert code not in (0, None), err
    assert "Traceback" not in err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1, err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    from tests.conftest import TINY_UNET

    run = tmp_path_factory.mktemp("cli") / "run"
    train(load_config("mnist-ddpm", TINY_UNET + ["train.images=32", "train.batch_size=16",
                                                 "train.device=cpu"]), run)
    return run


def test_unknown_config_key(tmp_path, capsys):
    code, _, err = run_cli(["train", "toy-ddpm", "train.lrr=1", "--out", tmp_path / "r"], capsys)
    assert_one_line_error(code, err, "unknown config key 'train.lrr'", "lr")


def test_bad_config_value(tmp_path, capsys):
    code, _, err = run_cli(["train", "toy-ddpm", "diffusion.schedule=quadratic", "--out", tmp_path / "r"], capsys)
    assert_one_line_error(code, err, "diffusion.schedule", "linear, scaled_linear, cosine")
    code, _, err = run_cli(["train", "toy-ddpm", "train.lr=fast", "--out", tmp_path / "r"], capsys)
    assert_one_line_error(code, err, "train.lr", "must be float")


def test_missing_config_file(tmp_path, capsys):
    code, _, err = run_cli(["train", "nope.yaml", "--out", tmp_path / "r"], capsys)
    assert_one_line_error(code, err, "nope.yaml", "mnist-ddpm")


def test_missing_run_dir(tmp_path, capsys):
    code, _, err = run_cli(["sample", tmp_path / "missing", "--out", tmp_path / "g.png"], capsys)
    assert_one_line_error(code, err, "does not exist")


def test_wrong_image_size(tmp_path, capsys):
    code, _, err = run_cli(["train", "mnist-ddpm", "data.image_size=30", "--out", tmp_path / "r"], capsys)
    assert_one_line_error(code, err, "image_size 30", "not divisible")


def test_corrupt_image_file(tmp_path, capsys):
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(folder / "good.png")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    code, _, err = run_cli(["data", "show", f"folder:{folder}", "--image-size", "16",
                            "--out", tmp_path / "g.png"], capsys)
    assert_one_line_error(code, err, "broken.png")
    code, _, err = run_cli(["train", "mnist-ddpm", f"data.name=folder:{folder}", "data.image_size=16",
                            "--out", tmp_path / "r"], capsys)
    assert_one_line_error(code, err, "broken.png")


def test_data_show_skips_unreadable_images_only_when_asked(tmp_path, capsys):
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(folder / "good.png")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    args = ["data", "show", f"folder:{folder}", "--image-size", "16", "--out", tmp_path / "g.png"]
    code, _, err = run_cli(args, capsys)
    assert_one_line_error(code, err, "unreadable image", "broken.png", "delete or replace the file",
                          "data.skip_bad=true", "genmodels data show --skip-bad", "skip_bad=True")
    with pytest.warns(UserWarning, match="broken.png"):
        code, out, err = run_cli(args + ["--skip-bad"], capsys)
    assert code == 0, err
    assert "1 items of shape (3, 16, 16)" in out and (tmp_path / "g.png").is_file()


def _damage(path, how):
    """Cut a file inside its header or its data, empty it, or replace it by text."""
    raw = path.read_bytes()
    header_end = 8 + int.from_bytes(raw[:8], "little") if path.suffix == ".safetensors" else 64
    path.write_bytes({"header": raw[:header_end // 2], "data": raw[:(header_end + len(raw)) // 2], "empty": b"",
                      "text": b"some notes, saved under the wrong name\n"}[how])


DAMAGE = ["header", "data", "empty", "text"]


@pytest.mark.parametrize("how", DAMAGE)
@pytest.mark.parametrize("name", ["model.safetensors", "ema.safetensors"])
def test_damaged_weights_are_named_in_one_line(trained_run, tmp_path, capsys, name, how):
    """Sampling reads ema.safetensors, yet a damaged model.safetensors is reported too."""
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    _damage(run / name, how)
    for weights in ("ema", "model"):
        code, _, err = run_cli(["sample", run, "--n", "2", "--steps", "2", "--weights", weights,
                                "--out", tmp_path / "g.png"], capsys)
        assert code == 2
        assert_one_line_error(code, err, f"error: {run / name} is damaged (truncated or not a safetensors file",
                              "restore it from a copy or retrain")


@pytest.mark.parametrize("how", DAMAGE)
def test_damaged_training_state_is_named_on_resume(trained_run, tmp_path, capsys, how):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    _damage(run / "state.pt", how)
    code, _, err = run_cli(["train", "--resume", "--out", run, "train.images=48"], capsys)
    assert code == 2
    assert_one_line_error(code, err, f"error: {run / 'state.pt'} is damaged", "restore it from a copy")


def test_damaged_weights_are_named_on_resume(trained_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    _damage(run / "ema.safetensors", "data")
    code, _, err = run_cli(["train", "--resume", "--out", run, "train.images=48"], capsys)
    assert code == 2
    assert_one_line_error(code, err, f"error: {run / 'ema.safetensors'} is damaged")


def test_bad_sampler_name(trained_run, tmp_path, capsys):
    code, _, err = run_cli(["sample", trained_run, "--sampler", "magic", "--out", tmp_path / "g.png"], capsys)
    assert_one_line_error(code, err, "unknown sampler 'magic'", "ddim")


def test_sample_writes_grid_npz_and_pngs(trained_run, tmp_path, capsys):
    args = ["sample", trained_run, "--n", 5, "--steps", 4, "--device", "cpu"]
    assert run_cli(args + ["--out", tmp_path / "g.png"], capsys)[0] == 0
    assert Image.open(tmp_path / "g.png").size[0] > 28
    assert run_cli(args + ["--out", tmp_path / "s.npz"], capsys)[0] == 0
    arr = np.load(tmp_path / "s.npz")["arr_0"]
    assert arr.dtype == np.uint8 and arr.shape == (5, 28, 28, 1)
    assert run_cli(args + ["--out", f"{tmp_path / 'pngs'}/"], capsys)[0] == 0
    files = sorted(p.name for p in (tmp_path / "pngs").iterdir())
    assert len(files) == 5 and np.array_equal(np.asarray(Image.open(tmp_path / "pngs" / files[2])), arr[2, :, :, 0])


def test_data_show(tmp_path, capsys):
    code, out, _ = run_cli(["data", "show", "mnist", "--out", tmp_path / "m.png"], capsys)
    assert code == 0 and "4,500 items of shape (1, 28, 28), 10 classes" in out
    code, out, _ = run_cli(["data", "show", "8gaussians", "--out", tmp_path / "t.png"], capsys)
    assert code == 0 and (tmp_path / "t.png").stat().st_size > 1000


@pytest.mark.parametrize("command", [["train"], ["sample"], ["data", "show"], ["demo"], ["report"],
                                     ["build-kernels"]])
def test_help_has_an_example(command, capsys):
    code, out, _ = run_cli(command + ["--help"], capsys)
    assert code == 0 and "Example" in out and "genmodels" in out


def test_sample_with_every_sampler_option(trained_run, tmp_path, capsys):
    for args in (["--sampler", "unipc", "--order", "3", "--spacing", "trailing"],
                 ["--sampler", "heun", "--churn", "1.0", "--spacing", "karras"],
                 ["--sampler", "dpmpp_2m_sde", "--eta", "1", "--threshold", "0.99"]):
        code, out, err = run_cli(["sample", trained_run, "--n", "4", "--steps", "3", *args,
                                  "--out", tmp_path / "g.png"], capsys)
        assert code in (0, None), err
        assert "grid of 4 samples" in out


def test_guidance_errors_are_one_line(trained_run, tmp_path, capsys):
    out = tmp_path / "g.png"
    code, _, err = run_cli(["sample", trained_run, "--n", "4", "--class", "3", "--out", out], capsys)
    assert_one_line_error(code, err, "not class-conditional", "--classifier")
    code, _, err = run_cli(["sample", trained_run, "--n", "4", "--guidance", "3", "--out", out], capsys)
    assert_one_line_error(code, err, "guidance needs class labels")
    code, _, err = run_cli(["sample", trained_run, "--n", "4", "--sampler", "ddim", "--order", "2",
                            "--out", out], capsys)
    assert_one_line_error(code, err, "sampler 'ddim' takes no option 'order'")
    code, _, err = run_cli(["sample", trained_run, "--n", "4", "--spacing", "cubic", "--out", out], capsys)
    assert_one_line_error(code, err, "spacing 'cubic'", "karras")
    code, _, err = run_cli(["sample", trained_run, "--n", "4", "--classifier", trained_run, "--class", "1",
                            "--out", out], capsys)
    assert_one_line_error(code, err, "diffusion run, not a classifier")


def test_invert_writes_image_noise_reconstruction_rows(trained_run, tmp_path, capsys):
    out = tmp_path / "inv.png"

    def invert(steps):
        code, text, err = run_cli(["invert", trained_run, "--n", "3", "--steps", steps, "--out", out], capsys)
        assert code in (0, None), err
        assert "round-trip RMS error" in text
        return float(text.split("error ")[1].split()[0])

    coarse, fine = invert(5), invert(20)
    # the error printed is the round trip of the first 3 test images on that many steps...
    images = load_dataset("mnist", split="test").x[:3]
    assert coarse == pytest.approx(genmodels.load(trained_run, device="cpu").invert(images, steps=5)[2], abs=6e-5)
    # ...and it falls at first order: 4x the steps, ~1/4 the error (measured 0.314 -> 0.105; with
    # each inversion step 3 % short, 0.329 -> 0.158)
    assert fine < 0.4 * coarse, (coarse, fine)
    width, height = Image.open(out).size
    assert height > 2.5 * (width / 3)  # three rows of three images
