"""Diffusion vs flow matching vs rectified flow, per NFE, trained in this run on the same machine.

Toys (8 gaussians, two moons): DDPM, VP-SDE (score), EDM, I-CFM, OT-CFM, 1-RF (= I-CFM), 2-RF
(reflow of 1-RF) and the one-step distillation of 2-RF, every model the same MLP and budget,
sampled by Euler on the probability-flow ODE (DDIM for DDPM: the same ODE step) at NFE 1, 2, 4,
10, 50; W2 and MMD to 2,000 held-out points. Where torchcfm imports, its
ExactOptimalTransportConditionalFlowMatcher trains the same MLP with the same optimizer, EMA,
batch and number of images in a plain loop, and is sampled by the same Euler steps.

torchcfm's PyPI dependencies pull a CUDA torch; install it alone, next to ours:
    .venv/bin/python -m pip install --no-deps torchcfm

MNIST (``--mnist-minutes M``): DDPM, EDM, I-CFM, OT-CFM trained M minutes each, 2-RF from I-CFM on
``--mnist-pairs`` ODE pairs; fd_cnn of ``--mnist-n`` samples at each NFE.

    python benchmarks/flows.py --toys 8gaussians moons --images 300000
    python benchmarks/flows.py --toys --mnist-minutes 4
"""

import argparse
import shutil
import time
from pathlib import Path

import torch

import genmodels
from genmodels.config import load_config
from genmodels.data import TOY_DISTRIBUTIONS, load_dataset
from genmodels.metrics.toy import mmd_rbf, wasserstein
from genmodels.reflow import reflow, trajectories
from genmodels.train.run import train

TOY_MODELS = {  # name: (config, extra overrides)
    "DDPM": ("toy-ddpm", []),
    "VP-SDE (score)": ("toy-vpsde", []),
    "EDM": ("toy-edm", []),
    "I-CFM = 1-RF": ("toy-flow", []),
    "OT-CFM": ("toy-otcfm", []),
}
MNIST_MODELS = {"DDPM": ("mnist-ddpm", []), "EDM": ("mnist-edm", []), "I-CFM = 1-RF": ("mnist-flow", []),
                "OT-CFM": ("mnist-flow", ["diffusion.coupling=ot"])}


def ode_sampler(pipe):
    """Euler on the PF-ODE; for a discrete DDPM the same step is called DDIM (eta = 0)."""
    return "ddim" if pipe.config.diffusion.path == "ddpm" else "euler"


def timed_train(config, overrides, out):
    start = time.perf_counter()
    train(load_config(config, overrides), out)
    return time.perf_counter() - start


def torchcfm_baseline(data, images, out_dir):
    """torchcfm's exact OT-CFM on our MLP, optimizer, EMA and batch: returns (sample_fn, seconds)
    or None when torchcfm is not installed."""
    try:
        from torchcfm.conditional_flow_matching import ExactOptimalTransportConditionalFlowMatcher
    except ImportError:
        return None
    from genmodels.nn import build_network
    from genmodels.train.ema import EMA
    from genmodels.train.run import make_adamw

    cfg = load_config("toy-flow", [f"data.name={data}"])
    t = cfg.train
    dataset = load_dataset(data, split="train", n_points=cfg.data.n_points, seed=t.seed)
    torch.manual_seed(t.seed)
    net = build_network("mlp", dim=2, **cfg.model.options)
    optimizer = make_adamw(net.parameters(), lr=t.lr, betas=(t.adam_beta1, t.adam_beta2))
    ema = EMA(net, halflife_images=t.ema_halflife_images, rampup=t.ema_rampup)
    matcher = ExactOptimalTransportConditionalFlowMatcher(sigma=0.0)
    g = torch.Generator().manual_seed(t.seed)
    start, seen = time.perf_counter(), 0
    while seen < images:
        x1 = dataset.x[torch.randint(0, len(dataset.x), (t.batch_size,), generator=g)]
        x0 = torch.randn(x1.shape, generator=g)
        tt, xt, ut = matcher.sample_location_and_conditional_flow(x0, x1)
        # torchcfm's t = 0 is noise; our MLP takes 1000 t as its noise level, so feed 1 - t
        loss = (net(xt, 1000 * (1 - tt)) - ut).square().mean()
        for group in optimizer.param_groups:
            group["lr"] = t.lr * min(1.0, (seen + 1) / t.warmup_images)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), t.grad_clip)
        optimizer.step()
        seen += t.batch_size
        ema.update(net, images_seen=seen, batch_images=t.batch_size)
    seconds = time.perf_counter() - start
    model = ema.module.eval()

    @torch.inference_mode()
    def sample(n, nfe, seed):
        x = torch.randn(n, 2, generator=torch.Generator().manual_seed(seed))
        for k in range(nfe):
            tk = torch.full((n,), k / nfe)
            x = x + model(x, 1000 * (1 - tk)) / nfe
        return x

    return sample, seconds


def toy_table(data, images, nfes, n, work):
    dist = TOY_DISTRIBUTIONS[data]
    real = dist.sample(n, generator=torch.Generator().manual_seed(123))
    floor = wasserstein(dist.sample(n, generator=torch.Generator().manual_seed(7)), real, p=2)
    rows = []

    def score(name, sample_fn, seconds, straightness=None):
        cells = []
        for k in nfes:
            x = sample_fn(k)
            cells.append(f"{wasserstein(x, real, p=2):.3f} / {1e3 * mmd_rbf(x, real):.2f}")
        s = "" if straightness is None else f"{straightness:.4f}"
        rows.append(f"| {name} | {seconds:.0f} | {s} | " + " | ".join(cells) + " |")
        print(rows[-1], flush=True)

    print(f"\n### {data}: W2 / MMD x 1e3 at NFE {nfes} ({images:,} training images each; "
          f"W2 between two real samples of {n}: {floor:.3f})\n")
    print("| model | train s | straightness | " + " | ".join(f"NFE {k}" for k in nfes) + " |")
    print("|---|---:|---:|" + "---:|" * len(nfes))
    pipes = {}
    for name, (config, extra) in TOY_MODELS.items():
        out = work / f"{data}-{config}"
        seconds = timed_train(config, [f"data.name={data}", f"train.images={images}", "train.device=cpu"] + extra,
                              out)
        pipe = pipes[name] = genmodels.load(out, device="cpu")
        straight = (trajectories(pipe, 1000, steps=20, seed=10**6)[2].mean().item()
                    if pipe.config.diffusion.path == "rectified_flow" else None)
        score(name, lambda k: pipe.sample(n, seed=0, sampler=ode_sampler(pipe), steps=k, progress=False),
              seconds, straight)
    start = time.perf_counter()
    rf1 = work / f"{data}-toy-flow"
    rf2 = reflow(rf1, work / f"{data}-rf2", pairs=20000, steps=50, images=images // 2)
    seconds = time.perf_counter() - start
    pipe = genmodels.load(rf2.run_dir, device="cpu")
    score("2-RF (reflow of 1-RF)", lambda k: pipe.sample(n, seed=0, sampler="euler", steps=k, progress=False),
          seconds, rf2.straightness_after)
    start = time.perf_counter()
    one = reflow(rf2.run_dir, work / f"{data}-rf2-distill", pairs=20000, steps=50, images=images // 3,
                 distill=True)
    seconds = time.perf_counter() - start
    pipe = genmodels.load(one.run_dir, device="cpu")
    score("2-RF distilled to 1 step", lambda k: pipe.sample(n, seed=0, sampler="euler", steps=k, progress=False),
          seconds, one.straightness_after)
    baseline = torchcfm_baseline(data, images, work)
    if baseline is None:
        print("| torchcfm OT-CFM | not installed (pip install --no-deps torchcfm) |")
    else:
        sample_fn, seconds = baseline
        score("torchcfm OT-CFM (same MLP, budget)", lambda k: sample_fn(n, k, 0), seconds)


def mnist_table(minutes, nfes, n, pairs, work):
    from genmodels.metrics import fd, feature_net
    from genmodels.metrics.protocol import reference_features

    net = feature_net("mnist", progress=False)
    reference = reference_features("mnist", net)
    print(f"\n### MNIST: fd_cnn of {n} samples at NFE {nfes} ({minutes} min of training each)\n")
    print("| model | images seen | " + " | ".join(f"NFE {k}" for k in nfes) + " |")
    print("|---|---:|" + "---:|" * len(nfes))

    def score(name, pipe, seen):
        sampler = ode_sampler(pipe)
        cells = [f"{fd(reference, net.features(pipe.sample(n, seed=0, sampler=sampler, steps=k, progress=False))):.1f}"
                 for k in nfes]
        print(f"| {name} | {seen:,} | " + " | ".join(cells) + " |", flush=True)

    for name, (config, extra) in MNIST_MODELS.items():
        out = work / f"mnist-{name.split()[0]}"
        progress = train(load_config(config, [f"train.minutes={minutes}"] + extra), out)
        score(name, genmodels.load(out), progress.images_seen)
    rf2 = reflow(work / "mnist-I-CFM", work / "mnist-rf2", pairs=pairs, steps=20,
                 overrides=[f"train.minutes={minutes}"])
    seen = __import__("json").loads((rf2.run_dir / "metrics.jsonl").read_text().splitlines()[-1])["images"]
    score(f"2-RF ({pairs:,} pairs, straightness {rf2.straightness_before:.3f} -> {rf2.straightness_after:.3f})",
          genmodels.load(rf2.run_dir), seen)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--toys", nargs="*", default=["8gaussians", "moons"])
    parser.add_argument("--images", type=int, default=300_000, help="training images per toy model")
    parser.add_argument("--nfe", nargs="+", type=int, default=[1, 2, 4, 10, 50])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--mnist-minutes", type=float, default=0, help="0 skips MNIST")
    parser.add_argument("--mnist-n", type=int, default=1000)
    parser.add_argument("--mnist-pairs", type=int, default=4000)
    parser.add_argument("--work", default="runs/bench-flows")
    args = parser.parse_args()
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for data in args.toys:
        toy_table(data, args.images, args.nfe, args.n, work)
    if args.mnist_minutes:
        mnist_table(args.mnist_minutes, args.nfe, args.mnist_n, args.mnist_pairs, work)


if __name__ == "__main__":
    main()
