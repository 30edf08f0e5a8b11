"""Distillation (genmodels.families.distill, genmodels.objectives.distill): the progressive target
in closed form (one student DDIM step == two teacher DDIM steps, on the exact denoiser of Gaussian
data, the shared DDIM sampler as the oracle); nested grids; a round that brings a 4-step student
near the 8-step teacher; rounds, resume == uninterrupted, the teacher's hash check; guidance
distillation that learns the CFG output and samples with one forward per step; the CLI's lines."""

import json
import math
import shutil

import pytest
import torch

import genmodels
from genmodels.cond import nulled
from genmodels.config import load_config
from genmodels.diffusion import DiscreteDDPM, sigma_grid
from genmodels.diffusion.guidance import CFGDenoiser
from genmodels.errors import CheckpointError, ConfigError
from genmodels.families import load_run
from genmodels.families.distill import DistillConfig, distill_grid, distill_run, init_student
from genmodels.nn import MLP
from genmodels.objectives import DiffusionObjective
from genmodels.objectives.distill import GuidanceObjective, ddim_step, progressive_target, student_levels
from genmodels.samplers import sample_ddim
from genmodels.train.run import train
from genmodels.build import make_denoiser
from genmodels.diffusion import get_parameterization


def gaussian_denoiser(mu, s):
    """The exact denoiser of data N(mu, s^2 I): E[x0 | x0 + sigma noise = x]."""
    def denoise(x, sigma, cond=None):
        v = torch.as_tensor(sigma, dtype=torch.float64).reshape(-1, *([1] * (x.ndim - 1))) ** 2
        return (mu + s**2 / (s**2 + v) * (x.double() - mu)).to(x.dtype)
    return denoise


# ---- the target, in closed form ----------------------------------------------------------------
def test_ddim_step_is_the_samplers_step():
    teacher = gaussian_denoiser(0.3, 0.5)
    x = torch.randn(5, 2, dtype=torch.float64) * 3
    for grid in ([3.0, 1.2], [0.7, 0.0], [40.0, 2.5]):
        expected = sample_ddim(teacher, x, torch.tensor(grid, dtype=torch.float64))
        got = ddim_step(x, teacher(x, grid[0]), torch.full((5,), grid[0]), torch.full((5,), grid[1]))
        torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-7)  # the sampler splits sigma in float32


def test_one_student_step_on_the_target_lands_where_two_teacher_steps_do():
    """Per sample a different (sigma, sigma_mid, sigma_next), the last step to 0 included: one
    DDIM step from x_t with x0 = x~ reproduces the shared sampler's two teacher steps exactly, and
    x~ differs from the teacher's own x0 estimate (else distillation would change nothing)."""
    teacher = gaussian_denoiser(torch.tensor([0.5, -1.0], dtype=torch.float64), 0.4)
    levels = [(8.0, 2.0, 0.5), (1.0, 0.6, 0.3), (0.4, 0.1, 0.0), (80.0, 30.0, 10.0)]
    sigma, sigma_mid, sigma_next = (torch.tensor(c, dtype=torch.float64) for c in zip(*levels))
    x = torch.randn(4, 2, dtype=torch.float64) * sigma.reshape(-1, 1)
    target = progressive_target(teacher, x, sigma, sigma_mid, sigma_next)
    one_step = ddim_step(x, target, sigma, sigma_next)
    for i, grid in enumerate(levels):
        two_steps = sample_ddim(teacher, x[i:i + 1], torch.tensor(grid, dtype=torch.float64))
        torch.testing.assert_close(one_step[i:i + 1], two_steps, rtol=1e-10, atol=1e-10)
    assert (target - teacher(x, sigma)).abs().max() > 1e-3
    torch.testing.assert_close(target[2:3], sample_ddim(teacher, x[2:3], torch.tensor(levels[2], dtype=torch.float64)))


def test_round_grids_nest_and_the_last_is_the_samplers_grid():
    """On the demo's path (cosine DDPM, 1000 steps) with trailing spacing: every student grid is
    every other level of its teacher's, the rounds 64 -> 32 -> 16 -> 8 -> 4 nest, and the last is
    exactly sigma_grid(path, 4, trailing), what sampling the run uses; leading spacing is refused."""
    path = DiscreteDDPM(timesteps=1000, schedule="cosine")
    d = DistillConfig(teacher_steps=64, steps=4)
    grid = distill_grid(path, d, "trailing")
    assert len(grid) == 65 and grid[-1] == 0
    for k in range(4):
        teacher_levels, student = student_levels(grid, k)
        assert len(student) - 1 == 64 // 2 ** (k + 1) and len(teacher_levels) - 1 == 2 * (len(student) - 1)
        assert torch.equal(teacher_levels[::2], student)
        assert set(student.tolist()) <= set(grid.tolist())
    assert torch.equal(student_levels(grid, 3)[1], sigma_grid(path, 4, spacing="trailing"))
    assert grid[0] == sigma_grid(path, 4, spacing="trailing")[0]  # the path's top, as the samplers start
    with pytest.raises(ConfigError, match="use distill.spacing=trailing"):
        distill_grid(path, DistillConfig(teacher_steps=64, steps=8), "leading")
    with pytest.raises(ConfigError, match="power of 2"):
        distill_grid(path, DistillConfig(teacher_steps=48, steps=4), "trailing")


# ---- progressive runs on a toy teacher ---------------------------------------------------------
QUICK = ["train.batch_size=256", "train.log_every_images=2560", "train.sample_every_images=10000000",
         "train.checkpoint_every_images=10000000", "train.device=cpu", "train.minutes=null", "data.n_points=4000",
         "model.hidden=64", "model.depth=2", "train.ema_halflife_images=5000", "diffusion.prediction=v"]
DISTILL = ["train.log_every_images=2560", "train.ema_halflife_images=2000", "train.lr=5e-4"]


@pytest.fixture(scope="module")
def toy_teacher(tmp_path_factory):
    root = tmp_path_factory.mktemp("distill")
    train(load_config("toy-ddpm", QUICK + ["train.images=15360"]), root / "teacher")
    return root / "teacher"


def ddim(pipe, steps, n=2000):
    return pipe.sample(n, seed=1000, sampler="ddim", steps=steps, spacing="trailing", batch_size=n, progress=False)


def test_a_round_brings_the_half_step_student_near_its_teacher(toy_teacher, tmp_path):
    """8 -> 4 steps in 12,800 images: on the same seeds the 4-step student lands far nearer the
    8-step teacher's samples than the teacher itself does in 4 steps; the run records the grid, so
    genmodels.load samples it there by default."""
    run = tmp_path / "pd4"
    distill_run(toy_teacher, run, steps=4, teacher_steps=8, images_per_round=12800,
                overrides=DISTILL + ["train.lr=1e-3"])
    teacher, student = genmodels.load(toy_teacher, device="cpu"), genmodels.load(run, device="cpu")
    reference = ddim(teacher, 8)
    teacher_error = (ddim(teacher, 4) - reference).square().sum(1).mean()
    student_error = (student.sample(2000, seed=1000, batch_size=2000, progress=False) - reference).square().sum(1).mean()
    print("progressive 8 -> 4:", student_error.item(), teacher_error.item())
    assert student_error < 0.2 * teacher_error, (student_error, teacher_error)
    assert student.sample_settings() == {"sampler": "ddim", "steps": 4, "eta": 0.0, "spacing": "trailing"}
    assert torch.equal(ddim(student, 4, 50), student.sample(50, seed=1000, batch_size=50, progress=False))
    assert not (run / "rounds").exists()  # one round: nothing handed on


def test_rounds_resume_exactly_and_the_teacher_hash_is_checked(toy_teacher, tmp_path):
    """8 -> 4 -> 2 in two rounds: round 0's student is saved once as the next teacher; a run
    stopped inside round 1 and resumed ends with the uninterrupted run's weights (its teacher
    read back from that file); a changed teacher refuses the resume; --out is never overwritten."""
    teacher = tmp_path / "teacher"
    shutil.copytree(toy_teacher, teacher)
    options = dict(steps=2, teacher_steps=8, images_per_round=5120)
    distill_run(teacher, tmp_path / "whole", overrides=DISTILL, **options)
    rounds = sorted(p.name for p in (tmp_path / "whole" / "rounds").iterdir())
    assert rounds == ["round0-steps4.safetensors"]
    rows = [json.loads(line) for line in (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()]
    assert [r["student_steps"] for r in rows] == [4.0, 4.0, 2.0, 2.0]
    record = json.loads((tmp_path / "whole" / "config.json").read_text())["config"]
    assert record["train"]["images"] == 10240 and record["sample"]["steps"] == 2
    assert record["distill"]["teacher_sha256"]["ema.safetensors"]

    distill_run(teacher, tmp_path / "part", overrides=DISTILL + ["train.images=7680"], **options)
    round0 = (tmp_path / "part" / "rounds" / "round0-steps4.safetensors").read_bytes()
    distill_run(teacher, tmp_path / "part", resume=True, overrides=["train.images=10240"])
    assert (tmp_path / "part" / "rounds" / "round0-steps4.safetensors").read_bytes() == round0
    whole, resumed = (load_run(tmp_path / name, device="cpu").modules["net"].state_dict() for name in ("whole", "part"))
    for key in whole:
        torch.testing.assert_close(resumed[key], whole[key], rtol=0, atol=0)

    with pytest.raises(CheckpointError, match="already exists"):
        distill_run(teacher, tmp_path / "part", overrides=DISTILL, **options)
    from safetensors.torch import load_file, save_file

    weights = load_file(teacher / "ema.safetensors")
    save_file({k: v + 1e-3 for k, v in weights.items()}, teacher / "ema.safetensors")
    with pytest.raises(CheckpointError, match="changed since"):
        distill_run(teacher, tmp_path / "part", resume=True, overrides=["train.images=10240"])


def test_eps_and_unconditional_teachers_are_refused(toy_teacher, tmp_path):
    eps = tmp_path / "eps"
    shutil.copytree(toy_teacher, eps)
    record = json.loads((eps / "config.json").read_text())
    record["config"]["diffusion"]["prediction"] = "eps"
    (eps / "config.json").write_text(json.dumps(record))
    with pytest.raises(ConfigError, match="progressive distillation needs x0, v"):
        distill_run(eps, tmp_path / "a", steps=4, teacher_steps=8, images_per_round=256)
    with pytest.raises(ConfigError, match="needs a conditional teacher"):
        distill_run(toy_teacher, tmp_path / "b", method="guidance", images_per_round=256)


def test_cli_lines(toy_teacher, tmp_path, capsys):
    from genmodels.cli import main

    gan = tmp_path / "gan"
    gan.mkdir()
    (gan / "config.json").write_text(json.dumps({"config": {"family": "gan"}}))
    for argv, expected in [
        (["distill", str(toy_teacher), "--method", "nope", "--out", str(tmp_path / "x")],
         "error: unknown distillation method 'nope'; choose one of progressive, guidance"),
        (["distill", str(gan), "--out", str(tmp_path / "x")], "distillation needs a diffusion run"),
        (["distill", str(toy_teacher), "--teacher-steps", "48", "--out", str(tmp_path / "x")], "power of 2"),
    ]:
        with pytest.raises(SystemExit):
            main(argv)
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and expected in err[0], err
    main(["distill", str(toy_teacher), "--steps", "4", "--teacher-steps", "8", "--images-per-round", "512",
          "--out", str(tmp_path / "cli")])
    assert "distilled 512 images" in capsys.readouterr().out
    assert genmodels.load(tmp_path / "cli", device="cpu").sample(3, progress=False).shape == (3, 2)


# ---- guidance distillation ---------------------------------------------------------------------
def labelled_points(n, generator):
    """4 classes of 2-D points: class c a Gaussian (std 0.3) at angle 2 pi c / 4, radius 2."""
    y = torch.randint(0, 4, (n,), generator=generator)
    angle = y.float() * math.pi / 2
    return torch.stack([2 * angle.cos(), 2 * angle.sin()], 1) + 0.3 * torch.randn(n, 2, generator=generator), y


def fit(net, loss_fn, steps, lr, generator):
    opt = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=lr)
    for _ in range(steps):
        x, y = labelled_points(256, generator)
        loss = loss_fn({"x": x, "cond": {"y": y}}).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_guidance_student_learns_the_cfg_output_with_one_input():
    """A class-conditional teacher (label dropout 0.2) on labelled 2-D points; the student (its
    weights, plus the zero-initialised w embedding) first equals the teacher's conditional model at
    every w, then after 80 steps of the guidance objective its one forward at w matches the
    teacher's two-forward CFG output far better than the conditional output does."""
    g = torch.Generator().manual_seed(0)
    path, param = DiscreteDDPM(timesteps=1000, schedule="cosine"), get_parameterization("v")
    torch.manual_seed(0)
    teacher = MLP(dim=2, hidden=64, depth=2, num_classes=4)
    objective = DiffusionObjective(path, param, cond_dropout={"y": 0.2}, null=lambda k, v: torch.full_like(v, 4))
    fit(teacher, lambda b: objective(teacher, b, generator=g)[0], 200, 3e-3, g)
    teacher.eval().requires_grad_(False)
    student = MLP(dim=2, hidden=64, depth=2, num_classes=4, embed_cond=["guidance"])
    init_student(student, teacher)
    D_t, D_s = make_denoiser(teacher, path, param), make_denoiser(student, path, param)

    x0, y = labelled_points(512, g)
    sigma = path.to_sigma(torch.rand(512, generator=g).double() * 0.9 + 0.05)
    x = x0 + sigma.float()[:, None] * torch.randn(512, 2, generator=g)
    w = torch.full((512,), 3.0)
    with torch.no_grad():
        torch.testing.assert_close(D_s(x, sigma, {"y": y, "guidance": w}), D_t(x, sigma, {"y": y}))
    guided = GuidanceObjective(path, (1.0, 4.0), ("y",), teacher)
    fit(student, lambda b: guided(D_s, D_t, b, generator=g)[0], 80, 1e-3, g)
    with torch.no_grad():
        target = CFGDenoiser(D_t, 3.0, nulled(teacher, ["y"]))(x, sigma, {"y": y})
        student_error = (D_s(x, sigma, {"y": y, "guidance": w}) - target).square().mean()
        conditional_error = (D_t(x, sigma, {"y": y}) - target).square().mean()
    print("guidance w=3:", student_error.item(), conditional_error.item())
    assert conditional_error > 1e-3  # guidance at w = 3 moves the estimate
    assert student_error < 0.3 * conditional_error, (student_error, conditional_error)


TINY_DIGITS = ["data.name=digits", "model.base_channels=8", "model.channel_mult=[1, 2]", "model.attn_resolutions=[]",
               "model.num_heads=2", "train.batch_size=32", "train.log_every_images=32",
               "train.sample_every_images=100000", "train.checkpoint_every_images=100000", "train.device=cpu",
               "train.minutes=null", "train.warmup_images=0", "diffusion.label_dropout=0.2", "train.images=32"]


def test_guidance_distilled_run_samples_with_one_forward_per_step(tmp_path):
    """The run end to end on digits (a class-conditional UNet): genmodels.load gives a pipeline
    that routes --guidance to the net's w input: per step one forward of n rows, where the teacher
    under CFG runs 2n; the run's sample section is the teacher's."""
    train(load_config("mnist-cfg", TINY_DIGITS), tmp_path / "teacher")
    distill_run(tmp_path / "teacher", tmp_path / "gd", method="guidance", images_per_round=32)
    teacher, student = (genmodels.load(tmp_path / name, device="cpu") for name in ("teacher", "gd"))
    assert "guidance" in student.cond_keys and student.sample_settings() == teacher.sample_settings()
    for pipe, rows in ((student, 4), (teacher, 8)):
        seen = []
        hook = pipe.net.register_forward_pre_hook(lambda m, args: seen.append(len(args[0])))
        x = pipe.sample(4, labels=[0, 1, 2, 3], guidance=3.0, sampler="ddim", steps=3, progress=False)
        hook.remove()
        assert seen == [rows] * 3 and x.shape == (4, 1, 8, 8)
    with pytest.raises(ConfigError, match="guidance-distilled"):
        student.sample(2, labels=0, guidance=3.0, guidance_interval=(0.1, 1.0), steps=2, progress=False)
