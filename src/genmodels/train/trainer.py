"""One trainer for every family: phases of (loss, optimizer), EMA, images-seen bookkeeping,
checkpoints that resume exactly, progress, previews and a metrics log.

A family hands the trainer its modules and one ``Phase`` per optimizer (diffusion: one; a GAN:
the discriminator step then the generator step). The trainer reduces the per-sample losses.
"""

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

from ..errors import GenmodelsError, TrainingDiverged
from . import checkpoint
from .ema import EMA


class Interrupted(GenmodelsError):
    """Ctrl-C: the state was saved at a step boundary."""


@dataclass
class Phase:
    """One optimizer step on ``module`` minimising ``loss(batch, generator) -> (loss [B], logs)``."""

    name: str
    module: nn.Module
    loss: Callable
    optimizer: torch.optim.Optimizer
    grad_clip: float | None = None


@dataclass
class Progress:
    """Counters that a checkpoint restores."""

    step: int = 0
    images_seen: int = 0
    last: dict = field(default_factory=dict)  # images seen at the last log / preview / checkpoint


class Trainer:
    """Train ``phases`` on ``batches`` until ``cfg.images`` or ``cfg.minutes``.

    ``modules`` are saved to model.safetensors, ``emas`` to ema.safetensors; ``preview(path)``
    draws a sample grid from the EMA weights every ``cfg.sample_every_images``.
    """

    def __init__(self, *, run_dir, cfg, modules: dict, phases: list, emas: dict, batches,
                 device, preview=None, generator_seed=0, images_per_step=None):
        self.run_dir, self.cfg = Path(run_dir), cfg
        self.modules, self.phases, self.emas, self.batches = modules, phases, emas, batches
        self.device, self.preview = torch.device(device), preview
        self.generator = torch.Generator(self.device).manual_seed(generator_seed)
        self.images_per_step = images_per_step or cfg.batch_size
        self.progress = Progress()
        self._stop_requested = False

    # ---- checkpoints -------------------------------------------------------------------
    def save(self) -> None:
        checkpoint.save_weights(self.modules, self.run_dir / "model.safetensors")
        checkpoint.save_weights({k: e.module for k, e in self.emas.items()}, self.run_dir / "ema.safetensors")
        state = {
            "step": self.progress.step,
            "images_seen": self.progress.images_seen,
            "last": dict(self.progress.last),
            "optimizers": {p.name: p.optimizer.state_dict() for p in self.phases},
            "batches": self.batches.state_dict(),
            "rng": {"torch": torch.get_rng_state(), "generator": self.generator.get_state()},
        }
        # state.pt is renamed last: its step always matches weights that are already on disk.
        checkpoint.save_state(state, self.run_dir / "state.pt")

    def load(self) -> None:
        state = checkpoint.load_state(self.run_dir / "state.pt")
        checkpoint.load_weights(self.modules, self.run_dir / "model.safetensors")
        checkpoint.load_weights({k: e.module for k, e in self.emas.items()}, self.run_dir / "ema.safetensors")
        for p in self.phases:
            p.optimizer.load_state_dict(state["optimizers"][p.name])
        self.batches.load_state_dict(state["batches"])
        torch.set_rng_state(state["rng"]["torch"])
        self.generator.set_state(state["rng"]["generator"])
        self.progress = Progress(state["step"], state["images_seen"], dict(state["last"]))

    # ---- the loop ----------------------------------------------------------------------
    def lr_at(self, images_seen: int) -> float:
        """Linear warm-up over ``warmup_images``, then constant."""
        warmup = self.cfg.warmup_images
        return self.cfg.lr * (min(1.0, (images_seen + 1) / warmup) if warmup else 1.0)

    def train_step(self, batch) -> torch.Tensor:
        """All phases once on ``batch``; returns the first phase's mean loss (not synced)."""
        lr = self.lr_at(self.progress.images_seen)
        losses = []
        for phase in self.phases:
            loss, _ = phase.loss(batch, self.generator)
            loss = loss.mean()
            phase.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if phase.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(phase.module.parameters(), phase.grad_clip)
            for group in phase.optimizer.param_groups:
                group["lr"] = lr
            phase.optimizer.step()
            losses.append(loss.detach())
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

    def _log_interval(self, loss_sum, loss_count, start, start_images, bar) -> None:
        """Append the mean loss since the last row to metrics.jsonl and show it on the bar."""
        self._mark("log")
        loss = self._check_finite(loss_sum, loss_count)
        elapsed = time.monotonic() - start
        img_s = (self.progress.images_seen - start_images) / max(elapsed, 1e-9)
        row = {"step": self.progress.step, "images": self.progress.images_seen, "loss": loss,
               "lr": self.lr_at(self.progress.images_seen), "img_per_s": round(img_s, 2),
               "elapsed_s": round(elapsed, 2)}
        with open(self.run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        bar.set_postfix(loss=f"{loss:.4f}", img_s=f"{img_s:.0f}")

    def _check_finite(self, loss_sum: torch.Tensor, count: int) -> float:
        value = loss_sum.item() / max(count, 1)
        if not math.isfinite(value):
            saved = self.progress.last.get("checkpoint")
            kept = (f"the last good checkpoint (at {saved:,} images) is kept in {self.run_dir}"
                    if saved else "no checkpoint had been written yet")
            raise TrainingDiverged(
                f"loss became {value} by step {self.progress.step} ({self.progress.images_seen:,} "
                f"images); {kept}. Lower train.lr or keep train.grad_clip set.")
        return value

    def fit(self) -> Progress:
        cfg = self.cfg
        self.run_dir.mkdir(parents=True, exist_ok=True)
        for m in self.modules.values():
            m.train()
        deadline = time.monotonic() + 60 * cfg.minutes if cfg.minutes else math.inf
        bar = tqdm(total=cfg.images, initial=self.progress.images_seen, unit="img", unit_scale=True,
                   desc="training", dynamic_ncols=True, mininterval=1.0)
        restore = self._install_sigint()
        loss_sum, loss_count = torch.zeros((), device=self.device), 0
        start, start_images = time.monotonic(), self.progress.images_seen
        try:
            while self.progress.images_seen < cfg.images and time.monotonic() < deadline:
                loss_sum += self.train_step(next(self.batches))
                loss_count += 1
                bar.update(self.images_per_step)
                if self._due("log", cfg.log_every_images):
                    self._log_interval(loss_sum, loss_count, start, start_images, bar)
                    loss_sum, loss_count = torch.zeros((), device=self.device), 0
                if self.preview is not None and self._due("preview", cfg.sample_every_images):
                    self._mark("preview")
                    self.preview(self.run_dir / "samples" / f"{self.progress.images_seen:09d}.png")
                if self._due("checkpoint", cfg.checkpoint_every_images):
                    self._check_finite(loss_sum, loss_count)
                    self._mark("checkpoint")
                    self.save()
                if self._stop_requested:
                    break
            if loss_count:  # the last, partial interval
                self._log_interval(loss_sum, loss_count, start, start_images, bar)
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
