"""Toy 2-D distributions for experiments that train in seconds and can be checked exactly.

Every distribution is scaled to a standard deviation of about 1 per axis, because diffusion and
flow models add unit-variance noise and assume data on the same scale. Where the density has a
closed form, ``log_prob(x)`` gives it exactly (a model's NLL can then be compared with the true
entropy); the Gaussian mixtures also carry ``modes`` [k, 2] and ``mode_std`` for the
mode-coverage metric (a sample hits a mode when it lies within 3 * mode_std of it).

    dist = TOY_DISTRIBUTIONS["8gaussians"]
    x = dist.sample(1000, generator=torch.Generator().manual_seed(0))    # [1000, 2]
    dist.log_prob(x)                                                    # [1000]
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

__all__ = [
    "ToyDistribution",
    "GaussianMixture",
    "Checkerboard",
    "Rings",
    "CurveDistribution",
    "TOY_DISTRIBUTIONS",
]


class ToyDistribution:
    """A distribution on R^2: ``sample(n, *, generator) -> Tensor [n, 2]`` (float32).

    ``log_prob`` is None where no closed-form density exists (moons, swissroll), otherwise a
    method ``log_prob(x [n, 2]) -> [n]``. ``modes`` and ``mode_std`` are None except for the
    Gaussian mixtures.
    """

    name: str = ""
    log_prob: Callable[[Tensor], Tensor] | None = None
    modes: Tensor | None = None
    mode_std: float | None = None

    def sample(self, n: int, *, generator: torch.Generator | None = None) -> Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


class GaussianMixture(ToyDistribution):
    """Equal-weight mixture of isotropic Gaussians N(modes[k], mode_std^2 I)."""

    def __init__(self, name: str, modes: Tensor, mode_std: float):
        self.name = name
        self.modes = modes.to(torch.float32)
        self.mode_std = float(mode_std)

    def sample(self, n: int, *, generator: torch.Generator | None = None) -> Tensor:
        k = torch.randint(len(self.modes), (n,), generator=generator)
        noise = torch.randn(n, 2, generator=generator)
        return self.modes[k] + self.mode_std * noise

    def log_prob(self, x: Tensor) -> Tensor:
        modes = self.modes.to(x)
        # |x - m|^2 expanded keeps memory at [n, k] instead of [n, k, 2] on fine grids
        dist2 = (x.pow(2).sum(1, keepdim=True) - 2 * x @ modes.T + modes.pow(2).sum(1)).clamp_min(0)
        var = self.mode_std**2
        log_normal = -dist2 / (2 * var) - math.log(2 * math.pi * var)
        return torch.logsumexp(log_normal, dim=1) - math.log(len(modes))


class Checkerboard(ToyDistribution):
    """Uniform density on the 8 dark cells of a 4x4 board centred at the origin.

    Cell side ``c = sqrt(3) / 2`` so each axis is uniform on [-2c, 2c], whose variance is 1.
    Outside the dark cells ``log_prob`` is -inf.
    """

    cell = math.sqrt(3) / 2

    def __init__(self, name: str = "checkerboard"):
        self.name = name
        ij = torch.cartesian_prod(torch.arange(4), torch.arange(4))
        self.cells = ij[(ij.sum(1) % 2) == 0].to(torch.float32)  # [8, 2] lower-left corners / c

    def sample(self, n: int, *, generator: torch.Generator | None = None) -> Tensor:
        k = torch.randint(len(self.cells), (n,), generator=generator)
        within = torch.rand(n, 2, generator=generator)
        return (self.cells[k] + within - 2) * self.cell

    def log_prob(self, x: Tensor) -> Tensor:
        ij = torch.floor(x / self.cell + 2)
        inside = ((ij >= 0) & (ij < 4)).all(1) & (ij.sum(1) % 2 == 0)
        log_density = -math.log(len(self.cells) * self.cell**2)
        out = torch.full(x.shape[:1], -math.inf, dtype=x.dtype, device=x.device)
        return out.masked_fill(inside, log_density)


class Rings(ToyDistribution):
    """Four concentric circles of radius ``r_k = k * spacing`` blurred by N(0, noise^2 I).

    Each ring is picked with probability 1/4 and a point on it uniformly, so its density is the
    circle convolved with a Gaussian, which has a closed form with the Bessel function I0:
    p_k(x) = exp(-(|x|^2 + r_k^2) / 2 noise^2) I0(|x| r_k / noise^2) / (2 pi noise^2).
    """

    def __init__(self, name: str = "rings", *, noise: float = 0.05, n_rings: int = 4):
        self.name = name
        self.noise = noise
        k = torch.arange(1, n_rings + 1, dtype=torch.float64)
        # per-axis variance is mean(r_k^2) / 2 + noise^2; choose the spacing that makes it 1
        spacing = math.sqrt(2 * (1 - noise**2) / k.pow(2).mean().item())
        self.radii = (k * spacing).to(torch.float32)

    def sample(self, n: int, *, generator: torch.Generator | None = None) -> Tensor:
        k = torch.randint(len(self.radii), (n,), generator=generator)
        angle = 2 * math.pi * torch.rand(n, generator=generator)
        circle = torch.stack([angle.cos(), angle.sin()], dim=1) * self.radii[k, None]
        return circle + self.noise * torch.randn(n, 2, generator=generator)

    def log_prob(self, x: Tensor) -> Tensor:
        rho = x.norm(dim=1, keepdim=True)
        radii = self.radii.to(x)
        var = self.noise**2
        # log I0(z) = log i0e(z) + z keeps the Bessel term finite for large |x| r / var
        log_ring = (
            -(rho - radii).pow(2) / (2 * var)
            + torch.special.i0e(rho * radii / var).log()
            - math.log(2 * math.pi * var)
        )
        return torch.logsumexp(log_ring, dim=1) - math.log(len(radii))


class CurveDistribution(ToyDistribution):
    """A point ``curve(u)`` with u ~ U(0, 1), plus N(0, noise^2 I), then standardised per axis.

    The standardising mean and std are fixed constants computed by quadrature over u, not from
    the sample, so the distribution does not depend on how many points are drawn.
    No closed-form density: ``log_prob`` is None.
    """

    def __init__(self, name: str, curve: Callable[[Tensor], Tensor], *, noise: float):
        self.name = name
        self.curve = curve
        self.noise = noise
        u = (torch.arange(200_000, dtype=torch.float64) + 0.5) / 200_000  # midpoint rule
        points = curve(u)
        self.mean = points.mean(0).to(torch.float32)
        self.std = (points.var(0, unbiased=False) + noise**2).sqrt().to(torch.float32)

    def sample(self, n: int, *, generator: torch.Generator | None = None) -> Tensor:
        u = torch.rand(n, generator=generator)
        raw = self.curve(u).to(torch.float32) + self.noise * torch.randn(n, 2, generator=generator)
        return (raw - self.mean) / self.std


def _moons_curve(u: Tensor) -> Tensor:
    """Two interleaved half circles (as sklearn.datasets.make_moons): u < 0.5 the upper one."""
    upper = u < 0.5
    t = math.pi * torch.where(upper, 2 * u, 2 * u - 1)
    x = torch.where(upper, t.cos(), 1 - t.cos())
    y = torch.where(upper, t.sin(), 0.5 - t.sin())
    return torch.stack([x, y], dim=1)


def _swissroll_curve(u: Tensor) -> Tensor:
    """The 2-D Swiss roll t (cos t, sin t), t in [1.5 pi, 4.5 pi] (as sklearn's make_swiss_roll)."""
    t = 1.5 * math.pi * (1 + 2 * u)
    return torch.stack([t * t.cos(), t * t.sin()], dim=1)


def _circle_mixture(name: str, *, n_modes: int, mode_std: float) -> GaussianMixture:
    # per-axis variance of evenly spaced points on a circle is radius^2 / 2
    radius = math.sqrt(2 * (1 - mode_std**2))
    angle = torch.arange(n_modes, dtype=torch.float64) * (2 * math.pi / n_modes)
    modes = radius * torch.stack([angle.cos(), angle.sin()], dim=1)
    return GaussianMixture(name, modes, mode_std)


def _grid_mixture(name: str, *, side: int, mode_std: float) -> GaussianMixture:
    offsets = torch.arange(side, dtype=torch.float64) - (side - 1) / 2
    # per-axis variance is spacing^2 * mean(offset^2) + mode_std^2; solve for spacing
    spacing = math.sqrt((1 - mode_std**2) / offsets.pow(2).mean().item())
    modes = spacing * torch.cartesian_prod(offsets, offsets)
    return GaussianMixture(name, modes, mode_std)


TOY_DISTRIBUTIONS: dict[str, ToyDistribution] = {
    "8gaussians": _circle_mixture("8gaussians", n_modes=8, mode_std=0.1),
    "25gaussians": _grid_mixture("25gaussians", side=5, mode_std=0.05),
    "moons": CurveDistribution("moons", _moons_curve, noise=0.1),
    "swissroll": CurveDistribution("swissroll", _swissroll_curve, noise=0.5),
    "checkerboard": Checkerboard("checkerboard"),
    "rings": Rings("rings", noise=0.05),
}
