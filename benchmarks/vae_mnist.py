"""The VAE rows of docs/BENCHMARKS.md for one trained run: sampling time, the pictures, and the
evaluation protocol (fd_cnn / KID / PRDC / cs on n samples x seeds; NLL by the IWAE bound on
every held-out image at each k). One process, so a shared machine's lock is taken once.

    python -m genmodels train mnist-vae-bernoulli train.images=600000 train.device=cpu --out /tmp/bench-vae/bin
    python benchmarks/vae_mnist.py /tmp/bench-vae/bin --out docs/ --name vae-bernoulli --k 1000 5000
"""

import argparse
import json
import time
from pathlib import Path

import torch

import genmodels
from genmodels.cli import read_image_arg
from genmodels.data import load_dataset
from genmodels.images import save_grid
from genmodels.evaluation import evaluate_run
from genmodels.metrics.protocol import format_table


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path)
    parser.add_argument("--out", type=Path, default=Path("docs"))
    parser.add_argument("--name", default="vae")
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--k", type=int, nargs="+", default=[1000])
    parser.add_argument("--nll-n", type=int, default=500)
    args = parser.parse_args()

    vae = genmodels.load(args.run, device="cpu")
    vae.sample(100, seed=0)  # warm-up
    start = time.perf_counter()
    vae.sample(1000, seed=0, batch_size=64)
    ms = 1000 * (time.perf_counter() - start) / 1000
    args.out.mkdir(parents=True, exist_ok=True)
    save_grid(vae.sample(64, seed=0), args.out / f"{args.name}_prior.png", nrow=16, scale=2)
    test = load_dataset("mnist", split="test").x[:16]
    save_grid(torch.cat([vae.inputs(test[:8]).cpu(), vae.reconstruct(test[:8]), vae.inputs(test[8:]).cpu(),
                         vae.reconstruct(test[8:])]), args.out / f"{args.name}_recon.png", nrow=8, scale=2)
    a, b = read_image_arg("test:0", vae, "--a"), read_image_arg("test:55", vae, "--b")
    save_grid(torch.cat([vae.interpolate(a, b, steps=10, method=m) for m in ("linear", "slerp")]),
              args.out / f"{args.name}_interp.png", nrow=10, scale=2)
    print(f"sampling: {ms:.3f} ms per image (1000 images, batch 64, 1 process)")

    result = evaluate_run(args.run, metrics="fd_cnn,kid,prdc,cs", n=args.n, seeds=args.seeds, device="cpu",
                          progress=False)
    print(f"protocol: n {args.n} x seeds {args.seeds}, {result.protocol['features']}, {result.protocol['reference']}")
    print(format_table(result.mean, result.std))
    print("seconds:", {k: round(v, 1) for k, v in result.timings.items()})
    for k in args.k:
        nll = evaluate_run(args.run, metrics="nll", nll_n=args.nll_n, nll_k=k, seeds=[0], device="cpu", progress=False)
        print(f"IWAE k={k} on {args.nll_n} held-out images: {json.dumps(nll.mean)} ({nll.timings['nll']:.1f} s)")


if __name__ == "__main__":
    main()
