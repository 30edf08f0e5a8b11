"""Classifier-free guidance on a class-conditional MNIST run: for each guidance scale, the share of
samples the MNIST judge (metrics/classifier.py) assigns to the requested class and the share it
finds recognisable; saves a grid with one row per class.

    genmodels train mnist-cfg --out runs/cfg10
    python benchmarks/guidance.py runs/cfg10 --scales 0 1 3 --out docs/cfg_mnist.png
"""

import argparse
import time

import torch

import genmodels
from genmodels.images import save_grid
from genmodels.metrics.classifier import NOT_A_DIGIT, mnist_classifier, predict


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    parser.add_argument("--scales", nargs="*", type=float, default=[0.0, 1.0, 3.0])
    parser.add_argument("--per-class", type=int, default=20)
    parser.add_argument("--sampler", default="dpmpp_2m")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--spacing", default="trailing")
    parser.add_argument("--out", default=None, help="grid PNG at the largest scale")
    args = parser.parse_args()
    torch.set_num_threads(2)

    pipe = genmodels.load(args.run, device="cpu")
    judge = mnist_classifier()
    labels = torch.arange(10).repeat_interleave(args.per_class)
    print(f"{len(labels)} samples ({args.per_class} per class), {args.sampler}, {args.steps} steps, {args.spacing}\n")
    print("| guidance w | classified as the requested class | recognisable (p >= 0.9) | seconds |")
    print("|---:|---:|---:|---:|")
    for w in args.scales:
        start = time.perf_counter()
        x = pipe.sample(len(labels), seed=0, sampler=args.sampler, steps=args.steps, spacing=args.spacing,
                        labels=labels.tolist(), guidance=w, progress=False)
        secs = time.perf_counter() - start
        conf, pred = predict(judge, x)
        hit = 100 * (pred == labels).double().mean().item()
        recog = 100 * ((conf >= 0.9) & (pred != NOT_A_DIGIT)).double().mean().item()
        print(f"| {w:g} | {hit:.1f} % | {recog:.1f} % | {secs:.0f} |", flush=True)
        if args.out and w == max(args.scales):
            rows = x.view(10, args.per_class, *x.shape[1:])[:, :8].reshape(-1, *x.shape[1:])
            save_grid(rows, args.out, nrow=min(8, args.per_class), scale=2)


if __name__ == "__main__":
    main()
