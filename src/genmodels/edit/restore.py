"""Restoration as inverse problems with an unconditional diffusion or flow model: super-resolution,
deblurring and denoising of y = H x + sigma_y n by DDRM (Kawar et al. 2022) and DPS (Chung et al.
2023), with the classical baselines beside them.

    y = degrade(x, "sr4", generator)                        # [N, 1, 7, 7] from [N, 1, 28, 28]
    x = restore(pipe, y, "sr4", method="ddrm", seed=0)      # [N, 1, 28, 28] in [-1, 1]
    b = baselines(y, "sr4", pipe.data_shape)                # {"bicubic": ...}

The operators are small enough (28 x 28, 32 x 32 per channel) to be dense matrices: each task's
H is the matrix of its degradation on one channel (the same for every channel), built by
applying the degradation to the identity basis, and its SVD H = U diag(s) V^T is computed once
in float64. DDRM works in that spectral space; DPS only needs ``apply``.

Everything is in VE coordinates (``samplers``): x = x0 + sigma eps, D(x, sigma) -> x0.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import click
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError, DataError, GenmodelsError

TASK_FORMS = ("sr2, sr4 (block averaging), deblur:S (Gaussian blur of std S pixels), "
              "denoise:S (added noise of std S, images in [-1, 1])")
METHODS = ("ddrm", "dps")
# DDRM's singular values below this share of the largest carry no measurement (the DDRM code's
# ZERO = 3e-2 for deblurring): dividing by them would amplify the measurement's rounding (8-bit
# PNG) by up to 1e5 for deblur:1.5.
SINGULAR_FLOOR = 3e-2
DDRM_DEFAULTS = {"steps": 20, "eta": 0.85, "eta_b": 1.0}
DPS_DEFAULTS = {"steps": 100, "sampler": "ddpm", "zeta": 1.0}
# DPS's step zeta per task, the best of three on MNIST test images 400-415 with the 100-step ddpm
# default (benchmarks/restore.py measures on images 0..N-1): sr4 15/30/60 -> 16.9/17.6/17.0 dB,
# sr2 5/10/20 -> 23.9/25.3/22.8, deblur:1.5 5/10/20 -> 22.5/21.8/20.1, denoise:0.2 1.5/3/5 ->
# 21.8/25.0/20.6. A normalized gradient step overshoots once the residual is below it, so the
# best zeta grows with the residual the measurement leaves (see DPSGuidance).
DPS_ZETA = {"sr4": 30.0, "sr2": 10.0, "deblur": 5.0, "denoise": 3.0}


# ---- operators ---------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class Operator:
    """A linear degradation y = H x + sigma_y n acting on each channel alike.

    ``matrix`` H [m, d] (float64) maps one channel's d = H * W pixels to its m measurements; ``u``
    [m, m], ``s`` [m] (descending) and ``v`` [d, d] are its full SVD, so the last d - m columns of
    ``v`` span the null space. ``kind`` / ``param`` say what it is (``sr`` and the factor, ``deblur``
    and the blur std, ``denoise``, ``matrix`` for one built from a matrix)."""

    task: str
    shape: tuple  # (C, H, W) of the clean images
    out_shape: tuple  # (C, ...) of the measurements
    matrix: torch.Tensor
    u: torch.Tensor
    s: torch.Tensor
    v: torch.Tensor
    sigma_y: float
    kind: str
    param: float = 0.0

    @property
    def channels(self) -> int:
        return self.shape[0]

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """The noiseless degradation H x of images [N, *shape] -> [N, *out_shape], differentiable
        (DPS takes its gradient); by the direct operation where there is one (pooling, a
        convolution), else by the matrix."""
        if self.kind == "sr":
            return F.avg_pool2d(x, int(self.param))
        if self.kind == "deblur":
            return blur(x, self.param)
        if self.kind == "denoise":
            return x
        return self.by_matrix(x)

    def by_matrix(self, x: torch.Tensor) -> torch.Tensor:
        """H x by the dense matrix (what ``apply`` must equal)."""
        flat = x.reshape(len(x), self.channels, -1)
        return (flat.to(self.matrix.dtype) @ self.matrix.T).to(x.dtype).reshape(len(x), *self.out_shape)

    def to_spectral(self, x: torch.Tensor) -> torch.Tensor:
        """x-bar = V^T x per channel: [N, *shape] -> [N, C, d] float64."""
        return x.reshape(len(x), self.channels, -1).to(torch.float64) @ self.v

    def from_spectral(self, x_bar: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
        return (x_bar @ self.v.T).to(dtype).reshape(len(x_bar), *self.shape)

    def measured(self, floor: float = SINGULAR_FLOOR) -> torch.Tensor:
        """[d] bool: the spectral components the measurement sees (singular value above ``floor``
        times the largest)."""
        keep = torch.zeros(self.v.shape[0], dtype=torch.bool)
        keep[: len(self.s)] = self.s > floor * self.s.max()
        return keep

    def spectral_measurement(self, y: torch.Tensor, floor: float = SINGULAR_FLOOR):
        """(y-bar [N, C, d], its noise std per component c [d], measured mask [d]): y-bar_i =
        (U^T y)_i / s_i and c_i = sigma_y / s_i where measured, 0 and inf elsewhere."""
        keep = self.measured(floor)
        s = torch.ones(self.v.shape[0], dtype=torch.float64)
        s[: len(self.s)] = self.s
        s = torch.where(keep, s, torch.ones_like(s))
        uy = y.reshape(len(y), self.channels, -1).to(torch.float64) @ self.u
        y_bar = torch.zeros(len(y), self.channels, self.v.shape[0], dtype=torch.float64)
        y_bar[..., : uy.shape[-1]] = uy
        y_bar = torch.where(keep, y_bar / s, torch.zeros_like(y_bar))
        c = torch.where(keep, self.sigma_y / s, torch.full_like(s, math.inf))
        return y_bar, c, keep

    def check_measurement(self, y: torch.Tensor) -> None:
        if tuple(y.shape[1:]) != tuple(self.out_shape):
            raise DataError(f"task {self.task} on {_size(self.shape)} images expects measurements of "
                            f"{_size(self.out_shape)}, got {_size(tuple(y.shape[1:]))}")


def _size(shape) -> str:
    return f"{shape[-1]}x{shape[-2]}" + (f"x{shape[0]}" if shape[0] != 1 else "") if len(shape) == 3 else str(shape)


def parse_task(task: str) -> tuple[str, float]:
    """``task`` -> (kind, parameter); one ConfigError line listing the forms otherwise."""
    bad = ConfigError(f"unknown restoration task {task!r}; allowed: {TASK_FORMS}")
    if task in ("sr2", "sr4"):
        return "sr", float(task[2:])
    kind, _, value = str(task).partition(":")
    if kind not in ("deblur", "denoise") or not value:
        raise bad
    try:
        param = float(value)
    except ValueError:
        raise bad from None
    if not 0 < param < math.inf:
        raise ConfigError(f"task {task}: the std must be > 0; allowed: {TASK_FORMS}")
    return kind, param


def blur_kernel(std: float) -> torch.Tensor:
    """The normalized 2-D Gaussian kernel of ``std`` pixels, size 2 ceil(3 std) + 1, float64."""
    radius = math.ceil(3 * std)
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    g = torch.exp(-0.5 * (t / std) ** 2)
    g = g / g.sum()
    return g[:, None] * g[None, :]


def blur(x: torch.Tensor, std: float) -> torch.Tensor:
    """Gaussian blur with reflect boundary (the image mirrored about its edge pixels, numpy's
    'reflect'): linear, and on MNIST's black border it adds no gray the way zero padding of
    [-1, 1] images would."""
    kernel = blur_kernel(std).to(x.dtype)
    radius = kernel.shape[-1] // 2
    c = x.shape[1]
    padded = F.pad(x, (radius,) * 4, mode="reflect")
    return F.conv2d(padded, kernel.expand(c, 1, *kernel.shape).to(x.device), groups=c)


def operator(task: str, shape, *, sigma_y: float | None = None) -> Operator:
    """The operator of ``task`` on images of ``shape`` (C, H, W). ``sigma_y``: the measurement
    noise std (default: the task's, i.e. 0 for sr/deblur and S for denoise:S)."""
    shape = tuple(int(v) for v in shape)
    kind, param = parse_task(task)
    if len(shape) != 3:
        raise ConfigError(f"restoration works on images (C, H, W), got shape {shape}")
    if kind == "sr" and (shape[1] % param or shape[2] % param):
        raise ConfigError(f"{task} needs image sides divisible by {int(param)}, got {shape[2]}x{shape[1]}")
    if kind == "deblur" and math.ceil(3 * param) >= min(shape[1:]):
        raise ConfigError(f"{task}: the blur kernel is wider than the {shape[2]}x{shape[1]} image")
    noise = param if kind == "denoise" else 0.0
    noise = noise if sigma_y is None else float(sigma_y)
    return _build(task, shape, kind, param, noise)


@lru_cache(maxsize=16)
def _build(task, shape, kind, param, sigma_y) -> Operator:
    """The matrix (the degradation of each one-pixel image) and its SVD, once per task and shape."""
    c, h, w = shape
    d = h * w
    probe = Operator(task, (1, h, w), (1, h, w), torch.empty(0), torch.empty(0), torch.empty(0), torch.empty(0),
                     sigma_y, kind, param)
    basis = torch.eye(d, dtype=torch.float64).reshape(d, 1, h, w)
    columns = probe.apply(basis).reshape(d, -1)  # row j: H e_j
    out = tuple(probe.apply(basis[:1]).shape[1:])
    return from_matrix(columns.T.contiguous(), (c, h, w), sigma_y=sigma_y, task=task, kind=kind, param=param,
                       out_shape=(c, *out[1:]))


def from_matrix(matrix, shape, *, sigma_y=0.0, task="matrix", kind="matrix", param=0.0, out_shape=None) -> Operator:
    """An operator from any per-channel matrix H [m, d] (m <= d) on images of ``shape``: the
    toy problems of the tests, or a degradation not listed in the tasks."""
    h = torch.as_tensor(matrix, dtype=torch.float64)
    if h.ndim != 2 or h.shape[0] > h.shape[1] or h.shape[1] != math.prod(shape[1:]):
        raise ConfigError(f"the matrix must be [m, d] with m <= d = {math.prod(shape[1:])}, got {tuple(h.shape)}")
    u, s, vh = torch.linalg.svd(h, full_matrices=True)
    out_shape = (shape[0], h.shape[0]) if out_shape is None else tuple(out_shape)
    return Operator(task, tuple(shape), out_shape, h, u, s, vh.T.contiguous(), float(sigma_y), kind, float(param))


def degrade(x: torch.Tensor, task, generator: torch.Generator | None = None) -> torch.Tensor:
    """y = H x + sigma_y n for clean images ``x`` [N, C, H, W] (``task`` a string or an Operator);
    the noise is drawn on the CPU from ``generator``."""
    op = task if isinstance(task, Operator) else operator(task, x.shape[1:])
    y = op.apply(x.float())
    if op.sigma_y > 0:
        y = y + op.sigma_y * torch.randn(y.shape, generator=generator).to(y.device)
    return y


# ---- DDRM --------------------------------------------------------------------------------------
def ddrm_step(x_bar, x0_bar, y_bar, c, measured, sigma, sigma_next, z, *, eta, eta_b):
    """One DDRM step sigma -> sigma_next in spectral space (Kawar et al. 2022, Eq. 7-8, which are
    written in VE coordinates), per component i:

    - unmeasured (s_i = 0): N(x0 + sqrt(1 - eta^2) sigma' (x - x0) / sigma, eta^2 sigma'^2), DDIM
      with DDRM's eta (the noise share of sigma', not DDIM's eta);
    - measured, sigma' < c_i = sigma_y / s_i: N(x0 + sqrt(1 - eta^2) sigma' (y_i - x0) / c_i,
      eta^2 sigma'^2): the measurement is noisier than the state, so it only steers;
    - measured, sigma' >= c_i: N((1 - eta_b) x0 + eta_b y_i, sigma'^2 - eta_b^2 c_i^2): the
      measurement, noised up to sigma' (all steps when sigma_y = 0, so the result's measured
      components equal y-bar exactly for eta_b = 1).

    ``c`` [d] is inf where unmeasured; ``z`` standard normal like ``x_bar``."""
    c_safe = torch.where(measured, c, torch.ones_like(c))
    keep = math.sqrt(1 - eta**2) * sigma_next
    unmeasured_mean = x0_bar + keep * (x_bar - x0_bar) / sigma
    low_mean = x0_bar + keep * (y_bar - x0_bar) / c_safe.clamp(min=1e-30)
    high_mean = (1 - eta_b) * x0_bar + eta_b * y_bar
    high = measured & (sigma_next >= c)
    low = measured & ~high
    mean = torch.where(high, high_mean, torch.where(low, low_mean, unmeasured_mean))
    high_std = (sigma_next**2 - (eta_b * c_safe) ** 2).clamp(min=0).sqrt()
    std = torch.where(high, high_std, torch.full_like(high_std, eta * sigma_next))
    return mean + std * z if sigma_next > 0 else mean


def ddrm_walk(op: Operator, y: torch.Tensor, *, eta=DDRM_DEFAULTS["eta"], eta_b=DDRM_DEFAULTS["eta_b"],
              floor=SINGULAR_FLOOR):
    """DDRM as a ``walk`` for ``generate``: one denoiser call per step, then ``ddrm_step`` in the
    spectral space of ``op``; row i of ``y`` is sample i's measurement."""
    # imported here: the CLI imports this module, and the samplers package loads the datasets
    from ..samplers.base import after_step

    if not 0 <= eta <= 1 or not 0 <= eta_b <= 1:
        raise ConfigError(f"DDRM needs eta and eta_b in [0, 1], got {eta}, {eta_b}")
    y_bar, c, measured = op.spectral_measurement(y, floor)

    def walk(x, sigmas, *, denoiser, noise, cond, callback, samples, **_):
        yb = y_bar[samples].to(x.device)
        cc, keep = c.to(x.device), measured.to(x.device)
        for i in range(len(sigmas) - 1):
            sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
            x0 = denoiser(x, sigmas[i], cond)
            z = noise().reshape(len(x), op.channels, -1).to(torch.float64)  # V^T z is as normal as z
            x_bar = ddrm_step(op.to_spectral(x), op.to_spectral(x0), yb, cc, keep, sigma, sigma_next, z,
                              eta=eta, eta_b=eta_b)
            x = after_step(callback, i, sigmas[i + 1], op.from_spectral(x_bar, x.dtype), x0)
        return x

    return walk


# ---- DPS ---------------------------------------------------------------------------------------
class DPSGuidance(nn.Module):
    """Diffusion posterior sampling (Chung et al. 2023, Algorithm 1) as a Denoiser wrapper, so any
    sampler runs it:

        D'(x, sigma) = D(x, sigma) - zeta (1 + sigma^2) grad_x || y - A(D(x, sigma)) ||_2

    (per sample; the norm, not its square: DPS's code, equal to the paper's zeta_i = zeta' / ||r||
    times the squared norm's gradient). DPS subtracts zeta grad_{x_t} ||r|| from the DDPM step's
    output in VP coordinates; x_VP = alpha x_VE, so that is zeta / (alpha_t alpha_{t-1}) ~
    zeta (1 + sigma^2) grad_{x_VE} ||r|| in VE coordinates, the factor here. A sampler moving to
    x' = x0 + sigma_down eps + ... passes a shift of x0 on as (1 - sigma_down / sigma) times
    itself, so on a DDPM grid this is DPS with the step zeta_i = zeta (sigma_i^2 - sigma_{i+1}^2)
    / sigma_i^2: the same total pull whatever the number of steps, and the full zeta at the last
    step (sigma' = 0, where x' = D'). The gradient goes through the network (under autograd
    even inside samplers' inference_mode), so a step costs one forward and one backward. On other
    paths (VE, flows) 1 + sigma^2 is kept as what it also is: about the inverse of D's Jacobian
    for unit-variance data, so zeta is a shift of x0 of about zeta ||A^T r|| / ||r|| at every level.

    ``y`` [N, *op.out_shape]: the measurements of the N samples of one batch."""

    def __init__(self, denoiser, op: Operator, y: torch.Tensor, zeta: float = DPS_DEFAULTS["zeta"]):
        super().__init__()
        self.denoiser, self.op, self.y, self.zeta = denoiser, op, y, float(zeta)

    def forward(self, x, sigma, cond=None):
        with torch.inference_mode(False), torch.enable_grad():
            x_in = x.detach().clone().requires_grad_(True)
            sigma_in = torch.as_tensor(sigma).clone()
            x0 = self.denoiser(x_in, sigma_in, cond)
            residual = (self.y.to(x0) - self.op.apply(x0)).flatten(1)
            grad = torch.autograd.grad(residual.norm(dim=1).sum(), x_in)[0]
        scale = self.zeta * (1 + torch.as_tensor(sigma, dtype=torch.float64) ** 2)
        return x0.detach() - scale.to(x0.dtype) * grad


def default_zeta(op: Operator) -> float:
    """DPS's step for ``op``: ``DPS_ZETA`` by task (sr by its name, others by kind), else 1."""
    return DPS_ZETA.get(op.task if op.kind == "sr" else op.kind, DPS_DEFAULTS["zeta"])


def dps_walk(op: Operator, y: torch.Tensor, *, sampler=DPS_DEFAULTS["sampler"], zeta=None, eta=None, **options):
    """DPS as a ``walk``: ``sampler`` down the whole grid with ``DPSGuidance`` around the batch's
    denoiser, reading the batch's rows of ``y``; ``zeta`` defaults to ``default_zeta(op)``."""
    from ..samplers.registry import run_sampler

    zeta = default_zeta(op) if zeta is None else zeta
    if zeta < 0:
        raise ConfigError(f"DPS needs zeta >= 0, got {zeta}")

    def walk(x, sigmas, *, denoiser, noise, cond, callback, samples, **_):
        guided = DPSGuidance(denoiser, op, y[samples].to(x.device), zeta)
        return run_sampler(sampler, guided, x, sigmas, noise=noise, eta=eta, cond=cond, callback=callback,
                           **options)

    return walk


# ---- restore -----------------------------------------------------------------------------------
def restore(pipe, y: torch.Tensor, task, *, method="ddrm", seed=0, steps=None, batch_size=64, progress=False,
            sigma_y=None, **options) -> torch.Tensor:
    """Restore measurements ``y`` [N, *out_shape] of ``task`` (a task string or an Operator) with a
    pixel-space diffusion or flow pipeline; sample i uses seed ``seed + i``. ``method``: ``ddrm``
    (options eta, eta_b, floor; 20 steps) or ``dps`` (options zeta, sampler, eta and the
    sampler's own; 100 steps). Returns [N, *pipe.data_shape] in [-1, 1]."""
    if method not in METHODS:
        raise ConfigError(f"unknown restoration method {method!r}; allowed: {', '.join(METHODS)}")
    if getattr(pipe, "latent", None) is not None:
        raise ConfigError("restore needs a pixel-space diffusion or flow run: DDRM and DPS here take the "
                          "degradation as an operator on the model's own space, and this run samples latents")
    op = task if isinstance(task, Operator) else operator(task, pipe.data_shape, sigma_y=sigma_y)
    y = torch.as_tensor(y, dtype=torch.float32)
    op.check_measurement(y)
    defaults = DDRM_DEFAULTS if method == "ddrm" else DPS_DEFAULTS
    options = {k: v for k, v in options.items() if v is not None}
    steps = steps or defaults["steps"]
    if method == "ddrm":
        walk = ddrm_walk(op, y, **options)
    else:
        walk = dps_walk(op, y, **{"sampler": DPS_DEFAULTS["sampler"], **options})
    return pipe.sample(len(y), seed=seed, steps=steps, walk=walk, batch_size=batch_size, progress=progress)


# ---- baselines ---------------------------------------------------------------------------------
def baselines(y: torch.Tensor, task, shape) -> dict:
    """The classical answers to ``task`` from ``y``: ``bicubic`` upsampling (sr), ``wiener``
    deconvolution (deblur), ``wiener`` filtering and the ``noisy`` input itself (denoise)."""
    op = task if isinstance(task, Operator) else operator(task, shape)
    y = torch.as_tensor(y, dtype=torch.float32)
    op.check_measurement(y)
    if op.kind == "sr":
        up = F.interpolate(y, scale_factor=int(op.param), mode="bicubic", align_corners=False)
        return {"bicubic": up.clamp(-1, 1)}
    if op.kind == "deblur":
        return {"wiener": wiener_deconvolution(y, op.param, op.sigma_y).clamp(-1, 1)}
    if op.kind == "denoise":
        return {"wiener": wiener_filter(y, op.sigma_y).clamp(-1, 1), "noisy": y.clamp(-1, 1)}
    raise ConfigError(f"no baseline for a {op.kind} operator")


def wiener_deconvolution(y: torch.Tensor, std: float, sigma_y: float, *, min_nsr: float = 1e-3) -> torch.Tensor:
    """Wiener deconvolution in the frequency domain, X = conj(K) Y / (|K|^2 + NSR), with the
    noise-to-signal power ratio NSR = sigma_y^2 / var(y) per image (floored at ``min_nsr``: with
    sigma_y = 0 the inverse filter would divide 8-bit rounding by |K| ~ 1e-5). The image is
    mirrored by the kernel radius first, as the operator's reflect boundary, then cropped."""
    kernel = blur_kernel(std)
    r = kernel.shape[-1] // 2
    h, w = y.shape[-2:]
    padded = F.pad(y.to(torch.float64), (r,) * 4, mode="reflect")
    ph, pw = padded.shape[-2:]
    k = torch.zeros(ph, pw, dtype=torch.float64)
    k[: kernel.shape[0], : kernel.shape[1]] = kernel
    k = torch.roll(k, (-r, -r), dims=(0, 1))  # the kernel's center at the origin
    kf, yf = torch.fft.fft2(k), torch.fft.fft2(padded)
    var = padded.flatten(1).var(dim=1).clamp(min=1e-6).reshape(-1, 1, 1, 1)
    nsr = (sigma_y**2 / var).clamp(min=min_nsr)
    x = torch.fft.ifft2(kf.conj() * yf / (kf.abs() ** 2 + nsr)).real
    return x[..., r : r + h, r : r + w].float()


def wiener_filter(y: torch.Tensor, sigma_y: float, *, size: int = 3) -> torch.Tensor:
    """scipy's adaptive Wiener filter per image and channel, told the noise power sigma_y^2."""
    from scipy.signal import wiener

    pixels = y.double().numpy()
    out = np.stack([[wiener(channel, mysize=size, noise=sigma_y**2) for channel in image] for image in pixels])
    return torch.from_numpy(out).float()


def psnr(x: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """The autoencoders' per-image PSNR (dB, [-1, 1] read as [0, 1]) of ``x`` clamped to [-1, 1]
    first: a baseline's output (bicubic, Wiener) or a noisy input may leave the range."""
    from ..families.autoencoder import psnr as image_psnr

    return image_psnr(x.clamp(-1, 1), truth)


def display(y: torch.Tensor, op: Operator) -> torch.Tensor:
    """Measurements as images of the clean size (sr: nearest upsampling), for grids."""
    if op.kind == "sr":
        return F.interpolate(y, scale_factor=int(op.param), mode="nearest")
    return y


# ---- CLI ---------------------------------------------------------------------------------------
@click.command("restore", help="Super-resolve, deblur or denoise with an unconditional diffusion or flow run "
                               "(DDRM or DPS), from an image (--input) or the run's own test images degraded "
                               "here (--test N: prints PSNR against the classical baseline).\n\n\b\nExamples:\n"
                               "  genmodels restore runs/mnist --input low7x7.png --task sr4 --out restored.png\n"
                               "  genmodels restore runs/mnist --test 8 --task deblur:1.5 --method ddrm "
                               "--method dps")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--task", required=True, help=f"The degradation: {TASK_FORMS}.")
@click.option("--input", "input_path", type=click.Path(path_type=Path), default=None,
              help="The degraded image (sr4 on MNIST: 7x7).")
@click.option("--test", "test_n", type=int, default=None, help="Degrade the first N test images instead.")
@click.option("--method", "methods", multiple=True, type=click.Choice(METHODS),
              help="ddrm (default; 20 steps) or dps (100 ddpm steps); repeat for both.")
@click.option("--steps", type=int, default=None, help="Sampling steps (default per method).")
@click.option("--seed", default=0, show_default=True)
@click.option("--n", "n", default=1, show_default=True, help="Restorations of --input (seeds seed..seed+n-1).")
@click.option("--zeta", type=float, default=None, help="DPS step size (default per task: "
              + ", ".join(f"{k} {v:g}" for k, v in DPS_ZETA.items()) + ").")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--out", "out", default="restored.png", show_default=True)
def restore_command(run_dir, task, input_path, test_n, methods, steps, seed, n, zeta, device, out):
    from ..families import load
    from ..families.diffusion import Pipeline

    if (input_path is None) == (test_n is None):
        raise ConfigError("give --input IMAGE or --test N (not both)")
    methods = list(dict.fromkeys(methods or ["ddrm"]))
    pipe = load(run_dir, device=device)
    if not isinstance(pipe, Pipeline):
        raise GenmodelsError(f"'{run_dir}' is a {pipe.config.family} run; restore needs a diffusion or flow run")
    if len(pipe.data_shape) != 3:
        raise GenmodelsError("restore works on image runs; this run's data are points")
    op = operator(task, pipe.data_shape)
    record = {"run": str(run_dir), "task": task, "seed": seed}

    def run(method, y):
        opts = {"zeta": zeta} if method == "dps" else {}
        used = steps or (DDRM_DEFAULTS if method == "ddrm" else DPS_DEFAULTS)["steps"]
        return restore(pipe, y, op, method=method, seed=seed, steps=used, progress=True, **opts), used

    if input_path is not None:
        if n < 1:
            raise ConfigError(f"--n must be >= 1, got {n}")
        y = _load_measurement(input_path, op)
        outputs, used = [], []
        for method in methods:
            x, k = run(method, y.expand(n, *y.shape[1:]))
            outputs.append(x)
            used.append(k)
        from ..images import save_with_parameters

        save_with_parameters(torch.cat(outputs), out, {**record, "input": str(input_path), "method": ",".join(methods),
                                                       "steps": used if len(used) > 1 else used[0], "n": n},
                             nrow=n, scale=2)
        click.echo(f"{len(methods) * n} restoration(s) of {input_path} ({task}, {', '.join(methods)}) -> {out}")
        return
    _test_command(pipe, op, test_n, methods, run, record, out)


def _load_measurement(path, op: Operator) -> torch.Tensor:
    from ..images import load_image

    y = load_image(path, channels=op.channels)
    op.check_measurement(y)
    return y


def _test_command(pipe, op, n, methods, run, record, out):
    from ..images import save_with_parameters
    from .cli import read_inputs

    truth, _ = read_inputs(pipe, None, n)
    y = degrade(truth, op, torch.Generator().manual_seed(record["seed"]))
    rows = {"truth": truth, "degraded": display(y, op).clamp(-1, 1)}
    rows.update(baselines(y, op, pipe.data_shape))
    steps = {}
    for method in methods:
        start = time.perf_counter()
        rows[method], steps[method] = run(method, y)
        click.echo(f"{method}: {(time.perf_counter() - start) / n:.2f} s per image")
    click.echo(f"PSNR (dB, [0, 1] images) on the first {n} test images, {op.task}:")
    for name, x in rows.items():
        if name in ("truth", "degraded"):
            continue
        values = psnr(x, truth)
        per_image = " ".join(f"{v:.2f}" for v in values.tolist())
        click.echo(f"  {name:8s} {values.mean():6.2f}  ({per_image})")
    save_with_parameters(torch.cat(list(rows.values())), out,
                         {**record, "test": n, "method": ",".join(methods), "steps": steps,
                          "rows": list(rows)}, nrow=n, scale=2)
    click.echo(f"rows {', '.join(rows)} -> {out}")


__all__ = [
    "DPSGuidance",
    "Operator",
    "baselines",
    "blur",
    "ddrm_step",
    "ddrm_walk",
    "default_zeta",
    "degrade",
    "dps_walk",
    "from_matrix",
    "operator",
    "parse_task",
    "psnr",
    "restore",
    "restore_command",
    "wiener_deconvolution",
    "wiener_filter",
]
