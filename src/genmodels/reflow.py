"""Rectified flow's reflow (Liu et al. 2022, Sec. 2.2-2.3), end to end: draw (noise, sample) pairs
with a trained flow's ODE, train the next flow on those pairs (starting from the previous
weights), optionally distil it into a one-step generator, and measure how straight the
trajectories became.

Straightness (Liu et al. Eq. 5): S = E_t || (z - x0) - u(x_t, t) ||^2 along the Euler
trajectory from z (t = 1) to x0 (t = 0), with u = dx_t/dt the velocity the model follows; 0 for
straight paths, where one Euler step is exact.
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .config import apply_overrides, from_dict, to_dict
from .diffusion import sigma_grid
from .errors import ConfigError
from .samplers import SeededNoise, sample_euler


def _check_flow(pipe):
    if pipe.config.diffusion.path != "rectified_flow":
        raise ConfigError(f"reflow needs a rectified-flow run (diffusion.path=rectified_flow); "
                          f"'{pipe.run_dir}' is a {pipe.config.diffusion.path} run")
    if getattr(pipe, "latent", None) is not None:
        raise ConfigError(f"reflow works on pixel-space flows; '{pipe.run_dir}' is a latent run "
                          "(latent.autoencoder), whose pairs would be latents")


@torch.inference_mode()
def trajectories(pipe, n, *, steps, seed=0, batch_size=1000):
    """(noise z, endpoint x0, straightness per sample) of Euler on ``steps`` uniform-in-t steps."""
    _check_flow(pipe)
    sigmas = sigma_grid(pipe.path, steps)
    zs, xs, straight = [], [], []
    for start in range(0, n, batch_size):
        seeds = range(seed + start, seed + min(n, start + batch_size))
        z = SeededNoise(seeds, pipe.data_shape, device=pipe.device)()
        states = []  # (step, state after it, x0 estimate it used)
        x0 = sample_euler(pipe.denoiser, z * pipe.path.prior_std(sigmas[0]).item(), sigmas,
                          callback=lambda i, sigma, x, denoised: states.append((i, x, denoised)))
        total = torch.zeros(len(z), device=z.device)
        x_ve = z * pipe.path.prior_std(sigmas[0]).item()
        for i, x_next, denoised in states:
            sigma = sigmas[i]  # the level the step's estimate was made at
            t = pipe.path.from_sigma(sigma).item()
            x_t = x_ve * pipe.path.alpha_from_sigma(sigma).item()
            u = (x_t - denoised) / t
            total += (z - x0 - u).flatten(1).square().sum(1) / x0[0].numel()
            x_ve = x_next
        zs.append(z.cpu())
        xs.append(x0.cpu())
        straight.append((total / len(states)).cpu())
    return torch.cat(zs), torch.cat(xs), torch.cat(straight)


@dataclass
class ReflowResult:
    run_dir: Path
    pairs_file: Path
    straightness_before: float
    straightness_after: float


def reflow(run_dir, out, *, pairs=10_000, steps=100, images=None, distill=False, overrides=(),
           straightness_n=1000, straightness_steps=20, seed=0):
    """Train ``out`` as the next rectified flow on ``pairs`` ODE pairs of ``run_dir``'s model
    (or, with ``distill``, as a one-step generator on them) and report straightness."""
    from .families.loading import load
    from .train.run import check_run_dir, train

    pipe = load(run_dir, device="cpu")
    _check_flow(pipe)
    out = Path(out)
    check_run_dir(out, resume=False)
    out.parent.mkdir(parents=True, exist_ok=True)
    before = trajectories(pipe, straightness_n, steps=straightness_steps, seed=10**6)[2].mean().item()
    z, x, _ = trajectories(pipe, pairs, steps=steps, seed=seed)
    pairs_file = out.parent / f"{out.name}-pairs.npz"
    np.savez(pairs_file, x=x.numpy().astype(np.float32), noise=z.numpy().astype(np.float32))

    extra = [f"data.name=pairs:{pairs_file}", f"train.init_from={Path(run_dir)}"]
    if distill:
        extra.append("diffusion.t_sampling=max")
    if images is not None:
        extra.append(f"train.images={images}")
    cfg = from_dict(apply_overrides(to_dict(pipe.config), extra + list(overrides)))
    train(cfg, out)
    after = trajectories(load(out, device="cpu"), straightness_n, steps=straightness_steps,
                         seed=10**6)[2].mean().item()
    return ReflowResult(out, pairs_file, before, after)
