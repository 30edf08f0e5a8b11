"""Mode collapse made visible: train the toy-gan config per loss/regulariser on the 8-gaussian
ring and the 25-gaussian grid, and print modes covered and the high-quality fraction (VEEGAN's
protocol, genmodels.metrics.toy.mode_coverage) over seeds, with a scatter PNG per run.

    flock /tmp/cpu.lock python benchmarks/gan_modes.py --out docs/gan_modes --seeds 0 1 2
"""

import argparse
import contextlib
import io
import tempfile
import time
from pathlib import Path

import torch

import genmodels
from genmodels.config import load_config
from genmodels.data import TOY_DISTRIBUTIONS
from genmodels.images import scatter_plot
from genmodels.metrics.toy import mode_coverage
from genmodels.train.run import train

# name -> overrides of toy-gan (which is non-saturating + R1)
VARIANTS = {
    "minimax (saturating)": ["gan.loss=minimax", "gan.r1_gamma=0"],
    "non-saturating": ["gan.loss=non_saturating", "gan.r1_gamma=0"],
    "NS + R1": ["gan.loss=non_saturating"],
    "LSGAN": ["gan.loss=lsgan", "gan.r1_gamma=0"],
    "WGAN-GP": ["gan.loss=wgan", "gan.r1_gamma=0", "gan.gp_weight=1.0"],
    "hinge + SN": ["gan.loss=hinge", "gan.r1_gamma=0", "gan.discriminator.spectral_norm=true"],
}


def run_one(dataset, overrides, seed, images, workdir):
    cfg = load_config("toy-gan", [f"data.name={dataset}", f"train.seed={seed}", f"train.images={images}",
                                  "train.device=cpu", *overrides])
    run_dir = Path(workdir) / f"{dataset}-{abs(hash(tuple(overrides)))}-{seed}"
    start = time.perf_counter()
    with contextlib.redirect_stderr(io.StringIO()):  # no progress bars in the table
        train(cfg, run_dir)
    seconds = time.perf_counter() - start
    x = genmodels.load(run_dir, device="cpu").sample(2000, seed=10**6, progress=False)
    return x, seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["8gaussians", "25gaussians"])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--images", type=int, default=None, help="training images (default: the config's)")
    parser.add_argument("--out", default="docs/gan_modes", help="folder for the scatter PNGs (seed 0)")
    args = parser.parse_args()
    torch.set_num_threads(1)  # tiny MLPs: one thread is faster than two fighting over 2 cores
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print("| data | loss / regulariser | modes covered (per seed) | high quality | s per run |")
    print("|---|---|---|---:|---:|")
    with tempfile.TemporaryDirectory() as workdir:
        for dataset in args.datasets:
            dist = TOY_DISTRIBUTIONS[dataset]
            images = args.images or load_config("toy-gan").train.images
            for name in args.variants:
                covered, quality, seconds = [], [], []
                for seed in args.seeds:
                    x, s = run_one(dataset, VARIANTS[name], seed, images, workdir)
                    m = mode_coverage(x, dist.modes, dist.mode_std)
                    covered.append(m.covered)
                    quality.append(m.high_quality)
                    seconds.append(s)
                    if seed == args.seeds[0]:
                        slug = name.lower().replace(" ", "").replace("+", "_").replace("(", "_").replace(")", "")
                        scatter_plot(x, out / f"{dataset}-{slug}.png", reference=dist.sample(2000),
                                     title=f"{name}: {m.covered}/{m.modes} modes")
                print(f"| {dataset} | {name} | {', '.join(map(str, covered))} of {dist.modes.shape[0]} | "
                      f"{sum(quality) / len(quality):.2f} | {sum(seconds) / len(seconds):.0f} |", flush=True)


if __name__ == "__main__":
    main()
