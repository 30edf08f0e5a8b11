"""Our DDIM and DDPM samplers against diffusers' schedulers on the same eps-network and the same
noise. diffusers is a test oracle: ``scripts/test`` requires it (tests/conftest.py), a plain
pytest run skips this module without it."""

import pytest
import torch

from genmodels.diffusion import DiscreteDDPM, NetDenoiser, PARAMETERIZATIONS, sigma_grid
from genmodels.samplers import sample_ddim, sample_ddpm
from test_samplers import TinyEpsNet

diffusers = pytest.importorskip("diffusers", reason="diffusers is a test oracle: scripts/setup test installs it")


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_matches_diffusers_ddim_scheduler(schedule, eta):
    """Same eps-network, same initial and step noise: our DDIM equals diffusers' DDIMScheduler."""
    path, net = DiscreteDDPM(schedule=schedule), TinyEpsNet()
    sched = diffusers.DDIMScheduler(num_train_timesteps=1000, beta_schedule=(
        "linear" if schedule == "linear" else "squaredcos_cap_v2"), clip_sample=False,
        set_alpha_to_one=True, timestep_spacing="leading", prediction_type="epsilon")
    steps = 20
    sched.set_timesteps(steps)
    shape = (3, 1, 8, 8)
    g = torch.Generator().manual_seed(0)
    x_T = torch.randn(shape, dtype=torch.float64, generator=g)
    step_noise = [torch.randn(shape, dtype=torch.float64, generator=g) for _ in range(steps)]
    with torch.no_grad():
        x = x_T.clone()
        for i, n in enumerate(sched.timesteps):
            eps = net(x, torch.full((shape[0],), float(n), dtype=torch.float64))
            x = sched.step(eps, n, x, eta=eta, variance_noise=step_noise[i]).prev_sample
        sigmas = sigma_grid(path, steps, spacing="leading")
        it = iter(step_noise)
        ours = sample_ddim(NetDenoiser(net, path, PARAMETERIZATIONS["eps"]),
                           x_T * path.prior_std(sigmas[0]), sigmas, eta=eta, noise=lambda: next(it))
    # diffusers works in VP coordinates; they agree at the end, where alpha = 1.
    torch.testing.assert_close(ours, x, rtol=1e-4, atol=1e-4)


def test_ddpm_matches_diffusers_ddpm_scheduler_on_full_grid(monkeypatch):
    """1000-step ancestral sampling equals diffusers' DDPMScheduler (variance 'fixed_small',
    i.e. beta-tilde), fed the same step noise through its noise-drawing hook."""
    import diffusers.schedulers.scheduling_ddpm as ddpm_module

    path, net = DiscreteDDPM(schedule="linear"), TinyEpsNet()
    sched = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear",
                                    clip_sample=False, variance_type="fixed_small")
    sched.set_timesteps(1000)
    shape = (2, 1, 6, 6)
    g = torch.Generator().manual_seed(0)
    x_T = torch.randn(shape, dtype=torch.float64, generator=g)
    step_noise = [torch.randn(shape, dtype=torch.float64, generator=g) for _ in range(999)]
    theirs = iter(step_noise)
    monkeypatch.setattr(ddpm_module, "randn_tensor", lambda *a, **k: next(theirs))
    with torch.no_grad():
        x = x_T.clone()
        for n in sched.timesteps:
            eps = net(x, torch.full((shape[0],), float(n), dtype=torch.float64))
            x = sched.step(eps, n, x).prev_sample
        sigmas = sigma_grid(path, 1000)
        ours_noise = iter(step_noise)
        ours = sample_ddpm(NetDenoiser(net, path, PARAMETERIZATIONS["eps"]),
                           x_T * path.prior_std(sigmas[0]), sigmas, noise=lambda: next(ours_noise))
    torch.testing.assert_close(ours, x, rtol=1e-4, atol=1e-4)
