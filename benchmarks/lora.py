"""LoRA vs full fine-tuning, DreamBooth-style: adapt a class-conditional MNIST DDPM to one class (its
training data cut to that class) at a fixed image budget, for ranks 1..16 and for full
fine-tuning of the same model, same images, same learning rate. Per run: adapter file size,
trainable share of the parameters, training time per image, and on its samples

- target purity: the share of unconditional samples (null label) the MNIST CNN reads as the class,
- fd_cnn of those samples to the test split's images of the class,
- kept: the CNN's accuracy on class-conditional samples of the *other* classes (what was not
  forgotten).

One process, sequential runs (train, then evaluate):

    OMP_NUM_THREADS=1 python benchmarks/lora.py /work/runs/base/mnist-cfg --out /work/runs/lora/bench \\
        --images 6400 --target 3
"""

import argparse
import json
import time
from pathlib import Path

import torch

import genmodels
from genmodels.families import load_run
from genmodels.data import load_dataset
from genmodels.families.lora import export_adapter, finetune_config
from genmodels.images import save_grid
from genmodels.metrics.features import feature_net
from genmodels.metrics.frechet import fd
from genmodels.train.run import train


def fine_tune(base, out, *, rank, images, target, lr, targets, extra):
    """Train one fine-tune (rank None: full) unless ``out`` holds it; its training seconds."""
    others = [k for k in range(10) if k != target]
    overrides = [f"train.images={images}", f"data.exclude_classes={others}", f"train.lr={lr}",
                 "train.sample_every_images=1000000000", "train.checkpoint_every_images=1000000000", *extra]
    if (out / "timing.json").is_file():
        return json.loads((out / "timing.json").read_text())["seconds"]
    cfg = finetune_config(base, rank=rank or 1, targets=targets, full=rank is None, overrides=overrides)
    start = time.perf_counter()
    train(cfg, out)
    seconds = time.perf_counter() - start
    if rank is not None:
        export_adapter(out)
    (out / "timing.json").write_text(json.dumps({"seconds": seconds}))
    return seconds


def score(pipe, cnn, real_target, *, target, n, per_class, grid):
    x = pipe.sample(n, seed=0, progress=False).clamp(-1, 1)  # unconditional: the null label
    save_grid(x[:64], grid, nrow=8, scale=2)
    purity = (cnn.logits(x).argmax(1) == target).double().mean().item()
    others = [k for k in range(10) if k != target]
    labels = [k for k in others for _ in range(per_class)]
    xc = pipe.sample(len(labels), seed=10**6, labels=labels, progress=False).clamp(-1, 1)
    kept = (cnn.logits(xc).argmax(1) == torch.tensor(labels)).double().mean().item()
    return purity, fd(cnn.features(real_target), cnn.features(x)), kept


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--ranks", nargs="*", type=int, default=[1, 2, 4, 8, 16])
    parser.add_argument("--images", type=int, default=6400)
    parser.add_argument("--target", type=int, default=3)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--targets", default="attn,conv")
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--no-full", action="store_true", help="LoRA ranks only (no full fine-tune row)")
    parser.add_argument("--per-class", type=int, default=30)
    # label_dropout 0.9 (it must be < 1): 9 in 10 fine-tuning images train the null label, the one the
    # purity samples use; the other classes' labels are left to the base (kept measures how well)
    parser.add_argument("--set", nargs="*", default=["diffusion.label_dropout=0.9"], help="config overrides")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    cnn = feature_net("mnist")
    test = load_dataset("mnist", split="test")
    real_target = test.x[test.y == args.target]
    base_pipe = genmodels.load(args.base, device="cpu")
    base_params = sum(p.numel() for p in base_pipe.net.parameters())
    base_size = (Path(args.base) / "ema.safetensors").stat().st_size

    print(f"base {args.base}: {base_params:,} parameters; target class {args.target}; budget {args.images:,} "
          f"images of it; lr {args.lr}; {' '.join(args.set)}; LoRA targets {args.targets}; {args.n} unconditional samples "
          f"(+{args.per_class} per other class), the run's sampler\n")
    train_split = load_dataset("mnist", split="train")
    floor = fd(cnn.features(real_target), cnn.features(train_split.x[train_split.y == args.target][:args.n]))
    print(f"fd_cnn of {args.n} training-set images of the class to the test split's: {floor:.2f}\n")
    print("| run | file | trainable | ms / train image | target purity | fd_cnn to the class | kept (other classes) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    purity, fd_cnn, kept = score(base_pipe, cnn, real_target, target=args.target, n=args.n,
                                 per_class=args.per_class, grid=args.out / "base.png")
    print(f"| base (no fine-tune) | {base_size / 1e6:.1f} MB | - | - | {purity:.3f} | {fd_cnn:.2f} | {kept:.3f} |",
          flush=True)
    for rank in [*args.ranks, *([] if args.no_full else [None])]:
        name = "full" if rank is None else f"lora-r{rank}"
        run = args.out / name
        seconds = fine_tune(args.base, run, rank=rank, images=args.images, target=args.target, lr=args.lr,
                            targets=args.targets, extra=args.set)
        pipe = genmodels.load(run, device="cpu")
        if rank is None:
            size, trainable = (run / "ema.safetensors").stat().st_size, base_params
        else:
            size = (run / "adapter.safetensors").stat().st_size
            adapters = load_run(run, device="cpu").modules["lora"]
            trainable = sum(p.numel() for p in adapters.parameters())
        purity, fd_cnn, kept = score(pipe, cnn, real_target, target=args.target, n=args.n,
                                     per_class=args.per_class, grid=args.out / f"{name}.png")
        shown = f"{size / 1e6:.1f} MB" if size > 1e6 else f"{size / 1e3:.0f} kB"
        print(f"| {name} | {shown} | {100 * trainable / base_params:.2f} % | {1000 * seconds / args.images:.2f} | "
              f"{purity:.3f} | {fd_cnn:.2f} | {kept:.3f} |", flush=True)


if __name__ == "__main__":
    main()
