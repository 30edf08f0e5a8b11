"""The fast solvers against diffusers' schedulers on the same eps-network, initial and step noise.
diffusers is a test oracle: ``scripts/test`` requires it (tests/conftest.py), a plain pytest
run skips this module without it."""

import importlib
import inspect

import pytest
import torch

from genmodels.diffusion import DiscreteDDPM, NetDenoiser, PARAMETERIZATIONS, sigma_grid
from genmodels.samplers import (sample_dpmpp_2m, sample_dpmpp_2m_sde, sample_euler, sample_euler_ancestral,
                                sample_heun, sample_unipc)
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
