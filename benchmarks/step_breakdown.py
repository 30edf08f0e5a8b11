"""Where one training step of the ``mnist-ddpm`` trainer goes: the fixed per-step costs around
the network (data, objective, clipping, optimizer, EMA) against forward + backward.

Each row is the best of ``--repeats`` timings of ``--steps`` calls, in one process on the
trainer that ``genmodels train`` builds (the whole step is timed first and last, the better
one kept). The optimizer rows compare AdamW's three
implementations on the same parameters and gradients; ``--compile`` adds a row for the
forward + backward of ``torch.compile(net)`` (minutes of compilation on a small CPU).

    python benchmarks/step_breakdown.py
    python benchmarks/step_breakdown.py --override model.base_channels=16 'model.channel_mult=[1,4,4]'
"""

import argparse
import tempfile
import time

import torch

from genmodels import build
from genmodels.config import load_config
from genmodels.train.run import prepare


def best_ms(fn, *, steps: int, repeats: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(steps):
            fn()
        best = min(best, (time.perf_counter() - start) / steps)
    return 1000 * best


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--override", nargs="*", default=[], help="config overrides, e.g. model.base_channels=16")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--compile", action="store_true", help="also time torch.compile(net)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    never = 10**12
    cfg = load_config("mnist-ddpm", ["train.device=cpu", f"train.log_every_images={never}",
                                     f"train.sample_every_images={never}",
                                     f"train.checkpoint_every_images={never}", *args.override])
    trainer = prepare(cfg, tempfile.mkdtemp(prefix="step_breakdown_") + "/run")
    net, phase, ema = trainer.modules["net"], trainer.phases[0], trainer.emas["net"]
    batch, generator = next(trainer.batches[0]), trainer.generators[0]
    timing = dict(steps=args.steps, repeats=args.repeats)

    def forward_backward():
        loss, _ = phase.loss(batch, generator)
        phase.optimizer.zero_grad(set_to_none=True)
        loss.mean().backward()

    rows = {"trainer.step() (all of it)": best_ms(trainer.step, **timing),
            "forward + backward": best_ms(forward_backward, **timing),
            "forward (objective, loss)": best_ms(lambda: phase.loss(batch, generator), **timing),
            "next batch (index gather)": best_ms(lambda: next(trainer.batches[0]), steps=50, repeats=3),
            "gradient clipping": best_ms(lambda: torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0),
                                         steps=20, repeats=3),
            "EMA update (_foreach_lerp_)": best_ms(
                lambda: ema.update(net, images_seen=10**6, batch_images=cfg.train.batch_size), steps=20, repeats=3)}
    forward_backward()
    for label, options in (("AdamW fused (the trainer's)", dict(fused=True)), ("AdamW foreach", dict(foreach=True)),
                           ("AdamW for-loop (torch's CPU default)", dict(foreach=False))):
        optimizer = torch.optim.AdamW(net.parameters(), lr=1e-6, **options)
        rows[label] = best_ms(optimizer.step, steps=20, repeats=3)
    if args.compile:  # the same objective around torch.compile(net)
        _, _, objective = build.diffusion_parts(cfg, cfg.model.options)
        compiled, x = torch.compile(net), batch["x"].contiguous(memory_format=torch.channels_last)

        def compiled_forward_backward():
            loss, _ = objective(compiled, {"x": x}, generator=generator)
            phase.optimizer.zero_grad(set_to_none=True)
            loss.mean().backward()

        start = time.perf_counter()
        compiled_forward_backward()  # compiles
        seconds = time.perf_counter() - start
        rows[f"forward + backward, torch.compile (first call {seconds:.0f} s)"] = \
            best_ms(compiled_forward_backward, **timing)

    # timed again last: the first timings of a process tend to be slower (allocator, caches)
    rows["trainer.step() (all of it)"] = min(rows["trainer.step() (all of it)"], best_ms(trainer.step, **timing))
    step = rows["trainer.step() (all of it)"]
    print(f"torch {torch.__version__}, {args.threads} threads, batch {cfg.train.batch_size}, "
          f"{sum(p.numel() for p in net.parameters()) / 1e6:.2f} M parameters; best of {args.repeats}\n")
    print("| part of a step | ms | of trainer.step() |")
    print("|---|---:|---:|")
    for label, ms in rows.items():
        print(f"| {label} | {ms:.2f} | {100 * ms / step:.1f} % |")
    print(f"\ntrainer: {1000 * cfg.train.batch_size / step:.0f} img/s")


if __name__ == "__main__":
    main()
