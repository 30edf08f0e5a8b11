"""Which features see malformed digits? Candidate judges scored on probes a person can check.

fd_cnn (the MNIST classifier's penultimate layer) ranks DDIM-100's often malformed digits level
with DDPM-1000's clean ones. This script scores every candidate feature space on the same probe
sets against the same real reference (half A of the 5,000 MNIST images, fixed split):

- real: half B (the floor: what the same distance gives two real sets of the same size);
- corruptions of half B: Gaussian blur (sigma 0.5, 1), 2 % salt noise, 3x3 dilation and erosion;
- one class only (all 1s, then all 0s: mode collapse), 50/50 blends of two digits, pixel-shuffled
  digits;
- model samples (``--run``): each ``--cells`` entry ``SAMPLER:STEPS`` drawn with the same seeds;
- ``--sorted DIR``: samples a person sorted by eye into DIR/clean.npz and DIR/malformed.npz
  (written by ``--sort-grid``: a numbered grid to look at): per-sample realism (distance to the
  k-th nearest real feature over the real k-NN radius, lower is more real) and the AUC with which
  it separates the two sets (0.5: blind; 1: perfect).

Each feature space's Frechet distances are also given as a ratio to its own real floor, so spaces
of different scale compare. Prints markdown tables; ``--json`` keeps every number.

    python benchmarks/judge.py                                   # real-data probes only
    python benchmarks/judge.py --run runs/demo --cells ddpm:1000 ddim:100 ddim:10 --n 1000
    python benchmarks/judge.py --run runs/demo --sort-grid docs/judge/sort.png --cells ddim:10
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from genmodels.data import load_dataset
from genmodels.metrics import fd, kid
from genmodels.metrics.features import FeatureCNN, feature_net
from genmodels.metrics.ssl import ssl_feature_net


# ---- candidate feature spaces ------------------------------------------------------------------
def cnn_layers(net):
    """The classifier's two conv stages (average-pooled to 4x4 and 2x2) beside its penultimate
    layer: earlier layers keep more of the stroke geometry the last one discards."""
    body = net.module.body

    def features(x):
        x = net.prepare(x)
        with torch.inference_mode():
            h1 = body[:7](x)  # after stage 1's pooling
            h2 = body[7:14](h1)  # after stage 2's pooling
            pen = body[14:](h2)
        return torch.cat([F.adaptive_avg_pool2d(h1, 4).flatten(1), F.adaptive_avg_pool2d(h2, 2).flatten(1),
                          pen], 1).double()
    return features


def random_cnn():
    """An untrained FeatureCNN (seed 0): features that no training could have made class-blind."""
    torch.manual_seed(0)
    net = FeatureCNN(width=32).eval()

    def features(x):
        with torch.inference_mode():
            return net.features(x.float()).double()
    return features


def judges(names):
    cnn = feature_net("mnist")
    table = {
        "cnn": lambda x: cnn.features(x),
        "cnn_layers": cnn_layers(cnn),
        "ssl": ssl_feature_net("mnist").features,
        "random_cnn": random_cnn(),
    }
    return {k: v for k, v in table.items() if k in names}


# ---- probes ------------------------------------------------------------------------------------
def blur(x, sigma):
    r = max(1, int(3 * sigma + 0.5))
    t = torch.arange(-r, r + 1, dtype=torch.float32)
    k = torch.exp(-t**2 / (2 * sigma**2))
    k = k / k.sum()
    x = F.conv2d(F.pad(x + 1, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1)) - 1
    return F.conv2d(F.pad(x + 1, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1)) - 1


def probes(real_b, labels_b, all_x, all_y, g):
    flat = real_b.flatten(1)
    salt = real_b.clone()
    salt[torch.rand(real_b.shape, generator=g) < 0.02] = 1.0
    other = torch.randperm(len(real_b), generator=g)
    out = {
        "real (half B)": real_b,
        "real (500 of half B)": real_b[:500],  # the floor at the model cells' n
        "blur sigma 0.5": blur(real_b, 0.5),
        "blur sigma 1": blur(real_b, 1.0),
        "salt 2 %": salt,
        "dilation 3x3": F.max_pool2d(real_b, 3, 1, 1),
        "erosion 3x3": -F.max_pool2d(-real_b, 3, 1, 1),
        "blend of two digits": 0.5 * (real_b + real_b[other]),
        "pixel-shuffled": flat[:, torch.randperm(flat.shape[1], generator=g)].view_as(real_b),
        "one class (1s)": all_x[all_y == 1],
        "one class (0s)": all_x[all_y == 0],
    }
    return out


def model_samples(run, cells, n, seed, batch_size):
    import genmodels

    pipe = genmodels.load(run)
    out, seconds = {}, {}
    for cell in cells:
        sampler, steps = cell.split(":")
        start = time.perf_counter()
        out[f"{run.rstrip('/').split('/')[-1]} {sampler}-{steps}"] = pipe.sample(
            n, seed=seed, sampler=sampler, steps=int(steps), batch_size=batch_size, progress=True).clamp(-1, 1)
        seconds[cell] = time.perf_counter() - start
        print(f"  sampled {cell}: {seconds[cell]:.0f} s", flush=True)
    return out


# ---- scores ------------------------------------------------------------------------------------
def realism(real_f, fake_f, k=5):
    """Per sample: distance to its k-th nearest real feature over the median real k-NN radius."""
    d_rr = torch.cdist(real_f, real_f)
    radius = d_rr.kthvalue(k + 1, dim=1).values.median()  # k + 1: a point is its own nearest
    return torch.cdist(fake_f, real_f).kthvalue(k, dim=1).values / radius


def auc(neg, pos):
    """P(score of a malformed sample > score of a clean one), ties half."""
    neg, pos = np.asarray(neg), np.asarray(pos)
    return float(((pos[:, None] > neg[None]).mean() + 0.5 * (pos[:, None] == neg[None]).mean()))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--judges", nargs="*", default=["cnn", "cnn_layers", "ssl", "random_cnn"])
    parser.add_argument("--run")
    parser.add_argument("--cells", nargs="*", default=[])
    parser.add_argument("--n", type=int, default=1000, help="model samples per cell")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=250)
    parser.add_argument("--samples", nargs="*", default=[], help="extra NAME=FILE.npz sample sets")
    parser.add_argument("--no-real-probes", action="store_true")
    parser.add_argument("--sort-grid", help="write the first cell's first 100 samples as a numbered grid")
    parser.add_argument("--sorted", help="DIR with clean.npz and malformed.npz (a person's sorting)")
    parser.add_argument("--json")
    args = parser.parse_args()

    g = torch.Generator().manual_seed(0)
    data = load_dataset("mnist", split="all")
    perm = torch.randperm(len(data), generator=g)
    half = len(data) // 2
    real_a, real_b, labels_b = data.x[perm[:half]], data.x[perm[half:]], data.y[perm[half:]]
    sets = {} if args.no_real_probes else probes(real_b, labels_b, data.x, data.y, g)
    if args.run and args.cells:
        sets.update(model_samples(args.run, args.cells, args.n, args.seed, args.batch_size))
    for item in args.samples:
        name, path = item.split("=", 1)
        sets[name] = torch.from_numpy(np.load(path)["x"]).float() if path.endswith(".npz") else torch.load(path)
    if args.sort_grid:
        from genmodels.images import save_grid

        first = [k for k in sets if k.split()[-1].split("-")[0] in {c.split(":")[0] for c in args.cells}][0]
        x = sets[first][:100]
        Path(args.sort_grid).parent.mkdir(parents=True, exist_ok=True)
        save_grid(x, args.sort_grid, nrow=10, scale=3)
        np.savez(Path(args.sort_grid).with_suffix(".npz"), x=x.numpy())
        print(f"wrote {args.sort_grid} (row-major, 0..99) and its .npz")

    results = {}
    for jname, features in judges(args.judges).items():
        start = time.perf_counter()
        ref = features(real_a)
        row = {}
        for sname, x in sets.items():
            f = features(x)
            k = kid(ref, f, subsets=50, subset_size=min(1000, len(f), len(ref)), seed=0)
            row[sname] = {"fd": fd(ref, f), "kid": k.mean, "n": len(x)}
        floor = row.get("real (half B)", {}).get("fd")
        for v in row.values():
            v["ratio"] = v["fd"] / floor if floor else None
        if args.sorted:
            clean = torch.from_numpy(np.load(Path(args.sorted) / "clean.npz")["x"]).float()
            bad = torch.from_numpy(np.load(Path(args.sorted) / "malformed.npz")["x"]).float()
            r_clean, r_bad = realism(ref, features(clean)), realism(ref, features(bad))
            row["sorted"] = {"auc": auc(r_clean.numpy(), r_bad.numpy()), "n_clean": len(clean), "n_bad": len(bad),
                             "realism_clean": r_clean.median().item(), "realism_bad": r_bad.median().item()}
        results[jname] = row
        print(f"{jname}: {time.perf_counter() - start:.0f} s", flush=True)

    names = list(results)
    print("\nFrechet distance to real half A (ratio to the judge's real floor):\n")
    print("| probe | n | " + " | ".join(names) + " |")
    print("|---|---|" + "---|" * len(names))
    for sname in sets:
        cells = [f"{results[j][sname]['fd']:.1f} ({results[j][sname]['ratio']:.1f}x)" if results[j][sname]["ratio"]
                 else f"{results[j][sname]['fd']:.1f}" for j in names]
        print(f"| {sname} | {len(sets[sname])} | " + " | ".join(cells) + " |")
    print("\nKID x 1000:\n")
    print("| probe | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    for sname in sets:
        print(f"| {sname} | " + " | ".join(f"{1000 * results[j][sname]['kid']:.2f}" for j in names) + " |")
    if args.sorted:
        print("\nA person's clean / malformed sorting, per-sample realism AUC:\n")
        print("| judge | AUC | median realism clean | malformed |")
        print("|---|---|---|---|")
        for j in names:
            s = results[j]["sorted"]
            print(f"| {j} | {s['auc']:.2f} | {s['realism_clean']:.2f} | {s['realism_bad']:.2f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
