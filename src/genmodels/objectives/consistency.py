"""Consistency training (CT) and consistency distillation (CD): Song et al. 2023 ("Consistency
Models", Algorithms 2 and 3) with the improved recipe of Song & Dhariwal 2023 ("Improved
Techniques for Training Consistency Models", iCT).

Both regress the consistency function at a noise level onto the target network's output at the
next lower level of a discretisation sigma_1 < ... < sigma_N (Karras et al. 2022, Eq. 5 with rho):

    loss = lambda(sigma_i) d(f_theta(x_{i+1}, sigma_{i+1}), f_target(x_i, sigma_i)),
    x_{i+1} = x0 + sigma_{i+1} z,
    x_i = x0 + sigma_i z                              (CT: the same z, no teacher)
    x_i = one ODE step of the teacher from x_{i+1}    (CD: Euler or Heun)

f_target is the online network under stop-gradient (iCT: no EMA) or an EMA of it (CD: mu = 0.95).
All arithmetic is in VE coordinates (ARCHITECTURE.md): any path's net becomes a Denoiser whose
x0 estimate is f (``diffusion.params.ConsistencyParameterization``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch

from ..cond import drop
from ..diffusion.sigmas import karras_sigmas
from ..errors import ConfigError
from ..samplers.base import to_d

HUBER_C = 0.00054  # iCT Sec. 3.3: c = 0.00054 sqrt(d) for data in [-1, 1]
LOSSES = ("pseudo_huber", "l2")
WEIGHTINGS = ("inverse_gap", "uniform")
NOISE_DISTS = ("lognormal", "uniform")
SOLVERS = ("heun", "euler")


def pseudo_huber(a: torch.Tensor, b: torch.Tensor, c: float | None = None) -> torch.Tensor:
    """iCT Eq. 6 per sample: d(a, b) = sqrt(||a - b||^2 + c^2) - c over all of an item's values,
    with c = 0.00054 sqrt(d) by default (d the item's dimension)."""
    diff = (a.float() - b.float()).flatten(1)
    if c is None:
        c = huber_c(diff.shape[1])
    return (diff.square().sum(1) + c * c).sqrt() - c


def huber_c(dim: int) -> float:
    return HUBER_C * math.sqrt(dim)


def discretisation_steps(k: int, total: int, *, s0: int = 10, s1: int = 1280) -> int:
    """iCT Eq. 5, the curriculum: N(k) = min(s0 2^floor(k / K'), s1) + 1 levels at training
    iteration k of ``total`` (K), K' = floor(K / (log2 floor(s1 / s0) + 1)): doubles from s0 + 1
    every K' iterations until s1 + 1."""
    per_stage = max(math.floor(total / (math.log2(math.floor(s1 / s0)) + 1)), 1)
    return min(s0 * 2 ** (k // per_stage), s1) + 1


def consistency_sigmas(n: int, *, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    """The discretisation sigma_1 < ... < sigma_n (Karras et al. 2022, Eq. 5), float64, ascending."""
    return karras_sigmas(sigma_max, sigma_min, n, rho).flip(0)


def lognormal_probabilities(sigmas: torch.Tensor, *, p_mean: float = -1.1, p_std: float = 2.0) -> torch.Tensor:
    """iCT Sec. 3.5: p(sigma_i) proportional to erf((ln sigma_{i+1} - P_mean) / (sqrt 2 P_std)) -
    erf((ln sigma_i - P_mean) / (sqrt 2 P_std)), i = 1..N-1: the probability that ln sigma ~
    N(P_mean, P_std^2) falls in [sigma_i, sigma_{i+1}], renormalised over the grid. ``sigmas``
    ascending; returns N - 1 probabilities."""
    cdf = torch.erf((sigmas.to(torch.float64).log() - p_mean) / (math.sqrt(2) * p_std))
    mass = cdf[1:] - cdf[:-1]
    return mass / mass.sum()


def teacher_step(teacher, x, sigma, sigma_next, cond=None, *, solver="heun"):
    """One probability-flow ODE step dx/dsigma = (x - D(x, sigma)) / sigma of the teacher
    Denoiser from ``sigma`` to ``sigma_next`` (per-sample [B], both > 0): Euler, or Heun's
    trapezoidal correction (EDM Algorithm 2, lines 5-8)."""
    s, s_next = _bcast(sigma, x), _bcast(sigma_next, x)
    d = to_d(x, teacher(x, sigma, cond), s)
    x_euler = x + d * (s_next - s)
    if solver == "euler":
        return x_euler
    d_next = to_d(x_euler, teacher(x_euler, sigma_next, cond), s_next)
    return x + (d + d_next) / 2 * (s_next - s)


def _bcast(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return v.reshape(-1, *([1] * (x.ndim - 1))).to(x.dtype)


@dataclass
class ConsistencyObjective:
    """``objective(online, target, batch, generator=)`` -> (per-sample loss [B], logs), with
    ``online`` and ``target`` Denoisers whose x0 estimate is the consistency function (the
    target is evaluated without gradients here).

    ``teacher`` None is CT: the levels follow the iCT curriculum ``discretisation_steps`` over
    ``total_images`` at ``images_seen()``; with a teacher Denoiser (CD) the grid has ``steps``
    levels. ``noise_dist``: which interval i a sample trains on (lognormal: iCT; uniform: the
    original paper's). ``weighting``: lambda = 1 / (sigma_{i+1} - sigma_i) (iCT) or 1.
    """

    sigma_min: float
    sigma_max: float
    rho: float = 7.0
    loss: str = "pseudo_huber"
    weighting: str = "inverse_gap"
    noise_dist: str = "lognormal"
    p_mean: float = -1.1
    p_std: float = 2.0
    s0: int = 10
    s1: int = 1280
    steps: int = 18  # CD's fixed discretisation
    total_images: int = 1
    batch_images: int = 1
    images_seen: Callable[[], int] = lambda: 0
    teacher: Callable | None = None
    solver: str = "heun"
    cond_dropout: dict = field(default_factory=dict)
    null: Callable | None = None

    def __post_init__(self):
        for name, value, allowed in (("loss", self.loss, LOSSES), ("weighting", self.weighting, WEIGHTINGS),
                                     ("noise_dist", self.noise_dist, NOISE_DISTS), ("solver", self.solver, SOLVERS)):
            if value not in allowed:
                raise ConfigError(f"consistency.{name} must be one of {', '.join(allowed)}, got {value!r}")

    def levels(self) -> torch.Tensor:
        """The current discretisation, ascending, float64."""
        if self.teacher is None:
            k = self.images_seen() // self.batch_images
            n = discretisation_steps(k, max(self.total_images // self.batch_images, 1), s0=self.s0, s1=self.s1)
        else:
            n = self.steps
        return consistency_sigmas(n, sigma_min=self.sigma_min, sigma_max=self.sigma_max, rho=self.rho)

    def interval_probabilities(self, sigmas: torch.Tensor) -> torch.Tensor:
        if self.noise_dist == "lognormal":
            return lognormal_probabilities(sigmas, p_mean=self.p_mean, p_std=self.p_std)
        return torch.full((len(sigmas) - 1,), 1 / (len(sigmas) - 1), dtype=torch.float64)

    def __call__(self, online, target, batch, *, generator):
        x0 = batch["x"]
        sigmas = self.levels().to(x0.device)
        probs = self.interval_probabilities(sigmas)
        i = torch.multinomial(probs, x0.shape[0], replacement=True, generator=generator)
        s_lo, s_hi = sigmas[i], sigmas[i + 1]
        z = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        x_hi = x0 + _bcast(s_hi, x0) * z
        cond = drop(batch.get("cond"), self.cond_dropout, self.null, generator=generator)
        with torch.no_grad():
            if self.teacher is None:
                x_lo = x0 + _bcast(s_lo, x0) * z
            else:
                x_lo = teacher_step(self.teacher, x_hi, s_hi, s_lo, cond, solver=self.solver)
            aim = target(x_lo, s_lo, cond)
        pred = online(x_hi, s_hi, cond)
        if self.loss == "pseudo_huber":
            loss = pseudo_huber(pred, aim)
        else:
            loss = (pred.float() - aim.float()).square().flatten(1).mean(1)
        if self.weighting == "inverse_gap":
            loss = loss * (1 / (s_hi - s_lo)).float()
        return loss, {"ct_levels": torch.tensor(float(len(sigmas)), device=x0.device)}


__all__ = ["ConsistencyObjective", "LOSSES", "NOISE_DISTS", "SOLVERS", "WEIGHTINGS", "consistency_sigmas",
           "discretisation_steps", "huber_c", "lognormal_probabilities", "pseudo_huber", "teacher_step"]
