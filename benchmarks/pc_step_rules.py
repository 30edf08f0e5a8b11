"""Predictor-corrector on a 2-D score model: W2 to the data for each Langevin step-size rule.

Trains ``toy-vesde`` (VE SDE, 8 gaussians, ~15 s) unless a run is given, then samples 1,000
points with ``pc`` at several step counts and signal-to-noise ratios, for the corrector's rules
``sigma`` (ours, eps = 2 (snr sigma)^2), ``song`` (batch-mean norms, Song et al. / diffusers)
and ``per-sample`` norms (the rule a batch-independent port of Song's would use; not offered).

    python benchmarks/pc_step_rules.py [--run runs/ve]
"""

import argparse
import tempfile
from pathlib import Path

import torch

import genmodels
from genmodels.config import load_config
from genmodels.data import TOY_DISTRIBUTIONS
from genmodels.diffusion import sigma_grid
from genmodels.metrics.toy import wasserstein
from genmodels.samplers import SeededNoise, sample_loop, sample_pc
from genmodels.samplers.sde import reverse_diffusion_step
from genmodels.train.run import train


def per_sample_pc(denoiser, x, sigmas, *, snr, noise):
    """Song's corrector with each sample's own |z| / |g|."""

    def correct(x, sigma):
        grad = (denoiser(x, sigma) - x) / sigma**2
        z = noise()
        eps = 2 * (snr * z.norm(dim=1, keepdim=True) / grad.norm(dim=1, keepdim=True)) ** 2
        return x + eps * grad + (2 * eps).sqrt() * z, sigma

    return sample_loop(reverse_diffusion_step(noise), denoiser, x, sigmas, churn=correct)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", default=None)
    parser.add_argument("--n", type=int, default=1000)
    args = parser.parse_args()
    run = args.run
    if run is None:
        run = Path(tempfile.mkdtemp()) / "ve"
        train(load_config("toy-vesde", ["train.images=300000", "train.device=cpu"]), run)
    pipe = genmodels.load(run, device="cpu")
    dist = TOY_DISTRIBUTIONS[pipe.config.data.name]
    real = dist.sample(args.n, generator=torch.Generator().manual_seed(0))
    floor = wasserstein(dist.sample(args.n, generator=torch.Generator().manual_seed(7)), real, p=2)
    print(f"W2 between two real samples of {args.n}: {floor:.3f}\n")
    print("| corrector step rule | snr | W2 @ 100 steps | W2 @ 200 steps |")
    print("|---|---:|---:|---:|")
    for rule in ("sigma", "song", "per-sample"):
        for snr in (0.16, 0.05):
            cells = []
            for steps in (100, 200):
                sigmas = sigma_grid(pipe.path, steps)
                noise = SeededNoise(range(args.n), pipe.data_shape)
                x = noise() * sigmas[0].item()
                with torch.inference_mode():
                    if rule == "per-sample":
                        out = per_sample_pc(pipe.denoiser, x, sigmas, snr=snr, noise=noise)
                    else:
                        out = sample_pc(pipe.denoiser, x, sigmas, snr=snr, step_rule=rule, noise=noise)
                cells.append(f"{wasserstein(out, real, p=2):.3f}")
            print(f"| {rule} | {snr} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
