"""Consistency models (Song et al. 2023; iCT: Song & Dhariwal 2023) as a family: a net whose
Denoiser x0 estimate is the consistency function f(x, sigma) (``prediction: consistency``), so
one network evaluation maps noise to data; sampled in 1 step or a few (``samplers.consistency``).

- ``consistency.mode: ct`` (consistency training, the iCT recipe: no teacher, pseudo-Huber loss,
  lognormal levels, the doubling curriculum N(k), the online net under stop-gradient as target):
  ``genmodels train toy-ct`` / ``mnist-ct``.
- ``consistency.mode: cd`` (distillation of a trained diffusion run, ``model.base: TEACHER``,
  frozen and hash-checked): the teacher's ODE step (Heun or Euler) from sigma_{n+1} to sigma_n
  gives the point the student must agree with at sigma_n; the target net is an EMA of the student
  (mu = 0.95); the student takes the teacher's path, network and (when they fit) weights:
  ``genmodels train mnist-cd model.base=runs/mnist-edm``.

The trainer, EMA for sampling, checkpoints, resume, previews and proxy rows are the shared ones
(one phase, ``TrainParts``). ``genmodels sample RUN`` uses the run's consistency grid.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch

from .. import build
from ..config import apply_overrides, from_dict, register_section, resolve_config_path
from ..errors import ConfigError
from ..objectives.consistency import LOSSES, NOISE_DISTS, SOLVERS, WEIGHTINGS, ConsistencyObjective
from ..train.trainer import Phase
from .base import LoadedRun, SampleOption, TrainContext, TrainParts, register
from .diffusion import SAMPLE_OPTIONS, DiffusionFamily, Pipeline
from .loading import read_run_config

BASE_FIELD = "model.base"
REQUIRED = "required"  # what a shipped CD config holds in model.base
MODES = ("ct", "cd")
OWN_DIFFUSION_FIELDS = ("label_dropout", "cond_dropout")  # the student's own, not the teacher's


@dataclass
class ConsistencyConfig:
    """The consistency section; "auto" (None for target_ema) is the mode's default (ct | cd)."""

    mode: str = "ct"  # ct: consistency training (no teacher) | cd: distillation of model.base
    loss: str = "pseudo_huber"  # pseudo_huber (iCT, c = 0.00054 sqrt(d)) | l2
    weighting: str = "auto"  # inverse_gap: lambda = 1 / (sigma_{i+1} - sigma_i) (auto for ct) | uniform (cd)
    noise_dist: str = "auto"  # lognormal over the levels (auto for ct: iCT's) | uniform (cd: the paper's)
    p_mean: float = -1.1  # lognormal: ln sigma ~ N(p_mean, p_std^2), discretised
    p_std: float = 2.0
    s0: int = 10  # ct curriculum N(k) = min(s0 2^floor(k / K'), s1) + 1 over curriculum_images
    s1: int = 1280
    curriculum_images: int | None = None  # K in images; None: train.images
    steps: int = 18  # cd: the discretisation's N levels
    rho: float = 7.0  # Karras spacing of the levels
    solver: str = "heun"  # cd: the teacher's ODE step, heun | euler
    target_ema: float | None = None  # target net = EMA of the student with this mu (cd: 0.95); 0: stop-grad (ct)
    student: str = "teacher"  # cd: teacher (its network, options and weights) | own (the model section)
    # the sampler's levels, descending, without the final 0, e.g. [80.0, 0.8]; [] = sample.steps
    # levels: the path's top, then a Karras grid towards sigma_min (which itself is not visited)
    sample_sigmas: list[float] = field(default_factory=list)

    CHOICES = {"mode": lambda: MODES, "loss": lambda: LOSSES, "weighting": lambda: ("auto", *WEIGHTINGS),
               "noise_dist": lambda: ("auto", *NOISE_DISTS), "solver": lambda: SOLVERS,
               "student": lambda: ("teacher", "own")}
    POSITIVE = ("p_std", "s0", "s1", "steps", "rho")

    def validate(self):
        if self.s1 < self.s0:
            raise ConfigError(f"consistency.s1 ({self.s1}) must be >= s0 ({self.s0})")
        if self.steps < 2:
            raise ConfigError(f"consistency.steps must be >= 2 (one interval), got {self.steps}")
        if self.target_ema is not None and not 0 <= self.target_ema < 1:
            raise ConfigError(f"consistency.target_ema must lie in [0, 1), got {self.target_ema}")
        if self.curriculum_images is not None and self.curriculum_images < 1:
            raise ConfigError(f"consistency.curriculum_images must be >= 1, got {self.curriculum_images}")
        grid = list(self.sample_sigmas)
        if any(s <= 0 for s in grid) or any(b >= a for a, b in zip(grid, grid[1:])):
            raise ConfigError(f"consistency.sample_sigmas must be positive and strictly descending, got {grid}")

    def resolved(self, name: str):
        """A field with "auto" (None) replaced by the mode's default."""
        value = getattr(self, name)
        if value not in (None, "auto"):
            return value
        ct = self.mode == "ct"
        return {"weighting": "inverse_gap" if ct else "uniform", "noise_dist": "lognormal" if ct else "uniform",
                "target_ema": 0.0 if ct else 0.95}[name]


register_section("consistency", ConsistencyConfig)

CONSISTENCY_OPTIONS = (
    SampleOption("sigmas", "str", None, "consistency: the levels visited, comma-separated and descending, e.g. "
                                        "80,0.8 (2 steps; default the run's consistency.sample_sigmas)"),
)


def consistency_grid(path, steps: int, *, rho: float = 7.0) -> list[float]:
    """``steps`` levels of a consistency sampler, then 0: the path's top, then a Karras grid of
    steps + 1 points down to sigma_min without sigma_min itself (f(x, sigma_min) = x: a wasted
    evaluation)."""
    from ..diffusion.sigmas import karras_sigmas

    if steps < 1:
        raise ConfigError(f"steps must be >= 1, got {steps}")
    s_max, s_min = _sigma_range(path)
    return [float(s) for s in karras_sigmas(s_max, s_min, steps + 1, rho)[:-1]] + [0.0]


def _sigma_range(path) -> tuple[float, float]:
    top = float(path.to_sigma(torch.tensor(1.0, dtype=torch.float64)))
    return top, float(path.to_sigma(torch.tensor(path.t_min, dtype=torch.float64)))


class _TargetTracking:
    """The sampling EMA the trainer updates after each step, and with it the target network:
    target <- mu target + (1 - mu) student (Song et al. 2023, Algorithm 2, line 9). The target is
    a module of the run (saved in model.safetensors), so a resume continues it exactly."""

    def __init__(self, ema, target, mu: float):
        self.ema, self.target, self.mu = ema, target, mu

    @property
    def module(self):
        return self.ema.module

    @torch.no_grad()
    def update(self, source, *, images_seen: int, batch_images: int) -> None:
        self.ema.update(source, images_seen=images_seen, batch_images=batch_images)
        torch._foreach_lerp_(list(self.target.parameters()), [p.detach() for p in source.parameters()], 1 - self.mu)
        for b_target, b in zip(self.target.buffers(), source.buffers()):
            b_target.copy_(b)


def same_architecture(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    """Whether ``b``'s weights load into ``a``: the same parameter names and shapes."""
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(sa[k].shape == sb[k].shape for k in sa)


class ConsistencyFamily(DiffusionFamily):
    name = "consistency"
    frozen_sections = ("diffusion", "consistency")
    sample_options = SAMPLE_OPTIONS + CONSISTENCY_OPTIONS

    def prepare_config(self, cfg) -> None:
        """CT: checks. CD: the teacher checked, its diffusion section taken (the path, so the
        student's noise conditioning is the teacher's) with prediction consistency, and with
        ``student: teacher`` its network and options."""
        c, base = cfg.consistency, cfg.model.base
        if c.mode == "ct":
            if base:
                raise ConfigError(f"consistency.mode=ct trains without a teacher; drop model.base ({base}) or set "
                                  "consistency.mode=cd to distil it")
            if cfg.diffusion.prediction != "consistency":
                raise ConfigError(f"a consistency run needs diffusion.prediction=consistency, got "
                                  f"'{cfg.diffusion.prediction}'")
            return
        if not base or base == REQUIRED:
            raise ConfigError("consistency.mode=cd needs model.base: the trained diffusion run to distil (e.g. "
                              "genmodels train mnist-edm --out runs/mnist-edm, then model.base=runs/mnist-edm)")
        saved = read_run_config(base)["config"]
        if saved.get("family") != "diffusion":
            raise ConfigError(f"model.base '{base}' is a {saved.get('family')} run; consistency distillation needs a "
                              "diffusion run as its teacher")
        if saved.get("latent", {}).get("autoencoder") or saved.get("text", {}).get("captions"):
            raise ConfigError(f"model.base '{base}' is a latent or text-to-image run; consistency distillation "
                              "distils pixel-space diffusion runs")
        teacher = from_dict({k: saved[k] for k in ("family", "model", "diffusion") if k in saved})
        own = {k: getattr(cfg.diffusion, k) for k in OWN_DIFFUSION_FIELDS}
        cfg.sections["diffusion"] = dataclasses.replace(teacher.diffusion, prediction="consistency", **own)
        if c.student == "teacher":
            cfg.model.network, cfg.model.options = teacher.model.network, dict(teacher.model.options)

    def network_options(self, cfg, dataset) -> dict:
        if cfg.consistency.mode == "cd":
            record = read_run_config(cfg.model.base)
            shape = tuple(record.get("latent_shape", record["data_shape"]))
            if tuple(dataset.shape) != shape:
                raise ConfigError(f"the teacher model.base '{cfg.model.base}' denoises items of shape {shape}, but "
                                  f"data '{cfg.data.name}' gives {tuple(dataset.shape)}; use the teacher's data")
        return super().network_options(cfg, dataset)

    def build(self, cfg, options: dict) -> dict:
        modules = super().build(cfg, options)
        if cfg.consistency.resolved("target_ema") > 0:  # CD's target net: an EMA the loss reads
            modules["target"] = build.build_network(cfg.model.network, **options)
        return modules

    def sampler_options(self, cfg, path) -> dict | None:
        return {"sigma_min": _sigma_range(path)[1]} if cfg.sample.sampler == "consistency" else None

    def sampling_grid(self, cfg, path):
        if cfg.sample.sampler != "consistency":
            return None
        grid = list(cfg.consistency.sample_sigmas)
        return grid + [0.0] if grid else consistency_grid(path, cfg.sample.steps, rho=cfg.consistency.rho)

    def training(self, ctx: TrainContext) -> TrainParts:
        cfg, c = ctx.cfg, ctx.cfg.consistency
        net, target = ctx.modules["net"], ctx.modules.get("target")
        path, param, _ = self.parts(cfg)
        teacher = None
        if c.mode == "cd":
            base = ctx.bases[BASE_FIELD]
            teacher_net = base.modules["net"]
            t_path, t_param, _ = build.diffusion_parts(base.config, base.config.model.options)
            teacher = build.make_denoiser(teacher_net, t_path, t_param)
            if same_architecture(net, teacher_net):  # a fresh run starts as the teacher (a resume loads its own)
                net.load_state_dict(teacher_net.state_dict())
        ema = ctx.ema("net")  # after the teacher's weights went in
        emas = {"net": ema}
        if target is not None:
            target.load_state_dict(net.state_dict())
            target.requires_grad_(False)
            emas["net"] = _TargetTracking(ema, target, c.resolved("target_ema"))
        s_max, s_min = _sigma_range(path)
        objective = ConsistencyObjective(
            sigma_min=s_min, sigma_max=s_max, rho=c.rho, loss=c.loss, weighting=c.resolved("weighting"),
            noise_dist=c.resolved("noise_dist"), p_mean=c.p_mean, p_std=c.p_std, s0=c.s0, s1=c.s1, steps=c.steps,
            total_images=c.curriculum_images or cfg.train.images, batch_images=cfg.train.batch_size,
            images_seen=lambda: ctx.images_seen(),  # the trainer sets ctx's counter after this returns
            teacher=teacher, solver=c.solver, cond_dropout=build.cond_dropout(cfg))
        objective, reads = self.objective_for(objective, net)
        train_net = ctx.wrap(net)
        online = build.make_denoiser(train_net, path, param)
        aim = build.make_denoiser(net if target is None else target, path, param)  # stop-grad or the EMA target

        def loss(batch, generator):
            on_device = ctx.to_device(batch, ["x"], cond_keys=reads)
            with ctx.autocast_context():
                return objective(online, aim, on_device, generator=generator)

        phase = Phase("consistency", train_net, loss, ctx.adamw(net.parameters()), cfg.train.grad_clip)
        draw = self._draw(ctx, lambda: ema.module, path, param)
        return TrainParts([phase], emas, preview=self._preview(ctx, draw), evaluate=self._evaluate(ctx, draw))

    def load(self, run: LoadedRun) -> ConsistencyPipeline:
        path, param, _ = self.parts(run.config)
        return ConsistencyPipeline(run.run_dir, run.config, run.modules["net"], path, param, run.data_shape,
                                   run.class_names, run.device)

    def verbs(self) -> list:
        return []


@dataclass
class ConsistencyPipeline(Pipeline):
    """A diffusion ``Pipeline`` whose denoiser is the consistency function; ``sample`` defaults
    to the run's sampler (``consistency``), steps and grid."""

    def grid(self, steps=None, sigmas=None) -> list[float]:
        """The consistency sampler's levels then 0: ``sigmas`` (a list or "80,0.8"), else the
        run's ``consistency.sample_sigmas`` (when ``steps`` is None or their count), else
        ``steps`` (default ``sample.steps``) levels of ``consistency_grid``."""
        if sigmas is not None:
            if isinstance(sigmas, str):
                try:
                    sigmas = [float(s) for s in sigmas.split(",") if s.strip()]
                except ValueError:
                    raise ConfigError(f"--sigmas '{sigmas}' is not comma-separated numbers, e.g. 80,0.8") from None
            grid = [float(s) for s in sigmas]
            return grid if grid and grid[-1] == 0 else grid + [0.0]
        own = list(self.config.consistency.sample_sigmas)
        if own and steps in (None, len(own)):
            return own + [0.0]
        return consistency_grid(self.path, steps or self.config.sample.steps, rho=self.config.consistency.rho)

    def sample_settings(self, *, sampler=None, steps=None, eta=None, spacing=None, sigmas=None) -> dict:
        settings = super().sample_settings(sampler=sampler, steps=steps, eta=eta, spacing=spacing)
        if settings["sampler"] == "consistency":
            grid = self.grid(steps, sigmas)
            settings.update(steps=len(grid) - 1, sigmas=grid)
        elif sigmas is not None:
            raise ConfigError("--sigmas is the consistency sampler's grid; with another sampler give --steps")
        return settings

    def sample(self, n=64, *, sampler=None, steps=None, eta=None, sigmas=None, **options) -> torch.Tensor:
        settings = self.sample_settings(sampler=sampler, steps=steps, eta=eta, sigmas=sigmas)
        if settings["sampler"] == "consistency":
            options.setdefault("sigma_min", _sigma_range(self.path)[1])
        return super().sample(n, **settings, **options)


def distill_config(teacher, overrides=()):
    """The config of a consistency distillation of ``teacher`` (a diffusion run directory): the
    bundled mnist-cd (images) or toy-cd (2-D points) with the teacher's data, ``overrides`` last.
    ``genmodels distill TEACHER --method consistency`` is ``train(distill_config(TEACHER, ...), OUT)``."""
    import yaml

    record = read_run_config(teacher)
    name = "toy-cd" if len(record["data_shape"]) == 1 else "mnist-cd"
    values = yaml.safe_load(resolve_config_path(name).read_text())
    values = {**values, "data": record["config"]["data"], "model": {**values.get("model", {}), "base": str(teacher)}}
    return from_dict(apply_overrides(values, list(overrides)))


register(ConsistencyFamily())

__all__ = ["ConsistencyConfig", "ConsistencyFamily", "ConsistencyPipeline", "consistency_grid", "distill_config",
           "same_architecture"]
