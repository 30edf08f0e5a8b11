"""Paths, parameterizations and the Denoiser adapter against independent closed forms."""

import math

import numpy as np
import pytest
import torch

from genmodels.diffusion.paths import RectifiedFlow
from genmodels.diffusion import (ContinuousVP, DiscreteDDPM, NetDenoiser, PARAMETERIZATIONS,
                                 sigma_grid)
from genmodels.objectives import DiffusionObjective

T = 1000


def paper_alpha_bar(schedule: str) -> np.ndarray:
    """alpha_bar_n for n = 0..T-1, written from the papers in numpy, independent of our code."""
    if schedule == "linear":  # Ho et al. 2020, Sec. 4
        betas = np.linspace(1e-4, 0.02, T)
    else:  # Nichol & Dhariwal 2021, Eq. 17, betas clipped at 0.999
        f = lambda t: np.cos((t + 0.008) / 1.008 * np.pi / 2) ** 2  # noqa: E731
        n = np.arange(T)
        betas = np.minimum(1 - f((n + 1) / T) / f(n / T), 0.999)
    return np.cumprod(1 - betas)


def all_paths():
    return [DiscreteDDPM(schedule="linear"), DiscreteDDPM(schedule="cosine"), ContinuousVP()]


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_ddpm_alpha_bar_matches_paper(schedule):
    path = DiscreteDDPM(schedule=schedule, timesteps=T)
    expected = paper_alpha_bar(schedule)
    t = (torch.arange(T, dtype=torch.float64) + 1) / T
    np.testing.assert_allclose(path.alpha(t).numpy() ** 2, expected, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(path.alpha(t) ** 2 + path.sigma(t) ** 2, 1.0, rtol=1e-12)


def test_cosine_alpha_bar_equals_its_closed_form_where_unclipped():
    # Eq. 17 directly: alpha_bar(t) = f(t) / f(0); the product of clipped betas agrees except
    # at the very last steps, where clipping kicks in.
    path = DiscreteDDPM(schedule="cosine", timesteps=T)
    n = np.arange(T - 20)
    f = lambda t: np.cos((t + 0.008) / 1.008 * np.pi / 2) ** 2  # noqa: E731
    closed = f((n + 1) / T) / f(0)
    got = path.alpha(torch.tensor((n + 1) / T)).numpy() ** 2
    np.testing.assert_allclose(got, closed, rtol=1e-7)


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_forward_marginals_match_alpha_bar(schedule):
    """q(x_t | x0) = N(sqrt(abar) x0, (1 - abar) I): check mean and variance of many draws."""
    path = DiscreteDDPM(schedule=schedule, timesteps=T)
    abar = paper_alpha_bar(schedule)
    g = torch.Generator().manual_seed(0)
    n_draws = 200_000
    for n in (0, 100, 500, 900, 999):
        x0 = torch.full((n_draws, 1), 0.7, dtype=torch.float64)
        noise = torch.randn(n_draws, 1, generator=g, dtype=torch.float64)
        t = torch.full((n_draws,), (n + 1) / T, dtype=torch.float64)
        x_t, _, _ = path.add_noise(x0, noise, t)
        se = math.sqrt((1 - abar[n]) / n_draws)
        assert abs(x_t.mean().item() - 0.7 * math.sqrt(abar[n])) < 5 * se
        assert abs(x_t.var().item() - (1 - abar[n])) < 5 * (1 - abar[n]) * math.sqrt(2 / n_draws)


def test_vp_continuous_matches_song_et_al():
    path = ContinuousVP(beta_min=0.1, beta_max=20.0)
    t = torch.linspace(0.01, 1, 50, dtype=torch.float64)
    log_abar = -0.25 * t**2 * (20 - 0.1) * 2 - 0.1 * t  # -1/2 t^2 (bmax - bmin) - t bmin
    torch.testing.assert_close(path.alpha(t) ** 2, log_abar.exp(), rtol=1e-10, atol=0)
    # d alpha / dt by central differences
    h = 1e-6
    fd = (path.alpha(t + h) - path.alpha(t - h)) / (2 * h)
    torch.testing.assert_close(path.d_alpha(t), fd, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("path", all_paths(), ids=["ddpm-linear", "ddpm-cosine", "vp"])
def test_sigma_time_round_trip_and_ends(path):
    t = torch.rand(1000, dtype=torch.float64) * (1 - path.t_min) + path.t_min
    torch.testing.assert_close(path.from_sigma(path.to_sigma(t)), t, rtol=1e-9, atol=1e-9)
    assert path.to_sigma(torch.tensor(0.0, dtype=torch.float64)).item() == 0.0
    s1 = path.to_sigma(torch.tensor(1.0, dtype=torch.float64)).item()
    assert math.isfinite(s1) and s1 > 50  # t = 1 is (almost) pure noise, still finite for VP
    sigmas = sigma_grid(path, 20)
    assert sigmas[-1] == 0 and (sigmas[:-1] > 0).all() and (sigmas.diff() < 0).all()


def test_ddpm_grids_match_ddim_paper_spacings():
    path = DiscreteDDPM(timesteps=T)
    assert (path.c_noise(path.grid(50, spacing="leading"))[:3].round() == torch.tensor([980, 960, 940.])).all()
    trailing = path.c_noise(path.grid(50, spacing="trailing")).round()
    assert trailing[0] == 999 and trailing[-1] == 19
    assert path.c_noise(path.grid(10, spacing="linspace")).round()[0] == 999


def path_and_parameterizations():
    """Every path with every parameterization valid on it: eps, x0 and v hold for any alpha,
    sigma; velocity only on the straight path (alpha + sigma = 1)."""
    named = list(zip(["ddpm-linear", "ddpm-cosine", "vp"], all_paths())) + [("rf", RectifiedFlow())]
    return [pytest.param(path, name, id=f"{name}-{pid}") for pid, path in named
            for name in PARAMETERIZATIONS if name != "velocity" or pid == "rf"]


@pytest.mark.parametrize("path,name", path_and_parameterizations())
def test_target_then_denoised_recovers_x0(path, name):
    param = PARAMETERIZATIONS[name]
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(64, 3, generator=g, dtype=torch.float64)
    noise = torch.randn(64, 3, generator=g, dtype=torch.float64)
    t = torch.rand(64, generator=g, dtype=torch.float64) * 0.98 + 0.01
    x_t, alpha, sigma = path.add_noise(x0, noise, t)
    target = param.target(x0=x0, noise=noise, alpha=alpha, sigma=sigma)
    torch.testing.assert_close(param.denoised(target, x_t=x_t, alpha=alpha, sigma=sigma), x0,
                               rtol=1e-9, atol=1e-9)


class OracleNet(torch.nn.Module):
    """A 'network' that knows x0 and the noise, and returns the exact target for the
    conditioning it is given: proves the adapter's VE <-> path conversions are consistent."""

    def __init__(self, path, param, x0, noise):
        super().__init__()
        self.path, self.param, self.x0, self.noise = path, param, x0, noise
        self.seen_c_noise = None

    def forward(self, x_t, c_noise, cond=None):
        self.seen_c_noise = c_noise
        t = self.t
        _, alpha, sigma = self.path.add_noise(self.x0, self.noise, t)
        return self.param.target(x0=self.x0, noise=self.noise, alpha=alpha, sigma=sigma)


@pytest.mark.parametrize("path,name", path_and_parameterizations())
def test_denoiser_adapter_in_ve_coordinates(path, name):
    param = PARAMETERIZATIONS[name]
    g = torch.Generator().manual_seed(2)
    x0 = torch.randn(8, 2, generator=g, dtype=torch.float64)
    noise = torch.randn(8, 2, generator=g, dtype=torch.float64)
    t = torch.rand(8, generator=g, dtype=torch.float64) * 0.9 + 0.05
    net = OracleNet(path, param, x0, noise)
    net.t = t
    sigma = path.to_sigma(t)
    x_ve = x0 + sigma[:, None] * noise  # VE coordinates: x = x0 + sigma * noise
    denoised = NetDenoiser(net, path, param)(x_ve, sigma)
    torch.testing.assert_close(denoised, x0, rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(net.seen_c_noise, path.c_noise(t), rtol=1e-8, atol=1e-6)


@pytest.mark.parametrize("name", list(PARAMETERIZATIONS))
def test_min_snr_weight_is_min_snr_on_x0_errors(name):
    """Weighted loss on this parameterization's output == min(SNR, gamma) * |x0 error|^2."""
    path = RectifiedFlow() if name == "velocity" else DiscreteDDPM(schedule="cosine")
    param = PARAMETERIZATIONS[name]
    objective = DiffusionObjective(path, param, min_snr_gamma=5.0)
    g = torch.Generator().manual_seed(3)
    x0, noise = torch.randn(2, 32, 4, generator=g, dtype=torch.float64)
    t = torch.rand(32, generator=g, dtype=torch.float64) * 0.98 + 0.01
    x_t, alpha, sigma = path.add_noise(x0, noise, t)
    out = torch.randn(32, 4, generator=g, dtype=torch.float64)
    target = param.target(x0=x0, noise=noise, alpha=alpha, sigma=sigma)
    weighted = objective.weight(alpha, sigma).flatten() * (out - target).square().sum(1)
    x0_err = (param.denoised(out, x_t=x_t, alpha=alpha, sigma=sigma) - x0).square().sum(1)
    snr = (alpha / sigma).flatten() ** 2
    torch.testing.assert_close(weighted, snr.clamp(max=5.0) * x0_err, rtol=1e-8, atol=1e-12)


def test_objective_is_per_sample_and_uses_the_generator():
    path, param = DiscreteDDPM(), PARAMETERIZATIONS["eps"]
    objective = DiffusionObjective(path, param)
    net = lambda x_t, c, cond=None: torch.zeros_like(x_t)  # noqa: E731  predicts eps = 0
    batch = {"x": torch.zeros(4096, 2)}
    loss, _ = objective(net, batch, generator=torch.Generator().manual_seed(0))
    assert loss.shape == (4096,)
    assert abs(loss.mean().item() - 1.0) < 0.05  # E|noise|^2 / dim = 1
    again, _ = objective(net, batch, generator=torch.Generator().manual_seed(0))
    assert torch.equal(loss, again)
