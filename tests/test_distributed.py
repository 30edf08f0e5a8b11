"""Multi-process training and sampling with torchrun: 2 CPU processes (gloo) on the toy 2-D
config. Two ranks with one micro-batch each are the same computation as one process with
train.grad_accum=2 (same shards, same per-shard noise), so their weights must agree to float
tolerance; DDP must keep the ranks bit-identical; resume and sampling must work the same."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from genmodels.cli import main as cli_main
from genmodels.config import load_config
from genmodels.errors import CheckpointError, ConfigError
from genmodels.train import distributed
from genmodels.train.distributed import Dist
from genmodels.train.run import prepare, train

WORKER = Path(__file__).with_name("ddp_worker.py")
TOY = ["data.n_points=512", "train.batch_size=64", "train.images=1280", "train.log_every_images=320",
       "train.checkpoint_every_images=640", "train.sample_every_images=100000", "train.device=cpu",
       "train.warmup_images=0"]


def torchrun(*args, timeout=180):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *map(str, args)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def losses(run_dir):
    return [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """(two-process run trained half-way then resumed, one-process run with grad_accum=2)."""
    root = tmp_path_factory.mktemp("ddp")
    torchrun(WORKER, root / "ddp", 640, *TOY)
    train(load_config("toy-ddpm", TOY + ["train.grad_accum=2"]), root / "single")
    return root / "ddp", root / "single"


def test_two_processes_train_like_one_process_with_grad_accum(runs):
    ddp, single = runs
    rank0, rank1 = load_file(ddp / "rank0.safetensors"), load_file(ddp / "rank1.safetensors")
    assert rank0.keys() == rank1.keys() and len(rank0) > 0
    for key in rank0:  # DDP keeps every rank's weights and EMA bit-identical
        assert torch.equal(rank0[key], rank1[key]), key
    for name, prefix in (("model.safetensors", "net."), ("ema.safetensors", "net.")):
        written, reference = load_file(ddp / name), load_file(single / name)
        assert written.keys() == reference.keys()
        for key in written:
            torch.testing.assert_close(written[key], reference[key], rtol=1e-5, atol=1e-6)
    for key in load_file(ddp / "model.safetensors"):  # rank 0 wrote what it holds
        assert torch.equal(load_file(ddp / "model.safetensors")[key], rank0[key])
    # One row per 320 images over both ranks, the global mean loss, across the resume.
    np.testing.assert_allclose(losses(ddp), losses(single), rtol=1e-5)
    assert len(losses(ddp)) == 4
    state = torch.load(ddp / "state.pt", weights_only=True)
    assert state["images_seen"] == 1280 and len(state["rng"]["generators"]) == 2


def test_sampling_split_over_two_processes_equals_one_process(runs, tmp_path):
    ddp, _ = runs
    args = ["sample", ddp, "--num-samples", 10, "--batch-size", 4, "--steps", 6, "--seed", 3, "--device", "cpu"]
    proc = torchrun("-m", "genmodels", *args, "--out", tmp_path / "two.npz")
    assert proc.stdout.count("10 samples in") == 1  # rank 0 alone writes and reports
    cli_main([str(a) for a in args] + ["--out", str(tmp_path / "one.npz")])
    two, one = np.load(tmp_path / "two.npz")["arr_0"], np.load(tmp_path / "one.npz")["arr_0"]
    assert two.shape == (10, 2)
    np.testing.assert_allclose(two, one, rtol=1e-6, atol=1e-6)


def test_resume_needs_the_same_number_of_shards(runs, tmp_path):
    _, single = runs  # trained on 2 shards (grad_accum=2)
    cfg = load_config("toy-ddpm", TOY + ["train.images=1344"])
    with pytest.raises(CheckpointError, match=r"2 shard\(s\).*train.grad_accum=2"):
        prepare(cfg, single, resume=True)


def test_global_batch_must_split_into_equal_micro_batches():
    assert distributed.check_batch_split(64, Dist(rank=1, world_size=2), 2) == 16
    assert Dist(rank=1, world_size=2).shards(3) == [3, 4, 5]
    with pytest.raises(ConfigError, match=r"3 process\(es\) x train.grad_accum 2 = 6 .*batch_size=60 or 66"):
        distributed.check_batch_split(64, Dist(rank=0, world_size=3), 2)


def test_each_rank_draws_every_world_size_th_batch(runs):
    """Rank 1 of 2 draws batch 1 (and 3, ...) only; the gathered parts are put back in order."""
    from genmodels import load
    from genmodels.samplers import generate

    pipe, parts = load(runs[0], device="cpu"), []

    class Rank1Of2(Dist):
        def all_gather_objects(self, obj):
            parts.append(sorted(obj))
            rank0 = {start: torch.full((4 if start < 8 else 2, 2), -7.0) for start in (0, 8)}
            return [rank0, obj]

    kwargs = dict(shape=(2,), seeds=range(10), steps=4, batch_size=4)
    split = generate(pipe.denoiser, pipe.path, dist=Rank1Of2(rank=1, world_size=2), **kwargs)
    whole = generate(pipe.denoiser, pipe.path, **kwargs)
    assert parts == [[4]]
    assert torch.equal(split[4:8], whole[4:8]) and (split[:4] == -7).all() and (split[8:] == -7).all()


SMALL = ["train.batch_size=64", "train.images=640", "train.log_every_images=320", "train.checkpoint_every_images=100000",
         "train.sample_every_images=100000", "train.device=cpu", "train.warmup_images=0"]


@pytest.mark.parametrize("config,extra,phases", [
    ("toy-gan", ["data.n_points=512", "gan.r1_gamma=1.0"], ("loss_D", "loss_G")),
    ("mnist-vae-bernoulli", ["vae.kl_warmup_images=320"], ("loss",)),
])
def test_gan_and_vae_train_on_two_processes_like_one_process_with_grad_accum(config, extra, phases, tmp_path):
    """The other families under DDP on 2 ranks equal one process with grad_accum=2 to float
    tolerance: a GAN's two phases (D with R1's double backward, then G) and the EMA of G; a VAE
    with its KL warm-up schedule."""
    overrides = SMALL + extra
    torchrun("-m", "genmodels", "train", config, *overrides, "--out", tmp_path / "ddp")
    train(load_config(config, overrides + ["train.grad_accum=2"]), tmp_path / "single")
    for name in ("model.safetensors", "ema.safetensors"):
        written, reference = load_file(tmp_path / "ddp" / name), load_file(tmp_path / "single" / name)
        assert written.keys() == reference.keys() and len(written) > 0
        for key in written:
            torch.testing.assert_close(written[key], reference[key], rtol=1e-4, atol=1e-5)
    rows = [json.loads(line) for line in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["images"] == 640 and all(k in rows[-1] for k in phases)  # 10 steps were taken
