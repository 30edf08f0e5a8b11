"""The fast solvers against diffusers' schedulers on the same eps-network, initial and step noise.
diffusers is a test oracle: ``scripts/test`` requires it (tests/conftest.py), a plain pytest
run skips this module without it."""

import importlib
import inspect

import pytest
import torch

from genmodels.diffusion import DiscreteDDPM, NetDenoiser, PARAMETERIZATIONS, sigma_grid
from genmodels.samplers import (sample_dpmpp_2m, sample_dpmpp_2m_sde, sample_dpmpp_3m_sde, sample_euler,
                                sample_euler_ancestral, sample_heun, sample_unipc)
from test_samplers import TinyEpsNet

diffusers = pytest.importorskip("diffusers", reason="diffusers is a test oracle: scripts/setup test installs it")
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


def dpm3_scheduler(steps, **kwargs):
    sched = diffusers.DPMSolverMultistepScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4,
                                                  beta_end=0.02, timestep_spacing="trailing",
                                                  prediction_type="epsilon", solver_order=3, solver_type="heun",
                                                  **kwargs)
    sched.set_timesteps(steps)
    return sched


def test_3m_sde_in_k_diffusion_mode_at_eta_0_matches_diffusers_third_order():
    """eta = 0 with k-diffusion's weight on the second difference is DPM-Solver++(3M) as diffusers
    has it (their second-order ramp-up step is the "heun" solver_type, phi_2 on D1). 16 steps:
    below 15 diffusers also lowers the order of the second-to-last step."""
    steps, path, net = 16, DiscreteDDPM(schedule="linear"), TinyEpsNet()
    sched = dpm3_scheduler(steps, algorithm_type="dpmsolver++")
    x_T = torch.randn(SHAPE, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    sigmas = sigma_grid(path, steps, spacing="trailing")
    torch.testing.assert_close(sched.sigmas.double(), sigmas, rtol=1e-5, atol=1e-6)
    denoiser = NetDenoiser(net, path, PARAMETERIZATIONS["eps"])
    with torch.no_grad():
        theirs = run_diffusers(sched, net, x_T, [], None)
        mine = sample_dpmpp_3m_sde(denoiser, x_T * path.prior_std(sigmas[0]), sigmas, eta=0.0, k_diffusion=True)
        taylor = sample_dpmpp_3m_sde(denoiser, x_T * path.prior_std(sigmas[0]), sigmas, eta=0.0)
    torch.testing.assert_close(mine, theirs.double(), rtol=1e-4, atol=1e-4)
    assert (taylor - mine).abs().max() > 1e-3  # the Taylor weight is another solver


def test_3m_sde_first_and_second_order_steps_match_diffusers_sde_dpmsolver():
    """eta = 1, the same step noise: the ramp-up steps (first, then second order) equal diffusers'
    sde-dpmsolver++ (VP states: x_vp = alpha x_ve). Its third-order SDE step is not compared: its
    weight on D2, (1 - e^(-2h) - 2h) / (2h)^2 - 1/2, tends to -1 as h -> 0 where the Taylor weight
    tends to 0 (k-diffusion's 1/2 - phi_2(2h) / 2h has the opposite sign on the 1/2)."""
    steps, path, net = 10, DiscreteDDPM(schedule="linear"), TinyEpsNet()
    sched = dpm3_scheduler(steps, algorithm_type="sde-dpmsolver++")
    g = torch.Generator().manual_seed(0)
    x_T = torch.randn(SHAPE, dtype=torch.float64, generator=g)
    step_noise = [torch.randn(SHAPE, dtype=torch.float64, generator=g) for _ in range(2)]
    sigmas = sigma_grid(path, steps, spacing="trailing")[:3]  # two steps, ending at a noisy level
    x = x_T.clone()
    with torch.no_grad():
        for n, z in zip(sched.timesteps[:2], step_noise):
            eps = net(x, torch.full((x.shape[0],), float(n), dtype=torch.float64))
            x = sched.step(eps, n, x, variance_noise=z).prev_sample
        it = iter(step_noise)
        mine = sample_dpmpp_3m_sde(NetDenoiser(net, path, PARAMETERIZATIONS["eps"]), x_T * path.prior_std(sigmas[0]),
                                   sigmas, noise=lambda: next(it))
    torch.testing.assert_close(mine * path.alpha_from_sigma(sigmas[-1]), x.double(), rtol=1e-4, atol=1e-4)
