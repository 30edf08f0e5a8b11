"""Distillation of a trained diffusion run into a faster student: ``family: distill``, a normal
diffusion run directory (``genmodels sample``, ``eval`` and ``genmodels.load`` read it as one)
trained from a frozen teacher run (``distill.teacher``), whose weights' sha256 the run records
(``distill.teacher_sha256``) and checks whenever it is resumed.

- ``progressive`` (Salimans & Ho 2022, Algorithm 2): the student starts as the teacher (EMA
  weights) and learns to take ONE DDIM step where the teacher takes two, on a grid of N0 =
  ``teacher_steps`` DDIM steps; rounds halve N until ``steps``, each ``images_per_round`` images.
  After each round the student's EMA becomes the next round's teacher and the student's raw
  weights restart from it (the paper's theta <- eta): the EMA is the better sampler of the two,
  and it is the model the round is judged and sampled by. It is saved once, atomically, as
  ``rounds/round{k}-steps{N}.safetensors`` before the next round trains: the next teacher on a
  resume, a round's result that a later kill cannot touch.
- ``guidance`` (Meng et al. 2023, stage 1): the student reads the classifier-free guidance scale
  w as an input (the ``guidance`` conditioning key, embedded like the noise level, its last layer
  zero so the student starts as the teacher's conditional model) and regresses the teacher's
  guided x0 over w ~ U[``guidance_min``, ``guidance_max``]; ``--guidance W`` then costs one
  forward per step instead of CFG's two (``Pipeline.sample`` routes it to that input).

The grid: the N0-step grid of the teacher's path and ``spacing``; round k's teacher steps on
every 2^k-th of its levels, the student on every 2^(k+1)-th (``objectives.distill.
student_levels``), so each student grid is a subset of its teacher's. The final grid must be the
one ``sigma_grid(path, steps, spacing)`` gives, so the run's ``sample`` section (ddim, ``steps``,
``spacing``) samples exactly what was trained: on the discrete DDPM that holds for ``trailing``
(t_i = round(T - i T / N) - 1 with N0 = 2^k N: the same real numbers rounded), the default; on
rectified flow for its uniform grid; elsewhere it is refused with the reason. As everywhere, the
grid starts at the path's top level (the cosine DDPM's t = T - 1).

    genmodels distill runs/mnist-ddpm --method progressive --teacher-steps 64 --steps 4 \\
        --images-per-round 200000 --out runs/mnist-pd4
    genmodels distill runs/mnist-cfg --method guidance --images-per-round 300000 --out runs/mnist-gd
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import click
import torch
from tqdm.auto import tqdm

from .. import build
from ..build import cond_dropout
from ..cond import null_value
from ..config import apply_overrides, from_dict, register_section
from ..diffusion import DiscreteDDPM, sigma_grid
from ..errors import CheckpointError, ConfigError
from ..objectives.distill import GuidanceObjective, ProgressiveObjective, student_levels
from ..train.checkpoint import load_weights, save_weights
from ..train.trainer import Phase
from .base import TrainContext, TrainParts, register
from .diffusion import DiffusionFamily
from .loading import check_base, file_sha256, load_run, read_run_config

GUIDANCE_KEY = "guidance"
TEACHER_FAMILIES = ("diffusion",)


@dataclass
class DistillConfig:
    """The distillation: ``method`` (progressive | guidance), the ``teacher`` run (its weights'
    sha256 recorded in ``teacher_sha256`` when the run starts); progressive: ``teacher_steps`` N0,
    the final ``steps``, the grid ``spacing`` (None: trailing on a DDPM path, the path's own
    elsewhere); ``images_per_round`` (guidance: its one round); guidance: the range of w."""

    method: str = "progressive"
    teacher: str | None = None
    teacher_sha256: dict = field(default_factory=dict)
    teacher_steps: int = 64
    steps: int = 4
    spacing: str | None = None
    images_per_round: int = 100_000
    guidance_min: float = 1.0
    guidance_max: float = 5.0

    POSITIVE = ("teacher_steps", "steps", "images_per_round")

    def validate(self):
        if self.method not in TRAINERS:
            raise ConfigError(f"unknown distillation method '{self.method}'; choose one of {', '.join(TRAINERS)}")
        if self.guidance_min > self.guidance_max:
            raise ConfigError(f"distill.guidance_min {self.guidance_min} exceeds guidance_max {self.guidance_max}")


register_section("distill", DistillConfig)


# ---- the grid ----------------------------------------------------------------------------------
def default_spacing(diffusion_section) -> str | None:
    return "trailing" if diffusion_section.path == "ddpm" else None


def rounds_of(teacher_steps: int, steps: int) -> int:
    """log2(teacher_steps / steps), or a ConfigError: each round halves the steps."""
    rounds = round(math.log2(teacher_steps / steps)) if teacher_steps > steps > 0 else 0
    if rounds < 1 or steps * 2 ** rounds != teacher_steps:
        raise ConfigError(f"progressive distillation halves the steps each round: --teacher-steps "
                          f"{teacher_steps} must be --steps {steps} times a power of 2 (e.g. 64 and 4)")
    return rounds


def distill_grid(path, d: DistillConfig, spacing: str | None) -> torch.Tensor:
    """The N0-step grid the rounds subdivide, after checking that the final round's grid is
    ``sigma_grid(path, steps, spacing)`` (what sampling the run uses by default)."""
    rounds = rounds_of(d.teacher_steps, d.steps)
    kwargs = {} if spacing is None else {"spacing": spacing}
    grid = sigma_grid(path, d.teacher_steps, **kwargs)
    final = student_levels(grid, rounds - 1)[1]
    direct = sigma_grid(path, d.steps, **kwargs)
    if not torch.allclose(final, direct, rtol=1e-9, atol=0):
        hint = "; use distill.spacing=trailing" if isinstance(path, DiscreteDDPM) else ""
        raise ConfigError(f"the {d.steps}-step grid ({spacing or 'default'} spacing) of this {type(path).__name__} path is not "
                          f"every {2 ** rounds}-th level of its {d.teacher_steps}-step grid, so the student could not "
                          f"be sampled on the grid it learned{hint}")
    return grid


def round_at(d: DistillConfig, images_seen: int) -> int:
    return min(images_seen // d.images_per_round, rounds_of(d.teacher_steps, d.steps) - 1)


# ---- the family --------------------------------------------------------------------------------
class DistillFamily(DiffusionFamily):
    """A diffusion run trained from a frozen teacher (module docstring); sampled as any diffusion run."""

    name = "distill"
    frozen_sections = ("diffusion", "distill")

    def prepare_config(self, cfg) -> None:
        """Check the teacher: a diffusion run, unchanged since this run started (its sha256,
        recorded now on a fresh start); take its diffusion, latent and text sections."""
        d = cfg.distill
        if not d.teacher:
            raise ConfigError("distill.teacher is required: the trained diffusion run to distil "
                              "(genmodels distill TEACHER_RUN ...)")
        saved = teacher_config(d.teacher)
        if d.teacher_sha256:
            check_base("distill.teacher", {"path": d.teacher, "sha256": d.teacher_sha256}, run_dir="the distilled run")
        else:
            d.teacher_sha256 = {"ema.safetensors": file_sha256(Path(d.teacher) / "ema.safetensors")}
            d.teacher = str(Path(d.teacher).resolve())
        teacher = from_dict(saved)
        for section in ("diffusion", "latent", "text"):
            cfg.sections[section] = getattr(teacher, section)
        cfg.model.network = teacher.model.network
        if d.method == "progressive":
            if cfg.diffusion.prediction in ("eps", "score"):
                raise ConfigError(f"'{d.teacher}' predicts {cfg.diffusion.prediction}, whose x0 estimate at the top "
                                  f"noise level is sigma_max times its error: progressive distillation needs x0, v, "
                                  f"edm or velocity prediction (Salimans & Ho 2022, Sec. 4), e.g. config mnist-ddpm")
            rounds = rounds_of(d.teacher_steps, d.steps)
            distill_grid(build.build_path(cfg.diffusion), d, d.spacing)
            if cfg.train.images > rounds * d.images_per_round:
                raise ConfigError(f"train.images {cfg.train.images:,} runs past the last round ({rounds} rounds of "
                                  f"distill.images_per_round {d.images_per_round:,})")
        else:
            guided_keys(teacher, d.teacher)

    def network_options(self, cfg, dataset) -> dict:
        options = dict(from_dict(teacher_config(cfg.distill.teacher)).model.options)  # the teacher's net, as built
        if cfg.distill.method == "guidance":
            options["embed_cond"] = [*options.get("embed_cond", []), GUIDANCE_KEY]
        return options

    def training(self, ctx: TrainContext) -> TrainParts:
        teacher = load_run(ctx.cfg.distill.teacher, device=ctx.device)
        student = ctx.modules["net"]
        init_student(student, teacher.modules["net"])  # a resume then loads its checkpoint over this
        return TRAINERS[ctx.cfg.distill.method](self, ctx, teacher.modules["net"])

    def preview_sampling(self, ctx: TrainContext) -> dict:
        d, s = ctx.cfg.distill, ctx.cfg.sample
        if d.method != "progressive":
            return super().preview_sampling(ctx)
        # the round's own grid: a round-k student takes N0 / 2^(k+1) steps
        steps = d.teacher_steps // 2 ** (round_at(d, ctx.images_seen()) + 1)
        return dict(sampler="ddim", steps=steps, eta=0.0, spacing=s.spacing)

    def verbs(self) -> list:
        return [distill]


register(DistillFamily())


def teacher_config(teacher) -> dict:
    """The teacher run's config, after checking it is a run of a family that can be distilled."""
    saved = read_run_config(teacher)["config"]
    if saved.get("family") not in TEACHER_FAMILIES:
        raise ConfigError(f"'{teacher}' is a {saved.get('family')} run; distillation needs a diffusion run "
                          "(family: diffusion) as its teacher")
    return saved


def guided_keys(teacher_cfg, teacher_dir) -> tuple:
    """The conditions a teacher can be guided on: those it was trained to drop (its unconditional model)."""
    keys = tuple(k for k in cond_dropout(teacher_cfg) if k != GUIDANCE_KEY)
    if not keys:
        raise ConfigError(f"guidance distillation needs a conditional teacher trained with classifier-free dropout "
                          f"(diffusion.label_dropout or cond_dropout, e.g. config mnist-cfg); '{teacher_dir}' has none")
    if GUIDANCE_KEY in teacher_cfg.model.options.get("embed_cond", ()):
        raise ConfigError(f"'{teacher_dir}' is already guidance-distilled (its network reads the guidance scale)")
    return keys


def init_student(student, teacher_net) -> None:
    """The student starts as the teacher: its weights copied; a guidance student's new
    embedding (absent from the teacher) keeps its zero-initialised output layer."""
    missing, unexpected = student.load_state_dict(teacher_net.state_dict(), strict=False)
    new = [k for k in missing if not k.startswith("cond_embed.")]
    if new or unexpected:
        raise CheckpointError(f"the student does not match its teacher's network (missing {new[:3]}, "
                              f"unexpected {unexpected[:3]})")


# ---- the methods' training ---------------------------------------------------------------------
def _phase(family, ctx, objective, teacher_denoiser, reads, optimizer, before=None):
    """The one distillation phase: ``objective(student_denoiser, teacher_denoiser, batch)``."""
    path, param, _ = family.parts(ctx.cfg)
    student = ctx.modules["net"]
    train_net = ctx.wrap(student)
    student_denoiser = build.make_denoiser(train_net, path, param)

    def loss(batch, generator):
        if before is not None:
            before()
        on_device = ctx.to_device(batch, ["x"], cond_keys=reads)
        with ctx.autocast_context():
            return objective(student_denoiser, teacher_denoiser, on_device, generator=generator)

    return Phase("distill", train_net, loss, optimizer, ctx.cfg.train.grad_clip)


def _parts(family, ctx, phase, ema) -> TrainParts:
    path, param, _ = family.parts(ctx.cfg)
    draw = family._draw(ctx, lambda: ema.module, path, param)
    return TrainParts([phase], {"net": ema}, preview=family._preview(ctx, draw), evaluate=family._evaluate(ctx, draw))


def progressive_parts(family, ctx: TrainContext, teacher_net) -> TrainParts:
    """Rounds of progressive distillation inside one trainer run: the round follows the images
    seen; its first step saves the student's EMA (the new teacher) and restarts the student from
    it. The step is found from the count alone, so a resume lands in the same round with the
    same teacher (read back from its file)."""
    cfg, d = ctx.cfg, ctx.cfg.distill
    path, param, _ = family.parts(cfg)
    grid = distill_grid(path, d, d.spacing)
    student, ema = ctx.modules["net"], ctx.ema("net")
    optimizer = ctx.adamw(student.parameters())
    teacher = teacher_net  # the round's teacher (loaded here for this run alone): round 0's is the teacher run
    # the teacher's own classifier-free dropout (its run's diffusion section is this run's)
    objective = ProgressiveObjective(student_levels(grid, 0)[0], cond_dropout(cfg),
                                     lambda key, value: null_value(student, key, value))
    current = {"round": 0}
    step_images = cfg.train.batch_size

    def round_file(k: int) -> Path:
        return Path(ctx.run_dir) / "rounds" / f"round{k}-steps{d.teacher_steps // 2 ** (k + 1)}.safetensors"

    def next_round():
        seen = ctx.images_seen()
        k = round_at(d, seen)
        first_step = k > 0 and seen - step_images < k * d.images_per_round
        if k == current["round"] and (not first_step or current.get("started") == seen):
            return  # (a step's later micro-batches find the round already started)
        if first_step:  # theta <- eta: the round's teacher and the student's start are the last EMA
            if ctx.dist.is_main:
                save_weights({"net": ema.module}, round_file(k - 1))
                tqdm.write(f"round {k}: the {d.teacher_steps // 2 ** k}-step student is the teacher now "
                           f"({round_file(k - 1)}); training {d.teacher_steps // 2 ** (k + 1)} steps")
            with torch.no_grad():
                student.load_state_dict(ema.module.state_dict())
                teacher.load_state_dict(ema.module.state_dict())
            optimizer.state.clear()  # Adam's moments belong to the last round's target
        else:  # resumed inside round k: its teacher is round k - 1's student, on disk
            load_weights({"net": teacher}, round_file(k - 1))
        objective.teacher_levels = student_levels(grid, k)[0]
        current.update(round=k, started=seen)

    teacher_denoiser = build.make_denoiser(teacher, path, param)
    reads = getattr(student, "cond_keys", frozenset())
    phase = _phase(family, ctx, _logged(objective, lambda: current["round"], d), teacher_denoiser, reads,
                   optimizer, before=next_round)
    return _parts(family, ctx, phase, ema)


def _logged(objective, round_index, d):
    """The objective with the round and the student's step count in the metrics rows."""
    def run(student, teacher, batch, *, generator):
        loss, logs = objective(student, teacher, batch, generator=generator)
        k = round_index()
        ones = torch.ones((), device=loss.device)
        return loss, {**logs, "round": ones * k, "student_steps": ones * (d.teacher_steps // 2 ** (k + 1))}
    return run


def guidance_parts(family, ctx: TrainContext, teacher_net) -> TrainParts:
    cfg, d = ctx.cfg, ctx.cfg.distill
    path, param, _ = family.parts(cfg)
    keys = guided_keys(from_dict(teacher_config(d.teacher)), d.teacher)
    student, ema = ctx.modules["net"], ctx.ema("net")
    objective = GuidanceObjective(path, (d.guidance_min, d.guidance_max), keys, teacher_net)
    reads = getattr(teacher_net, "cond_keys", frozenset())
    phase = _phase(family, ctx, objective, build.make_denoiser(teacher_net, path, param), reads,
                   ctx.adamw(student.parameters()))
    return _parts(family, ctx, phase, ema)


# method -> its training (this family). METHODS (the verb's) may also name other families' runs.
TRAINERS = {"progressive": progressive_parts, "guidance": guidance_parts}


# ---- the run's config, the API and the verb ----------------------------------------------------
def _overridden(overrides, key: str) -> bool:
    return any(o.split("=", 1)[0].strip() == key for o in overrides)


def progressive_config(teacher, *, steps=4, teacher_steps=64, images_per_round=100_000, spacing=None,
                       overrides=(), **_):
    """A progressive distillation of ``teacher``: its config with family distill, the rounds'
    budget as train.images, and a sample section that samples the result on its grid."""
    values = teacher_config(teacher)
    spacing = spacing or default_spacing(from_dict(values).diffusion)
    rounds = rounds_of(teacher_steps, steps)
    values = {**values, "family": "distill",
              "distill": {"method": "progressive", "teacher": str(teacher), "teacher_steps": teacher_steps,
                          "steps": steps, "spacing": spacing, "images_per_round": images_per_round},
              "train": {**values.get("train", {}), "minutes": None, "warmup_images": 0, "init_from": None,
                        "images": rounds * images_per_round},
              "sample": {**values.get("sample", {}), "sampler": "ddim", "steps": steps, "eta": 0.0,
                         "spacing": spacing}}
    cfg = from_dict(apply_overrides(values, list(overrides)))
    if not _overridden(overrides, "train.images"):  # the rounds' budget, whatever images_per_round became
        cfg.train.images = rounds_of(cfg.distill.teacher_steps, cfg.distill.steps) * cfg.distill.images_per_round
    return cfg


def guidance_config(teacher, *, images_per_round=100_000, guidance_range=(1.0, 5.0), overrides=(), **_):
    """A guidance distillation of ``teacher``: one round of ``images_per_round`` images; the
    teacher's sample section (its sampler and steps)."""
    values = teacher_config(teacher)
    guided_keys(from_dict(values), teacher)
    lo, hi = guidance_range
    values = {**values, "family": "distill",
              "distill": {"method": "guidance", "teacher": str(teacher), "images_per_round": images_per_round,
                          "guidance_min": lo, "guidance_max": hi},
              "train": {**values.get("train", {}), "minutes": None, "warmup_images": 0, "init_from": None,
                        "images": images_per_round}}
    return from_dict(apply_overrides(values, list(overrides)))


# method -> config(teacher, **options): the verb's registry; another family's distillation is one line here
METHODS = {"progressive": progressive_config, "guidance": guidance_config}


def distill_run(teacher, out, *, method="progressive", resume=False, overrides=(), **options):
    """Distil the diffusion run ``teacher`` into the run directory ``out`` (never overwritten:
    ``resume`` continues it); ``options`` of the method (``progressive_config``,
    ``guidance_config``). Returns the trainer's progress. ``genmodels.distill`` is this."""
    from ..train.run import train

    if method not in METHODS:
        raise ConfigError(f"unknown distillation method '{method}'; choose one of {', '.join(METHODS)}")
    if resume:
        cfg = from_dict(apply_overrides(read_run_config(out)["config"], list(overrides)))
    else:
        cfg = METHODS[method](teacher, overrides=overrides, **options)
    return train(cfg, out, resume=resume)


@click.command(help="Distil a trained diffusion run into a faster one (a normal run directory). progressive: "
                    "halve the DDIM steps each round (Salimans & Ho 2022) from --teacher-steps down to --steps; "
                    "guidance: a student taking the guidance scale as an input, one forward per step instead of "
                    "classifier-free guidance's two (Meng et al. 2023). Overrides (key=value) apply to the new "
                    "run's config.\n\n\b\nExample:\n"
                    "  genmodels distill runs/mnist-ddpm --method progressive --teacher-steps 64 --steps 4 \\\n"
                    "      --images-per-round 200000 --out runs/mnist-pd4\n"
                    "  genmodels sample runs/mnist-pd4 --out pd4.png\n"
                    "  genmodels distill runs/mnist-cfg --method guidance --out runs/mnist-gd\n"
                    "  genmodels sample runs/mnist-gd --class all --guidance 3 --out gd.png")
@click.argument("teacher", type=click.Path(path_type=Path))
@click.argument("overrides", nargs=-1)
@click.option("--method", default="progressive", show_default=True, help=f"One of: {', '.join(METHODS)}.")
@click.option("--out", "out", required=True, type=click.Path(path_type=Path), help="The new run directory.")
@click.option("--steps", default=4, show_default=True, help="progressive: the student's final DDIM steps.")
@click.option("--teacher-steps", default=64, show_default=True, help="progressive: the teacher's DDIM steps N0.")
@click.option("--images-per-round", default=100_000, show_default=True,
              help="Training images per round (guidance: its one round).")
@click.option("--spacing", default=None, help="progressive: the grid's spacing (default: trailing on DDPM paths).")
@click.option("--guidance-range", default="1,5", show_default=True,
              help="guidance: LO,HI, the range of guidance scales w the student learns (1 = conditional).")
@click.option("--resume", is_flag=True, help="Continue the distillation in --out.")
def distill(teacher, overrides, method, out, steps, teacher_steps, images_per_round, spacing, guidance_range, resume):
    try:
        lo, hi = (float(v) for v in guidance_range.split(","))
    except ValueError:
        raise ConfigError(f"--guidance-range '{guidance_range}' is not LO,HI (two numbers, e.g. 1,5)") from None
    progress = distill_run(teacher, out, method=method, resume=resume, overrides=overrides, steps=steps,
                           teacher_steps=teacher_steps, images_per_round=images_per_round, spacing=spacing,
                           guidance_range=(lo, hi))
    click.echo(f"distilled {progress.images_seen:,} images; run directory: {out}")


__all__ = ["DistillConfig", "DistillFamily", "METHODS", "TRAINERS", "distill_grid", "distill_run",
           "guidance_config", "progressive_config"]
