"""A family added in one file (tests/plugin_brightness.py) with a new conditioning key, config
section, sample option and metric is picked up by the trainer, ``genmodels.load``, the CLI and the
protocol; a composed run records its base and refuses a changed or missing one with one line."""

import importlib
import json
import shutil
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

import genmodels
from genmodels.config import SECTIONS, load_config
from genmodels.cond import COND_KEYS
from genmodels.families import FAMILIES
from genmodels.metrics.registry import METRICS
from genmodels.train.run import train
from test_cli import run_cli

QUIET = ["family=brightness", "data.name=mnist", "model.network=none", "train.batch_size=32", "train.device=cpu",
         "train.log_every_images=64", "train.checkpoint_every_images=100000", "train.sample_every_images=100000",
         "train.warmup_images=0", "train.ema_halflife_images=1", "train.ema_rampup=null"]


@pytest.fixture(scope="module")
def plugin():
    """Import the plugin (its registry lines run), and take every registration back afterwards so
    later tests in this process see the built-in registries only."""
    module = importlib.import_module("plugin_brightness")
    yield module
    FAMILIES.pop("brightness"), SECTIONS.pop("brightness"), COND_KEYS.pop("brightness"), METRICS.pop("mean_brightness")
    sys.modules.pop("plugin_brightness")


@pytest.fixture(scope="module")
def base_run(plugin, tmp_path_factory):
    run = tmp_path_factory.mktemp("plugin") / "base"
    train(load_config(None, QUIET + ["train.images=1280", "brightness.min_log_std=-2"]), run)
    return run


def test_the_family_trains_and_loads_with_its_section_and_condition(base_run):
    record = json.loads((base_run / "config.json").read_text())
    assert record["config"]["family"] == "brightness" and record["config"]["brightness"] == {"min_log_std": -2.0}
    assert record["bases"] == {}
    pipe = genmodels.load(base_run, device="cpu")
    dark, bright = pipe.sample(200, seed=0, brightness=-0.9), pipe.sample(200, seed=0, brightness=0.0)
    # the learned gain follows the data: brighter images asked for, brighter samples drawn
    assert bright.mean() > dark.mean() + 0.1


def test_the_cli_takes_the_new_sample_option_and_metric(base_run, tmp_path, capsys):
    code, out, err = run_cli(["sample", base_run, "--n", 8, "--brightness", 0.5, "--out", tmp_path / "b.png"], capsys)
    assert code == 0, err
    assert "grid of 8 samples" in out
    code, out, err = run_cli(["sample", "--help"], capsys)
    assert "Options of brightness runs" in out and "--brightness" in out
    code, out, err = run_cli(["sample", base_run, "--truncation", 0.5, "--out", tmp_path / "c.png"], capsys)
    assert code == 2 and "--truncation is a sample option of gan runs; this is a brightness run" in err
    code, out, err = run_cli(["eval", base_run, "--metrics", "mean_brightness", "--n", 64, "--seeds", "0,1",
                              "--json", "--no-log"], capsys)
    assert code == 0, err
    row = json.loads(out)
    pipe = genmodels.load(base_run, device="cpu")
    expected = torch.stack([pipe.sample(64, seed=s * 1_000_000).mean() for s in (0, 1)]).mean().item()
    assert row["mean_brightness"] == pytest.approx(expected, abs=1e-6)
    code, out, err = run_cli(["eval", "--help"], capsys)
    assert "mean_brightness (image)" in out


def test_a_composed_run_records_its_base_and_refuses_a_changed_one(base_run, tmp_path, capsys):
    base = tmp_path / "base"
    shutil.copytree(base_run, base)
    composed = tmp_path / "composed"
    train(load_config(None, QUIET + ["train.images=320", f"model.base={base}"]), composed)
    record = json.loads((composed / "config.json").read_text())["bases"]["model.base"]
    assert record["path"] == str(base.resolve()) and record["family"] == "brightness"
    assert set(record["sha256"]) == {"ema.safetensors", "model.safetensors"}
    pipe = genmodels.load(composed, device="cpu")
    base_mean = load_file(base / "ema.safetensors")["model.mean"]
    assert torch.equal(pipe.net.mean, base_mean)  # the frozen part never moved

    weights = load_file(base / "ema.safetensors")
    weights["model.mean"] = weights["model.mean"] + 0.01
    save_file(weights, base / "ema.safetensors")
    capsys.readouterr()  # the training's progress
    code, _, err = run_cli(["sample", composed, "--out", tmp_path / "x.png"], capsys)
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert f"builds on the run {base.resolve()} (model.base), whose ema.safetensors changed" in err
    code, _, err = run_cli(["train", "--resume", "--out", composed, "train.images=640"], capsys)
    assert code == 2 and "whose ema.safetensors changed" in err

    shutil.rmtree(base)
    code, _, err = run_cli(["sample", composed, "--out", tmp_path / "x.png"], capsys)
    assert code == 2 and f"builds on the run {base.resolve()} (model.base), which is missing" in err
