"""Gaussian noising paths ``x_t = alpha(t) x0 + sigma(t) noise`` with t in [0, 1], t = 0 data.

Samplers work in VE coordinates (Karras et al. 2022, Eq. 1): ``x = x_t / alpha_t = x0 + s noise``
with the VE noise level ``s = to_sigma(t) = sigma_t / alpha_t``. A path converts between t and s,
says what the network is conditioned on (``c_noise``), how training draws t, and which t a
sampler visits.

All schedule arithmetic is done in float64 and cast back to the caller's dtype: the DDPM
alpha_bar spans four decades and float32 loses the low end.
"""

import math

import torch

from ..errors import ConfigError


def _as_tensor(t) -> torch.Tensor:
    return t if torch.is_tensor(t) else torch.as_tensor(t, dtype=torch.float64)


class GaussianPath:
    """Base: subclasses define ``to_sigma``/``from_sigma`` (VE level) and conditioning.

    Every path here is variance preserving: ``alpha^2 + sigma^2 = 1``, so
    ``alpha = 1 / sqrt(1 + s^2)`` and ``sigma = s / sqrt(1 + s^2)``.
    """

    t_min: float = 0.0  # smallest t a sampler's grid visits before jumping to the data (s = 0)

    def to_sigma(self, t):  # pragma: no cover - abstract
        raise NotImplementedError

    def from_sigma(self, s):  # pragma: no cover - abstract
        raise NotImplementedError

    def alpha(self, t):
        s = self.to_sigma(t)
        return torch.rsqrt(1 + s.to(torch.float64) ** 2).to(s.dtype)

    def sigma(self, t):
        s = self.to_sigma(t)
        s64 = s.to(torch.float64)
        return (s64 * torch.rsqrt(1 + s64**2)).to(s.dtype)

    def alpha_from_sigma(self, s):
        """alpha_t at the t whose VE level is ``s`` (what a Denoiser scales x by)."""
        s = _as_tensor(s)
        return torch.rsqrt(1 + s.to(torch.float64) ** 2).to(s.dtype)

    def add_noise(self, x0, noise, t):
        """Draw from q(x_t | x0): ``alpha_t x0 + sigma_t noise`` (t per sample, shape [B])."""
        shape = (-1,) + (1,) * (x0.ndim - 1)
        alpha = self.alpha(t).reshape(shape).to(x0.dtype)
        sigma = self.sigma(t).reshape(shape).to(x0.dtype)
        return alpha * x0 + sigma * noise, alpha, sigma

    def prior_std(self, s_max):
        """Std of x in VE coordinates at the start of sampling: x_1 ~ N(0, 1) divided by alpha."""
        return 1 / self.alpha_from_sigma(s_max)


class DiscreteDDPM(GaussianPath):
    """DDPM (Ho et al. 2020): T steps with betas from a schedule; step n in 0..T-1 is t = (n+1)/T.

    Schedules: ``linear`` (betas linspace(beta_start, beta_end, T), Ho et al. Sec. 4),
    ``scaled_linear`` (sqrt(beta) linear instead: Stable Diffusion's, diffusers' name) and
    ``cosine`` (Nichol & Dhariwal 2021, Eq. 17: alpha_bar(t) = f(t)/f(0), f(t) = cos^2(
    (t + 0.008)/1.008 * pi/2), betas clipped at 0.999). The network sees the step index n as
    ``c_noise``, as diffusers does, so the same net can be driven by their schedulers as an oracle.
    Between steps, log s is interpolated linearly in n (k-diffusion's DiscreteSchedule); below
    step 0, s falls linearly to 0 at t = 0.

    ``spacing`` is the default timestep spacing of ``grid`` and ``steps_offset`` shifts the
    ``leading`` grid by that many steps (diffusers' scheduler fields of the same names, so a
    diffusers model's own sampling grid is the default: ``genmodels.interop``).
    """

    def __init__(self, *, schedule="linear", timesteps=1000, beta_start=1e-4, beta_end=0.02, spacing="leading",
                 steps_offset=0):
        if schedule == "linear":
            betas = torch.linspace(beta_start, beta_end, timesteps, dtype=torch.float64)
        elif schedule == "scaled_linear":
            betas = torch.linspace(beta_start**0.5, beta_end**0.5, timesteps, dtype=torch.float64) ** 2
        elif schedule == "cosine":
            betas = cosine_betas(timesteps)
        else:
            raise ConfigError(f"unknown beta schedule '{schedule}'; allowed: {', '.join(SCHEDULES)}")
        if spacing not in ("leading", "trailing", "linspace"):
            raise ConfigError(f"unknown timestep spacing '{spacing}'; allowed: leading, trailing, linspace")
        if not 0 <= steps_offset < timesteps:
            raise ConfigError(f"steps_offset must lie in 0..{timesteps - 1}, got {steps_offset}")
        self.schedule, self.timesteps = schedule, timesteps
        self.spacing, self.steps_offset = spacing, steps_offset
        self.betas = betas
        self.alphas_cumprod = torch.cumprod(1 - betas, dim=0)
        self.sigmas = ((1 - self.alphas_cumprod) / self.alphas_cumprod).sqrt()
        self.t_min = 1 / timesteps
        self._log_sigmas = {}

    def log_sigmas(self, device):
        """log s of every step, cached per device (the tables are indexed by device tensors)."""
        key = str(device)
        if key not in self._log_sigmas:
            self._log_sigmas[key] = self.sigmas.log().to(device)
        return self._log_sigmas[key]

    def index(self, t):
        """Fractional step index n = t T - 1 (t = (n+1)/T)."""
        return _as_tensor(t).to(torch.float64) * self.timesteps - 1

    def to_sigma(self, t):
        t = _as_tensor(t)
        n = self.index(t)
        log_sigmas = self.log_sigmas(t.device)
        lo = n.floor().clamp(0, self.timesteps - 2).long()
        w = (n - lo).clamp(max=1.0)
        log_s = torch.lerp(log_sigmas[lo], log_sigmas[lo + 1], w)
        below = n < 0  # between t = 0 (data) and the first step
        s = torch.where(below, self.sigmas[0].item() * (n + 1).clamp(min=0), log_s.exp())
        return s.to(t.dtype)

    def from_sigma(self, s):
        s = _as_tensor(s)
        s64 = s.to(torch.float64)
        s0 = self.sigmas[0].item()
        log_sigmas = self.log_sigmas(s.device)
        log_s = s64.clamp(min=s0).log()
        hi = torch.searchsorted(log_sigmas, log_s.contiguous()).clamp(1, self.timesteps - 1)
        lo = hi - 1
        w = (log_s - log_sigmas[lo]) / (log_sigmas[hi] - log_sigmas[lo])
        n = torch.where(s64 < s0, s64 / s0 - 1, lo + w.clamp(0, 1))
        return ((n + 1) / self.timesteps).to(s.dtype)

    def c_noise(self, t):
        return self.index(t).to(_as_tensor(t).dtype)

    def sample_t(self, n, *, generator, device):
        steps = torch.randint(0, self.timesteps, (n,), generator=generator, device=device)
        return (steps + 1).to(torch.float32) / self.timesteps

    def grid(self, steps, *, spacing=None):
        """Descending t of a ``steps``-step sampler (DDIM / 'flawed schedules' paper spacings);
        ``spacing`` None: the path's own."""
        T = self.timesteps
        spacing = self.spacing if spacing is None else spacing
        if not 1 <= steps <= T:
            raise ConfigError(f"steps must lie in 1..{T} for a {T}-step DDPM, got {steps}")
        if spacing == "leading":  # DDIM's: 0, k, 2k, ... with k = T // steps (plus the offset)
            n = torch.arange(steps, dtype=torch.float64) * (T // steps) + self.steps_offset
            n = n.clamp(max=T - 1)
        elif spacing == "trailing":  # Lin et al. 2024, Table 2: always includes the last step
            n = (torch.arange(T, 0, -T / steps, dtype=torch.float64)).round().flip(0) - 1
        elif spacing == "linspace":
            n = torch.linspace(0, T - 1, steps, dtype=torch.float64).round()
        else:
            raise ConfigError(f"unknown timestep spacing '{spacing}'; allowed: leading, trailing, linspace")
        return ((n.flip(0) + 1) / T)


def log_normal_t(path, n, *, p_mean, p_std, generator, device):
    """EDM's training density (Karras et al. 2022, Table 1): ln sigma ~ N(p_mean, p_std^2), as the
    path's t, with sigma clamped to the path's range [to_sigma(t_min), to_sigma(1)]."""
    s_lo = float(path.to_sigma(torch.tensor(path.t_min, dtype=torch.float64)))
    s_hi = float(path.to_sigma(torch.tensor(1.0, dtype=torch.float64)))
    ln_s = p_mean + p_std * torch.randn((n,), generator=generator, device=device, dtype=torch.float64)
    return path.from_sigma(ln_s.exp().clamp(s_lo, s_hi)).float()


class ContinuousPath(GaussianPath):
    """Shared by the continuous-time SDE paths: t uniform in [t_min, 1] or EDM's log-normal sigma
    density (``t_sampling``), grids uniform in t, and c_noise = 1000 t."""

    T_SAMPLINGS = ("uniform", "log_normal")

    def __init__(self, *, t_min, t_sampling="uniform", p_mean=-1.2, p_std=1.2):
        if t_sampling not in self.T_SAMPLINGS:
            raise ConfigError(f"unknown t sampling '{t_sampling}' for path '{self.name}'; allowed: "
                              + ", ".join(self.T_SAMPLINGS))
        self.t_min, self.t_sampling, self.p_mean, self.p_std = t_min, t_sampling, p_mean, p_std

    def c_noise(self, t):
        return 1000 * _as_tensor(t)

    def sample_t(self, n, *, generator, device):
        if self.t_sampling == "log_normal":
            return log_normal_t(self, n, p_mean=self.p_mean, p_std=self.p_std, generator=generator,
                                device=device)
        u = torch.rand((n,), generator=generator, device=device)
        return self.t_min + (1 - self.t_min) * u

    def grid(self, steps, *, spacing="linspace"):
        if steps < 1:
            raise ConfigError(f"steps must be >= 1, got {steps}")
        if spacing not in ("linspace", "leading", "trailing"):
            raise ConfigError(f"unknown timestep spacing '{spacing}'; allowed: leading, trailing, linspace")
        return torch.linspace(1.0, self.t_min, steps, dtype=torch.float64)


class ContinuousVP(ContinuousPath):
    """VP SDE (Song et al. 2021, Eq. 11) with linear beta(t) = beta_min + t (beta_max - beta_min).

    log alpha_bar(t) = -t^2 (beta_max - beta_min) / 2 - t beta_min; c_noise = 1000 t.
    """

    name = "vp"

    def __init__(self, *, beta_min=0.1, beta_max=20.0, t_min=1e-3, **sampling):
        super().__init__(t_min=t_min, **sampling)
        self.beta_min, self.beta_max = beta_min, beta_max

    def log_alpha_bar(self, t):
        t = _as_tensor(t).to(torch.float64)
        return -0.5 * t**2 * (self.beta_max - self.beta_min) - t * self.beta_min

    def to_sigma(self, t):
        t = _as_tensor(t)
        return torch.expm1(-self.log_alpha_bar(t)).sqrt().to(t.dtype)

    def from_sigma(self, s):
        s = _as_tensor(s)
        log_1p_s2 = torch.log1p(s.to(torch.float64) ** 2)  # = -log alpha_bar
        db = self.beta_max - self.beta_min
        t = (-self.beta_min + (self.beta_min**2 + 2 * db * log_1p_s2).sqrt()) / db
        return t.to(s.dtype)

    def d_alpha(self, t):
        """d alpha / dt = -beta(t) alpha / 2 (used by velocity parameterizations)."""
        t = _as_tensor(t)
        beta = self.beta_min + t.to(torch.float64) * (self.beta_max - self.beta_min)
        return (-0.5 * beta * self.alpha(t).to(torch.float64)).to(t.dtype)


class ContinuousVE(ContinuousPath):
    """VE SDE (Song et al. 2021, Eq. 9; NCSN, Song & Ermon 2019): x_t = x0 + sigma(t) noise with
    the geometric sigma(t) = sigma_min (sigma_max / sigma_min)^t. Already in VE coordinates
    (alpha = 1). ``sigma_max`` should be about the largest distance between training points
    (Song & Ermon 2020, Technique 1), so the prior N(0, sigma_max^2 I) covers the data.
    t = 0 is sigma_min, not clean data: samplers jump from sigma_min to 0 in their last step.
    """

    name = "ve"

    def __init__(self, *, sigma_min=0.01, sigma_max=50.0, **sampling):
        if not 0 < sigma_min < sigma_max:
            raise ConfigError(f"the VE path needs 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
        super().__init__(t_min=0.0, **sampling)
        self.sigma_min, self.sigma_max = sigma_min, sigma_max
        self.log_ratio = math.log(sigma_max / sigma_min)

    def to_sigma(self, t):
        t = _as_tensor(t)
        return (self.sigma_min * torch.exp(t.to(torch.float64) * self.log_ratio)).to(t.dtype)

    def from_sigma(self, s):
        s = _as_tensor(s)
        # below sigma_min t extrapolates (a karras grid may go there); s = 0 never reaches a net
        return (torch.log(s.to(torch.float64).clamp(min=1e-20) / self.sigma_min) / self.log_ratio).to(s.dtype)

    def alpha(self, t):
        return torch.ones_like(_as_tensor(t))

    def sigma(self, t):
        return self.to_sigma(t)

    def alpha_from_sigma(self, s):
        return torch.ones_like(_as_tensor(s))

    def prior_std(self, s_max):
        """x_1 = x0 + sigma_max noise ~ N(0, sigma_max^2 I), neglecting the data's own spread."""
        return _as_tensor(s_max)


class RectifiedFlow(GaussianPath):
    """The straight path of rectified flow and I-CFM (Liu et al. 2022; Lipman et al. 2023;
    Tong et al. 2024): x_t = (1 - t) x0 + t noise, t = 0 data. Not variance preserving.

    In VE coordinates s = t / (1 - t) and alpha = 1 / (1 + s). s is infinite at t = 1, so the
    path stops at ``t_max`` = 1 - 1e-3 (s = 999): samplers start there from x_VE = noise / (1 -
    t_max), i.e. x_t = noise, neglecting the data's 1e-3 share of x_t. ``c_noise = 1000 t``.
    ``t_sampling``: ``uniform``, ``logit_normal`` (Esser et al. 2024, sigmoid of N(0, 1)) or
    ``max`` (t = t_max only: distils the flow into a one-step generator, Liu et al. Sec. 2.3).
    """

    def __init__(self, *, t_sampling="uniform", t_max=1 - 1e-3):
        if t_sampling not in ("uniform", "logit_normal", "max"):
            raise ConfigError(f"unknown t sampling '{t_sampling}'; allowed: uniform, logit_normal, max")
        self.t_sampling, self.t_max, self.t_min = t_sampling, t_max, 0.0

    def alpha(self, t):
        t = _as_tensor(t)
        return 1 - t.clamp(max=self.t_max)

    def sigma(self, t):
        t = _as_tensor(t)
        return t.clamp(max=self.t_max)

    def to_sigma(self, t):
        t = _as_tensor(t).clamp(max=self.t_max)
        return t / (1 - t)

    def from_sigma(self, s):
        s = _as_tensor(s)
        return s / (1 + s)

    def alpha_from_sigma(self, s):
        s = _as_tensor(s)
        return 1 / (1 + s)

    def c_noise(self, t):
        return 1000 * _as_tensor(t)

    def sample_t(self, n, *, generator, device):
        if self.t_sampling == "max":  # one-step distillation: learn the whole jump noise -> data
            return torch.full((n,), self.t_max, device=device)
        if self.t_sampling == "logit_normal":
            return torch.sigmoid(torch.randn((n,), generator=generator, device=device)).clamp(max=self.t_max)
        return torch.rand((n,), generator=generator, device=device) * self.t_max

    def grid(self, steps, *, spacing="linspace"):
        """``steps`` times from t_max down, uniform in t (the last step then goes to t = 0)."""
        if steps < 1:
            raise ConfigError(f"steps must be >= 1, got {steps}")
        if spacing not in ("linspace", "leading", "trailing"):
            raise ConfigError(f"unknown timestep spacing '{spacing}'; allowed: leading, trailing, linspace")
        return torch.linspace(self.t_max, 0, steps + 1, dtype=torch.float64)[:-1]


def cosine_betas(timesteps: int, *, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """Nichol & Dhariwal 2021, Eq. 17: beta_n = 1 - alpha_bar((n+1)/T) / alpha_bar(n/T)."""

    def f(t):
        return math.cos((t + s) / (1 + s) * math.pi / 2) ** 2

    betas = [min(1 - f((n + 1) / timesteps) / f(n / timesteps), max_beta) for n in range(timesteps)]
    return torch.tensor(betas, dtype=torch.float64)


def _ddpm(cfg) -> GaussianPath:
    if cfg.t_sampling != "uniform":
        raise ConfigError(f"diffusion.t_sampling={cfg.t_sampling} does not apply to the discrete DDPM path "
                          "(its steps are drawn uniformly); use path vp or ve")
    return DiscreteDDPM(schedule=cfg.schedule, timesteps=cfg.timesteps, beta_start=cfg.beta_start,
                        beta_end=cfg.beta_end)


def _sampling(cfg) -> dict:
    return {"t_sampling": cfg.t_sampling, "p_mean": cfg.p_mean, "p_std": cfg.p_std}


# diffusion.path -> builder from the diffusion config section
PATHS = {
    "ddpm": _ddpm,
    "vp": lambda cfg: ContinuousVP(beta_min=cfg.beta_min, beta_max=cfg.beta_max, **_sampling(cfg)),
    "ve": lambda cfg: ContinuousVE(sigma_min=cfg.sigma_min, sigma_max=cfg.sigma_max, **_sampling(cfg)),
    "rectified_flow": lambda cfg: RectifiedFlow(t_sampling=cfg.t_sampling),
}
T_SAMPLINGS = ("uniform", "logit_normal", "max", "log_normal")  # diffusion.t_sampling
SCHEDULES = ("linear", "scaled_linear", "cosine")  # diffusion.schedule of the discrete DDPM


def build_path(cfg) -> GaussianPath:
    """Path from the diffusion config section."""
    if cfg.path not in PATHS:
        raise ConfigError(f"unknown diffusion path '{cfg.path}'; allowed: {', '.join(PATHS)}")
    return PATHS[cfg.path](cfg)
