"""The stochastic few-step samplers, DPM-Solver++(3M) SDE and Restart sampling, on Gaussian data
N(mu, s^2), where the exact denoiser and the exact probability-flow ODE solution are known
(test_samplers.py); their default grids; diffusers as an oracle in test_fast_samplers_diffusers.py."""

import math

import pytest
import torch

from genmodels.diffusion import DiscreteDDPM, sigma_grid
from genmodels.errors import ConfigError
from genmodels.families.diffusion import SAMPLE_OPTIONS
from genmodels.samplers import (DEFAULT_GRIDS, SAMPLERS, SeededNoise, evaluations, generate, grid_settings,
                                restart_branches, restart_plan, run_sampler, sample_dpmpp_3m_sde, sample_heun,
                                sample_restart)
from test_fast_samplers import ode_errors
from test_samplers import MU, S, gaussian_denoiser

N = 20_000


def no_noise():
    raise AssertionError("a deterministic setting drew noise")


def draw(sampler, steps, *, seed=0, grid=None, denoiser=gaussian_denoiser, **kwargs):
    """N samples of ``sampler`` on the cosine DDPM's grid (default: the sampler's own), from the
    path's prior and with fresh noise from one generator."""
    path = DiscreteDDPM(schedule="cosine")
    sigmas = sigma_grid(path, steps, **(grid or grid_settings(sampler.__name__.removeprefix("sample_"))))
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, dtype=torch.float64, generator=g) * path.prior_std(sigmas[0])
    return sampler(denoiser, x, sigmas, noise=lambda: torch.randn(N, dtype=torch.float64, generator=g), **kwargs)


def assert_data_law(out, std_tol=0.03):
    assert abs(out.mean().item() - MU) < 0.01, out.mean().item()
    assert abs(out.std().item() - S) < std_tol * S, out.std().item()


# ---- DPM-Solver++(3M) SDE ---------------------------------------------------------------------
def test_3m_sde_at_eta_0_is_third_order_and_k_diffusions_weight_second_order():
    """eta = 0 is DPM-Solver++(3M) on the probability-flow ODE: with the Taylor weight on the
    second difference the error falls as h^3 (3.36 from 64 to 128 steps); k-diffusion's half
    weight leaves an O(h^2) term (2.09), 20x the error at 128 steps."""
    steps = (16, 32, 64, 128)
    ours = ode_errors(sample_dpmpp_3m_sde, steps, eta=0.0, noise=no_noise)
    theirs = ode_errors(sample_dpmpp_3m_sde, steps, eta=0.0, k_diffusion=True, noise=no_noise)
    rate = [math.log2(a / b) for a, b in zip(ours, ours[1:])]
    rate_k = [math.log2(a / b) for a, b in zip(theirs, theirs[1:])]
    assert 2.8 < rate[-1] < 3.6 and 1.7 < rate_k[-1] < 2.4, (rate, rate_k)
    assert ours[-1] < theirs[-1] / 10, (ours, theirs)


@pytest.mark.parametrize("k_diffusion", [False, True])
def test_3m_sde_at_eta_1_samples_the_data_distribution(k_diffusion):
    """At eta = 1 the solver integrates the reverse SDE: on the exact denoiser the law of its
    samples approaches the data's as steps grow (std 0.33 / 0.32 at 20 trailing steps, within
    2 % of 0.3 at 200)."""
    outs = [draw(sample_dpmpp_3m_sde, steps, k_diffusion=k_diffusion) for steps in (20, 200)]
    errors = [abs(out.std().item() - S) for out in outs]
    assert_data_law(outs[-1], std_tol=0.02)
    assert errors[-1] < errors[0], errors


def test_3m_sde_noise_is_per_sample_and_scaled_by_eta():
    """Sample i depends on its own seed only (SeededNoise); one step from sigma = 2 to 1 (h = log 2,
    H = (1 + eta) h) is e^(-H) x + (1 - e^(-H)) D(x) plus noise of std s' sqrt(1 - e^(-2 eta h))."""
    sigmas = sigma_grid(DiscreteDDPM(schedule="cosine"), 10, spacing="trailing")
    x = torch.full((8, 3), 5.0, dtype=torch.float64)
    run = lambda seeds: sample_dpmpp_3m_sde(gaussian_denoiser, x[:len(seeds)].clone(), sigmas,  # noqa: E731
                                            noise=SeededNoise(seeds, (3,), dtype=torch.float64))
    torch.testing.assert_close(run(range(8))[5], run([5])[0], rtol=0, atol=0)
    one_step = torch.tensor([2.0, 1.0], dtype=torch.float64)
    for eta in (0.5, 1.0):
        big_h = (1 + eta) * math.log(2)
        mean = math.exp(-big_h) * x + (1 - math.exp(-big_h)) * gaussian_denoiser(x, 2.0)
        for z in (0.0, 1.0):
            out = sample_dpmpp_3m_sde(gaussian_denoiser, x.clone(), one_step, eta=eta,
                                      noise=lambda: torch.full_like(x, z))
            torch.testing.assert_close(out, mean + z * math.sqrt(1 - 2 ** (-2 * eta)))


# ---- Restart sampling --------------------------------------------------------------------------
def counting(denoiser):
    def counted(x, sigma, cond=None):
        counted.calls += 1
        return denoiser(x, sigma, cond)

    counted.calls = 0
    return counted


@pytest.mark.parametrize("options", [
    {},
    {"restart_interval": (0.1, 2.0), "restart_k": 3, "restart_steps": 4},
    {"restarts": [(0.05, 0.3, 2, 3), (0.5, 5.0, 1, 5), (0.4, 6.0, 2, 1)]},  # overlapping ones too
    {"restart_k": 0},
], ids=["default", "one", "several", "k0"])
def test_restart_reports_the_evaluations_it_makes(options):
    path = DiscreteDDPM(schedule="cosine")
    for steps in (6, 12):
        sigmas = sigma_grid(path, steps, **grid_settings("restart"))
        denoiser = counting(gaussian_denoiser)
        sample_restart(denoiser, torch.randn(5, dtype=torch.float64), sigmas, **options)
        assert denoiser.calls == evaluations("restart", steps, sigmas=sigmas, **options)
        assert denoiser.calls == evaluations("restart", steps, **options)  # every interval reached


def test_restart_counts_an_interval_the_grid_never_reaches_as_free():
    sigmas = sigma_grid(DiscreteDDPM(schedule="cosine"), 8, **grid_settings("restart"))[4:]  # from mid-way
    options = {"restarts": [(0.05, 0.3, 2, 3), (3 * float(sigmas[0]), 100.0, 2, 3)]}  # the 2nd above the top
    denoiser = counting(gaussian_denoiser)
    sample_restart(denoiser, torch.randn(5, dtype=torch.float64), sigmas, **options)
    assert denoiser.calls == evaluations("restart", len(sigmas) - 1, sigmas=sigmas, **options) == 2 * 4 - 1 + 12


def test_restart_branches_from_the_nearest_grid_level_below_sigma_max():
    sigmas = torch.tensor([80.0, 10.0, 1.0, 0.1, 0.01, 0.0], dtype=torch.float64)
    branches = restart_branches(sigmas, restart_plan(restarts=[(0.2, 2.0, 2, 3), (0.03, 0.05, 1, 2),
                                                                (50.0, 90.0, 1, 1), (100.0, 200.0, 1, 1)]))
    # 0.2 is nearer 0.1 than 1.0 in log sigma; 0.03 snaps to 0.01 (below its sigma_max 0.05);
    # 50 to 10 (80, the top, is no step's end); 100 lies above the grid: never reached
    assert sorted(branches) == [0.01, 0.1, 10.0]
    (k, grid), = branches[0.1]
    assert k == 2 and len(grid) == 4 and grid[0] == 2.0 and grid[-1] == 0.1 and (grid.diff() < 0).all()


def test_restart_without_restarts_is_heun():
    sigmas = sigma_grid(DiscreteDDPM(schedule="cosine"), 10, **grid_settings("restart"))
    x = torch.linspace(-80, 80, 41, dtype=torch.float64)
    plain = sample_heun(gaussian_denoiser, x.clone(), sigmas)
    for options in ({"restart_k": 0}, {"restart_interval": (1e3, 1e4)}):  # none, and one above the top
        torch.testing.assert_close(sample_restart(gaussian_denoiser, x.clone(), sigmas, noise=no_noise, **options),
                                   plain, rtol=0, atol=0)


def test_restarts_contract_the_error_of_a_coarse_grid():
    """8 Heun steps leave the std 40 % too high (0.42 for 0.3); each restart of [0.1, 1] with 16
    fine steps contracts the error made above it (Xu et al. Theorem 2): 0.315 after one, 0.302
    after three."""
    errors = [abs(draw(sample_restart, 8, restart_interval=(0.1, 1.0), restart_k=k, restart_steps=16).std().item() - S)
              for k in (0, 1, 3)]
    assert errors[0] > 0.3 * S and errors[0] > errors[1] > errors[2] and errors[2] < 0.02 * S, errors


def test_restarts_keep_an_accurate_ode_endpoint_in_law():
    """On a fine grid the ODE maps the prior to the data's law; restarting (adding the forward
    process's noise and integrating back, accurately) must not move it."""
    plain = draw(sample_restart, 100, restart_k=0)
    restarted = draw(sample_restart, 100, restarts=[(0.1, 1.0, 2, 40), (1.0, 10.0, 1, 40)])
    assert_data_law(plain, std_tol=0.02)
    assert_data_law(restarted, std_tol=0.02)
    assert (plain - restarted).abs().mean() > 0.1 * S  # the restarts did re-draw the samples


@pytest.mark.parametrize("options,message", [
    ({"restart_interval": (0.3, 0.3)}, "0 < sigma_min < sigma_max"),
    ({"restart_k": -1}, "integer k >= 0"),
    ({"restart_steps": 0}, "steps >= 1"),
    ({"restarts": [(0.1, 1.0, 2)]}, r"a restart is \(sigma_min, sigma_max, k, steps\)"),
])
def test_restart_refuses_bad_intervals(options, message):
    with pytest.raises(ConfigError, match=message):
        sample_restart(gaussian_denoiser, torch.zeros(3), torch.tensor([10.0, 1.0, 0.0]), **options)


# ---- registry, grids, CLI ------------------------------------------------------------------------
def test_new_samplers_are_registered_and_offered_by_the_cli():
    choices = next(o for o in SAMPLE_OPTIONS if o.name == "sampler").allowed()
    assert {"dpmpp_3m_sde", "restart"} <= set(SAMPLERS) and {"dpmpp_3m_sde", "restart"} <= set(choices)
    flags = {o.cli_flag for o in SAMPLE_OPTIONS}
    assert {"--restart-interval", "--restart-k", "--restart-steps"} <= flags
    x, sigmas = torch.zeros(3), torch.tensor([10.0, 1.0, 0.0])
    run_sampler("dpmpp_3m_sde", gaussian_denoiser, x, sigmas, eta=0.0, noise=no_noise)  # takes eta
    with pytest.raises(ConfigError, match="takes no eta"):
        run_sampler("restart", gaussian_denoiser, x, sigmas, eta=0.5)


def test_only_the_new_samplers_have_default_grids_and_a_given_spacing_wins():
    assert set(DEFAULT_GRIDS) == {"dpmpp_3m_sde", "restart"}
    for name in set(SAMPLERS) - set(DEFAULT_GRIDS):  # the existing samplers keep the path's default
        assert grid_settings(name) == {"spacing": None, "sigma_max": None}
    assert grid_settings("restart") == {"spacing": "karras", "sigma_max": 80.0}
    assert grid_settings("restart", sigma_max=20.0) == {"spacing": "karras", "sigma_max": 20.0}
    assert grid_settings("restart", "trailing") == {"spacing": "trailing", "sigma_max": None}
    assert grid_settings("dpmpp_3m_sde") == {"spacing": "trailing", "sigma_max": None}


@pytest.mark.parametrize("name", ["dpmpp_3m_sde", "restart"])
def test_generate_samples_on_the_samplers_default_grid(name):
    path, seeds, shape = DiscreteDDPM(schedule="cosine"), range(3), (4,)
    out = generate(gaussian_denoiser, path, shape=shape, seeds=seeds, sampler=name, steps=6)
    sigmas = sigma_grid(path, 6, **DEFAULT_GRIDS[name])
    noise = SeededNoise(seeds, shape)
    x = noise() * path.prior_std(sigmas[0]).item()
    torch.testing.assert_close(out, run_sampler(name, gaussian_denoiser, x, sigmas, noise=noise).float())
    path_default = generate(gaussian_denoiser, path, shape=shape, seeds=seeds, sampler=name, steps=6, spacing="leading")
    assert not torch.allclose(out, path_default)
