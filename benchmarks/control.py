"""ControlNet benchmark: how well trained ControlNet runs follow their controls, what they cost
in quality, how fidelity moves with the control scale, and how many images they needed.

    OMP_NUM_THREADS=2 python benchmarks/control.py /work/runs/cn/edges /work/runs/cn/skeleton \
        /work/runs/cn/lowres --n 2000 --n-scale 500 --grids docs/control
    python benchmarks/control.py --curves runs/conv-* --plot docs/control/convergence.png

For each run: sample i reads the control map of test image i mod (test size) (the run's own
sampler, no class, seed i); the same extractor applied to the samples is compared with the
control (``genmodels.data.control.control_fidelity``: F1 at 1 px for stroke maps, IoU for masks,
1 - L1 for lowres). Rows:

- ``controlled``: the ControlNet at scale 1;
- ``base``: the same seeds at scale 0 (the frozen base alone: what the control adds), and for a
  class-conditional base also given each test image's class (the base at its best);
- ``real, unmatched``: real test images against other images' controls (chance level). Real
  images against their own controls score 1 by construction (the ceiling).

fd_cnn / KID are against the dataset's reference split in the protocol's feature CNN at n
samples. ``converged at``: the images seen when the training rows' control fidelity first
reached 95 % of its last value (``train.eval_every_images`` rows in metrics.jsonl).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

import genmodels
from genmodels.data import load_dataset
from genmodels.data.control import control_fidelity, extract_control
from genmodels.images import save_grid
from genmodels.metrics.features import feature_net
from genmodels.metrics.protocol import reference_features
from genmodels.metrics.registry import EvalInputs, compute


def drawn_strokes(size: int = 28) -> torch.Tensor:
    """Eight one-pixel line drawings a person might sketch (a 7, a 0, an L, a Z, a 1, a 4, a plus,
    a spiral-ish 6), as skeleton maps [8, 1, size, size] in [-1, 1]: controls no image produced."""
    from PIL import Image, ImageDraw

    s = size / 28
    shapes = [
        [("line", (7, 7, 21, 7)), ("line", (21, 7, 11, 22))],
        [("ellipse", (8, 5, 20, 23))],
        [("line", (9, 5, 9, 22)), ("line", (9, 22, 20, 22))],
        [("line", (7, 6, 20, 6)), ("line", (20, 6, 7, 22)), ("line", (7, 22, 21, 22))],
        [("line", (14, 4, 14, 23))],
        [("line", (16, 4, 7, 17)), ("line", (7, 17, 21, 17)), ("line", (16, 4, 16, 23))],
        [("line", (14, 6, 14, 22)), ("line", (6, 14, 22, 14))],
        [("line", (18, 4, 9, 15)), ("ellipse", (8, 13, 19, 23))],
    ]
    out = []
    for shape in shapes:
        image = Image.new("L", (size, size), 0)
        draw = ImageDraw.Draw(image)
        for kind, box in shape:
            box = tuple(round(v * s) for v in box)
            if kind == "line":
                draw.line(box, fill=255)
            else:
                draw.ellipse(box, outline=255)
        out.append(torch.tensor(list(image.getdata()), dtype=torch.float32).view(1, size, size) / 127.5 - 1)
    return torch.stack(out)


def mean_se(values: torch.Tensor) -> tuple[float, float]:
    return values.mean().item(), (values.std() / math.sqrt(len(values))).item()


def quality(net, reference, x) -> dict:
    inputs = EvalInputs("image", real_features=reference, fake_features=net.features(x, convert=True, progress=False),
                        fd_name=f"fd_{net.tag}")
    scores = compute(["fd_cnn", "kid"], inputs, options={"kid": {"subsets": 20, "subset_size": min(len(x), 1000)}})
    return {"fd_cnn": scores["fd_cnn"], "kid": scores["kid"]}


def fidelity_rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if "control_fidelity" in line]


def converged_at(run: Path, share: float = 0.95) -> int | None:
    """Images seen when the training rows' control fidelity first reached ``share`` of its last."""
    rows = fidelity_rows(run)
    if not rows:
        return None
    final = rows[-1]["control_fidelity"]
    return next(r["images"] for r in rows if r["control_fidelity"] >= share * final)


def curves(runs: list[Path], plot: Path | None) -> None:
    """Control fidelity against images seen, from each run's training rows: a table and a PNG."""
    print("| run | first row | fidelity there | last row | fidelity there | 95 % of last at |")
    print("|---|---|---|---|---|---|")
    for run in runs:
        rows = fidelity_rows(run)
        print(f"| {run.name} | {rows[0]['images']:,} | {rows[0]['control_fidelity']:.3f} | {rows[-1]['images']:,} | "
              f"{rows[-1]['control_fidelity']:.3f} | {converged_at(run):,} |")
    if plot is not None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
        for run in runs:
            rows = fidelity_rows(run)
            ax.plot([r["images"] for r in rows], [r["control_fidelity"] for r in rows], marker="o", ms=3, label=run.name)
        ax.set_xlabel("training images seen")
        ax.set_ylabel("control fidelity (128 samples)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        plot.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(plot)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--n", type=int, default=2000, help="samples per row (fidelity, fd_cnn)")
    parser.add_argument("--n-scale", type=int, default=500, help="samples per control scale")
    parser.add_argument("--scales", default="0,0.25,0.5,0.75,1,1.5,2")
    parser.add_argument("--grids", type=Path, default=None, help="write control -> outputs grids here")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--curves", action="store_true", help="only the training curves of the runs (no sampling)")
    parser.add_argument("--plot", type=Path, default=None, help="with --curves: the PNG of fidelity vs images seen")
    args = parser.parse_args()
    if args.curves:
        return curves(args.runs, args.plot)
    scales = [float(s) for s in args.scales.split(",")]
    results = []
    print("| run | control | row | fidelity | fd_cnn | KID | ms / image |")
    print("|---|---|---|---|---|---|---|")
    for run in args.runs:
        pipe = genmodels.load(run, device="cpu")
        kind, data = pipe.config.control.type, pipe.config.data
        test = load_dataset(data.name, split="test", image_size=data.image_size, channels=data.channels)
        index = torch.arange(args.n) % len(test.x)
        controls = extract_control(kind, test.x)[index]
        net = feature_net(data.name, progress=False)
        reference = reference_features(data.name, net, progress=False)
        rows = {}
        labels = test.y[index].tolist() if pipe.net_num_classes and test.y is not None else None
        cases = [("controlled", 1.0, None), ("base", 0.0, None)] + ([("base, the test image's class", 0.0, labels)]
                                                                    if labels else [])
        for name, scale, given in cases:
            start = time.perf_counter()
            x = pipe.sample(args.n, control=controls, control_scale=scale, labels=given, progress=False,
                            batch_size=250)
            seconds = time.perf_counter() - start
            f, se = mean_se(control_fidelity(kind, x, controls))
            rows[name] = dict(fidelity=f, fidelity_se=se, ms=1000 * seconds / args.n, **quality(net, reference, x))
            if name == "controlled" and args.grids is not None:
                args.grids.mkdir(parents=True, exist_ok=True)
                show = controls[:8].repeat(1, x.shape[1] // controls.shape[1], 1, 1)
                more = pipe.sample(16, control=controls[:8].repeat(2, 1, 1, 1), seed=10_000, progress=False)
                save_grid(torch.cat([show, x[:8], more]).clamp(-1, 1), args.grids / f"{run.name}.png", nrow=8, scale=2)
        if kind in ("skeleton", "scribble") and args.grids is not None and pipe.data_shape[-1] == 28:
            sketch = drawn_strokes()
            if kind == "scribble":
                sketch = (torch.nn.functional.max_pool2d((sketch > 0).float(), 3, 1, 1) > 0).float() * 2 - 1
            drawn = pipe.sample(24, control=sketch.repeat(3, 1, 1, 1), seed=20_000, progress=False)
            save_grid(torch.cat([sketch, drawn]).clamp(-1, 1), args.grids / f"{run.name}-drawn.png", nrow=8, scale=2)
        shuffled = controls.roll(1, 0)
        real = test.x[index]
        f, se = mean_se(control_fidelity(kind, real, shuffled))
        rows["real, unmatched"] = dict(fidelity=f, fidelity_se=se, ms=float("nan"), **quality(net, reference, real))
        for name, r in rows.items():
            print(f"| {run.name} | {kind} | {name} | {r['fidelity']:.3f} +- {r['fidelity_se']:.3f} | {r['fd_cnn']:.2f} "
                  f"| {r['kid']:.3f} | {r['ms']:.1f} |", flush=True)
        sweep = {}
        for scale in scales:
            x = pipe.sample(args.n_scale, control=controls[:args.n_scale], control_scale=scale, progress=False,
                            batch_size=250)
            sweep[scale] = control_fidelity(kind, x, controls[:args.n_scale]).mean().item()
        monotone = all(b >= a - 0.005 for a, b in zip(list(sweep.values()), list(sweep.values())[1:]))
        print(f"|   {run.name} | fidelity vs scale | " + ", ".join(f"{s:g}: {v:.3f}" for s, v in sweep.items())
              + f" | monotone: {'yes' if monotone else 'no'} | converged at {converged_at(run)} images | |", flush=True)
        results.append(dict(run=str(run), kind=kind, rows=rows, sweep=sweep, converged_at=converged_at(run)))
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
