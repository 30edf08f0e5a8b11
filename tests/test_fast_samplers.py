"""The fast solvers: convergence order on Gaussian data (exact ODE solution known), diffusers'
schedulers as oracles on the same network and noise, grids, DDIM inversion."""

import inspect
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


# ---- diffusers as oracle ---------------------------------------------------------------------
diffusers = pytest.importorskip("diffusers", reason="diffusers is the peer oracle (pip install -e .[peers])")
STEPS, SHAPE = 10, (3, 1, 8, 8)


def run_diffusers(sched, net, x_start, step_noise, monkeypatch, module=None, step_kwargs=None):
    """Drive ``net`` (an eps-model) with diffusers' scheduler; stochastic steps get ``step_noise``
    in order, through the scheduler's noise hook."""
    noise_iter = iter(step_noise)
    if module is not None:
        monkeypatch.setattr(module, "randn_tensor", lambda *a, **k: next(noise_iter))
    x = x_start.clone()
    for n in sched.timesteps:
        model_in = sched.scale_model_input(x, n)
        eps = net(model_in, torch.full((x.shape[0],), float(n), dtype=torch.float64))
        kwargs = dict(step_kwargs or {})
        if "variance_noise" in kwargs:
            kwargs["variance_noise"] = next(noise_iter)
        x = sched.step(eps, n, x, **kwargs).prev_sample
    return x


def ours(sampler, net, path, x_T, step_noise, spacing, **kwargs):
    sigmas = sigma_grid(path, STEPS, spacing=spacing)
    it = iter(step_noise)
    denoiser = NetDenoiser(net, path, PARAMETERIZATIONS["eps"])
    if "noise" in inspect.signature(sampler).parameters:
        kwargs["noise"] = lambda: next(it)
    return sampler(denoiser, x_T * path.prior_std(sigmas[0]), sigmas, **kwargs)


CASES = {
    "euler": ("EulerDiscreteScheduler", "scheduling_euler_discrete", sample_euler, {}, {}, {}),
    "euler_ancestral": ("EulerAncestralDiscreteScheduler", "scheduling_euler_ancestral_discrete",
                        sample_euler_ancestral, {}, {}, {}),
    "heun": ("HeunDiscreteScheduler", None, sample_heun, {}, {}, {}),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", None, sample_dpmpp_2m,
                 {"algorithm_type": "dpmsolver++", "solver_order": 2}, {}, {}),
    "dpmpp_2m_sde": ("DPMSolverMultistepScheduler", None, sample_dpmpp_2m_sde,
                     {"algorithm_type": "sde-dpmsolver++", "solver_order": 2}, {}, {"variance_noise": None}),
    "unipc2": ("UniPCMultistepScheduler", None, sample_unipc, {"solver_order": 2}, {"order": 2}, {}),
    "unipc3": ("UniPCMultistepScheduler", None, sample_unipc, {"solver_order": 3}, {"order": 3}, {}),
}


# Not compared: Euler with s_churn. diffusers' EulerDiscreteScheduler adds the churn noise after
# the network was evaluated at the un-churned point and reuses that output at sigma_hat; EDM's
# Algorithm 2, which we follow, evaluates at (x_hat, sigma_hat).
# diffusers' multistep schedulers space "leading" timesteps by T // (steps + 1), not DDIM's
# T // steps, so they are compared on "trailing" only (the spacing Lin et al. recommend).
MULTISTEP = ("dpmpp_2m", "dpmpp_2m_sde", "unipc2", "unipc3")


@pytest.mark.parametrize("case,spacing", [(c, s) for c in CASES for s in ("leading", "trailing")
                                          if not (c in MULTISTEP and s == "leading")])
def test_matches_diffusers_scheduler(case, spacing, monkeypatch):
    """Same eps-network, same initial and step noise: our sampler equals diffusers' scheduler."""
    import importlib

    cls_name, module_name, sampler, sched_kwargs, our_kwargs, step_kwargs = CASES[case]
    path, net = DiscreteDDPM(schedule="linear"), TinyEpsNet()
    sched = getattr(diffusers, cls_name)(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4,
                                         beta_end=0.02, timestep_spacing=spacing, prediction_type="epsilon", **sched_kwargs)
    sched.set_timesteps(STEPS)
    g = torch.Generator().manual_seed(0)
    x_T = torch.randn(SHAPE, dtype=torch.float64, generator=g)
    step_noise = [torch.randn(SHAPE, dtype=torch.float64, generator=g) for _ in range(STEPS)]
    sigmas = sigma_grid(path, STEPS, spacing=spacing)
    if hasattr(sched, "sigmas") and sched.sigmas.numel() == STEPS + 1:  # VE schedulers: same grid
        torch.testing.assert_close(sched.sigmas.double(), sigmas, rtol=1e-5, atol=1e-6)
    module = importlib.import_module(f"diffusers.schedulers.{module_name}") if module_name else None
    with torch.no_grad():
        # diffusers' VE schedulers (init_noise_sigma > 1) take VE states, the VP ones x_T itself
        start = x_T * path.prior_std(sigmas[0]) if sched.init_noise_sigma > 1 else x_T
        theirs = run_diffusers(sched, net, start, step_noise, monkeypatch, module, step_kwargs)
        mine = ours(sampler, net, path, x_T, step_noise, spacing, **our_kwargs)
    torch.testing.assert_close(mine, theirs.double(), rtol=1e-4, atol=1e-4)


def test_every_registered_sampler_runs_through_the_adapter():
    path, net = DiscreteDDPM(schedule="cosine"), TinyEpsNet()
    denoiser = NetDenoiser(net, path, PARAMETERIZATIONS["v"])
    sigmas = sigma_grid(path, 6, spacing="karras")
    x = torch.randn(SHAPE, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * sigmas[0]
    with torch.no_grad():
        for name, sampler in SAMPLERS.items():
            out = sampler(denoiser, x.clone(), sigmas)
            assert out.shape == SHAPE and torch.isfinite(out).all(), name
