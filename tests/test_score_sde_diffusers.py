"""The reverse-SDE samplers against diffusers' ScoreSdeVeScheduler, step by step on the same
noise. diffusers is a test oracle: ``scripts/test`` requires it (tests/conftest.py), a plain
pytest run skips this module without it."""

import pytest
import torch

from genmodels.diffusion import score
from genmodels.samplers import sample_pc
from test_score_sde import F64, _seeded, gaussian_denoiser

diffusers = pytest.importorskip("diffusers", reason="diffusers is a test oracle: scripts/setup test installs it")


@pytest.mark.parametrize("corrector_steps", [0, 1])
def test_reverse_sde_samplers_match_diffusers_score_sde_ve(corrector_steps):
    """Our predictor (and Langevin corrector with Song's step rule) against diffusers' VE
    scheduler, step by step on the same noise; its ``prev_sample_mean`` is the final sample."""
    n, shape = 30, (4, 2)
    sched = diffusers.ScoreSdeVeScheduler(num_train_timesteps=n, snr=0.16, sigma_min=0.01, sigma_max=8.0,
                                          sampling_eps=1e-5, correct_steps=corrector_steps)
    sched.set_timesteps(n, sampling_eps=1e-5)
    sched.set_sigmas(n, sigma_min=0.01, sigma_max=8.0, sampling_eps=1e-5)
    x_T = torch.randn(shape, dtype=F64, generator=torch.Generator().manual_seed(3)) * 8.0
    g = torch.Generator().manual_seed(11)
    x = x_T.clone()
    levels = sched.discrete_sigmas.flip(0).double()
    for i, t in enumerate(sched.timesteps):
        for _ in range(corrector_steps):
            x = sched.step_correct(score(gaussian_denoiser, x, levels[i]), x, generator=g).prev_sample
        out = sched.step_pred(score(gaussian_denoiser, x, levels[i]), t, x, generator=g)
        x, theirs = out.prev_sample, out.prev_sample_mean
    sigmas = torch.cat([levels, levels.new_zeros(1)])
    ours = sample_pc(gaussian_denoiser, x_T.clone(), sigmas, snr=0.16, corrector_steps=corrector_steps,
                     step_rule="song", noise=_seeded(shape, 11))
    torch.testing.assert_close(ours, theirs.double(), rtol=1e-5, atol=1e-5)
