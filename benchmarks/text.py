"""Text-to-image experiments: guidance trade-off curves and prompt adherence across runs.

    # the guidance sweep of one run: fd_cnn against clip_score (and the other adherence scores)
    python benchmarks/text.py sweep runs/mnist-t2i --w 1,2,3,4,6,8 --n 2000 --seeds 0 \\
        --out docs/t2i/mnist_guidance.png
    # adherence of several runs (terse vs descriptive captions, frozen vs learned encoder) on the
    # held-out items' captions in training phrasings, in held-out phrasings, and on the attribute
    # combinations held out of training
    python benchmarks/text.py adherence runs/mnist-t2i runs/mnist-t2i-terse --w 3 --n 2000 \\
        --prompts train,heldout,combinations --prompt-style descriptive

Every number is ``genmodels.evaluate`` (the one protocol): sample i of seed s is drawn with seed
s * 10^6 + i and the caption of held-out item i mod N (``--prompts``), scored in the dataset
feature CNN (fd_cnn, prompt_class_acc), by the in-domain contrastive judge ``clip_<dataset>``
(clip_score, r_precision) and, on MNIST, by Spearman between the stated and the measured stroke
thickness and slant (attribute_rho). Prints markdown tables; ``--json`` keeps every row.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import genmodels
from genmodels.metrics.protocol import evaluate

ADHERENCE = ("clip_score", "r_precision", "prompt_class_acc", "attribute_rho")
COLUMNS = ("fd_cnn", "kid", "clip_score", "r_precision", "prompt_class_acc", "rho_thickness", "rho_slant",
           "attribute_rho")


def available(metrics) -> list[str]:
    from genmodels.metrics.registry import METRICS

    return [m for m in metrics if m in METRICS]


def score(pipe, run, *, w, n, seeds, prompts, steps, sampler, with_fd, prompt_style=None) -> dict:
    adherence = ADHERENCE if prompts != "combinations" else tuple(m for m in ADHERENCE if m != "r_precision")
    # (9 combination prompts: too few other texts for r_precision's 9 distractors)
    metrics = available((("fd_cnn", "kid") if with_fd else ()) + adherence)
    start = time.perf_counter()
    result = evaluate(pipe, run_dir=run, metrics=metrics, n=n, seeds=seeds, guidance=w, prompts=prompts,
                      prompt_style=prompt_style, steps=steps, sampler=sampler, log=False, progress=False)
    row = {"run": str(run), "w": w, "prompts": prompts, "n": n, "seeds": list(seeds),
           "seconds": round(time.perf_counter() - start, 1), **result.mean,
           "std": result.std, "protocol": result.protocol}
    print(json.dumps({k: v for k, v in row.items() if k not in ("std", "protocol")}), flush=True)
    return row


def fmt(row: dict, key: str) -> str:
    if key not in row:
        return ""
    std = row["std"].get(key, 0.0)
    value = row[key]
    digits = 1 if abs(value) >= 10 else 3
    return f"{value:.{digits}f}" + (f" +- {std:.{digits}f}" if std else "")


def table(rows: list[dict], first: tuple[str, ...]) -> str:
    keys = [k for k in COLUMNS if any(k in r for r in rows)]
    lines = ["| " + " | ".join(first + tuple(keys)) + " |", "|" + "---|" * (len(first) + len(keys))]
    for r in rows:
        lines.append("| " + " | ".join([str(r[f]) for f in first] + [fmt(r, k) for k in keys]) + " |")
    return "\n".join(lines)


def plot(rows: list[dict], out: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    x = [r["fd_cnn"] for r in rows]
    for ax, key, label in ((axes[0], "clip_score", "clip_score (in-domain judge)"),
                           (axes[1], "prompt_class_acc", "prompt_class_acc")):
        if not all(key in r for r in rows):
            ax.set_visible(False)
            continue
        y = [r[key] for r in rows]
        ax.plot(x, y, "o-")
        for r, xi, yi in zip(rows, x, y):
            ax.annotate(f"w={r['w']:g}", (xi, yi), textcoords="offset points", xytext=(4, 4), fontsize=8)
        ax.set_xlabel("fd_cnn (lower is better)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    print(f"wrote {out}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("sweep", "adherence"):
        p = sub.add_parser(name)
        p.add_argument("runs", nargs="+", type=Path)
        p.add_argument("--w", default="1,2,3,4,6,8" if name == "sweep" else "3")
        p.add_argument("--n", type=int, default=2000)
        p.add_argument("--seeds", default="0")
        p.add_argument("--steps", type=int, default=None)
        p.add_argument("--sampler", default=None)
        p.add_argument("--prompts", default="train")
        p.add_argument("--prompt-style", default=None, help="caption style of the prompts (default: each run's)")
        p.add_argument("--json", type=Path, default=None)
        p.add_argument("--out", type=Path, default=None, help="sweep: the trade-off PNG")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    ws = [float(w) for w in args.w.split(",")]
    rows = []
    for run in args.runs:
        pipe = genmodels.load(run)
        if args.command == "sweep":
            for w in ws:
                rows.append(score(pipe, run, w=w, n=args.n, seeds=seeds, prompts=args.prompts, steps=args.steps,
                                  sampler=args.sampler, with_fd=True))
        else:
            for prompts in args.prompts.split(","):
                # fd_cnn only where the prompts are the held-out items' own (a distribution to compare to)
                rows.append(score(pipe, run, w=ws[0], n=args.n, seeds=seeds, prompts=prompts, steps=args.steps,
                                  sampler=args.sampler, with_fd=prompts != "combinations",
                                  prompt_style=args.prompt_style))
    print()
    print(table(rows, ("run", "w") if args.command == "sweep" else ("run", "prompts", "w")))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1, default=str))
    if args.command == "sweep" and args.out:
        plot(rows, args.out, f"{args.runs[0].name}: guidance w, n = {args.n}, seeds {args.seeds}")


if __name__ == "__main__":
    main()
