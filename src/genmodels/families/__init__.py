"""Families: what each kind of model brings to the one trainer, run directory and pipeline.

A family is an object with

- ``name`` and ``frozen_sections``: the config sections (beyond family, data and model) that fix
  what its weights mean, so a resume must not change them (diffusion: "diffusion");
- ``build(cfg, options) -> {name: module}``: its networks on the CPU. Training and loading both
  call it, so a run directory rebuilds exactly what was trained; the names prefix the keys of
  model.safetensors and ema.safetensors;
- ``training(ctx: TrainContext) -> TrainParts``: its phases, EMAs, preview and proxy evaluation
  over the modules ``ctx`` holds on the training device;
- ``load(run: LoadedRun) -> pipeline``: an object with ``sample(n, *, seed, batch_size, progress,
  dist, labels, **settings)``, ``sample_settings(**given) -> dict`` (the settings a sample uses,
  recorded by the evaluation protocol), ``config``, ``data_shape``, ``class_names``, ``device``,
  ``run_dir`` and ``net_num_classes``; optionally its own likelihood for the ``nll`` metric:
  ``nll_method`` (a name), ``nll_settings(k=) -> dict`` (recorded by the protocol) and
  ``nll_scores(x, *, generator, progress, **settings) -> dict`` (the VAE's IWAE bound).

``FAMILIES`` is the registry (a plain dict), filled by ``register``.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..errors import ConfigError
from ..train.distributed import Dist
from ..train.ema import EMA
from ..train.optim import make_adamw
from ..train.trainer import Phase

FAMILIES: dict[str, object] = {}


def register(family) -> object:
    FAMILIES[family.name] = family
    return family


def get_family(name: str):
    _load_builtin()
    if name not in FAMILIES:
        raise ConfigError(f"unknown family {name!r}; choose one of {', '.join(sorted(FAMILIES))}")
    return FAMILIES[name]


def _load_builtin() -> None:
    # Imported here, not at the top: each family module imports this one for its helpers.
    from . import diffusion, gan, vae  # noqa: F401


@dataclass
class TrainParts:
    """A family's contribution to the trainer; ``emas`` are keyed by module name."""

    phases: list[Phase]
    emas: dict[str, EMA]
    preview: Callable | None = None  # preview(png_path): draws from the EMA weights
    evaluate: Callable | None = None  # evaluate() -> dict: a proxy-metrics row


@dataclass
class TrainContext:
    """What every family's training wiring needs: the config, the data, the device, the ranks,
    and its modules already on the device (in the run's memory format).

    ``images_seen()`` is the trainer's count at call time (restored on resume), for schedules
    inside a loss: KL warm-up, progressive growing.
    """

    cfg: object
    dataset: object
    device: torch.device
    dist: Dist
    modules: dict[str, nn.Module]
    autocast: torch.dtype | None = None
    channels_last: bool = False
    images_seen: Callable[[], int] = lambda: 0

    def wrap(self, module: nn.Module) -> nn.Module:
        """``module`` as the phase trains it: under DDP broadcast from rank 0, gradients
        all-reduced during backward; the plain module on one process."""
        if not self.dist.enabled:
            return module
        return DistributedDataParallel(module, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                                       gradient_as_bucket_view=True)

    def to_device(self, batch: dict, keys=("x",)) -> dict:
        """The ``keys`` of ``batch`` on the device; images (4-D) in the run's memory format."""
        out = {}
        for key in keys:
            value = batch[key].to(self.device, non_blocking=True)
            if self.channels_last and value.ndim == 4:
                value = value.contiguous(memory_format=torch.channels_last)
            out[key] = value
        return out

    def autocast_context(self):
        if self.autocast is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast)

    def adamw(self, params, **overrides) -> torch.optim.Optimizer:
        """AdamW with the ``train`` section's hyperparameters (``overrides`` win)."""
        t = self.cfg.train
        options = dict(lr=t.lr, betas=(t.adam_beta1, t.adam_beta2), weight_decay=t.weight_decay)
        return make_adamw(params, **{**options, **overrides})

    def ema(self, name: str) -> EMA:
        t = self.cfg.train
        return EMA(self.modules[name], halflife_images=t.ema_halflife_images, rampup=t.ema_rampup)


@dataclass
class LoadedRun:
    """A run directory rebuilt for sampling: its record, config and modules (weights loaded,
    on the device, eval mode, no gradients)."""

    run_dir: object
    record: dict
    config: object
    modules: dict[str, nn.Module]
    device: torch.device

    @property
    def data_shape(self) -> tuple:
        return tuple(self.record["data_shape"])

    @property
    def class_names(self) -> tuple:
        return tuple(self.record.get("class_names", ()))


__all__ = ["FAMILIES", "LoadedRun", "TrainContext", "TrainParts", "get_family", "register"]
