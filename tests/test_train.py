"""Trainer, checkpoints and pipeline on real MNIST with a tiny UNet."""

import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

import genmodels
from genmodels.config import load_config
from genmodels.errors import CheckpointError, TrainingDiverged
from genmodels.samplers import generate
from genmodels.train import Phase, Trainer
from genmodels.train.checkpoint import atomic_write
from genmodels.train.run import prepare, train


def losses(run_dir):
    return [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def tiny_cfg(overrides, *extra):
    return load_config("mnist-ddpm", overrides + list(extra))


def test_mnist_loss_falls(tmp_path, tiny_mnist_overrides):
    train(tiny_cfg(tiny_mnist_overrides, "train.images=960"), tmp_path / "run")  # 60 steps
    curve = losses(tmp_path / "run")
    assert len(curve) == 60
    first, last = sum(curve[:8]) / 8, sum(curve[-8:]) / 8
    assert last < 0.75 * first, (first, last)


def test_save_load_gives_identical_samples(tmp_path, tiny_mnist_overrides):
    run = tmp_path / "run"
    trainer = prepare(tiny_cfg(tiny_mnist_overrides, "train.images=64"), run)
    trainer.fit()
    pipe = genmodels.load(run, device="cpu")
    from_disk = pipe.sample(6, seed=3, sampler="ddim", spacing="leading", steps=8, progress=False)
    ema = trainer.emas["net"].module
    unclamped = generate(pipe.denoiser.__class__(ema, pipe.path, pipe.param), pipe.path,
                         shape=(1, 28, 28), seeds=range(3, 9), steps=8)
    assert torch.equal(from_disk, unclamped.clamp(-1, 1))
    assert torch.equal(from_disk, genmodels.load(run, device="cpu").sample(6, seed=3, sampler="ddim", spacing="leading", steps=8, progress=False))
    assert from_disk.shape == (6, 1, 28, 28)
    # neither comparison is vacuous: the sampler leaves [-1, 1], so the clamp is compared too, and
    # the same run's raw (not averaged) weights give other images
    assert unclamped.abs().max() > 1
    raw = genmodels.load(run, device="cpu", weights="model").sample(6, seed=3, sampler="ddim", spacing="leading", steps=8, progress=False)
    assert not torch.equal(from_disk, raw)


def test_resume_equals_uninterrupted_run(tmp_path, tiny_mnist_overrides):
    full = tiny_cfg(tiny_mnist_overrides, "train.images=320", "train.ema_rampup=0.5", "model.dropout=0.1")
    train(full, tmp_path / "a")
    half = tiny_cfg(tiny_mnist_overrides, "train.images=160", "train.ema_rampup=0.5", "model.dropout=0.1")
    train(half, tmp_path / "b")
    train(full, tmp_path / "b", resume=True)
    assert losses(tmp_path / "a") == losses(tmp_path / "b")
    for name in ("model.safetensors", "ema.safetensors"):
        a, b = load_file(tmp_path / "a" / name), load_file(tmp_path / "b" / name)
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), name
    state = torch.load(tmp_path / "b" / "state.pt", weights_only=True)
    assert state["images_seen"] == 320 and state["step"] == 20


def test_run_directory_files_hold_no_pickle(tmp_path, tiny_mnist_overrides):
    run = tmp_path / "run"
    train(tiny_cfg(tiny_mnist_overrides, "train.images=32"), run)
    for name in ("model.safetensors", "ema.safetensors"):
        raw = (run / name).read_bytes()
        header_len = int.from_bytes(raw[:8], "little")
        header = json.loads(raw[8:8 + header_len])  # safetensors: u64 length + JSON, then raw data
        assert all(v["dtype"] in ("F32", "I64") for k, v in header.items() if k != "__metadata__")
        assert not raw.startswith((b"\x80", b"PK"))  # neither a pickle nor a torch zip archive
    torch.load(run / "state.pt", weights_only=True)  # raises if anything but tensors/plain data
    record = json.loads((run / "config.json").read_text())
    assert record["data_shape"] == [1, 28, 28] and record["config"]["model"]["in_channels"] == 1


def test_existing_run_dir_is_not_overwritten(tmp_path, tiny_mnist_overrides):
    train(tiny_cfg(tiny_mnist_overrides, "train.images=16"), tmp_path / "run")
    with pytest.raises(CheckpointError, match="already exists"):
        train(tiny_cfg(tiny_mnist_overrides, "train.images=16"), tmp_path / "run")
    with pytest.raises(CheckpointError, match="no state.pt"):
        train(tiny_cfg(tiny_mnist_overrides, "train.images=16"), tmp_path / "other", resume=True)


class Counter(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(3))


class Batches:
    def __next__(self):
        return {"x": torch.ones(4, 3)}

    def state_dict(self):
        return {}

    def load_state_dict(self, d):
        pass


def make_trainer(tmp_path, loss, **cfg_overrides):
    from genmodels.config import TrainConfig
    from genmodels.train import EMA

    cfg = TrainConfig(batch_size=4, images=400, log_every_images=4, checkpoint_every_images=40,
                      sample_every_images=10**9, lr=0.01, **cfg_overrides)
    net = Counter()
    return Trainer(run_dir=tmp_path, cfg=cfg, modules={"net": net},
                   phases=[Phase("p", net, lambda b, g: loss(net), torch.optim.SGD(net.parameters(), lr=0.01))],
                   emas={"net": EMA(net, halflife_images=100)}, batches=[Batches()], device="cpu")


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    calls = {"n": 0}

    def loss(net):
        calls["n"] += 1
        bad = calls["n"] > 25  # steps 1..25 fine: a checkpoint at 40 images (step 10) and 80, ...
        return (net.w.sum() * (float("nan") if bad else 1.0)).expand(4), {}

    trainer = make_trainer(tmp_path, loss)
    with pytest.raises(TrainingDiverged, match=r"last good checkpoint \(at 80 images\)"):
        trainer.fit()
    saved = load_file(tmp_path / "model.safetensors")["net.w"]
    assert torch.isfinite(saved).all()
    assert torch.load(tmp_path / "state.pt", weights_only=True)["images_seen"] == 80


def test_stop_request_saves_at_a_step_boundary(tmp_path):
    from genmodels.train import Interrupted

    trainer = make_trainer(tmp_path, lambda net: (net.w.sum().expand(4), {}))
    original = trainer.train_step

    def step(batch):
        out = original(batch)
        if trainer.progress.step == 7:
            trainer._stop_requested = True  # what the SIGINT handler does
        return out

    trainer.train_step = step
    with pytest.raises(Interrupted, match="--resume"):
        trainer.fit()
    assert torch.load(tmp_path / "state.pt", weights_only=True)["step"] == 7


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "model.safetensors"
    target.write_bytes(b"old")

    def failing(tmp):
        open(tmp, "wb").write(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError):
        atomic_write(target, failing)
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["model.safetensors"]


@pytest.mark.slow
def test_ctrl_c_on_the_cli_saves_and_resume_continues(tmp_path, tiny_mnist_overrides):
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "genmodels", "train", "mnist-ddpm", *tiny_mnist_overrides,
           "train.images=100000", "--out", str(run)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (run / "metrics.jsonl").exists() and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2 and "continue with --resume" in err and "Traceback" not in err
    seen = torch.load(run / "state.pt", weights_only=True)["images_seen"]
    assert 0 < seen < 100000
    train(tiny_cfg(tiny_mnist_overrides, f"train.images={seen + 32}"), run, resume=True)
    assert torch.load(run / "state.pt", weights_only=True)["images_seen"] == seen + 32


def test_bf16_autocast_and_grad_accum_train_on_the_cpu(tmp_path, tiny_mnist_overrides):
    """train.precision=bf16 (autocast; the CUDA default) and train.grad_accum run and learn on the
    CPU; a global batch that does not split into micro-batches is refused in one line."""
    from genmodels.errors import ConfigError

    train(tiny_cfg(tiny_mnist_overrides, "train.images=480", "train.precision=bf16", "train.grad_accum=2"),
          tmp_path / "run")
    curve = losses(tmp_path / "run")
    assert len(curve) == 30 and all(map(math.isfinite, curve))
    assert sum(curve[-5:]) < sum(curve[:5])
    with pytest.raises(ConfigError, match="does not split into 1 process"):
        prepare(tiny_cfg(tiny_mnist_overrides, "train.grad_accum=3"), tmp_path / "other")


def test_atomic_writes_keep_the_users_umask(tmp_path):
    import os

    from genmodels.train.checkpoint import save_json

    save_json({"a": 1}, tmp_path / "c.json")
    (tmp_path / "plain.json").write_text("{}")
    assert os.stat(tmp_path / "c.json").st_mode & 0o777 == os.stat(tmp_path / "plain.json").st_mode & 0o777


def test_resume_accepts_a_run_saved_before_a_section_gained_a_field():
    """A run saved before a frozen section grew a field (with a default) trained with that
    default: resuming it is allowed; a changed value still is not."""
    from genmodels.config import load_config, to_dict
    from genmodels.errors import ConfigError
    from genmodels.train.run import check_resumable

    cfg = load_config("mnist-dcgan")
    saved = to_dict(cfg)
    del saved["gan"]["cond_dropout"]  # the field this run predates
    check_resumable(saved, cfg, ("gan",))
    saved["gan"]["z_dim"] = 123
    with pytest.raises(ConfigError, match="different 'gan' section"):
        check_resumable(saved, cfg, ("gan",))
