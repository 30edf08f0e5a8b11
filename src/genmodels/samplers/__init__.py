"""Samplers: plain functions ``sampler(denoiser, x, sigmas, *, cond, callback, progress, **options)
-> x0`` over a Denoiser and a descending VE sigma grid ending in 0 (ARCHITECTURE.md); the step
callback contract is in ``base``; ``generate`` draws per-seed samples with any of them, from noise
or mid-way."""

from .base import SamplingCancelled, SeededNoise, after_step, ancestral_split, edm_churn, sample_loop, to_d
from .consistency import sample_consistency
from .generate import generate, start_index
from .invert import ddim_invert, round_trip_error
from .multistep import sample_dpmpp_2m, sample_dpmpp_2m_sde, sample_dpmpp_3m_sde, sample_unipc
from .ode import heun_step, sample_euler, sample_heun, sample_rk45
from .registry import DEFAULT_GRIDS, SAMPLERS, SHARED_PARAMS, evaluations, get_sampler, grid_settings, run_sampler
from .sde import (langevin_corrector, restart_branches, restart_evaluations, restart_plan, sample_ddim,
                  sample_ddpm, sample_euler_ancestral, sample_euler_maruyama, sample_pc, sample_restart)

__all__ = ["DEFAULT_GRIDS", "SAMPLERS", "SHARED_PARAMS", "SamplingCancelled", "SeededNoise", "after_step",
           "ancestral_split", "ddim_invert", "edm_churn", "evaluations", "generate", "get_sampler", "grid_settings",
           "heun_step", "langevin_corrector", "restart_branches", "restart_evaluations", "restart_plan",
           "round_trip_error", "run_sampler", "sample_consistency", "sample_ddim", "sample_ddpm", "sample_dpmpp_2m",
           "sample_dpmpp_2m_sde", "sample_dpmpp_3m_sde", "sample_euler", "sample_euler_ancestral",
           "sample_euler_maruyama", "sample_heun", "sample_loop", "sample_pc", "sample_restart", "sample_rk45",
           "sample_unipc", "start_index", "to_d"]
