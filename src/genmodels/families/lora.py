"""LoRA fine-tuning as a run (Hu et al. 2021): ``family: lora`` with ``model.base: RUN`` frozen and
hash-checked (a composed run), trained over the base family's own objective with only the adapters'
parameters in the optimizer. The run's model.safetensors / ema.safetensors hold the adapters only
(kilobytes); ``adapter.safetensors`` is their peft-layout export (``genmodels.lora``). Loading
merges the EMA adapters into the base's weights and hands the base family a plain run, so
``sample``, ``eval`` and ``report`` work unchanged and the fast kernels stay on.

The run's config is the base's with ``family: lora``, ``model.base`` and the ``lora`` section
(``genmodels finetune`` writes it), so the base family reads its own sections (diffusion, ...) from
it; ``as_base`` gives it back with the base's family name.

    genmodels finetune runs/mnist-cfg --lora-rank 4 --lora-targets attn,conv --out runs/lora-3 \\
        data.exclude_classes=[0,1,2,4,5,6,7,8,9] train.images=6400
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import click
from torch import nn

from ..config import apply_overrides, from_dict, register_section
from ..errors import ConfigError
from ..lora import by_module, save_adapter
from ..nn.lora import adapter_parameters, attach, inject, merge_weights
from .base import Family, LoadedRun, TrainContext, TrainParts, register
from .loading import get_family, read_run_config

BASE_FIELD = "model.base"
ADAPTER_FILE = "adapter.safetensors"


@dataclass
class LoraConfig:
    """The adapters: ``rank`` r, ``alpha`` (delta = alpha / r * B A; None: alpha = r) and the
    ``targets``: aliases (attn, conv, linear, all) or fnmatch patterns over the base run's module
    names (``net.mid.*``; names start with the run's module, e.g. ``net`` or ``G``)."""

    rank: int = 4
    alpha: float | None = None
    targets: list[str] = field(default_factory=lambda: ["attn", "conv"])

    POSITIVE = ("rank",)


register_section("lora", LoraConfig)


class LoraAdapters(nn.Module):
    """The adapters of a run, by the adapted layer's module name ({"net.mid.attn.qkv": LoraWeight});
    a ModuleDict underneath (its keys cannot hold dots: '-' stands for them)."""

    def __init__(self, adapters: dict):
        super().__init__()
        self.names = list(adapters)
        self.layers = nn.ModuleDict({name.replace(".", "-"): adapter for name, adapter in adapters.items()})

    def as_dict(self) -> dict:
        return {name: self.layers[name.replace(".", "-")] for name in self.names}


def base_dir(cfg) -> Path:
    if not cfg.model.base:
        raise ConfigError("a lora run needs model.base: the trained run it adapts (genmodels finetune RUN ...)")
    return Path(cfg.model.base)


def as_base(cfg, base_family: str):
    """The run's config as the base family reads it: every section as is, the family the base's."""
    return dataclasses.replace(cfg, family=base_family)


def _base_config(cfg):
    return from_dict(read_run_config(base_dir(cfg))["config"])


class _Frozen:
    """An EMA stand-in for the base family's wiring: its ``module`` (the net with the EMA adapters
    attached) follows the adapters' EMA, which the trainer updates; nothing to update here."""

    def __init__(self, module):
        self.module = module


@dataclass
class _AdaptedContext(TrainContext):
    """The base family's view of a LoRA run: ``modules`` the frozen base nets with the training
    adapters attached; its ``ema(name)`` the same nets with the adapters' EMA attached."""

    ema_modules: dict = field(default_factory=dict)

    def ema(self, name: str):
        return _Frozen(self.ema_modules[name])


class LoraFamily(Family):
    name = "lora"
    frozen_sections = ("lora",)

    def network_options(self, cfg, dataset) -> dict:
        return dict(_base_config(cfg).model.options)  # the base net, as it was built

    def build(self, cfg, options: dict) -> dict:
        # The adapters' shapes come from the base's architecture: a fresh (untrained) copy of its
        # modules is enough to resolve the targets; the trained weights arrive with ctx.bases.
        base_cfg = _base_config(cfg)
        skeleton = nn.ModuleDict(get_family(base_cfg.family).build(base_cfg, base_cfg.model.options))
        adapters = inject(skeleton, cfg.lora.targets, rank=cfg.lora.rank, alpha=cfg.lora.alpha)
        return {"lora": LoraAdapters(adapters)}

    def training(self, ctx: TrainContext) -> TrainParts:
        base = ctx.bases[BASE_FIELD]
        family = get_family(base.config.family)
        adapters = ctx.modules["lora"]
        ema = ctx.ema("lora")
        ema_modules = {name: copy.deepcopy(m) for name, m in base.modules.items()}  # before adapters go on
        for module, layers in by_module(adapters.as_dict()).items():
            attach(base.modules[module], layers)
        for module, layers in by_module(ema.module.as_dict()).items():
            attach(ema_modules[module], layers)
        view = _AdaptedContext(**{f.name: getattr(ctx, f.name) for f in dataclasses.fields(TrainContext)},
                               ema_modules=ema_modules)
        view.cfg, view.modules = as_base(ctx.cfg, family.name), dict(base.modules)
        view.images_seen = lambda: ctx.images_seen()  # the trainer sets ctx's counter after this returns
        parts = family.training(view)
        if len(parts.phases) != 1:
            raise ConfigError(f"LoRA fine-tuning trains families with one optimizer step per batch (diffusion, "
                              f"flow matching); '{base.run_dir}' is a {family.name} run with "
                              f"{len(parts.phases)} phases (adapt it through genmodels.nn.lora instead)")
        # the base family's phase, its optimizer over the adapters only: the base stays frozen
        phase = dataclasses.replace(parts.phases[0], optimizer=ctx.adamw(adapter_parameters(adapters.as_dict())))
        return TrainParts([phase], {"lora": ema}, preview=parts.preview, evaluate=parts.evaluate)

    def load(self, run: LoadedRun):
        base = run.bases[BASE_FIELD]
        for module, layers in by_module(run.modules["lora"].as_dict()).items():
            merge_weights(base.modules[module], layers)
        merged = LoadedRun(run.run_dir, run.record, as_base(run.config, base.config.family), base.modules,
                           run.device, base.bases)
        return get_family(base.config.family).load(merged)

    def verbs(self) -> list:
        return [finetune]


register(LoraFamily())


# ---- finetune ----------------------------------------------------------------------------------
def finetune_config(run_dir, *, rank=4, alpha=None, targets="attn,conv", full=False, overrides=()):
    """The config of a fine-tune of ``run_dir``: its own config with no time budget and no
    warm-up (``overrides`` win), then either a lora run on it or (``full``) the same family
    started from its EMA weights (``train.init_from``)."""
    values = read_run_config(run_dir)["config"]
    values = {**values, "train": {**values.get("train", {}), "minutes": None, "warmup_images": 0}}
    if full:
        values["train"]["init_from"] = str(run_dir)
    else:
        values = {**values, "family": "lora", "model": {**values["model"], "base": str(run_dir)},
                  "lora": {"rank": rank, "alpha": alpha, "targets": [t.strip() for t in targets.split(",")]}}
    return from_dict(apply_overrides(values, list(overrides)))


def export_adapter(run_dir) -> Path:
    """Write a lora run's EMA adapters to ``run_dir/adapter.safetensors`` (peft layout + metadata)."""
    from .loading import load_run

    run_dir = Path(run_dir)
    record = read_run_config(run_dir)
    if record["config"]["family"] != "lora":
        raise ConfigError(f"'{run_dir}' is a {record['config']['family']} run, not a lora run")
    cfg = from_dict(record["config"])
    base = record["bases"][BASE_FIELD]
    adapters = load_run(run_dir, device="cpu", channels_last=False).modules["lora"].as_dict()
    meta = {"base": base["path"], "base_weights": "ema", "base_sha256": base["sha256"]["ema.safetensors"],
            "rank": cfg.lora.rank, "alpha": cfg.lora.rank if cfg.lora.alpha is None else cfg.lora.alpha,
            "targets": list(cfg.lora.targets)}
    return save_adapter(adapters, run_dir / ADAPTER_FILE, meta=meta)


@click.command(help="Fine-tune a trained run: LoRA adapters over its frozen weights (a run of kilobytes, plus "
                    "adapter.safetensors in peft's layout), or with --full every weight. Overrides (key=value) "
                    "apply to the run's config: the data to adapt to and the budget.\n\n\b\nExample:\n"
                    "  genmodels finetune runs/mnist-cfg --lora-rank 4 --lora-targets attn,conv --out runs/lora-3 \\\n"
                    "      data.exclude_classes=[0,1,2,4,5,6,7,8,9] train.images=6400 train.lr=1e-3\n"
                    "  genmodels sample runs/mnist-cfg --lora runs/lora-3/adapter.safetensors:0.8 --out three.png")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.argument("overrides", nargs=-1)
@click.option("--out", "out", required=True, type=click.Path(path_type=Path), help="The new run directory.")
@click.option("--lora-rank", "rank", default=4, show_default=True, help="Adapter rank r.")
@click.option("--lora-alpha", "alpha", default=None, type=float, help="alpha (delta = alpha / r * B A); default r.")
@click.option("--lora-targets", "targets", default="attn,conv", show_default=True,
              help="Layers to adapt: attn, conv, linear, all, or fnmatch patterns of module names (net.mid.*).")
@click.option("--full", is_flag=True, help="Fine-tune every weight instead (the comparison to LoRA).")
@click.option("--resume", is_flag=True, help="Continue the fine-tune in --out.")
def finetune(run_dir, overrides, out, rank, alpha, targets, full, resume):
    from ..train.run import train

    if resume:
        cfg = from_dict(apply_overrides(read_run_config(out)["config"], list(overrides)))
    else:
        cfg = finetune_config(run_dir, rank=rank, alpha=alpha, targets=targets, full=full, overrides=overrides)
    progress = train(cfg, out, resume=resume)
    exported = "" if cfg.family != "lora" else f"; adapter: {export_adapter(out)}"
    click.echo(f"fine-tuned {progress.images_seen:,} images; run directory: {out}{exported}")
