"""Reflow on a 2-D toy: W2 to the data at NFE 1, 2, 4, 10, 50 (Euler) for 1-RF, 2-RF and the
distilled one-step model, plus straightness. Run after:

    genmodels train toy-flow --out runs/rf1 train.images=300000
    genmodels reflow runs/rf1 --pairs 20000 --steps 50 --images 200000 --out runs/rf2
    genmodels reflow runs/rf2 --pairs 20000 --steps 50 --images 100000 --distill --out runs/rf2-1step
    python benchmarks/reflow_toy.py runs/rf1 runs/rf2 runs/rf2-1step
"""

import argparse

import torch

import genmodels
from genmodels.data import TOY_DISTRIBUTIONS
from genmodels.metrics.toy import wasserstein
from genmodels.reflow import trajectories


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--nfe", nargs="*", type=int, default=[1, 2, 4, 10, 50])
    parser.add_argument("--n", type=int, default=2000)
    args = parser.parse_args()
    pipes = {run: genmodels.load(run, device="cpu") for run in args.runs}
    dist = TOY_DISTRIBUTIONS[pipes[args.runs[0]].config.data.name]  # the first run: trained on the toy itself
    real = dist.sample(args.n, generator=torch.Generator().manual_seed(123))
    floor = wasserstein(dist.sample(args.n, generator=torch.Generator().manual_seed(7)), real, p=2)
    print(f"W2 between two real samples of {args.n}: {floor:.3f}\n")
    print("| run | straightness | " + " | ".join(f"W2 @ {k}" for k in args.nfe) + " |")
    print("|---|---:|" + "---:|" * len(args.nfe))
    for run, pipe in pipes.items():
        straight = trajectories(pipe, 1000, steps=20, seed=10**6)[2].mean().item()
        w2 = [wasserstein(pipe.sample(args.n, seed=0, sampler="euler", steps=k, progress=False), real, p=2)
              for k in args.nfe]
        print(f"| {run} | {straight:.4f} | " + " | ".join(f"{v:.3f}" for v in w2) + " |", flush=True)


if __name__ == "__main__":
    main()
