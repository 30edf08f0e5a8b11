"""Score-based SDEs and EDM on the shared core: VE/VP paths and every objective's targets against
closed forms under the same seed, EDM's preconditioning against Karras et al. Table 1, the
reverse-SDE samplers against Gaussian data (against diffusers' ScoreSdeVeScheduler in
test_score_sde_diffusers.py), 2-D mixtures learned, and PF-ODE likelihoods against analytic and
sampled densities."""

import math

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment

import genmodels
from genmodels.config import load_config
from genmodels.data import TOY_DISTRIBUTIONS
from genmodels.diffusion import NetDenoiser, get_parameterization, score, sigma_grid
from genmodels.diffusion.paths import ContinuousVE, ContinuousVP, RectifiedFlow
from genmodels.errors import ConfigError
from genmodels.metrics.likelihood import ode_log_likelihood, ode_sigma_range
from genmodels.metrics.toy import mmd_rbf, wasserstein
from genmodels.objectives import DiffusionObjective
from genmodels.samplers import sample_euler_maruyama, sample_pc
from genmodels.train.run import train

F64 = torch.float64


def test_ve_and_vp_paths_closed_forms():
    g = torch.Generator().manual_seed(0)
    t = torch.rand(100, dtype=F64, generator=g)
    ve = ContinuousVE(sigma_min=0.02, sigma_max=30.0)
    torch.testing.assert_close(ve.to_sigma(t), 0.02 * (30.0 / 0.02) ** t)
    torch.testing.assert_close(ve.from_sigma(ve.to_sigma(t)), t)
    x0, noise = torch.randn(100, 2, dtype=F64, generator=g), torch.randn(100, 2, dtype=F64, generator=g)
    x_t, alpha, sigma = ve.add_noise(x0, noise, t)
    torch.testing.assert_close(x_t, x0 + (0.02 * 1500 ** t)[:, None] * noise)
    assert float(ve.prior_std(torch.tensor(30.0))) == 30.0
    vp = ContinuousVP(beta_min=0.1, beta_max=20.0)
    abar = torch.exp(-0.5 * t**2 * 19.9 - 0.1 * t)
    x_t, alpha, sigma = vp.add_noise(x0, noise, t)
    torch.testing.assert_close(x_t, abar.sqrt()[:, None] * x0 + (1 - abar).sqrt()[:, None] * noise)
    torch.testing.assert_close(vp.from_sigma(vp.to_sigma(t)), t)


class Recorder(torch.nn.Module):
    """Returns zeros and keeps what the objective fed it, so loss = mean(target^2)."""

    def forward(self, x, c_noise):
        self.x, self.c_noise = x.clone(), c_noise.clone()
        return torch.zeros_like(x)


def _closed_form(case, x0, g):
    """(net input, target) recomputed from the papers' formulas with the objective's draws."""
    b = len(x0)
    if case == "vp-score":  # Song et al. 2021 Eq. 33: x_t = sqrt(abar) x0 + sqrt(1 - abar) z
        t = 1e-3 + (1 - 1e-3) * torch.rand(b, generator=g)
        z = torch.randn(x0.shape, generator=g)
        abar = torch.exp(-0.5 * t.double() ** 2 * 19.9 - 0.1 * t.double()).float()[:, None]
        return abar.sqrt() * x0 + (1 - abar).sqrt() * z, -z
    if case == "ve-score":  # NCSN: x_t = x0 + sigma z, target sigma * score = -z
        t = torch.rand(b, generator=g)
        z = torch.randn(x0.shape, generator=g)
        return x0 + (0.01 * 500.0 ** t.double()).float()[:, None] * z, -z
    if case == "ve-edm":  # Karras Table 1: ln sigma ~ N(-1.2, 1.2^2), F-target
        s = torch.exp(-1.2 + 1.2 * torch.randn(b, generator=g, dtype=F64)).clamp(0.01, 5.0).float()[:, None]
        z = torch.randn(x0.shape, generator=g)
        x = x0 + s * z
        c_skip, c_out, c_in = 0.25 / (s**2 + 0.25), s * 0.5 / (s**2 + 0.25).sqrt(), 1 / (s**2 + 0.25).sqrt()
        return c_in * x, (x0 - c_skip * x) / c_out
    t = torch.rand(b, generator=g) * (1 - 1e-3)
    z = torch.randn(x0.shape, generator=g)
    if case == "rf-ot":  # OT-CFM (Tong et al. 2024): noise re-paired by the exact minibatch plan
        rows, cols = linear_sum_assignment(torch.cdist(x0.double(), z.double()).square().numpy())
        z = z[torch.from_numpy(cols[np.argsort(rows)])]
    return (1 - t)[:, None] * x0 + t[:, None] * z, z - x0  # I-CFM: straight path, velocity


@pytest.mark.parametrize("case", ["vp-score", "ve-score", "ve-edm", "rf-icfm", "rf-ot"])
def test_objective_targets_match_closed_forms_under_the_same_seed(case):
    path = {"vp-score": ContinuousVP(), "ve-score": ContinuousVE(sigma_min=0.01, sigma_max=5.0),
            "ve-edm": ContinuousVE(sigma_min=0.01, sigma_max=5.0, t_sampling="log_normal"),
            "rf-icfm": RectifiedFlow(), "rf-ot": RectifiedFlow()}[case]
    param = get_parameterization({"vp-score": "score", "ve-score": "score", "ve-edm": "edm"}.get(case, "velocity"),
                                 sigma_data=0.5)
    objective = DiffusionObjective(path, param, coupling="ot" if case == "rf-ot" else "independent")
    x0 = torch.randn(32, 2, generator=torch.Generator().manual_seed(1)) * 0.7 + 0.3
    net = Recorder()
    loss, _ = objective(net, {"x": x0}, generator=torch.Generator().manual_seed(7))
    net_input, target = _closed_form(case, x0, torch.Generator().manual_seed(7))
    torch.testing.assert_close(net.x, net_input, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(loss, target.square().mean(1), rtol=1e-5, atol=1e-5)


def test_edm_preconditioning_matches_karras_table_1():
    param = get_parameterization("edm", sigma_data=0.5)
    s = torch.tensor([0.002, 0.1, 0.5, 3.0, 80.0], dtype=F64)
    c_skip, c_out, c_in = param.coefficients(torch.ones_like(s), s)
    torch.testing.assert_close(c_skip, 0.25 / (s**2 + 0.25))
    torch.testing.assert_close(c_out, s * 0.5 / (0.25 + s**2).sqrt())
    torch.testing.assert_close(c_in, 1 / (0.25 + s**2).sqrt())
    # on a VP path the same D through VE coordinates: x = x_t / alpha, s = sigma / alpha
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(5, 3, dtype=F64, generator=g), torch.randn(5, 3, dtype=F64, generator=g)
    alpha = torch.rsqrt(1 + s**2)[:, None]
    sigma = alpha * s[:, None]
    x_t = alpha * x0 + sigma * noise
    target = param.target(x0=x0, noise=noise, alpha=alpha, sigma=sigma)
    torch.testing.assert_close(param.denoised(target, x_t=x_t, alpha=alpha, sigma=sigma), x0)
    # |F - target|^2 = lambda(s) |D - x0|^2 with EDM's lambda = (s^2 + sd^2) / (s sd)^2
    out = target + 0.1 * torch.randn(5, 3, dtype=F64, generator=g)
    d_err = (param.denoised(out, x_t=x_t, alpha=alpha, sigma=sigma) - x0).square()
    lam = ((s**2 + 0.25) / (0.5 * s) ** 2)[:, None]
    torch.testing.assert_close((out - target).square(), lam * d_err)
    with pytest.raises(ConfigError, match="sigma_data"):
        get_parameterization("edm", sigma_data=0.0)


def test_log_normal_sigma_density():
    path = ContinuousVE(sigma_min=1e-4, sigma_max=1e4, t_sampling="log_normal", p_mean=-1.2, p_std=1.2)
    t = path.sample_t(20_000, generator=torch.Generator().manual_seed(0), device="cpu")
    ln_s = path.to_sigma(t.double()).log()
    assert abs(ln_s.mean().item() + 1.2) < 0.03 and abs(ln_s.std().item() - 1.2) < 0.03
    with pytest.raises(ConfigError, match="t_sampling"):
        genmodels.build.build_path(load_config("toy-ddpm", ["diffusion.t_sampling=log_normal"]).diffusion)


MU = torch.tensor([0.5, -0.3], dtype=F64)
COV = torch.tensor([[0.6, 0.25], [0.25, 0.4]], dtype=F64)


def gaussian_denoiser(x, sigma, cond=None):
    """E[x0 | x] for data N(MU, COV) observed as x = x0 + sigma z."""
    sigma = torch.as_tensor(sigma, dtype=F64)
    s2 = (sigma.reshape(-1, 1, 1) if sigma.ndim else sigma) ** 2
    gain = COV @ torch.linalg.inv(COV + s2 * torch.eye(2, dtype=F64))
    return MU + ((x - MU).unsqueeze(-2) @ gain.transpose(-1, -2)).squeeze(-2)


def test_score_from_a_denoiser_is_the_gaussian_score():
    x = torch.randn(7, 2, dtype=F64, generator=torch.Generator().manual_seed(0))
    sigma = 0.7
    expected = -(x - MU) @ torch.linalg.inv(COV + sigma**2 * torch.eye(2, dtype=F64))
    torch.testing.assert_close(score(gaussian_denoiser, x, sigma), expected)


def _seeded(shape, seed):
    g = torch.Generator().manual_seed(seed)
    return lambda: torch.randn(shape, generator=g, dtype=F64)


def test_predictor_alone_is_euler_maruyama():
    """PC without corrector steps is the reverse-diffusion predictor, i.e. Euler-Maruyama on the
    reverse SDE, draw for draw on the same noise."""
    levels = torch.logspace(math.log10(8.0), math.log10(0.01), 30, dtype=F64)
    sigmas = torch.cat([levels, levels.new_zeros(1)])
    x_T = torch.randn(4, 2, dtype=F64, generator=torch.Generator().manual_seed(3)) * 8.0
    pc = sample_pc(gaussian_denoiser, x_T.clone(), sigmas, snr=0.16, corrector_steps=0, noise=_seeded((4, 2), 11))
    em = sample_euler_maruyama(gaussian_denoiser, x_T.clone(), sigmas, noise=_seeded((4, 2), 11))
    torch.testing.assert_close(em, pc)
    assert not torch.allclose(pc, sample_pc(gaussian_denoiser, x_T.clone(), sigmas, snr=0.16, corrector_steps=1,
                                            noise=_seeded((4, 2), 11)))  # the corrector changes the draw


@pytest.mark.parametrize("sampler,steps,kwargs", [(sample_euler_maruyama, 300, {}),
                                                  (sample_pc, 100, {"snr": 0.16})])
def test_reverse_sde_samplers_draw_the_data_distribution(sampler, steps, kwargs):
    """With the exact denoiser of Gaussian data, the samples' mean and covariance are the data's
    (20,000 samples: standard errors ~0.005)."""
    path = ContinuousVE(sigma_min=0.01, sigma_max=20.0)
    sigmas = sigma_grid(path, steps)
    x = torch.randn(20_000, 2, dtype=F64, generator=torch.Generator().manual_seed(0)) * sigmas[0]
    out = sampler(gaussian_denoiser, x, sigmas, noise=_seeded((20_000, 2), 1), **kwargs)
    torch.testing.assert_close(out.mean(0), MU, rtol=0, atol=0.03)
    torch.testing.assert_close(torch.cov(out.T), COV, rtol=0, atol=0.04)


def mode_stats(x, dist):
    d = torch.cdist(x.double(), dist.modes.double())
    near = d.min(1).values < 3 * dist.mode_std
    hits = torch.bincount(d.argmin(1)[near], minlength=len(dist.modes))
    return int((hits > 0).sum()), near.double().mean().item()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One short training run per (config, dataset), shared by the fits and likelihood tests."""
    runs = {}

    def get(config, data):
        if (config, data) not in runs:
            out = tmp_path_factory.mktemp(f"{config}-{data}") / "run"
            train(load_config(config, [f"data.name={data}", "train.images=300000", "train.device=cpu"]), out)
            runs[config, data] = genmodels.load(out, device="cpu")
        return runs[config, data]

    return get


@pytest.mark.parametrize("config,sampler,steps", [("toy-vpsde", "euler_maruyama", 200), ("toy-vpsde", "heun", 25),
                                                  ("toy-edm", "pc", 100), ("toy-edm", "heun", 18)])
def test_score_models_fit_eight_gaussians(trained, config, sampler, steps):
    """Measured (300k images, ~15 s): W2 0.20-0.26, 8/8 modes, 70-95 % of samples within 3 std
    of a mode; two real samples of 1,000 are ~0.3 apart in W2, a collapse onto the origin ~2."""
    dist = TOY_DISTRIBUTIONS["8gaussians"]
    x = trained(config, "8gaussians").sample(1000, seed=0, sampler=sampler, steps=steps, progress=False)
    modes, near = mode_stats(x, dist)
    w2 = wasserstein(x, dist.sample(1000, generator=torch.Generator().manual_seed(0)), p=2)
    assert modes == 8 and near > 0.6 and w2 < 0.45, (modes, near, w2)


@pytest.mark.parametrize("sampler,steps", [("euler_maruyama", 200), ("euler", 50)])
def test_vp_sde_fits_two_moons(trained, sampler, steps):
    dist = TOY_DISTRIBUTIONS["moons"]
    x = trained("toy-vpsde", "moons").sample(1000, seed=0, sampler=sampler, steps=steps, progress=False)
    real = dist.sample(1000, generator=torch.Generator().manual_seed(0))
    w2, mmd = wasserstein(x, real, p=2), mmd_rbf(x, real)
    assert w2 < 0.3 and mmd < 0.005, (w2, mmd)


class GaussianVelocity(torch.nn.Module):
    """The exact flow-matching velocity of data N(0, c^2 I) on the straight path."""

    def __init__(self, c):
        super().__init__()
        self.c = c

    def forward(self, x_t, c_noise):
        t = (c_noise.double() / 1000)[:, None]
        x0_hat = (1 - t) * self.c**2 / ((1 - t) ** 2 * self.c**2 + t**2) * x_t
        return (x_t - x0_hat) / t


class GaussianScore(torch.nn.Module):
    """sigma times the exact score of data N(0, c^2 I) on the VE path."""

    def __init__(self, c, path):
        super().__init__()
        self.c, self.path = c, path

    def forward(self, x_t, c_noise):
        s = self.path.to_sigma(c_noise.double() / 1000)[:, None]
        return -s * x_t / (self.c**2 + s**2)


@pytest.mark.parametrize("family", ["flow", "score"])
def test_pf_ode_likelihood_of_a_gaussian_model_is_analytic(family):
    """A model whose net is the exact velocity / score of N(0, c^2 I), through the Denoiser
    adapter and the path's own sigma range: log p equals the Gaussian's at sigma_min."""
    c = 0.8
    if family == "flow":
        path = RectifiedFlow()
        denoiser = NetDenoiser(GaussianVelocity(c), path, get_parameterization("velocity"))
    else:
        path = ContinuousVE(sigma_min=0.01, sigma_max=50.0)
        denoiser = NetDenoiser(GaussianScore(c, path), path, get_parameterization("score"))
    sigma_min, sigma_max, prior_std = ode_sigma_range(path)
    x = torch.randn(8, 2, dtype=F64, generator=torch.Generator().manual_seed(0)) * c
    result = ode_log_likelihood(denoiser, x, sigma_min=sigma_min, sigma_max=sigma_max, prior_std=prior_std,
                                rtol=1e-7, atol=1e-7)
    var = c**2 + sigma_min**2
    expected = -0.5 * x.square().sum(1) / var - math.log(2 * math.pi * var)
    torch.testing.assert_close(result.log_px, expected, rtol=0, atol=2e-3)


def test_pf_ode_likelihood_of_a_learned_model_matches_its_samples(trained):
    """The learned 8-gaussian EDM model's ODE density integrates to ~1 on a grid, and the mass it
    puts near each mode equals the fraction of its own (ODE) samples there within 4 standard
    errors of 4,000 draws (plus 0.005 for the grid's quadrature). Measured: every mode within
    1.1 standard errors (e.g. 0.1238 on the grid, 0.1182 sampled, se 0.0052)."""
    pipe = trained("toy-edm", "8gaussians")
    dist = TOY_DISTRIBUTIONS["8gaussians"]
    h = 0.08
    axis = torch.arange(-2.4, 2.4 + 1e-9, h, dtype=F64)
    grid = torch.cartesian_prod(axis, axis)
    sigma_min, sigma_max, prior_std = ode_sigma_range(pipe.path)
    log_p = ode_log_likelihood(pipe.denoiser, grid.float(), sigma_min=sigma_min, sigma_max=sigma_max,
                               prior_std=prior_std, rtol=1e-4, atol=1e-4).log_px
    mass = log_p.exp() * h**2
    assert 0.95 < mass.sum().item() < 1.02, mass.sum().item()
    x = pipe.sample(4000, seed=0, sampler="rk45", steps=2, progress=False, batch_size=4000).double()
    radius = 0.3
    for mode in dist.modes.double():
        p_grid = mass[(grid - mode).norm(dim=1) < radius].sum().item()
        p_samples = ((x - mode).norm(dim=1) < radius).double().mean().item()
        se = math.sqrt(p_grid * (1 - p_grid) / len(x))
        assert abs(p_grid - p_samples) < 4 * se + 0.005, (mode.tolist(), p_grid, p_samples)


def test_cli_trains_samples_and_scores_a_score_model(tmp_path, capsys):
    """genmodels train (VE score model) -> sample with pc -> eval with the PF-ODE likelihood; and
    a bad corrector option is one line naming it."""
    from tests.test_cli import assert_one_line_error, run_cli

    run = tmp_path / "ve"
    code, _, err = run_cli(["train", "toy-vesde", "train.images=20000", "train.device=cpu", "--out", run], capsys)
    assert code in (0, None), err
    code, out, err = run_cli(["sample", run, "--n", 200, "--sampler", "pc", "--steps", 30, "--snr", 0.1,
                              "--corrector-steps", 2, "--out", tmp_path / "x.npz"], capsys)
    assert code in (0, None), err
    x = np.load(tmp_path / "x.npz")["arr_0"]
    assert x.shape == (200, 2) and np.isfinite(x).all()
    code, out, err = run_cli(["eval", run, "--metrics", "nll", "--nll-n", 32, "--json"], capsys)
    assert code in (0, None), err
    import json

    nll = json.loads(out)["nll"]
    # the 8-gaussian mixture's differential entropy is ~1.3 nats; a 20k-image model is worse but finite
    assert math.isfinite(nll) and 1.0 < nll < 6.0, nll
    code, _, err = run_cli(["sample", run, "--sampler", "pc", "--snr", -1, "--out", tmp_path / "y.npz"], capsys)
    assert_one_line_error(code, err, "snr")
