"""The main job end to end (with a tiny network and a few seconds of training), and the
recognisability score it reports."""

import base64
import re

import torch

from genmodels.data import load_dataset
from genmodels.demo import free_run_dir, run_demo
from genmodels.metrics.classifier import recognisability
from tests.conftest import TINY_UNET


def test_demo_writes_a_self_contained_report(tmp_path):
    report = run_demo(out=tmp_path / "demo", minutes=0.05, device="cpu",
                      overrides=TINY_UNET + ["train.batch_size=16"],
                      scores=dict(metrics=("fd_cnn", "kid"), n=64, seeds=(0,)))  # the self-supervised judge: test_judge
    run = tmp_path / "demo"
    for name in ("config.json", "model.safetensors", "ema.safetensors", "state.pt",
                 "metrics.jsonl", "samples.png", "samples.npz", "loss.png", "report.html"):
        assert (run / name).is_file(), name
    page = report.read_text()
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(images) == 2 and all(base64.b64decode(i).startswith(b"\x89PNG") for i in images)
    assert "recognisable samples" in page and "diffusion.schedule" in page
    assert "fd_cnn (MNIST-CNN features)" in page and "n = 64" in page  # the protocol's scores beside it
    assert free_run_dir(run) == tmp_path / "demo-2"  # a second demo never overwrites the first


def test_recognisability_separates_digits_from_noise_and_blends():
    test = load_dataset("mnist", split="test")
    real = test.x[:200]
    g = torch.Generator().manual_seed(123)
    noise = torch.rand(200, 1, 28, 28, generator=g) * 2 - 1
    smooth_noise = torch.nn.functional.avg_pool2d(torch.randn(200, 1, 28, 28, generator=g), 3, 1, 1).clamp(-1, 1)
    other = torch.roll(torch.arange(500), 1)  # the test split is shuffled: neighbours differ mostly
    differ = (test.y != test.y[other]).nonzero().flatten()[:200]
    blends = 0.5 * (test.x[differ] + test.x[other[differ]])
    on_real = recognisability(real)
    assert on_real.classifier_test_accuracy > 0.95
    assert on_real.confident_fraction > 0.85 and on_real.classes_covered == 10
    for fake in (noise, smooth_noise, blends):  # smooth noise was never in its training set
        assert recognisability(fake).confident_fraction < 0.5 * on_real.confident_fraction
