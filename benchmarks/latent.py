"""Latent against pixel diffusion, and the autoencoders they rest on, on this machine.

    # autoencoders: PSNR, rFD (fd_cnn of reconstructions against the originals), latent std
    python benchmarks/latent.py ae runs/emoji-ae runs/emoji-ae-f2 runs/fashion-ae
    # a pixel run and a latent run trained for the same wall-clock: speed, cost and quality
    python benchmarks/latent.py compare runs/emoji-ddpm runs/emoji-ldm --n 2000 --seeds 0,1 --steps 50

``compare`` measures, in this process and alternating the two so drift hits both alike:
- training images per second of the denoiser's step (forward, backward, AdamW) on batches of the
  run's own shape: pixels, or cached latents (the frozen encoder never runs per step);
- FLOPs per image of one network evaluation (torch's FlopCounterMode) and of the decoder;
- sampling ms per image at equal NFE (DDIM, ``--steps``), the latent run including its decode;
- the peak resident memory of sampling a batch, each in a fresh subprocess;
and reads from each run's metrics.jsonl the images it saw and its wall-clock. Quality is
``genmodels.evaluate`` at ``--n`` samples per seed: fd_cnn, KID, precision and recall in the
dataset feature CNN (for emoji, the CNN trained on the 9 Unicode groups).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

import genmodels
from genmodels import build
from genmodels.data import load_dataset


def read_rows(run) -> list[dict]:
    path = Path(run) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def training_summary(run) -> dict:
    rows = [r for r in read_rows(run) if "loss" in r and "images" in r]
    if not rows:
        return {}
    last = rows[-1]
    return {"images": last["images"], "minutes": round(last.get("elapsed_s", 0) / 60, 1),
            "logged_img_s": round(last["images"] / max(last.get("elapsed_s", 1), 1e-9), 1)}


def flops(fn) -> float:
    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


def step_timer(pipe, batch: int):
    """A closure running one training step of the pipeline's network on a random batch of its shape."""
    net = pipe.net
    net.train().requires_grad_(True)
    _, _, objective = build.diffusion_parts(pipe.config, pipe.config.model.options)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
    shape = (batch, *pipe.latent_shape)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g).contiguous(memory_format=torch.channels_last)
    cond = {"y": torch.randint(0, pipe.net_num_classes, (batch,))} if pipe.net_num_classes else {}

    def step():
        loss, _ = objective(net, {"x": x, "cond": cond}, generator=g)
        opt.zero_grad(set_to_none=True)
        loss.mean().backward()
        opt.step()
    return step


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def sampling_peak_rss(run, steps: int, batch: int) -> tuple[float, float]:
    """(peak resident MiB after loading ``run``, peak after also sampling one batch) of a fresh
    process: the second exceeds the first only when sampling needs more than loading did."""
    code = ("import resource, genmodels, sys, torch; rss = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss "
            "/ 1024; p = genmodels.load(sys.argv[1], device='cpu'); loaded = rss(); "
            "p.sample(int(sys.argv[3]), steps=int(sys.argv[2]), progress=False); print(loaded, rss())")
    out = subprocess.run([sys.executable, "-c", code, str(run), str(steps), str(batch)], capture_output=True,
                         text=True, check=True).stdout
    loaded, sampled = (float(v) for v in out.strip().splitlines()[-1].split())
    return loaded, sampled


def compare(args) -> None:
    pipes = {str(r): genmodels.load(r, device="cpu") for r in args.runs}
    rows = {}
    for name, pipe in pipes.items():
        shape = (1, *pipe.latent_shape)
        x, sigma = torch.randn(shape), torch.ones(1)
        cond = {"y": torch.zeros(1, dtype=torch.long)} if pipe.net_num_classes else None
        net_flops = flops(lambda: pipe.denoiser(x, sigma, cond))
        decode_flops = 0.0 if pipe.latent is None else flops(
            lambda: pipe.latent.decode(torch.randn(shape)))
        rows[name] = {"space": "pixel" if pipe.latent is None else "latent",
                      "net_shape": "x".join(map(str, pipe.latent_shape)),
                      "params_M": round(sum(p.numel() for p in pipe.net.parameters()) / 1e6, 2),
                      "gflops_per_nfe": round(net_flops / 1e9, 3), "decode_gflops": round(decode_flops / 1e9, 3),
                      **training_summary(name)}
    train_times = {n: [] for n in pipes}
    sample_times = {n: [] for n in pipes}
    steppers = {n: step_timer(genmodels.load(n, device="cpu"), args.batch) for n in pipes}
    for _ in range(args.rounds):  # alternate: drift hits both alike
        for name, pipe in pipes.items():
            train_times[name].append(args.batch / timed(steppers[name], args.repeats))
            start = time.perf_counter()
            with torch.inference_mode():
                pipe.sample(args.batch, steps=args.steps, sampler="ddim", progress=False)
            sample_times[name].append((time.perf_counter() - start) / args.batch * 1000)
    for name in pipes:
        rows[name]["train_img_s"] = round(statistics.median(train_times[name]), 1)
        rows[name]["sample_ms_per_image"] = round(statistics.median(sample_times[name]), 2)
        loaded, sampled = sampling_peak_rss(name, args.steps, args.memory_batch)
        rows[name]["rss_loaded_MiB"], rows[name]["rss_sampling_MiB"] = round(loaded), round(sampled)
    if args.n:
        seeds = [int(s) for s in args.seeds.split(",")]
        for name, pipe in pipes.items():
            result = genmodels.evaluate(name, n=args.n, seeds=seeds, steps=args.steps, sampler="ddim",
                                        metrics=["fd_cnn", "kid", "prdc"], progress=False)
            for key in ("fd_cnn", "kid", "precision", "recall"):
                rows[name][key] = round(result.mean[key], 4 if key == "kid" else 3)
                rows[name][f"{key}_std"] = round(result.std.get(key, 0.0), 4)
    print_table(rows)
    names = list(rows)
    if len(names) == 2:
        pixel, latent = (names if rows[names[0]]["space"] == "pixel" else names[::-1])
        p, q = rows[pixel], rows[latent]
        print(f"\nlatent / pixel: training img/s x{q['train_img_s'] / p['train_img_s']:.2f}, "
              f"sampling x{p['sample_ms_per_image'] / q['sample_ms_per_image']:.2f} faster at {args.steps} NFE, "
              f"FLOPs per NFE x{p['gflops_per_nfe'] / q['gflops_per_nfe']:.2f} fewer")
    if args.json:
        print(json.dumps(rows, indent=1))


def autoencoders(args) -> None:
    rows = {}
    for run in args.runs:
        ae = genmodels.load(run, device="cpu")
        data = ae.config.data
        test = load_dataset(data.name, split="test", image_size=data.image_size, channels=data.channels)
        scores = ae.reconstruction_scores(test.x[:args.n], progress=False)
        c, h, w = ae.latent_shape
        rows[str(run)] = {"data": data.name, "kind": ae.kind, "f": ae.config.latent.factor,
                          "latent_shape": f"{c}x{h}x{w}", "compression": round(
                              torch.tensor(ae.data_shape).prod().item() / (c * h * w), 1),
                          **{k: round(v, 3) for k, v in scores.items()}, **training_summary(run)}
    print_table(rows)


def print_table(rows: dict) -> None:
    keys = []
    for row in rows.values():
        keys += [k for k in row if k not in keys and not (k.endswith("_std") and k[:-4] in row)]
    print("| run | " + " | ".join(keys) + " |")
    print("|---" * (len(keys) + 1) + "|")
    for name, row in rows.items():
        cells = []
        for k in keys:
            v, s = row.get(k, ""), row.get(f"{k}_std") if k in row else None
            cells.append(f"{v} +- {s}" if s else str(v))
        print(f"| {Path(name).name} | " + " | ".join(cells) + " |")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("compare", help="pixel vs latent runs")
    c.add_argument("runs", nargs="+")
    c.add_argument("--steps", type=int, default=50, help="DDIM steps (= NFE) for sampling and quality")
    c.add_argument("--batch", type=int, default=32)
    c.add_argument("--memory-batch", type=int, default=256, help="batch of the peak-memory measurement")
    c.add_argument("--rounds", type=int, default=3)
    c.add_argument("--repeats", type=int, default=3)
    c.add_argument("--n", type=int, default=0, help="samples per seed for quality (0: skip)")
    c.add_argument("--seeds", default="0,1")
    c.add_argument("--json", action="store_true")
    a = sub.add_parser("ae", help="autoencoder runs")
    a.add_argument("runs", nargs="+")
    a.add_argument("--n", type=int, default=10_000, help="held-out images (at most the split)")
    args = parser.parse_args()
    torch.set_grad_enabled(True)
    (compare if args.command == "compare" else autoencoders)(args)


if __name__ == "__main__":
    main()
