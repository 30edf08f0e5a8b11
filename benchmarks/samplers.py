"""Every sampler at every NFE on one trained MNIST model, against diffusers' schedulers driving the
same network in the same run.

For each (sampler, NFE): wall time for ``--n`` images (one batch), RMSE to a reference from the
same initial noise (DDIM with ``--ref-steps`` steps: the probability-flow ODE solution, so the
RMSE means something for the deterministic samplers only), and the share of samples the MNIST
judge calls recognisable (metrics/classifier.py; on 64 images its standard error is ~6 points).
Also the sampler's own overhead per step: the same loop with a free denoiser, as a share of one
network evaluation. Prints a markdown table and saves a plot (quality vs NFE per sampler).

    genmodels demo --out runs/demo                       # any DDPM run on MNIST
    python benchmarks/samplers.py runs/demo --out docs/samplers.png
    python benchmarks/samplers.py runs/demo --nfe 5 10 --samplers ddim dpmpp_2m --no-peer
    python benchmarks/samplers.py runs/demo --samplers heun euler --spacing karras --sigma-max 80
    python benchmarks/samplers.py runs/demo --samplers dpmpp_3m_sde restart --spacing default --no-peer

``--spacing default`` gives each sampler its own default grid (samplers.DEFAULT_GRIDS, else the
path's). A sampler's steps are the most whose evaluations (samplers.evaluations) fit the NFE;
the table shows the evaluations spent (restart's passes need at least 2 N - 1 + 8).
"""

import argparse
import time

import torch

import genmodels
from genmodels.diffusion import sigma_grid
from genmodels.metrics.classifier import recognisability
from genmodels.samplers import SAMPLERS, SeededNoise, evaluations, grid_settings, run_sampler

DETERMINISTIC = {"ddim", "euler", "heun", "dpmpp_2m", "unipc"}
PEERS = {  # our sampler -> (diffusers scheduler, its options)
    "ddim": ("DDIMScheduler", {"set_alpha_to_one": True, "clip_sample": False}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_ancestral": ("EulerAncestralDiscreteScheduler", {}),
    "heun": ("HeunDiscreteScheduler", {}),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "unipc": ("UniPCMultistepScheduler", {"solver_order": 2}),
}


def steps_for(name, nfe):
    """The most steps whose network evaluations fit ``nfe`` (at least 1)."""
    steps = 1
    while evaluations(name, steps + 1) <= nfe:
        steps += 1
    return steps


def grid_for(name, spacing, sigma_max):
    return grid_settings(name, None, sigma_max) if spacing == "default" else {"spacing": spacing, "sigma_max": sigma_max}


def our_run(pipe, name, nfe, x_T, noise_seeds, spacing, sigma_max=None):
    steps = steps_for(name, nfe)
    sigmas = sigma_grid(pipe.path, steps, **grid_for(name, spacing, sigma_max))
    noise = SeededNoise(noise_seeds, pipe.data_shape)
    x = x_T * pipe.path.prior_std(sigmas[0]).item()
    start = time.perf_counter()
    out = run_sampler(name, pipe.denoiser, x, sigmas, noise=noise)
    return out, time.perf_counter() - start


def peer_run(pipe, name, nfe, x_T, spacing):
    import diffusers

    cls, options = PEERS[name]
    cfg = pipe.config.diffusion
    sched = getattr(diffusers, cls)(num_train_timesteps=cfg.timesteps, timestep_spacing=spacing,
                                    beta_schedule="squaredcos_cap_v2" if cfg.schedule == "cosine" else "linear",
                                    beta_start=cfg.beta_start, beta_end=cfg.beta_end,
                                    prediction_type={"eps": "epsilon", "v": "v_prediction", "x0": "sample"}[cfg.prediction],
                                    **options)
    sched.set_timesteps(steps_for(name, nfe))
    x = x_T * sched.init_noise_sigma
    g = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    for t in sched.timesteps:
        out = pipe.net(sched.scale_model_input(x, t), t.float().expand(x.shape[0]))
        kwargs = {"generator": g} if name in ("euler_ancestral",) else {}
        x = sched.step(out, t, x, **kwargs).prev_sample
    return x, time.perf_counter() - start


def overhead_per_step(name, shape, steps=50):
    """Seconds per step of the sampler's own arithmetic (a denoiser that costs nothing)."""
    free = lambda x, sigma, cond=None: x * 0.5  # noqa: E731
    sigmas = torch.cat([torch.logspace(1, -2, steps, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)])
    x = torch.randn(shape)
    noise = lambda: torch.randn(shape)  # noqa: E731
    run_sampler(name, free, x, sigmas, noise=noise)
    start = time.perf_counter()
    run_sampler(name, free, x, sigmas, noise=noise)
    return (time.perf_counter() - start) / steps


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    parser.add_argument("--samplers", nargs="*", default=[s for s in SAMPLERS if s != "rk45"])
    parser.add_argument("--nfe", nargs="*", type=int, default=[5, 10, 20, 50, 100])
    parser.add_argument("--ref-steps", type=int, default=1000)
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--spacing", default="trailing")
    parser.add_argument("--sigma-max", type=float, default=None, help="cap of karras/logsnr grids (ours only)")
    parser.add_argument("--no-peer", action="store_true")
    parser.add_argument("--out", default=None, help="PNG plot of quality vs NFE")
    args = parser.parse_args()
    torch.set_num_threads(2)

    pipe = genmodels.load(args.run, device="cpu")
    seeds = list(range(args.n))
    x_T = SeededNoise(seeds, pipe.data_shape)()
    noise_seeds = [s + 10_000 for s in seeds]

    def judge(x):
        return 100 * recognisability(x.clamp(-1, 1)).confident_fraction

    with torch.inference_mode():
        t0 = time.perf_counter()
        pipe.denoiser(x_T, torch.tensor(1.0, dtype=torch.float64))
        start = time.perf_counter()
        for _ in range(3):
            pipe.denoiser(x_T, torch.tensor(1.0, dtype=torch.float64))
        eval_s = (time.perf_counter() - start) / 3
        ref, _ = our_run(pipe, "ddim", args.ref_steps, x_T, noise_seeds, args.spacing, args.sigma_max)
        ddpm, ddpm_s = our_run(pipe, "ddpm", args.ref_steps, x_T, noise_seeds, args.spacing, args.sigma_max)
        print(f"torch {torch.__version__}, 2 threads, {args.n} images, spacing {args.spacing}, sigma_max "
              f"{args.sigma_max or 'the path maximum'}; one network "
              f"evaluation at batch {args.n}: {1000 * eval_s:.0f} ms; reference DDIM-{args.ref_steps} "
              f"recognisable {judge(ref):.0f} %; DDPM-{args.ref_steps}: {judge(ddpm):.0f} % in "
              f"{ddpm_s:.0f} s (setup {time.perf_counter() - t0:.0f} s)\n")
        print("| sampler | NFE | ours s | recognisable % | RMSE to ref | diffusers s | diffusers RMSE | "
              "diffusers recog. % | overhead/step (% of eval) |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        curves = {}
        for name in args.samplers:
            overhead = 100 * overhead_per_step(name, x_T.shape) / eval_s
            for nfe in args.nfe:
                out, secs = our_run(pipe, name, nfe, x_T, noise_seeds, args.spacing, args.sigma_max)
                rmse = (out - ref).square().mean().sqrt().item() if name in DETERMINISTIC else float("nan")
                recog = judge(out)
                curves.setdefault(name, []).append((evaluations(name, steps_for(name, nfe)), recog))
                peer = " | | "
                if not args.no_peer and name in PEERS and args.sigma_max is None and args.spacing != "default":
                    theirs, their_s = peer_run(pipe, name, nfe, x_T, args.spacing)
                    their_rmse = (theirs - ref).square().mean().sqrt().item() if name in DETERMINISTIC else float("nan")
                    peer = f"{their_s:.2f} | {their_rmse:.4f} | {judge(theirs):.0f}"
                print(f"| {name} | {evaluations(name, steps_for(name, nfe))} | {secs:.2f} | {recog:.0f} | {rmse:.4f} | {peer} | {overhead:.2f} |",
                      flush=True)
    if args.out:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4))
        for name, pts in curves.items():
            ax.plot(*zip(*pts), marker="o", label=name)
        ax.axhline(judge(ddpm), color="k", linestyle="--", label=f"DDPM {args.ref_steps} steps")
        ax.set_xscale("log")
        ax.set_xlabel("network evaluations (NFE)")
        ax.set_ylabel("recognisable samples (%)")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(args.out, dpi=120)
        print(f"\nplot: {args.out}")


if __name__ == "__main__":
    main()
