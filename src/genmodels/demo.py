"""The main job: train a DDPM on MNIST within a time budget, sample, evaluate, report."""

import time
from pathlib import Path

from .config import load_config
from .images import save_grid, save_npz
from .report import plot_loss, read_metrics, write_report

# the run's sampler (mnist-ddpm: DPM-Solver++ 2M SDE, 10 steps, trailing grid: docs/BENCHMARKS.md)
DEMO_SAMPLES = dict(n=64, seed=0)
# the protocol's scores beside the recognisable share: at n = 1,000 their error is well below the
# differences between samplers and settings (docs/EVALUATION.md), which 64 samples cannot resolve
DEMO_SCORES = dict(metrics=("fd_cnn", "kid", "fd_ssl"), n=1000, seeds=(0,))


def free_run_dir(base: Path) -> Path:
    """``base`` if unused, else base-2, base-3, ...: a demo never overwrites an earlier run."""
    if not base.exists() or not any(base.iterdir()):
        return base
    i = 2
    while Path(f"{base}-{i}").exists():
        i += 1
    return Path(f"{base}-{i}")


def make_report(run_dir, *, device="auto", sample_seconds=None, scores=DEMO_SCORES) -> Path:
    """Sample the demo grid from the EMA weights, plot the loss, score the samples, write HTML.
    ``scores``: the protocol evaluation shown beside the grid's recognisable share (MNIST; None
    skips it)."""
    from .families import load
    from .metrics.classifier import recognisability

    run_dir = Path(run_dir)
    pipe = load(run_dir, device=device)
    diffusion = pipe.config.family == "diffusion"
    settings = DEMO_SAMPLES
    t0 = time.perf_counter()
    x = pipe.sample(**settings)
    sample_seconds = time.perf_counter() - t0
    grid = run_dir / "samples.png"
    save_grid(x, grid, nrow=8, scale=3)
    save_npz(x, run_dir / "samples.npz")
    loss_png = plot_loss(run_dir, run_dir / "loss.png")

    rows = [r for r in read_metrics(run_dir) if "loss" in r]  # not the eval rows
    last = rows[-1] if rows else {}
    facts = {
        "dataset": pipe.config.data.name,
        "training images seen": f"{last.get('images', 0):,}",
        "training throughput": f"{last.get('img_per_s', 0):.0f} img/s",
        "final training loss": f"{last.get('loss', float('nan')):.4f}",
        "network parameters": f"{sum(p.numel() for p in pipe.net.parameters()):,}",
        "sampler": (f"{sampler_words(pipe)}, " if diffusion else "") +
                   f"seeds {DEMO_SAMPLES['seed']}..{DEMO_SAMPLES['seed'] + DEMO_SAMPLES['n'] - 1}",
        "sampling time": f"{sample_seconds:.1f} s for {len(x)} images "
                         f"({1000 * sample_seconds / len(x):.0f} ms/image)",
    }
    if pipe.config.data.name == "mnist":
        score = recognisability(x, device=pipe.device)
        facts.update(score.as_facts())
        if scores:
            facts.update(protocol_facts(pipe, run_dir, **scores))
    what = "DDPM" if diffusion else pipe.config.family.upper()
    how = f"{sampler_words(pipe)}, EMA weights" if diffusion else "EMA weights"
    return write_report(run_dir, title=f"genmodels: {what} on {pipe.config.data.name}",
                        figures=[(f"64 samples ({how})", grid),
                                 ("training loss", loss_png)], facts=facts)


def sampler_words(pipe) -> str:
    s = pipe.sample_settings()
    return f"{s['sampler']}, {s['steps']} steps" + (f", {s['spacing']} grid" if s.get("spacing") else "")


def protocol_facts(pipe, run_dir, *, metrics, n, seeds) -> dict:
    """The evaluation protocol's scores (``genmodels.evaluate``) as report rows; logged in metrics.jsonl."""
    from .metrics.protocol import evaluate

    print(f"scoring {n:,} samples ({', '.join(metrics)})")
    result = evaluate(pipe, run_dir=run_dir, metrics=list(metrics), n=n, seeds=seeds, batch_size=250)
    label = {"fd_cnn": "fd_cnn (MNIST-CNN features)", "kid": "KID (MNIST-CNN features)",
             "fd_ssl": "fd_ssl (self-supervised features)", "kid_ssl": "KID (self-supervised features)"}
    where = f"n = {n:,}, {result.protocol['sampler']} {result.protocol['steps']} steps, vs all 5,000 MNIST images"
    return {f"{label.get(k, k)}": f"{v:.4g} ({where})" for k, v in result.mean.items()}


def run_demo(*, out=None, minutes=10.0, device="auto", overrides=(), scores=DEMO_SCORES) -> Path:
    """Train mnist-ddpm for ``minutes`` (plus config ``overrides``), then ``make_report``."""
    from .train.run import train

    run_dir = Path(out) if out is not None else free_run_dir(Path("runs/demo"))
    cfg = load_config("mnist-ddpm", [f"train.minutes={minutes}", f"train.device={device}", *overrides])
    print(f"training a DDPM on MNIST for {minutes:g} minutes -> {run_dir}")
    train(cfg, run_dir)
    print("sampling 64 digits and writing the report")
    return make_report(run_dir, device=device, scores=scores)
