"""Quality against network evaluations: every sampler and distilled student on one table, judged
at a sample size where the differences are larger than the error.

Each cell (a run, a sampler, its grid, a step count) draws ``--n`` samples per seed (sample i of
seed s uses seed s * 1,000,000 + i, the protocol's rule) and scores them against the MNIST
reference (all 5,000 images) in two feature spaces: the dataset CNN's (``fd_cnn``, ``kid``) and
the self-supervised encoder's (``fd_ssl``, ``kid_ssl``: the judge that sees malformed digits,
metrics/ssl.py), plus the recognisable share (metrics/classifier.py). Samples are cached as
``--cache``/CELL-seedS.npz, so an interrupted table resumes and a costly reference (DDPM at
1,000 steps) is drawn once. A distilled run (``--students``) is sampled with its own recorded
sampler, grid and steps; its distillation cost in CPU minutes is read from its metrics.jsonl.

    python benchmarks/few_step.py runs/demo --cells ddpm:1000 ddim:10 dpmpp_2m_sde:10:karras \\
        --n 2000 --seeds 0 --cache runs/few_step --json docs/few_step.json --plot docs/few_step.png
    python benchmarks/few_step.py runs/demo --students runs/pd-4 runs/cd --n 2000

A cell is SAMPLER:STEPS[:SPACING[:SIGMA_MAX]] (SPACING: leading, trailing, linspace, karras, logsnr;
default the sampler's own). Prints a markdown table; ``--plot`` draws fd_ssl against NFE.
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

import genmodels
from genmodels.metrics import fd, kid
from genmodels.metrics.classifier import recognisability
from genmodels.metrics.features import feature_net
from genmodels.metrics.protocol import SEED_STRIDE, reference_features
from genmodels.metrics.ssl import ssl_feature_net
from genmodels.samplers import evaluations


def parse_cell(text):
    parts = text.split(":")
    cell = {"sampler": parts[0], "steps": int(parts[1])}
    if len(parts) > 2 and parts[2]:
        cell["spacing"] = parts[2]
    if len(parts) > 3 and parts[3]:
        cell["sigma_max"] = float(parts[3])
    return cell


def cell_name(run, cell):
    run, _, weights = run.partition("#")
    label = Path(run).name + (f"#{Path(weights).stem}" if weights else "")
    return ":".join(str(v) for v in (label, cell["sampler"], cell["steps"], cell.get("spacing", ""),
                                     cell.get("sigma_max", ""))).rstrip(":")


def distill_minutes(run):
    """The CPU minutes a run's own training took (its last training row's elapsed time)."""
    path = Path(run) / "metrics.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []
    rows = [r for r in rows if "elapsed_s" in r and "loss" in r]
    return rows[-1]["elapsed_s"] / 60 if rows else None


def draw(pipe, cell, n, seed, cache: Path, name, batch_size, chunk=500):
    """The cell's n samples of ``seed``, drawn in chunks of ``chunk`` each cached as it completes
    (sample i keeps seed s * 1e6 + i whatever the chunking), so a killed run loses one chunk."""
    xs, seconds = [], 0.0
    options = {k: v for k, v in cell.items() if k not in ("sampler", "steps")}
    for start in range(0, n, chunk):
        path = cache / f"{name.replace(':', '_')}-seed{seed}-{start}-{min(n, start + chunk)}.npz"
        if path.is_file():
            data = np.load(path)
            xs.append(torch.from_numpy(data["x"]).float())
            seconds += float(data["seconds"])
            continue
        t0 = time.perf_counter()
        x = pipe.sample(min(n, start + chunk) - start, seed=seed * SEED_STRIDE + start, sampler=cell["sampler"],
                        steps=cell["steps"], batch_size=batch_size, progress=True, **options)
        took = time.perf_counter() - t0
        cache.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.stem + ".tmp.npz")
        np.savez(tmp, x=x.numpy().astype(np.float32), seconds=took)
        tmp.rename(path)  # atomic: a killed run leaves no half-written chunk
        xs.append(x)
        seconds += took
    return torch.cat(xs), seconds


def load_spec(spec):
    """RUN, or RUN#WEIGHTS: the run with another weights file of its network (a progressive
    distillation's earlier round, rounds/round{k}-steps{N}.safetensors)."""
    from genmodels.train.checkpoint import load_weights

    run, _, weights = spec.partition("#")
    pipe = genmodels.load(run)
    if weights:
        load_weights({"net": pipe.net}, Path(run) / weights)
    return pipe


def student_cell(pipe):
    s = pipe.config.sample
    cell = {"sampler": s.sampler, "steps": s.steps}
    if getattr(s, "spacing", None):
        cell["spacing"] = s.spacing
    return cell


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="the teacher / base run (a DDPM on MNIST)")
    parser.add_argument("--cells", nargs="*", default=["ddpm:1000", "ddim:10", "dpmpp_2m_sde:10"])
    parser.add_argument("--students", nargs="*", default=[], help="distilled runs, each at its own settings; "
                        "RUN@STEPS for another step count")
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--seeds", nargs="*", type=int, default=[0])
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--chunk", type=int, default=500, help="samples per cached file")
    parser.add_argument("--draw-only", action="store_true", help="draw and cache the cells, score nothing")
    parser.add_argument("--cache", default="runs/few_step")
    parser.add_argument("--json")
    parser.add_argument("--plot")
    args = parser.parse_args()

    if not args.draw_only:
        cnn, ssl = feature_net("mnist"), ssl_feature_net("mnist")
        ref_cnn, ref_ssl = reference_features("mnist", cnn), reference_features("mnist", ssl)
    jobs = [(args.run, parse_cell(c)) for c in args.cells]
    for item in args.students:
        spec, _, steps = item.partition("@")
        cell = student_cell(genmodels.load(spec.partition("#")[0]))
        if steps:
            cell["steps"] = int(steps)
        jobs.append((spec, cell))

    rows, pipes = [], {}
    for run, cell in jobs:
        pipe = pipes.get(run) or pipes.setdefault(run, load_spec(run))
        name = cell_name(run, cell)
        per_seed = []
        for seed in args.seeds:
            x, seconds = draw(pipe, cell, args.n, seed, Path(args.cache), name, args.batch_size, args.chunk)
            if args.draw_only:
                continue
            f_cnn, f_ssl = cnn.features(x, convert=True), ssl.features(x, convert=True)
            per_seed.append({
                "fd_cnn": fd(ref_cnn, f_cnn), "kid": kid(ref_cnn, f_cnn, seed=seed).mean,
                "fd_ssl": fd(ref_ssl, f_ssl), "kid_ssl": kid(ref_ssl, f_ssl, seed=seed).mean,
                "recognisable": recognisability(x).confident_fraction, "ms_per_image": 1000 * seconds / len(x)})
        if args.draw_only:
            print(f"{name}: drawn", flush=True)
            continue
        row = {"cell": name, "run": str(run), **cell, "n": args.n, "seeds": args.seeds,
               "nfe": evaluations(cell["sampler"], cell["steps"]),
               "train_minutes": distill_minutes(run.partition("#")[0]) if run != args.run else None}
        for key in per_seed[0]:
            values = np.array([s[key] for s in per_seed])
            row[key], row[key + "_std"] = float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0
        rows.append(row)
        print(f"{name}: fd_ssl {row['fd_ssl']:.1f} fd_cnn {row['fd_cnn']:.2f} "
              f"recognisable {row['recognisable']:.2f}", flush=True)

    if args.draw_only:
        return
    ref = rows[0]
    print(f"\nn = {args.n} per seed, seeds {args.seeds}; ratio = fd_ssl / fd_ssl of {ref['cell']}\n")
    print("| run: sampler, steps, grid | NFE | fd_ssl | ratio | kid_ssl x1e3 | fd_cnn | kid x1e3 | recognisable "
          "| ms/image | training min |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        pm = (lambda k: f"{r[k]:.2f} +- {r[k + '_std']:.2f}") if len(args.seeds) > 1 else (lambda k: f"{r[k]:.2f}")
        print(f"| {r['cell']} | {r['nfe']} | {pm('fd_ssl')} | {r['fd_ssl'] / ref['fd_ssl']:.2f} | "
              f"{1000 * r['kid_ssl']:.2f} | {pm('fd_cnn')} | {1000 * r['kid']:.2f} | {r['recognisable']:.2f} | "
              f"{r['ms_per_image']:.0f} | {minutes(r['train_minutes'])} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    if args.plot:
        plot(rows, ref, args.plot)


def minutes(value):
    return "" if value is None else f"{value:.1f}"


def plot(rows, ref, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    groups = {}
    for r in rows:
        if r is ref:
            continue
        key = f"{Path(r['run'].partition('#')[0]).name}: {r['sampler']}" + (f" ({r['spacing']})" if r.get("spacing") else "")
        groups.setdefault(key, []).append(r)
    for key, rs in groups.items():
        rs = sorted(rs, key=lambda r: r["nfe"])
        ax.plot([r["nfe"] for r in rs], [r["fd_ssl"] for r in rs], "o-", label=key)
    ax.axhline(ref["fd_ssl"], color="k", ls="--", label=f"{ref['cell']} (NFE {ref['nfe']})")
    ax.axhline(1.1 * ref["fd_ssl"], color="gray", ls=":", label="+10 % (the target)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("network evaluations per image")
    ax.set_ylabel("fd_ssl (lower is better)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
