"""One trainer for every family: phases of (loss, optimizer), EMA, images-seen bookkeeping,
checkpoints that resume exactly, progress, previews and a metrics log.

A family hands the trainer its modules and one ``Phase`` per optimizer (diffusion: one; a GAN:
the discriminator step then the generator step). The trainer reduces the per-sample losses and
averages each phase's extra scalars (its ``logs``, e.g. reconstruction and KL, D(real)) into the
metrics rows, beside every phase's loss and gradient norm.

Under torchrun every rank runs this same loop on its own shards (``distributed.py``); ranks talk
only in DDP's gradient all-reduce, at log rows and at checkpoints, and rank 0 alone writes.
"""

import contextlib
import json
import math
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from ..data import derive_seed
from ..errors import CheckpointError, GenmodelsError, TrainingDiverged
from ..progress import Budget, TrainingProgress
from . import checkpoint
from .distributed import Dist

NOISE_STREAM = 1  # derive_seed(seed, NOISE_STREAM, shard): unrelated to the data order's (seed, epoch)


class Interrupted(GenmodelsError):
    """Ctrl-C: the state was saved at a step boundary."""


@dataclass
class Phase:
    """One optimizer step on ``module`` minimising ``loss(batch, generator) -> (loss [B], logs)``.

    ``logs`` maps names to tensors (a scalar or one value per sample) that the metrics rows
    average; names must be unique over the phases of a run.
    """

    name: str
    module: nn.Module
    loss: Callable
    optimizer: torch.optim.Optimizer
    grad_clip: float | None = None
    every: int = 1  # run on the steps where step % every == every - 1 (a GAN's G: every n_critic)
    active: Callable[[], bool] | None = None  # None: always; else skipped while it returns False (a late discriminator)


@dataclass
class Progress:
    """Counters that a checkpoint restores."""

    step: int = 0
    images_seen: int = 0
    last: dict = field(default_factory=dict)  # images seen at the last log / preview / checkpoint


class Trainer:
    """Train ``phases`` on ``batches`` until ``cfg.images`` or ``cfg.minutes``.

    ``batches`` holds one iterator per micro-batch of a step (``cfg.grad_accum`` of them), fed
    from the data shards ``shards``; each shard also has its own noise generator, seeded from
    ``generator_seed`` and the shard index. ``modules`` are saved to model.safetensors, ``emas``
    to ema.safetensors; ``preview(path)`` draws a sample grid from the EMA weights every
    ``cfg.sample_every_images``. ``cfg.batch_size`` is the global batch: images per step.
    """

    def __init__(self, *, run_dir, cfg, modules: dict, phases: list, emas: dict, batches: list,
                 device, preview=None, generator_seed=0, images_per_step=None, dist=Dist(),
                 shards=None, evaluate=None):
        self.run_dir, self.cfg = Path(run_dir), cfg
        self.modules, self.phases, self.emas, self.batches = modules, phases, emas, list(batches)
        self.device, self.preview, self.dist = torch.device(device), preview, dist
        self.evaluate = evaluate  # () -> dict, a proxy-metrics row every cfg.eval_every_images
        self.shards = list(range(len(self.batches)) if shards is None else shards)
        self.num_shards = dist.world_size * len(self.batches)
        self.generators = [torch.Generator(self.device).manual_seed(derive_seed(generator_seed, NOISE_STREAM, s))
                           for s in self.shards]
        self.images_per_step = images_per_step or cfg.batch_size
        self.progress = Progress()
        self._stop_requested = False
        self.last_logs: dict[str, torch.Tensor] = {}  # the scalars of the last step, on the device
        # Each phase's own rates as built from the config (D and G of a GAN may differ); warm-up
        # scales them. Taken now, so a resume with a new train.lr uses the new rate.
        self._base_lrs = {p.name: [g["lr"] for g in p.optimizer.param_groups] for p in phases}

    # ---- checkpoints -------------------------------------------------------------------
    def save(self) -> None:
        """Every rank calls this (the random states are gathered); rank 0 alone writes."""
        rngs = self.dist.all_gather_objects(
            {"torch": torch.get_rng_state(), "generators": [g.get_state() for g in self.generators]})
        if not self.dist.is_main:
            return
        checkpoint.save_weights(self.modules, self.run_dir / "model.safetensors")
        checkpoint.save_weights({k: e.module for k, e in self.emas.items()}, self.run_dir / "ema.safetensors")
        state = {
            "step": self.progress.step,
            "images_seen": self.progress.images_seen,
            "last": dict(self.progress.last),
            "optimizers": {p.name: p.optimizer.state_dict() for p in self.phases},
            "batches": self.batches[0].state_dict(),  # all shards move in lockstep
            # per rank, and per shard in shard order (ranks hold consecutive shards)
            "rng": {"torch": [r["torch"] for r in rngs], "generators": [g for r in rngs for g in r["generators"]]},
        }
        # state.pt is renamed last: its step always matches weights that are already on disk.
        checkpoint.save_state(state, self.run_dir / "state.pt")

    def load(self) -> None:
        state = checkpoint.load_state(self.run_dir / "state.pt")
        rng = state["rng"]
        if len(rng["generators"]) != self.num_shards:
            raise CheckpointError(
                f"the run in {self.run_dir} was trained on {len(rng['generators'])} shard(s) (processes x "
                f"train.grad_accum) and would resume on {self.num_shards}; keep that product, e.g. "
                f"train.grad_accum={len(rng['generators'])} on one process")
        checkpoint.load_weights(self.modules, self.run_dir / "model.safetensors")
        checkpoint.load_weights({k: e.module for k, e in self.emas.items()}, self.run_dir / "ema.safetensors")
        for p in self.phases:
            p.optimizer.load_state_dict(state["optimizers"][p.name])
        for batches in self.batches:
            batches.load_state_dict(state["batches"])
        for generator, shard in zip(self.generators, self.shards):
            generator.set_state(rng["generators"][shard])
        # The global RNG only drives dropout; it is restored when the world size is unchanged.
        if len(rng["torch"]) == self.dist.world_size:
            torch.set_rng_state(rng["torch"][self.dist.rank])
        self.progress = Progress(state["step"], state["images_seen"], dict(state["last"]))

    # ---- the loop ----------------------------------------------------------------------
    def warmup(self, images_seen: int) -> float:
        """The learning-rate factor: linear warm-up over ``warmup_images``, then 1."""
        warmup = self.cfg.warmup_images
        return min(1.0, (images_seen + 1) / warmup) if warmup else 1.0

    def lr_at(self, images_seen: int) -> float:
        """``cfg.lr`` warmed up: what a phase built with the default learning rate uses."""
        return self.cfg.lr * self.warmup(images_seen)

    def step(self) -> torch.Tensor:
        """Fetch this rank's micro-batches and train on them; returns the mean loss (not synced)."""
        return self.train_step([next(batches) for batches in self.batches])

    def train_step(self, micro_batches: list) -> torch.Tensor:
        """All phases once on ``micro_batches`` (one per shard of this rank), accumulating their
        gradients; returns the first phase's mean loss (not synced), and leaves every phase's
        loss, gradient norm (when clipped) and logs in ``last_logs``. DDP averages the gradients
        over ranks in the backward pass of the last micro-batch."""
        factor = self.warmup(self.progress.images_seen)
        n = len(micro_batches)
        losses, scalars = [], {}
        for phase in self.phases:
            if self.progress.step % phase.every != phase.every - 1 or (phase.active and not phase.active()):
                continue
            phase.optimizer.zero_grad(set_to_none=True)
            total, logged = 0.0, {}
            for i, (batch, generator) in enumerate(zip(micro_batches, self.generators, strict=True)):
                with _skip_grad_sync(phase.module, i < n - 1):
                    loss, logs = phase.loss(batch, generator)
                    loss = loss.mean()
                    (loss / n).backward()  # the step's gradient: the mean over all micro-batches
                total = total + loss.detach()
                for key, value in logs.items():
                    logged[key] = logged.get(key, 0.0) + value.detach().float().mean() / n
            if phase.grad_clip is not None:
                # the norm comes for free with clipping; a sync-free tensor until the log row
                norm = torch.nn.utils.clip_grad_norm_(phase.module.parameters(), phase.grad_clip)
                scalars[f"grad_norm_{phase.name}"] = norm.detach().float()
            for group, base_lr in zip(phase.optimizer.param_groups, self._base_lrs[phase.name]):
                group["lr"] = base_lr * factor
            phase.optimizer.step()
            losses.append(total / n)
            if len(self.phases) > 1:
                scalars[f"loss_{phase.name}"] = losses[-1]
            scalars.update(logged)
        self.last_logs = scalars
        self.progress.step += 1
        self.progress.images_seen += self.images_per_step
        for name, ema in self.emas.items():
            ema.update(self.modules[name], images_seen=self.progress.images_seen,
                       batch_images=self.images_per_step)
        return losses[0]

    def _due(self, what: str, every: int) -> bool:
        return self.progress.images_seen - self.progress.last.get(what, 0) >= every

    def _mark(self, what: str) -> None:
        self.progress.last[what] = self.progress.images_seen

    def _log_interval(self, sums: "_Sums", start, start_images, bar, wants_stop=False) -> bool:
        """Append the mean loss and logs since the last row (over all ranks) to metrics.jsonl
        and show the loss on the bar; returns whether any rank asked to stop (time budget or
        Ctrl-C)."""
        self._mark("log")
        loss, logs, stop = self._reduce(sums, wants_stop)
        elapsed = time.monotonic() - start
        img_s = (self.progress.images_seen - start_images) / max(elapsed, 1e-9)
        row = {"step": self.progress.step, "images": self.progress.images_seen, "loss": loss,
               **logs, "lr": self.lr_at(self.progress.images_seen), "img_per_s": round(img_s, 2),
               "elapsed_s": round(elapsed, 2)}
        if self.dist.is_main:
            with open(self.run_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")
        bar.set_postfix(loss=f"{loss:.4f}")
        return stop

    def _reduce(self, sums: "_Sums", wants_stop=False) -> tuple[float, dict, bool]:
        """Mean loss and logs over all ranks, and whether any rank wants to stop, in one
        all-reduce (the loop's only host sync, at log rows and checkpoints); raises on a NaN/inf
        loss."""
        keys = sorted(sums.logs)  # the same on every rank: every rank runs the same phases
        flags = [float(sums.count), float(self._stop_requested), float(wants_stop)]
        values = [sums.loss.reshape(1).float(), *(sums.logs[k].reshape(1).float() for k in keys),
                  sums.loss.new_tensor([float(sums.counts[k]) for k in keys] + flags)]
        packed = self.dist.all_reduce_sum(torch.cat(values)).tolist()
        k = len(keys)
        total, logs, counts = packed[0], packed[1:1 + k], packed[1 + k:1 + 2 * k]
        count, interrupted, stop = packed[-3:]
        self._stop_requested = interrupted > 0  # a Ctrl-C on any rank stops them all
        value = self._check_finite(total / max(count, 1))
        # per key: a phase that runs every n steps is averaged over its own steps
        means = {key: v / max(c, 1) for key, v, c in zip(keys, logs, counts)}
        return value, means, stop > 0 or interrupted > 0

    def _check_finite(self, value: float) -> float:
        if not math.isfinite(value):
            saved = self.progress.last.get("checkpoint")
            kept = (f"the last good checkpoint (at {saved:,} images) is kept in {self.run_dir}"
                    if saved else "no checkpoint had been written yet")
            raise TrainingDiverged(
                f"loss became {value} by step {self.progress.step} ({self.progress.images_seen:,} "
                f"images); {kept}. Lower train.lr or keep train.grad_clip set.")
        return value

    def fit(self) -> Progress:
        cfg, dist = self.cfg, self.dist
        if dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        for m in self.modules.values():
            m.train()
        budget = Budget(cfg.images, cfg.minutes)  # the minutes count from now, in each process
        bar = TrainingProgress(budget, self.progress.images_seen, disable=not dist.is_main)
        restore = self._install_sigint()
        sums = _Sums(self.device)
        start, start_images = time.monotonic(), self.progress.images_seen
        try:
            while self.progress.images_seen < cfg.images:
                sums.add(self.step(), self.last_logs)
                bar.update(self.images_per_step)
                # A single process stops at once; ranks agree on stopping at the next log row.
                wants_stop = self._stop_requested or budget.time_up()
                stop = False
                if self._due("log", cfg.log_every_images) or (wants_stop and not dist.enabled):
                    stop = self._log_interval(sums, start, start_images, bar, wants_stop)
                    sums = _Sums(self.device)
                if self.preview is not None and self._due("preview", cfg.sample_every_images):
                    self._mark("preview")
                    if dist.is_main:
                        self.preview(self.run_dir / "samples" / f"{self.progress.images_seen:09d}.png")
                if self.evaluate is not None and cfg.eval_every_images and self._due("eval", cfg.eval_every_images):
                    self._mark("eval")
                    if dist.is_main:
                        row = {"step": self.progress.step, "images": self.progress.images_seen, **self.evaluate()}
                        with open(self.run_dir / "metrics.jsonl", "a") as f:
                            f.write(json.dumps(row) + "\n")
                if self._due("checkpoint", cfg.checkpoint_every_images):
                    self._reduce(sums)  # never checkpoint a diverged run
                    self._mark("checkpoint")
                    self.save()
                if stop:
                    break
            if sums.count:  # the last, partial interval
                self._log_interval(sums, start, start_images, bar)
            self._mark("checkpoint")
            self.save()
        finally:
            bar.close()
            restore()
        if self._stop_requested:
            raise Interrupted(f"interrupted at {self.progress.images_seen:,} images; the checkpoint "
                              f"in {self.run_dir} is saved: continue with --resume")
        return self.progress

    def _install_sigint(self):
        """First Ctrl-C: finish the step, save, stop. Second: the default (immediate) behaviour."""
        if threading.current_thread() is not threading.main_thread():
            return lambda: None

        def handler(signum, frame):
            self._stop_requested = True
            tqdm.write("stopping after this step and saving a checkpoint (Ctrl-C again to abort)")
            signal.signal(signal.SIGINT, previous)

        previous = signal.signal(signal.SIGINT, handler)
        return lambda: signal.signal(signal.SIGINT, previous)


def _skip_grad_sync(module: nn.Module, skip: bool):
    """DDP's ``no_sync`` for the micro-batches before the last: their gradients only accumulate."""
    return module.no_sync() if skip and hasattr(module, "no_sync") else contextlib.nullcontext()


class _Sums:
    """Running sums of the loss and the logged scalars between two log rows, on the device."""

    def __init__(self, device):
        self.loss, self.logs, self.count, self.counts = torch.zeros((), device=device), {}, 0, {}

    def add(self, loss: torch.Tensor, logs: dict) -> None:
        self.loss += loss
        self.count += 1
        for key, value in logs.items():
            self.logs[key] = self.logs.get(key, 0.0) + value
            self.counts[key] = self.counts.get(key, 0) + 1
