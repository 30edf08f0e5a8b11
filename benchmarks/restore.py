"""Restoration benchmark: DDRM and DPS with a trained unconditional diffusion run against the
classical baselines, on the first N test images of the run's dataset. Prints a markdown table
(PSNR mean +- standard error, fd_cnn, seconds per image) and saves a grid.

    OMP_NUM_THREADS=1 python benchmarks/restore.py --run /work/runs/t2i/demo --n 500 --n-dps 100

PSNR on [0, 1] images (peak 1). fd_cnn: the Frechet distance in the dataset's feature CNN
(``metrics.features``) between the restorations and the whole test split (which holds the
truths: a paired, optimistic reference, the same for every method); it grows as n shrinks, so
every method is also scored on the first ``--n-dps`` images, the DPS sample size.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch

import genmodels
from genmodels.data import load_dataset
from genmodels.edit.restore import (
    DDRM_DEFAULTS,
    DPS_DEFAULTS,
    baselines,
    degrade,
    display,
    operator,
    psnr,
    restore,
)
from genmodels.images import save_with_parameters
from genmodels.metrics.features import feature_net
from genmodels.metrics.frechet import fd


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def padded(row, like):
    """A grid row of len(like) images: ``row`` and black after it (DPS on fewer images)."""
    out = torch.full_like(like, -1)
    if row is not None:
        out[: len(row)] = row[: len(like)]
    return out


def score(x, truth, real_features, net, n_small):
    values = psnr(x, truth)
    features = net.features(x, progress=False)
    return {"psnr": values.mean().item(), "se": values.std().item() / math.sqrt(len(values)),
            "fd": fd(real_features, features) if len(x) > 1 else float("nan"),
            "fd_small": fd(real_features, features[:n_small]) if len(x) >= n_small > 1 else float("nan"), "n": len(x)}


def run_task(pipe, task, truth, args, real_features, net):
    """Every method on one task: {method: scores}, and the first grid images of each."""
    op = operator(task, pipe.data_shape)
    y = degrade(truth, op, torch.Generator().manual_seed(args.seed))
    rows, results = {"degraded": display(y[: args.grid_n], op).clamp(-1, 1)}, {}
    found, seconds = timed(lambda: baselines(y, op, pipe.data_shape))
    for name, x in found.items():
        results[name] = {**score(x, truth, real_features, net, args.n_dps), "s": seconds / len(y)}
    rows["baseline"] = next(iter(found.values()))[: args.grid_n]
    x, seconds = timed(lambda: restore(pipe, y, op, method="ddrm", seed=args.seed, steps=args.ddrm_steps))
    results["ddrm"] = {**score(x, truth, real_features, net, args.n_dps), "s": seconds / len(y)}
    rows["ddrm"] = x[: args.grid_n]
    if args.n_dps > 0:
        k = min(args.n_dps, len(y))
        x, seconds = timed(lambda: restore(pipe, y[:k], op, method="dps", seed=args.seed, steps=args.dps_steps))
        results["dps"] = {**score(x, truth[:k], real_features, net, args.n_dps), "s": seconds / k}
        rows["dps"] = x[: args.grid_n]
    return results, rows


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", default="/work/runs/t2i/demo")
    parser.add_argument("--n", type=int, default=500, help="test images for DDRM and the baselines")
    parser.add_argument("--n-dps", type=int, default=100, help="test images for DPS (the first of the n)")
    parser.add_argument("--tasks", default="sr4,sr2,deblur:1.5,denoise:0.2")
    parser.add_argument("--ddrm-steps", type=int, default=DDRM_DEFAULTS["steps"])
    parser.add_argument("--dps-steps", type=int, default=DPS_DEFAULTS["steps"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--grid", default="docs/edit/restore.png")
    parser.add_argument("--grid-n", type=int, default=8)
    args = parser.parse_args()

    pipe = genmodels.load(args.run, device="cpu")
    data = pipe.config.data
    test = load_dataset(data.name, split="test", image_size=data.image_size, channels=data.channels)
    truth = test.x[: args.n]
    net = feature_net(data.name, progress=False)
    real_features = net.features(test.x, progress=False)
    print(f"run {args.run}; {len(truth)} test images of {data.name} (DPS: the first {min(args.n_dps, len(truth))}); "
          f"reference for fd_cnn: the {len(test.x)} test images; DDRM {args.ddrm_steps} steps (eta 0.85, eta_b 1), "
          f"DPS {args.dps_steps} ddpm steps; seed {args.seed}; torch threads {torch.get_num_threads()}\n")
    floor = fd(real_features, real_features[: args.n_dps]) if args.n_dps > 1 else float("nan")
    print(f"fd_cnn floor: the first {args.n_dps} truths themselves score {floor:.2f} (the first {len(truth)}: "
          f"{fd(real_features, real_features[: len(truth)]):.2f})\n")
    print(f"| task | method | n | PSNR (dB) | fd_cnn (n) | fd_cnn (first {args.n_dps}) | s / image |")
    print("|---|---|---|---|---|---|---|")
    grid = [truth[: args.grid_n]]
    for task in args.tasks.split(","):
        results, rows = run_task(pipe, task, truth, args, real_features, net)
        for method, r in results.items():
            print(f"| {task} | {method} | {r['n']} | {r['psnr']:.2f} ± {r['se']:.2f} | {r['fd']:.2f} | "
                  f"{r['fd_small']:.2f} | {r['s']:.3f} |", flush=True)
        grid.extend(padded(rows.get(k), truth[: args.grid_n]) for k in ("degraded", "baseline", "ddrm", "dps"))
    Path(args.grid).parent.mkdir(parents=True, exist_ok=True)
    save_with_parameters(torch.cat(grid), args.grid, {"run": str(args.run), "tasks": args.tasks, "seed": args.seed,
                                                      "rows": "truth, then per task: degraded, baseline, ddrm, dps",
                                                      "ddrm_steps": args.ddrm_steps, "dps_steps": args.dps_steps},
                         nrow=args.grid_n, scale=2)
    print(f"\ngrid: {args.grid} (rows: truth, then per task {args.tasks}: degraded, baseline, DDRM, DPS)")


if __name__ == "__main__":
    main()
