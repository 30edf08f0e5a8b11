"""The family seam: a family of two modules and two phases trains, logs, checkpoints, resumes
and loads through the same trainer and run directory as diffusion."""

import json

import pytest
import torch
from safetensors.torch import load_file

import genmodels
from genmodels.config import load_config
from genmodels.errors import ConfigError
from genmodels.families import FAMILIES, Family, TrainParts, get_family
from genmodels.report import logged_series, plot_loss
from genmodels.train import Phase
from genmodels.train.run import train


class TwoPhaseFamily(Family):
    """Phase "critic" regresses x_0 - x_1 (linear, so it can be fitted); phase "gen" moves a
    2-D location towards the data: two modules, two optimizers, one EMA."""

    name = "twophase"
    frozen_sections = ()

    def build(self, cfg, options):
        torch.nn.Linear(1, 1)  # draws from the global RNG like a real net would
        return {"critic": torch.nn.Linear(2, 1), "gen": torch.nn.Linear(1, 2)}

    def training(self, ctx):
        critic, gen = ctx.modules["critic"], ctx.modules["gen"]

        def critic_loss(batch, generator):
            x = ctx.to_device(batch)["x"]
            noise = torch.randn(x.shape, generator=generator)
            out = critic(x + 0.1 * noise).squeeze(1)
            return (out - (x[:, 0] - x[:, 1])).square(), {"critic_out": out, "seen": torch.tensor(float(ctx.images_seen()))}

        def gen_loss(batch, generator):
            x = ctx.to_device(batch)["x"]
            fake = gen(torch.ones(len(x), 1))
            return (fake - x).square().sum(1), {"gen_x": fake[:, 0]}

        return TrainParts([Phase("critic", critic, critic_loss, ctx.adamw(critic.parameters(), lr=0.05), 1.0),
                           Phase("gen", gen, gen_loss, ctx.adamw(gen.parameters(), lr=0.05), None)],
                          {"gen": ctx.ema("gen")})

    def load(self, run):
        return run


@pytest.fixture
def two_phase(monkeypatch):
    get_family("diffusion")  # the built-in families are registered first
    monkeypatch.setitem(FAMILIES, "twophase", TwoPhaseFamily())  # config's family choices follow the registry


def cfg(*extra):
    return load_config("toy-ddpm", ["family=twophase", "train.batch_size=32", "train.log_every_images=64",
                                    "train.checkpoint_every_images=100000", "train.device=cpu",
                                    "train.warmup_images=0", *extra])


def rows(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_two_phases_log_their_losses_grad_norms_and_scalars(tmp_path, two_phase):
    train(cfg("train.images=640"), tmp_path / "run")
    logged = rows(tmp_path / "run")
    assert len(logged) == 10
    for row in logged:
        assert {"loss", "loss_critic", "loss_gen", "grad_norm_critic", "critic_out", "gen_x", "seen"} <= row.keys()
        assert "grad_norm_gen" not in row  # that phase does not clip: no norm was computed
        assert row["loss"] == row["loss_critic"]  # "loss" stays the first phase's
    # scalars are means over the row's steps: images seen before steps 1 and 2 are 0 and 32
    assert logged[0]["seen"] == pytest.approx(16.0)
    assert logged[-1]["loss_critic"] < 0.5 * logged[0]["loss_critic"]
    assert abs(logged[-1]["gen_x"]) < 0.5 * abs(logged[0]["gen_x"])  # the second phase learns too
    weights, ema = load_file(tmp_path / "run" / "model.safetensors"), load_file(tmp_path / "run" / "ema.safetensors")
    assert {k.split(".")[0] for k in weights} == {"critic", "gen"} and {k.split(".")[0] for k in ema} == {"gen"}
    assert logged_series(logged)[:1] == ["loss"] and "gen_x" in logged_series(logged)
    assert plot_loss(tmp_path / "run", tmp_path / "loss.png").stat().st_size > 0


def test_two_phase_resume_equals_uninterrupted_run(tmp_path, two_phase):
    train(cfg("train.images=640"), tmp_path / "a")
    train(cfg("train.images=320"), tmp_path / "b")
    train(cfg("train.images=640"), tmp_path / "b", resume=True)
    assert [r["loss_gen"] for r in rows(tmp_path / "a")] == [r["loss_gen"] for r in rows(tmp_path / "b")]
    for name in ("model.safetensors", "ema.safetensors"):
        a, b = load_file(tmp_path / "a" / name), load_file(tmp_path / "b" / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name


def test_load_dispatches_to_the_family(tmp_path, two_phase):
    train(cfg("train.images=64"), tmp_path / "run")
    run = genmodels.load(tmp_path / "run", device="cpu")
    assert set(run.modules) == {"critic", "gen"} and run.data_shape == (2,)
    assert not any(p.requires_grad for m in run.modules.values() for p in m.parameters())


def test_unknown_family_names_the_registered_ones(tmp_path):
    with pytest.raises(ConfigError, match="'family' is 'nope'; allowed values: diffusion"):
        load_config("toy-ddpm", ["family=nope"])
    with pytest.raises(ConfigError, match="unknown family 'nope'; choose one of .*diffusion"):
        get_family("nope")
