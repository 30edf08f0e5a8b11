"""Anomaly detection on MNIST with a held-out digit: AUROC per score, per run, with a bootstrap SE.

Each run is trained without the anomaly class (``data.exclude_classes``); its test split's first
``--n`` images (the whole 500-image split by default, ~50 of each digit) are scored by every
method the run has: reconstruction at each strength (SDEdit + deterministic DDIM; a VAE's
posterior-mean reconstruction), and the likelihood in bits/dim (a VAE's -ELBO and -IWAE_k, a
flow's probability-flow ODE). Prints the AUROC of the anomaly class against the rest, the
one-vs-rest AUROC of every digit per score (how anomalous each class looks to the score: a
likelihood that finds simple digits likely ranks them low), and the seconds each took; saves
the raw scores as JSON and the map grid of ``--map-run`` as a PNG.

    export OMP_NUM_THREADS=1
    genmodels train mnist-flow data.exclude_classes=[7] train.minutes=null train.images=60000 --out runs/anomaly/flow
    genmodels train mnist-vae data.exclude_classes=[7] train.minutes=null train.images=100000 --out runs/anomaly/vae
    python benchmarks/anomaly.py runs/anomaly/flow runs/anomaly/vae --map docs/edit/anomaly.png
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np

import genmodels
from genmodels.data import load_dataset
from genmodels.edit.anomaly import (anomaly_map_png, auroc, auroc_bootstrap_se, complexity_bpd, likelihood_scores,
                                    reconstruction_scores)


def score_run(pipe, x, args) -> tuple[dict, dict, dict]:
    """{score: [N] numpy}, {score: seconds}, and {strength: Reconstruction}, for every method of the run."""
    scores, seconds, recs = {}, {}, {}
    for strength in args.strengths:
        start = time.perf_counter()
        rec = reconstruction_scores(pipe, x, strengths=(strength,), repeats=args.repeats, steps=args.steps)
        name = "recon" if rec.strengths[0] is None else f"recon@{strength:g}"
        scores[name], seconds[name] = rec.scores[0].double().numpy(), time.perf_counter() - start
        recs[rec.strengths[0]] = rec
        if rec.strengths[0] is None:  # a VAE / autoencoder: one reconstruction, no strength
            break
    if "likelihood" in args.methods:
        start = time.perf_counter()
        found = likelihood_scores(pipe, x, nll_k=args.nll_k, ode_tol=args.ode_tol)
        for name, row in found.items():
            scores[name], seconds[name] = row.numpy(), time.perf_counter() - start
    return scores, seconds, recs


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", type=Path, nargs="*", help="run directories to score (or give --scores-in)")
    parser.add_argument("--anomaly-class", type=int, default=7)
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--strengths", type=float, nargs="+", default=[0.2, 0.4, 0.6])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--methods", nargs="+", default=["recon", "likelihood"])
    parser.add_argument("--nll-k", type=int, default=100)
    parser.add_argument("--ode-tol", type=float, default=1e-3)
    parser.add_argument("--resamples", type=int, default=200)
    parser.add_argument("--map", type=Path, default=None, help="PNG of the first run's maps")
    parser.add_argument("--map-strength", type=float, default=0.4)
    parser.add_argument("--scores-out", type=Path, default=None, help="JSON of every per-image score")
    parser.add_argument("--scores-in", type=Path, nargs="+", default=[],
                        help="tables from --scores-out files instead of scoring again (seconds then unknown)")
    parser.add_argument("--no-corrections", action="store_true",
                        help="leave out the rows 'bpd - png' (Serra et al. 2020) and 'recon / ink'")
    args = parser.parse_args()

    test = load_dataset("mnist", split="test")
    x, y = test.x[:args.n], test.y[:args.n].numpy()
    flags = y == args.anomaly_class
    print(f"n = {len(x)} test images, {int(flags.sum())} of class {args.anomaly_class} (anomalous); "
          f"bootstrap SE over {args.resamples} stratified resamples")
    rows, per_class, raw = [], [], {"labels": y.tolist()}
    corrections = None if args.no_corrections else {"png": complexity_bpd(x), "ink": ((x + 1) / 2).flatten(1).mean(1).numpy()}
    scored = [(Path(run), {k: np.asarray(v) for k, v in table.items()}, {})
              for path in args.scores_in for run, table in json.loads(path.read_text()).items() if run != "labels"]
    for i, run in enumerate(args.runs):
        pipe = genmodels.load(run, device="cpu")
        held_out = pipe.config.data.exclude_classes
        if args.anomaly_class not in held_out:
            print(f"warning: {run} trained on class {args.anomaly_class} (data.exclude_classes={held_out})")
        scores, seconds, recs = score_run(pipe, x, args)
        raw[str(run)] = {k: v.tolist() for k, v in scores.items()}
        scored.append((run, scores, seconds))
        if i == 0 and args.map is not None:
            save_map(args, run, x, flags, recs)
    for run, scores, seconds in scored:
        for name, s in with_corrections(scores, corrections).items():
            se = auroc_bootstrap_se(s[~flags], s[flags], resamples=args.resamples)
            rows.append((run.name, name, auroc(s[~flags], s[flags]), se, seconds.get(name)))
            per_class.append((run.name, name, [auroc(s[y != c], s[y == c]) for c in range(10)]))
    print("\n| run | score | AUROC | bootstrap SE | seconds |\n|---|---|---|---|---|")
    for run, name, value, se, sec in rows:
        print(f"| {run} | {name} | {value:.3f} | {se:.3f} | {'-' if sec is None else f'{sec:.0f}'} |")
    print("\nOne-vs-rest AUROC of each digit (0.5 = looks like the rest; the anomaly class in bold):\n")
    print("| run | score | " + " | ".join(str(c) for c in range(10)) + " |\n|---|---|" + "---|" * 10)
    for run, name, values in per_class:
        cells = [f"**{v:.2f}**" if c == args.anomaly_class else f"{v:.2f}" for c, v in enumerate(values)]
        print(f"| {run} | {name} | " + " | ".join(cells) + " |")
    if args.scores_out is not None:
        args.scores_out.write_text(json.dumps(raw))


def with_corrections(scores: dict, corrections) -> dict:
    """The scores and, unless ``corrections`` is None, each likelihood minus the image's PNG
    complexity (Serra et al. 2020) and each reconstruction score over the image's ink (the mean
    of (x + 1) / 2), both post hoc: they remove how much there is to draw from the score."""
    if corrections is None:
        return scores
    out = dict(scores)
    for name, s in scores.items():
        if name.endswith("_bpd"):
            out[f"{name} - png"] = s - corrections["png"]
        elif name.startswith("recon"):
            out[f"{name} / ink"] = s / corrections["ink"]
    return out


def save_map(args, run, x, flags, recs):
    """Six normal and six anomalous test images at the map strength (or the VAE's reconstruction)."""
    rec = recs.get(args.map_strength, next(iter(recs.values())))
    row = 0
    cols = list(np.flatnonzero(~flags)[:6]) + list(np.flatnonzero(flags)[:6])
    params = {"command": "benchmarks/anomaly.py", "run": str(run), "strength": rec.strengths[row], "sampler": "ddim",
              "steps": args.steps, "repeats": args.repeats, "images": [f"test:{i}" for i in cols],
              "anomalous": [bool(flags[i]) for i in cols], "anomaly_class": args.anomaly_class}
    args.map.parent.mkdir(parents=True, exist_ok=True)
    anomaly_map_png(x[cols], rec.recon[row][cols], rec.maps[row][cols], args.map, params)
    print(f"maps -> {args.map} (strength {rec.strengths[row]}; columns 1-6 normal, 7-12 class {args.anomaly_class})")


if __name__ == "__main__":
    main()
