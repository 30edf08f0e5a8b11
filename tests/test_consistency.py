"""Consistency models (Song et al. 2023; iCT, Song & Dhariwal 2023): the parameterisation's
boundary condition, the iCT formulas (pseudo-Huber, the curriculum N(k), the lognormal level
probabilities) against their closed forms, the multistep sampler against the exact consistency
function of Gaussian data, and CT and CD learning on a toy 2-D set through the shared trainer,
with the teacher's hash check and the load + sample round trip."""

import json
import math

import pytest
import torch
from safetensors.torch import load_file, save_file

import genmodels
from genmodels import build
from genmodels.config import load_config
from genmodels.data import load_dataset
from genmodels.diffusion import ContinuousVE, ContinuousVP, NetDenoiser, get_parameterization
from genmodels.errors import CheckpointError, ConfigError, DataError
from genmodels.families.consistency import consistency_grid, distill_config
from genmodels.metrics.toy import wasserstein
from genmodels.nn.mlp import MLP
from genmodels.objectives.consistency import (consistency_sigmas, discretisation_steps, lognormal_probabilities,
                                              pseudo_huber, teacher_step)
from genmodels.samplers import generate, sample_consistency
from genmodels.train.run import prepare, train

CPU = ["train.device=cpu", "train.warmup_images=0", "train.log_every_images=100000"]
SMALL = ["model.hidden=128"]


# ---- the parameterisation ----------------------------------------------------------------------
class _Wild(torch.nn.Module):
    """A net with an arbitrary, large output: the boundary condition must not depend on it."""

    def forward(self, x, c_noise, cond=None):
        return 1e6 * torch.sin(x * 37 + c_noise.reshape(-1, *[1] * (x.ndim - 1)))


@pytest.mark.parametrize("sigma_min", [0.002, 0.01])
def test_the_consistency_function_is_the_identity_at_sigma_min_for_any_net(sigma_min):
    path = ContinuousVE(sigma_min=sigma_min, sigma_max=80.0)
    param = get_parameterization("consistency", sigma_data=0.5, sigma_min=sigma_min)
    x = torch.randn(16, 2) * 3
    for net in (_Wild(), MLP(dim=2, hidden=32, depth=2)):
        f = NetDenoiser(net, path, param)
        assert torch.equal(f(x, torch.tensor(sigma_min, dtype=torch.float64)), x)
        assert not torch.allclose(f(x, 1.0), x)  # elsewhere the net is read
    # the coefficients on any path: c_skip(sigma_min) = 1, c_out(sigma_min) = 0; far above, EDM's
    vp = ContinuousVP()
    s_min = float(vp.to_sigma(torch.tensor(vp.t_min, dtype=torch.float64)))
    p = get_parameterization("consistency", sigma_data=0.5, sigma_min=s_min)
    alpha = vp.alpha_from_sigma(torch.tensor(s_min, dtype=torch.float64))
    c_skip, c_out, _ = p.coefficients(alpha, alpha * s_min)
    assert float(c_skip) == 1.0 and float(c_out) == 0.0
    edm = get_parameterization("edm", sigma_data=0.5)
    big = torch.tensor(50.0, dtype=torch.float64)
    for a, b in zip(p.coefficients(torch.tensor(1.0), big), edm.coefficients(torch.tensor(1.0), big)):
        assert abs(float(a) - float(b)) < 1e-3 * max(1.0, abs(float(b)))


def test_the_diffusion_family_refuses_to_regress_a_consistency_function():
    with pytest.raises(ConfigError, match="family: consistency"):
        train(load_config("toy-edm", CPU + ["diffusion.prediction=consistency", "train.images=8"]), "/nonexistent")


# ---- the iCT formulas --------------------------------------------------------------------------
def test_pseudo_huber_is_the_closed_form_and_interpolates_l2_and_l1():
    a, b = torch.tensor([[3.0, 4.0]]), torch.zeros(1, 2)
    c = 0.00054 * math.sqrt(2)
    assert pseudo_huber(a, b).item() == pytest.approx(math.sqrt(25 + c * c) - c, rel=1e-6)
    x = torch.randn(4, 1, 28, 28)
    c784 = 0.00054 * 28
    assert torch.allclose(pseudo_huber(x, 0 * x), (x.flatten(1).square().sum(1) + c784**2).sqrt() - c784)
    tiny = torch.full((1, 2), 1e-6)  # |d| << c: ~ |d|^2 / (2 c); |d| >> c: ~ |d| - c
    assert pseudo_huber(tiny, 0 * tiny, c=1.0).item() == pytest.approx(1e-12, rel=1e-3)
    assert pseudo_huber(a * 1e3, b, c=1.0).item() == pytest.approx(5e3 - 1, rel=1e-6)


def test_the_curriculum_doubles_from_s0_to_s1():
    K = 400_000  # iCT's CIFAR-10 run: K' = floor(K / (log2(128) + 1)) = 50,000
    assert discretisation_steps(0, K) == 11
    assert discretisation_steps(49_999, K) == 11
    assert discretisation_steps(50_000, K) == 21
    assert discretisation_steps(100_000, K) == 41
    assert discretisation_steps(6 * 50_000 - 1, K) == 321
    assert discretisation_steps(7 * 50_000, K) == 1281
    assert discretisation_steps(K - 1, K) == 1281 and discretisation_steps(10 * K, K) == 1281
    # K' = floor(100 / (log2(4) + 1)) = 33: 3 -> 5 -> 9 levels
    assert [discretisation_steps(k, 100, s0=2, s1=8) for k in (0, 32, 33, 65, 66, 99)] == [3, 3, 5, 5, 9, 9]


def test_the_levels_and_their_lognormal_probabilities():
    sigmas = consistency_sigmas(11, sigma_min=0.002, sigma_max=80.0)
    assert sigmas[0] == pytest.approx(0.002) and sigmas[-1] == pytest.approx(80.0) and (sigmas.diff() > 0).all()
    ramp = torch.linspace(0, 1, 11, dtype=torch.float64)  # Karras et al. Eq. 5, ascending
    assert torch.allclose(sigmas, (0.002 ** (1 / 7) + ramp * (80 ** (1 / 7) - 0.002 ** (1 / 7))) ** 7)
    sigmas = consistency_sigmas(161, sigma_min=0.002, sigma_max=80.0)
    p = lognormal_probabilities(sigmas, p_mean=-1.1, p_std=2.0)
    assert len(p) == 160 and p.sum().item() == pytest.approx(1.0, abs=1e-12) and (p > 0).all()
    # the same as ln sigma ~ N(-1.1, 2^2) binned into the grid's intervals (kept inside it)
    ln = -1.1 + 2.0 * torch.randn(400_000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    inside = ln[(ln > sigmas[0].log()) & (ln < sigmas[-1].log())]
    counts = torch.bincount(torch.searchsorted(sigmas.log(), inside) - 1, minlength=160).double()
    assert (counts / counts.sum() - p).abs().max() < 0.004
    # most mass near e^-1.1 = 0.33, little at the extremes
    mid = int(torch.searchsorted(sigmas, torch.tensor(math.exp(-1.1), dtype=torch.float64))) - 1
    assert p[mid] > 5 * p[-1] and p[mid] > 5 * p[0]


# ---- the sampler on an exact consistency function ----------------------------------------------
def _gaussian_consistency(mu, s, sigma_min, calls):
    """The exact PF-ODE map of N(mu, s^2) data from (x, sigma) to sigma_min."""

    def f(x, sigma, cond=None):
        calls.append(float(sigma))
        sigma = torch.as_tensor(sigma, dtype=torch.float64)
        return (mu + (x - mu) * ((s**2 + sigma_min**2) / (s**2 + sigma**2)).sqrt()).to(x.dtype)

    return f


@pytest.mark.parametrize("grid", [[80.0, 0.0], [80.0, 1.5, 0.0], [80.0, 5.0, 1.0, 0.7, 0.0]])
def test_multistep_consistency_sampling_reproduces_gaussian_data_exactly(grid):
    mu, s, sigma_min, n = 1.5, 0.3, 0.5, 40_000  # a large sigma_min: its correction is visible
    calls = []
    f = _gaussian_consistency(mu, s, sigma_min, calls)
    g = torch.Generator().manual_seed(1)
    x = mu + math.sqrt(s**2 + grid[0] ** 2) * torch.randn(n, 1, generator=g, dtype=torch.float64)
    out = sample_consistency(f, x, torch.tensor(grid, dtype=torch.float64), sigma_min=sigma_min,
                             noise=lambda: torch.randn(n, 1, generator=g, dtype=torch.float64))
    assert len(calls) == len(grid) - 1  # NFE = steps
    std = math.sqrt(s**2 + sigma_min**2)  # f's output is the data at sigma_min
    assert abs(out.mean().item() - mu) < 4 * std / math.sqrt(n)
    assert out.std().item() == pytest.approx(std, rel=0.015)
    if len(grid) > 2:  # re-noising to sigma without the sigma_min correction would widen the samples
        wrong = sample_consistency(f, x, torch.tensor(grid, dtype=torch.float64), sigma_min=0.0,
                                   noise=lambda: torch.randn(n, 1, generator=g, dtype=torch.float64))
        assert wrong.std().item() > std * 1.03


def test_generate_runs_the_consistency_sampler_on_a_given_grid():
    calls = []
    f = _gaussian_consistency(0.0, 1.0, 0.002, calls)
    path = ContinuousVE(sigma_min=0.002, sigma_max=80.0)
    x = generate(f, path, shape=(2,), seeds=range(4), sampler="consistency", sigmas=[80.0, 0.8, 0.0],
                 options={"sigma_min": 0.002})
    assert x.shape == (4, 2) and calls == [80.0, 0.8, 80.0, 0.8][:len(calls)] and len(calls) == 2
    assert torch.equal(x[1:2], generate(f, path, shape=(2,), seeds=[1], sampler="consistency",
                                        sigmas=[80.0, 0.8, 0.0], options={"sigma_min": 0.002}))
    with pytest.raises(ConfigError, match="strictly descending"):
        generate(f, path, shape=(2,), seeds=[0], sampler="consistency", sigmas=[0.8, 80.0, 0.0])
    grid = consistency_grid(path, 2)
    assert len(grid) == 3 and grid[0] == pytest.approx(80.0) and 0.002 < grid[1] < 80 and grid[-1] == 0


def test_the_teacher_step_is_exact_on_gaussian_data():
    """For N(0, s^2) data D(x, sigma) = x s^2 / (s^2 + sigma^2): the ODE solution is
    x(sigma') = x sqrt((s^2 + sigma'^2) / (s^2 + sigma^2)); Heun is second order, Euler first."""
    s = 1.0

    def teacher(x, sigma, cond=None):
        return x * s**2 / (s**2 + torch.as_tensor(sigma).reshape(-1, 1) ** 2)

    x = torch.randn(5, 1, dtype=torch.float64)
    hi, lo = torch.full((5,), 1.0, dtype=torch.float64), torch.full((5,), 0.9, dtype=torch.float64)
    exact = x * ((s**2 + 0.81) / (s**2 + 1.0)) ** 0.5
    heun = (teacher_step(teacher, x, hi, lo, solver="heun") - exact).abs().max()
    euler = (teacher_step(teacher, x, hi, lo, solver="euler") - exact).abs().max()
    assert heun < 1e-4 * x.abs().max() and euler > 10 * heun


# ---- learning on toy data through the shared trainer -------------------------------------------
N_EVAL = 500  # exact W2 is an assignment problem: 2000 points take 40 s on a busy CPU


def _w2(pipe, ref, **options):
    return wasserstein(pipe.sample(N_EVAL, progress=False, batch_size=N_EVAL, **options), ref)


@pytest.fixture(scope="module")
def ref():
    return load_dataset("8gaussians", split="test", n_points=N_EVAL, seed=0).x


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    run = tmp_path_factory.mktemp("consistency") / "teacher"
    train(load_config("toy-edm", CPU + SMALL + ["train.images=51200", "train.ema_halflife_images=5000"]), run)
    return run


def test_consistency_training_learns_one_step_generation(tmp_path, ref):
    # 100 steps: a curriculum to s1 = 160 (N = 11 -> 161), not iCT's 1280 meant for 400k steps
    cfg = load_config("toy-ct", CPU + SMALL + ["train.images=25600", "train.ema_halflife_images=5000",
                                               "train.log_every_images=2560", "consistency.s1=160"])
    trainer = prepare(cfg, tmp_path / "ct")
    init = genmodels.families.get_family("consistency").load(
        genmodels.families.LoadedRun(tmp_path, {"data_shape": [2]}, cfg, {"net": trainer.modules["net"]}, "cpu"))
    before = _w2(init, ref)
    trainer.fit()
    pipe = genmodels.load(tmp_path / "ct", device="cpu")
    after, two = _w2(pipe, ref), _w2(pipe, ref, steps=2)
    assert pipe.sample_settings() == {"sampler": "consistency", "steps": 1, "eta": 0.0, "sigmas": [pytest.approx(80.0), 0.0]}
    assert after < 0.72 and after < before / 1.8, (before, after)
    assert two < 0.75
    # the curriculum ran to its end: N = s1 + 1 in the last log row
    rows = [json.loads(line) for line in (tmp_path / "ct" / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["ct_levels"] == 11.0 and rows[-1]["ct_levels"] == 161.0


def test_consistency_distillation_beats_the_teacher_at_one_step(teacher, tmp_path, ref):
    teacher_pipe = genmodels.load(teacher, device="cpu")
    one_euler = _w2(teacher_pipe, ref, sampler="euler", steps=1, spacing="karras", sigma_max=80.0)
    # a short run: 10 levels (fewer rounds for agreement to climb from sigma_min), a faster target
    cfg = load_config("toy-cd", CPU + [f"model.base={teacher}", "train.images=51200", "consistency.solver=euler",
                                       "consistency.steps=10", "consistency.target_ema=0.9",
                                       "train.ema_halflife_images=5000"])
    train(cfg, tmp_path / "cd")
    pipe = genmodels.load(tmp_path / "cd", device="cpu")
    assert pipe.config.diffusion.path == "ve" and pipe.config.model.options["hidden"] == 128  # the teacher's
    student = _w2(pipe, ref)
    assert student < 0.6 and student < one_euler / 2, (one_euler, student)
    assert _w2(pipe, ref, steps=2) < 0.75


def test_the_student_starts_as_the_teacher_and_a_changed_teacher_is_refused(teacher, tmp_path):
    cfg = load_config("toy-cd", CPU + [f"model.base={teacher}", "train.images=256"])
    trainer = prepare(cfg, tmp_path / "cd")
    t_net = genmodels.families.load_run(teacher, device="cpu").modules["net"]
    for a, b in zip(trainer.modules["net"].parameters(), t_net.parameters()):
        assert torch.equal(a, b)
    assert "target" in trainer.modules  # CD's EMA target, saved with the run
    trainer.fit()
    genmodels.load(tmp_path / "cd", device="cpu")
    weights = load_file(teacher / "ema.safetensors")
    key = next(iter(weights))
    weights[key] = weights[key] + 1e-3
    original = (teacher / "ema.safetensors").read_bytes()
    try:
        save_file(weights, teacher / "ema.safetensors")
        with pytest.raises(CheckpointError, match="changed since"):
            genmodels.load(tmp_path / "cd", device="cpu")
    finally:
        (teacher / "ema.safetensors").write_bytes(original)


def test_bad_teachers_and_modes_fail_with_one_line(teacher, tmp_path):
    with pytest.raises(ConfigError, match="needs model.base"):
        train(load_config("toy-cd", CPU), tmp_path / "a")
    with pytest.raises(ConfigError, match="trains without a teacher"):
        train(load_config("toy-ct", CPU + [f"model.base={teacher}"]), tmp_path / "b")
    try:
        load_dataset("digits", split="train")
    except DataError as e:
        pytest.skip(str(e))
    with pytest.raises(ConfigError, match="denoises items of shape"):
        train(load_config("toy-cd", CPU + [f"model.base={teacher}", "data.name=digits"]), tmp_path / "c")


def test_load_and_sample_round_trip_and_exact_resume(teacher, tmp_path):
    """A CD run (with its EMA target) trained in two halves equals one trained at once; the
    loaded pipeline draws what the trainer's EMA weights draw, sample i whatever the batch."""
    over = CPU + [f"model.base={teacher}", "consistency.solver=euler", "train.checkpoint_every_images=100000"]
    once = prepare(load_config("toy-cd", over + ["train.images=5120"]), tmp_path / "once")
    once.fit()
    train(load_config("toy-cd", over + ["train.images=2560"]), tmp_path / "halves")
    train(load_config("toy-cd", over + ["train.images=5120"]), tmp_path / "halves", resume=True)
    a, b = load_file(tmp_path / "once" / "model.safetensors"), load_file(tmp_path / "halves" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    pipe = genmodels.load(tmp_path / "once", device="cpu")
    path, param, _ = build.diffusion_parts(pipe.config, pipe.config.model.options)
    direct = generate(build.make_denoiser(once.emas["net"].module, path, param), path, shape=(2,), seeds=range(6),
                      sampler="consistency", sigmas=pipe.grid(), options={"sigma_min": param.sigma_min})
    assert torch.equal(pipe.sample(6, progress=False), direct)
    # sample i is seed i's whatever the batch (up to the matmul's rounding at another batch size)
    assert torch.allclose(pipe.sample(6, progress=False, batch_size=4)[5], pipe.sample(1, seed=5, progress=False)[0],
                          atol=1e-6)
    calls = []
    pipe.net.register_forward_hook(lambda *a: calls.append(1))
    pipe.sample(3, progress=False, sigmas="80,0.8")
    assert len(calls) == 2  # NFE = steps
    assert distill_config(teacher, ["train.images=64"]).model.base == str(teacher)
