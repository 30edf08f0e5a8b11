"""Sampling wall time: 64 MNIST images at 50 DDIM steps, genmodels' sampler against diffusers'
``DDIMScheduler`` driving the same network.

- network: the ``mnist-ddpm`` UNet in channels_last under ``torch.inference_mode``, as
  ``genmodels.load`` sets it up; random weights with a non-zero output layer, or a trained
  run's EMA weights with ``--run``.
- ours: ``genmodels.samplers.generate(sampler="ddim", steps=50)``: per-sample seeded noise, the
  ``NetDenoiser`` adapter (VE coordinates), DDIM with eta = 0.
- peer: diffusers' ``DDIMScheduler`` (cosine betas, v-prediction, leading spacing) stepping
  ``x = scheduler.step(net(x, t), t, x).prev_sample``, as their pipelines do.

Both start from the same noise and must end at the same images (the max difference is printed).
Timed in the same process, interleaved A B B A per round; the median over rounds is reported.
Sampler overhead: the time per step of each loop around a network that costs nothing (it
returns its input), as a fraction of one evaluation of the real network at batch 64.

    python benchmarks/sample_throughput.py                # markdown table
    python benchmarks/sample_throughput.py --json         # one JSON line
    python benchmarks/sample_throughput.py --run runs/demo --device cuda
"""

import argparse
import datetime
import json
import statistics
import time

import torch

from genmodels import build, load
from genmodels.config import load_config
from genmodels.samplers import generate
from genmodels.samplers import SeededNoise

N, STEPS, SHAPE = 64, 50, (1, 28, 28)


def network(run, device):
    """(net, path, param) of a trained run, or of the mnist-ddpm config with random weights."""
    if run:
        pipe = load(run, device=device)
        return pipe.net, pipe.path, pipe.param
    cfg = load_config("mnist-ddpm", [])
    torch.manual_seed(0)
    net, path, param, _ = build.build_diffusion(cfg, {**cfg.model.options, "in_channels": 1, "image_size": 28})
    torch.nn.init.normal_(net.conv_out.weight, std=0.05)  # zero-initialised: the output would be 0
    net = net.to(device=device, memory_format=torch.channels_last).eval().requires_grad_(False)
    return net, path, param


class Identity(torch.nn.Module):
    """A network that costs nothing: what remains of a loop around it is the sampler's own time."""

    def forward(self, x, c_noise, cond=None):
        return x


def ours(net, path, param, device):
    return lambda: generate(build.make_denoiser(net, path, param), path, shape=SHAPE, seeds=range(N),
                            sampler="ddim", steps=STEPS, batch_size=N, device=device)


def peer(net, device):
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", clip_sample=False,
                              set_alpha_to_one=True, timestep_spacing="leading", prediction_type="v_prediction")

    @torch.inference_mode()
    def run():
        scheduler.set_timesteps(STEPS)
        x = SeededNoise(range(N), SHAPE, device=device)()  # the noise generate() starts from
        for t in scheduler.timesteps:
            x = scheduler.step(net(x, t), t, x).prev_sample
        return x.float().cpu()

    return run


def sync(device):
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default=None, help="a trained run directory (default: random weights)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    net, path, param = network(args.run, device)
    loops = {"ours": ours(net, path, param, device), "peer": peer(net, device)}
    x_ours, x_peer = loops["ours"](), loops["peer"]()  # also the warm-up
    max_diff = (x_ours - x_peer).abs().max().item()

    seconds = {name: [] for name in loops}
    for _ in range(args.rounds):
        total = dict.fromkeys(loops, 0.0)
        for name in ("ours", "peer", "peer", "ours"):
            total[name] += timed(loops[name], device)
        for name in loops:
            seconds[name].append(total[name] / 2)
    wall = {name: statistics.median(s) for name, s in seconds.items()}

    x = torch.randn(N, *SHAPE, device=device).contiguous(memory_format=torch.channels_last)
    c_noise = torch.full((N,), 500.0, device=device)
    with torch.inference_mode():
        net_ms = 1000 * min(timed(lambda: net(x, c_noise), device) for _ in range(5))
    free = {"ours": ours(Identity(), path, param, device), "peer": peer(Identity(), device)}
    overhead_ms = {name: 1000 * min(timed(fn, device) for _ in range(5)) / STEPS for name, fn in free.items()}

    result = {
        "date": datetime.date.today().isoformat(), "device": args.device, "threads": args.threads,
        "torch": torch.__version__, "n": N, "steps": STEPS, "weights": args.run or "random",
        "ours_s": round(wall["ours"], 3), "peer_s": round(wall["peer"], 3),
        "ratio": round(wall["peer"] / wall["ours"], 3),
        "net_eval_ms": round(net_ms, 2),
        "ours_overhead_ms_per_step": round(overhead_ms["ours"], 3),
        "peer_overhead_ms_per_step": round(overhead_ms["peer"], 3),
        "ours_overhead_fraction": round(overhead_ms["ours"] / net_ms, 4),
        "peer_overhead_fraction": round(overhead_ms["peer"] / net_ms, 4),
        "max_abs_diff": max_diff,
    }
    if args.json:
        print(json.dumps(result))
        return
    print(f"torch {torch.__version__}, device {args.device}, {args.threads} threads, {N} images x {STEPS} DDIM "
          f"steps, median of {args.rounds} A-B-B-A rounds; one network evaluation (batch {N}): {net_ms:.1f} ms; "
          f"max |ours - peer| = {max_diff:.1e}\n")
    print("| sampler loop | wall time (64 images) | ms per image | overhead per step | of a network evaluation |")
    print("|---|---:|---:|---:|---:|")
    labels = {"ours": "genmodels generate (ddim)", "peer": "diffusers DDIMScheduler"}
    for name in loops:
        print(f"| {labels[name]} | {wall[name]:.2f} s | {1000 * wall[name] / N:.1f} | {overhead_ms[name]:.3f} ms | "
              f"{100 * overhead_ms[name] / net_ms:.2f} % |")
    print(f"\nratio peer / ours (wall time): {wall['peer'] / wall['ours']:.2f}x")


if __name__ == "__main__":
    main()
