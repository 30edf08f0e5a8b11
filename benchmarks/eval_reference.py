"""Reference values of the evaluation protocol: real images scored as if they were samples.

For each dataset, n training images (a random subset per seed) are compared with held-out test
images in the dataset CNN's features, which is what a perfect model scores at that n: the
floor of fd_cnn and KID and the ceiling of precision/recall/density/coverage. Also times each
metric. Prints markdown tables (docs/BENCHMARKS.md).

    python benchmarks/eval_reference.py --datasets mnist digits fashion --seeds 0 1 2
"""

import argparse
import time

import torch
import torch.nn.functional as F

from genmodels.data import load_dataset
from genmodels.metrics import classifier_score, fd, feature_net, kid, prdc

SIZES = {"mnist": (500, 1000, 4500), "fashion": (500, 1000, 5000, 10000), "digits": (500, 1000, 1618)}


def timed(fn):
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=["mnist", "digits", "fashion"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    rows, times, bad_rows = [], [], []
    for name in args.datasets:
        (net, build_s) = timed(lambda: feature_net(name, progress=False))
        test = load_dataset(name, split="test").x
        train = load_dataset(name, split="train")
        ref, ref_s = timed(lambda: net.features(test))
        all_train, feat_s = timed(lambda: net.features_and_logits(train.x))
        times.append((name, f"{net.info['train_seconds']:.0f}", f"{100 * net.info['test_accuracy']:.1f}",
                      f"{1000 * feat_s / len(train.x):.2f}"))
        for n in SIZES[name]:
            if n > len(train.x):
                continue
            per_seed, metric_s = [], {}
            for seed in args.seeds:
                idx = torch.randperm(len(train.x), generator=torch.Generator().manual_seed(seed))[:n]
                f, logits = all_train[0][idx], all_train[1][idx]
                out = {}
                for key, fn in (("fd_cnn", lambda: fd(ref, f)),
                                ("kid", lambda: kid(ref, f, seed=seed).mean),
                                ("prdc", lambda: prdc(ref, f, k=5)),
                                ("cs", lambda: classifier_score(logits).mean)):
                    value, seconds = timed(fn)
                    metric_s[key] = metric_s.get(key, 0.0) + seconds / len(args.seeds)
                    if key == "prdc":
                        out.update(precision=value.precision, recall=value.recall,
                                   density=value.density, coverage=value.coverage)
                    else:
                        out[key] = value
                per_seed.append(out)
            stats = {k: torch.tensor([r[k] for r in per_seed], dtype=torch.float64) for k in per_seed[0]}
            rows.append((name, len(test), n, stats, metric_s))
        # for scale: what clearly bad "models" score at the largest n (seed 0)
        n = min(max(SIZES[name]), len(train.x))
        x = train.x[torch.randperm(len(train.x), generator=torch.Generator().manual_seed(0))[:n]]
        bad = {"blurred train (3x3 box)": F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False),
               "uniform noise": torch.rand(x.shape, generator=torch.Generator().manual_seed(0)) * 2 - 1}
        for label, images in bad.items():
            f, logits = net.features_and_logits(images)
            p = prdc(ref, f, k=5)
            stats = {"fd_cnn": fd(ref, f), "kid": kid(ref, f).mean, "precision": p.precision,
                     "recall": p.recall, "density": p.density, "coverage": p.coverage,
                     "cs": classifier_score(logits).mean}
            bad_rows.append((name, len(test), n, label, stats))
    print("\n| dataset | test (reference) | train n | fd_cnn | kid | precision | recall | density | coverage | classifier score |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, n_ref, n, s, _ in rows:
        cells = [f"{s[k].mean():.3g} +- {s[k].std():.2g}" if len(args.seeds) > 1 else f"{s[k].mean():.3g}"
                 for k in ("fd_cnn", "kid", "precision", "recall", "density", "coverage", "cs")]
        print(f"| {name} | {n_ref:,} | {n:,} | " + " | ".join(cells) + " |")
    print("\n| dataset | test (reference) | n | images | fd_cnn | kid | precision | recall | density | coverage | classifier score |")
    print("|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, n_ref, n, label, s in bad_rows:
        cells = [f"{s[k]:.3g}" for k in ("fd_cnn", "kid", "precision", "recall", "density", "coverage", "cs")]
        print(f"| {name} | {n_ref:,} | {n:,} | {label} | " + " | ".join(cells) + " |")
    print("\n| dataset | reference n | train n | fd_cnn s | kid s (100 x 1000) | prdc s (k=5) | classifier score s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, n_ref, n, _, m in rows:
        print(f"| {name} | {n_ref:,} | {n:,} | {m['fd_cnn']:.3f} | {m['kid']:.2f} | {m['prdc']:.2f} | {m['cs']:.4f} |")
    print("\n| dataset | CNN training s | test accuracy % | features ms / image |")
    print("|---|---:|---:|---:|")
    for name, train_s, acc, ms in times:
        print(f"| {name} | {train_s} | {acc} | {ms} |")


if __name__ == "__main__":
    main()
