"""The fast solvers: convergence order on Gaussian data (exact ODE solution known), grids, DDIM
inversion; diffusers' schedulers as oracles in test_fast_samplers_diffusers.py."""

import math

import pytest
import torch

from genmodels.diffusion import DiscreteDDPM, NetDenoiser, PARAMETERIZATIONS, sigma_grid
from genmodels.diffusion.sigmas import karras_sigmas
from genmodels.samplers import (SAMPLERS, ddim_invert, round_trip_error, sample_dpmpp_2m,
                                sample_dpmpp_2m_sde, sample_euler, sample_euler_ancestral, sample_heun,
                                sample_rk45, sample_unipc)
from test_samplers import TinyEpsNet, exact_ode_solution, gaussian_denoiser

SIGMA_MAX, SIGMA_MIN = 20.0, 0.05


def log_grid(steps):
    """Uniform in log sigma, without the final 0: the error is measured at SIGMA_MIN."""
    return torch.logspace(math.log10(SIGMA_MAX), math.log10(SIGMA_MIN), steps + 1, dtype=torch.float64)


def ode_errors(sampler, step_counts, **kwargs):
    x_start = torch.linspace(-40, 40, 101, dtype=torch.float64)
    exact = exact_ode_solution(x_start, SIGMA_MAX, SIGMA_MIN)
    return [(sampler(gaussian_denoiser, x_start.clone(), log_grid(n), **kwargs) - exact).abs().max().item()
            for n in step_counts]


@pytest.mark.parametrize("sampler,kwargs,order", [
    (sample_euler, {}, 1),
    (sample_heun, {}, 2),
    (sample_dpmpp_2m, {}, 2),
    (sample_dpmpp_2m_sde, {"eta": 0.0}, 2),
    (sample_unipc, {"order": 2, "lower_order_final": False}, 2),
    (sample_unipc, {"order": 3, "lower_order_final": False}, 3),
], ids=["euler", "heun", "dpmpp_2m", "dpmpp_2m_sde-eta0", "unipc2", "unipc3"])
def test_convergence_order_on_gaussian_data(sampler, kwargs, order):
    errors = ode_errors(sampler, (8, 16, 32, 64), **kwargs)
    rates = [math.log2(a / b) for a, b in zip(errors, errors[1:])]
    # UniPC's corrector lifts the interior steps by one order; the last predictor step has no
    # evaluation after it to correct it, so the global rate lies between p and p + 1.
    upper = order + 1.6 if sampler is sample_unipc else order + 0.6
    assert order - 0.35 < rates[-1] < upper, (errors, rates)


def test_rk45_meets_its_tolerance_and_spends_fewer_evaluations_when_looser():
    x_start = torch.linspace(-40, 40, 101, dtype=torch.float64)
    exact = exact_ode_solution(x_start, SIGMA_MAX, SIGMA_MIN)
    results = {}
    for tol in (1e-3, 1e-6):
        stats = {}
        out = sample_rk45(gaussian_denoiser, x_start.clone(), log_grid(10), rtol=tol, atol=tol, stats=stats)
        # the final jump x -> D(x, sigma_min) is in `out`; undo it to compare at SIGMA_MIN
        x_at_min = (out - 0.5 * (1 - 0.3**2 / (0.3**2 + SIGMA_MIN**2))) / (0.3**2 / (0.3**2 + SIGMA_MIN**2))
        results[tol] = ((x_at_min - exact).abs().max().item() / exact.abs().max().item(), stats)
    assert results[1e-3][0] < 1e-2 and results[1e-6][0] < 1e-5, results
    assert results[1e-3][1]["nfe"] < results[1e-6][1]["nfe"], results


def test_rk45_final_jump_gives_the_denoised_state():
    x = torch.linspace(-20, 20, 11, dtype=torch.float64)
    out = sample_rk45(gaussian_denoiser, x, torch.tensor([20.0, 0.0], dtype=torch.float64))
    torch.testing.assert_close(out, gaussian_denoiser(x, 20.0))  # one nonzero sigma: just D


def test_heun_with_churn_is_stochastic_and_first_order_free_of_it_when_zero():
    x = torch.randn(50, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 20
    grid = log_grid(10)
    a = sample_heun(gaussian_denoiser, x.clone(), grid, s_churn=0.0)
    b = sample_heun(gaussian_denoiser, x.clone(), grid, s_churn=0.0, noise=lambda: torch.ones_like(x))
    torch.testing.assert_close(a, b, rtol=0, atol=0)  # churn 0 never draws noise
    c = sample_heun(gaussian_denoiser, x.clone(), grid, s_churn=5.0, noise=lambda: torch.ones_like(x))
    assert (c - a).abs().max() > 1e-3


@pytest.mark.parametrize("sampler,step_counts,kwargs", [
    (sample_euler_ancestral, (200, 1000), {}),
    (sample_dpmpp_2m_sde, (50, 200), {}),
    (sample_heun, (25, 100), {"s_churn": 20.0}),
], ids=["euler_ancestral", "dpmpp_2m_sde", "heun-churn"])
def test_stochastic_samplers_converge_to_the_data_distribution(sampler, step_counts, kwargs):
    """On the true denoiser of N(mu, s^2) data, the law of the samples approaches the data's as
    steps grow (these solvers are weakly first/second order: a finite grid biases the std)."""
    path = DiscreteDDPM(schedule="cosine")
    g = torch.Generator().manual_seed(0)
    n = 20_000
    std_errors = []
    for steps in step_counts:
        sigmas = sigma_grid(path, steps, spacing="karras")
        x = torch.randn(n, dtype=torch.float64, generator=g) * path.prior_std(sigmas[0])
        out = sampler(gaussian_denoiser, x, sigmas, noise=lambda: torch.randn(n, dtype=torch.float64, generator=g),
                      **kwargs)
        assert abs(out.mean().item() - 0.5) < 0.01
        std_errors.append(abs(out.std().item() - 0.3))
    assert std_errors[-1] < 0.03 * 0.3 and std_errors[-1] < std_errors[0], std_errors


# ---- grids ---------------------------------------------------------------------------------
def test_karras_grid_is_uniform_in_sigma_to_the_one_over_rho():
    s = karras_sigmas(80.0, 0.002, 18, rho=7.0)
    assert s[0].item() == pytest.approx(80.0) and s[-1].item() == pytest.approx(0.002)
    steps = (s ** (1 / 7)).diff()
    torch.testing.assert_close(steps, steps[:1].expand_as(steps))


@pytest.mark.parametrize("spacing", ["karras", "logsnr", "leading", "trailing", "linspace"])
def test_every_grid_descends_from_the_path_maximum_to_zero(spacing):
    path = DiscreteDDPM(schedule="linear")
    s = sigma_grid(path, 10, spacing=spacing)
    assert len(s) == 11 and s[-1] == 0 and (s.diff() < 0).all()
    if spacing in ("karras", "logsnr", "trailing", "linspace"):  # these include the last training step
        assert s[0].item() == pytest.approx(path.sigmas[-1].item())
    if spacing == "logsnr":
        log_steps = s[:-1].log().diff()
        torch.testing.assert_close(log_steps, log_steps[:1].expand_as(log_steps))


def test_unknown_spacing_is_a_clear_error():
    from genmodels.errors import ConfigError

    with pytest.raises(ConfigError, match="spacing 'quadratic'"):
        sigma_grid(DiscreteDDPM(), 10, spacing="quadratic")


# ---- inversion -----------------------------------------------------------------------------
def test_ddim_inversion_round_trip_error_falls_with_steps():
    path = DiscreteDDPM(schedule="cosine")
    x0 = 0.5 + 0.3 * torch.randn(2000, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    errors = [round_trip_error(gaussian_denoiser, x0, sigma_grid(path, n))[2] for n in (10, 50, 250)]
    assert errors[0] > errors[1] > errors[2] and errors[2] < 0.02, errors
    sigmas = sigma_grid(path, 250)
    noise = ddim_invert(gaussian_denoiser, x0, sigmas)
    # Gaussian data map to Gaussian noise: std of x_T = alpha_T * x is ~1
    assert abs((noise * path.alpha_from_sigma(sigmas[0])).std().item() - 1) < 0.05


# ---- the adapter ---------------------------------------------------------------------------
def test_every_registered_sampler_runs_through_the_adapter():
    path, net = DiscreteDDPM(schedule="cosine"), TinyEpsNet()
    denoiser = NetDenoiser(net, path, PARAMETERIZATIONS["v"])
    sigmas = sigma_grid(path, 6, spacing="karras")
    shape = (3, 1, 8, 8)
    x = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * sigmas[0]
    with torch.no_grad():
        for name, sampler in SAMPLERS.items():
            out = sampler(denoiser, x.clone(), sigmas)
            assert out.shape == shape and torch.isfinite(out).all(), name
