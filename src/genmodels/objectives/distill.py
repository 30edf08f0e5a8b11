"""Distillation targets and losses over Denoisers ``D(x, sigma, cond)`` in VE coordinates
(x = x0 + sigma noise): a frozen teacher's output becomes a student's regression target.

- Progressive distillation (Salimans & Ho 2022, Algorithm 2): one student DDIM step from sigma
  to sigma'' must land where two teacher DDIM steps sigma -> sigma' -> sigma'' land. Deterministic
  DDIM in VE coordinates is x'' = x0 + (sigma'' / sigma) (x - x0) = r x + (1 - r) x0 with
  r = sigma'' / sigma, so the x0 that does it is x~ = (x''_teacher - r x) / (1 - r) (the paper's
  Eq. in its Algorithm 2, there in VP coordinates: (z'' - (s''/s) z) / (a'' - (s''/s) a)).
- Guidance distillation (Meng et al. 2023, stage 1): a student that reads the guidance scale w
  regresses the teacher's classifier-free-guided x0, x0_u + w (x0_c - x0_u) (guidance.py's
  convention: w = 1 conditional, 0 unconditional; the paper's w is our w - 1).

Both regress x0 with Salimans' truncated-SNR weight max(SNR, 1), SNR = 1 / sigma^2: an x0 loss
at high noise, an eps loss at low noise (what v-prediction's loss weights too).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from ..cond import drop, nulled
from ..diffusion.denoiser import expand_like
from ..diffusion.guidance import CFGDenoiser


def ddim_step(x, denoised, sigma, sigma_next):
    """Deterministic DDIM (eta = 0; ``samplers.sample_ddim``'s step) with per-sample ``sigma``,
    ``sigma_next`` [B] (or scalars): x' = x0 + (sigma' / sigma) (x - x0)."""
    r = expand_like(torch.as_tensor(sigma_next, dtype=torch.float64) / torch.as_tensor(sigma, dtype=torch.float64), x)
    return denoised + r * (x - denoised)


@torch.no_grad()
def progressive_target(teacher, x, sigma, sigma_mid, sigma_next, cond=None):
    """x~: the x0 estimate for which ONE DDIM step sigma -> sigma_next from ``x`` lands where the
    ``teacher``'s two DDIM steps sigma -> sigma_mid -> sigma_next land. Per-sample sigmas [B]; the
    last step (sigma_next = 0) gives x~ = the teacher's two-step endpoint. The teacher runs in
    float32 even under the trainer's bf16 autocast: x~ divides by 1 - r, which magnifies its
    rounding on fine grids."""
    with full_precision(x):
        x_mid = ddim_step(x, teacher(x, sigma, cond), sigma, sigma_mid)
        x_next = ddim_step(x_mid, teacher(x_mid, sigma_mid, cond), sigma_mid, sigma_next)
    r = expand_like(torch.as_tensor(sigma_next, dtype=torch.float64) / torch.as_tensor(sigma, dtype=torch.float64),
                    x.double())
    return ((x_next.double() - r * x.double()) / (1 - r)).to(x.dtype)


def full_precision(x):
    """No autocast inside (the regression targets), on ``x``'s device."""
    return torch.autocast(x.device.type, enabled=False)


def truncated_snr_weight(sigma, x):
    """Salimans & Ho 2022, Sec. 4: max(SNR, 1) with SNR = alpha^2 / sigma_VP^2 = 1 / sigma^2."""
    sigma = torch.as_tensor(sigma, dtype=torch.float64, device=x.device)
    return (1 / sigma**2).clamp(min=1).float()


def student_levels(grid, round_index: int):
    """(teacher levels, student levels) of round ``round_index`` on the full grid ``grid`` (N0
    descending levels and a final 0): the teacher steps on every 2^k-th level of the N0 grid, the
    student on every 2^(k+1)-th, so every student grid is a subset of its teacher's (and of the
    N0 grid), and the rounds nest. Each ends in 0."""
    levels = grid[:-1]
    zero = grid[-1:]
    return (torch.cat([levels[::2 ** round_index], zero]), torch.cat([levels[::2 ** (round_index + 1)], zero]))


@dataclass
class ProgressiveObjective:
    """One round of progressive distillation: draw a student step i per sample, x_t = x0 + sigma_i
    noise at the student's level sigma_i (= the teacher's level 2i), the target by
    ``progressive_target`` over the teacher's levels 2i, 2i + 1, 2i + 2, and the weighted x0 MSE of
    ``student(x_t, sigma_i, cond)``. ``teacher_levels``: the teacher's 2N levels and a final 0.
    ``cond_dropout`` / ``null``: the teacher's classifier-free dropout, applied to the condition
    both see, so a conditional student's unconditional model is distilled too (CFG on it works).
    """

    teacher_levels: torch.Tensor
    cond_dropout: dict = field(default_factory=dict)
    null: Callable | None = None

    def __call__(self, student, teacher, batch, *, generator):
        x0 = batch["x"]
        cond = drop(batch.get("cond"), self.cond_dropout, self.null, generator=generator) or None
        steps = (len(self.teacher_levels) - 1) // 2
        i = torch.randint(0, steps, (x0.shape[0],), generator=generator, device=x0.device)
        levels = self.teacher_levels.to(x0.device)
        sigma, sigma_mid, sigma_next = (levels[2 * i + j] for j in range(3))
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        x = x0 + expand_like(sigma, x0) * noise
        target = progressive_target(teacher, x, sigma, sigma_mid, sigma_next, cond)
        loss = (student(x, sigma, cond).float() - target.float()).square().flatten(1).mean(1)
        return loss * truncated_snr_weight(sigma, x0), {}


@dataclass
class GuidanceObjective:
    """Guidance distillation: w ~ U[w_min, w_max] per sample, the path's training t, x_t = x0 +
    sigma noise; the target is the teacher's CFG x0 at w on ``keys`` (one batched forward of
    conditional and unconditional halves), the student reads w as ``cond["guidance"]``."""

    path: object
    guidance_range: tuple
    keys: tuple  # the conditions guided on (those the teacher was trained to drop)
    teacher_net: object  # for the keys' null values

    def __call__(self, student, teacher, batch, *, generator):
        x0 = batch["x"]
        cond = dict(batch.get("cond") or {})
        lo, hi = self.guidance_range
        w = lo + (hi - lo) * torch.rand((x0.shape[0],), generator=generator, device=x0.device)
        t = self.path.sample_t(x0.shape[0], generator=generator, device=x0.device)
        sigma = self.path.to_sigma(t.to(torch.float64))
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        x = x0 + expand_like(sigma, x0) * noise
        with torch.no_grad(), full_precision(x):  # CFG's extrapolation magnifies bf16 rounding
            target = CFGDenoiser(teacher, w, nulled(self.teacher_net, self.keys))(x, sigma, cond)
        out = student(x, sigma, {**cond, "guidance": w})
        loss = (out.float() - target.float()).square().flatten(1).mean(1)
        return loss * truncated_snr_weight(sigma, x0), {}


__all__ = ["GuidanceObjective", "ProgressiveObjective", "ddim_step", "progressive_target", "student_levels",
           "truncated_snr_weight"]
