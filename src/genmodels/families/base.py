"""The family seam: what each kind of model brings to the one trainer, run directory, CLI and
pipeline, and the registry that holds them.

A family (subclass ``Family``) has

- ``name``, and ``frozen_sections``: the config sections that fix what its weights mean, so a
  resume must not change them (diffusion: "diffusion"); its own section is a dataclass registered
  with ``genmodels.config.register_section`` in the family's file;
- ``prepare_config(cfg)``: called first when a run is prepared; a composed run takes sections
  of the run it builds on here (a ControlNet: the base's diffusion, latent and text sections);
- ``network_options(cfg, dataset) -> options``: the model options with what the data dictates
  filled in (channels, image size, classes), recorded in config.json;
- ``build(cfg, options) -> {name: module}``: its networks on the CPU. Training and loading both
  call it, so a run directory rebuilds exactly what was trained; the names prefix the keys of
  model.safetensors and ema.safetensors;
- ``training(ctx: TrainContext) -> TrainParts``: its phases, EMAs, preview and proxy evaluation
  over the modules ``ctx`` holds on the training device;
- ``load(run: LoadedRun) -> pipeline`` (the contract below);
- ``sample_options``: the options its pipeline's ``sample`` takes beyond the shared ones (n,
  seed, labels, batch size), as ``SampleOption`` (name, type, default, help): one schema that the
  CLI's ``sample`` command and the web app both read;
- ``verbs()``: its extra CLI commands (click commands: ``invert``, ``translate``, ...).

A pipeline has ``sample(n, *, seed, batch_size, progress, dist, labels, cond, **options)``
(sample i from seed + i; ``cond`` a conditioning dict for all samples), ``sample_settings(**given)
-> dict`` (the settings a sample uses, recorded by the evaluation protocol), ``nll_settings(**given)
-> dict`` and ``nll_scores(x, *, generator, progress, **settings) -> dict`` (its likelihood of
held-out data, or a ConfigError saying it has none), and ``config``, ``data_shape``,
``class_names``, ``device``, ``run_dir``, ``net_num_classes``.

``FAMILIES`` is the registry (a plain dict), filled by ``register``.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from .. import build
from ..config import register_choices
from ..errors import ConfigError
from ..train.distributed import Dist
from ..train.ema import EMA
from ..train.optim import make_adamw
from ..train.trainer import Phase

FAMILIES: dict[str, Family] = {}
register_choices("family", lambda: tuple(FAMILIES))

# Config fields that name another run whose frozen modules a run builds on (a composed run): the
# trainer loads each into ``TrainContext.bases``, config.json records its path and weights'
# sha256, and loading checks both. Sections add theirs (e.g. "latent.autoencoder").
RUN_REFERENCES: list[str] = ["model.base"]


def register(family: Family) -> Family:
    FAMILIES[family.name] = family
    return family


@dataclass(frozen=True)
class SampleOption:
    """One option of a family's ``sample``: ``name`` is the Python keyword (the CLI spells it
    ``--name`` with dashes, or ``flag``), ``type`` one of int, float, str, choice, interval (a
    "LO,HI" pair of floats), pair (two ints "A,B"), path; ``choices`` for choice options (a tuple,
    or a callable giving one: a registry's keys, read when asked)."""

    name: str
    type: str
    default: object = None
    help: str = ""
    choices: tuple = ()
    flag: str | None = None

    TYPES = ("int", "float", "str", "choice", "interval", "pair", "path")

    def __post_init__(self):
        if self.type not in self.TYPES:
            raise ValueError(f"sample option {self.name}: type {self.type!r} is not one of {self.TYPES}")

    def allowed(self) -> tuple:
        """A choice option's values (``choices`` may be a callable, e.g. a registry's keys)."""
        return tuple(self.choices() if callable(self.choices) else self.choices)

    @property
    def cli_flag(self) -> str:
        return self.flag or "--" + self.name.replace("_", "-")

    def parse(self, text: str):
        """The option's value from its command-line text, or a ConfigError naming the flag."""
        try:
            if self.type == "int":
                return int(text)
            if self.type == "float":
                return float(text)
            if self.type == "interval":
                lo, hi = (float(v) for v in text.split(","))
                return (min(lo, hi), max(lo, hi))
            if self.type == "pair":
                a, b = (int(v) for v in text.split(","))
                return (a, b)
        except ValueError:
            want = {"int": "an integer", "float": "a number", "interval": "LO,HI (two numbers, e.g. 0.3,5)",
                    "pair": "A,B (two integers, e.g. 3,8)"}[self.type]
            raise ConfigError(f"{self.cli_flag} '{text}' is not {want}") from None
        if self.type == "choice" and text not in self.allowed():
            raise ConfigError(f"unknown {self.name} '{text}' ({self.cli_flag}); allowed: {', '.join(self.allowed())}")
        return text


class Family:
    """Defaults every family shares; a family overrides what it has (module docstring)."""

    name = ""
    frozen_sections: tuple = ()
    sample_options: tuple = ()

    def prepare_config(self, cfg) -> None:
        pass

    def network_options(self, cfg, dataset) -> dict:
        return build.network_options(cfg, dataset.shape, dataset.num_classes)

    def build(self, cfg, options: dict) -> dict:
        raise NotImplementedError

    def training(self, ctx: TrainContext) -> TrainParts:
        raise NotImplementedError

    def load(self, run: LoadedRun):
        raise NotImplementedError

    def verbs(self) -> list:
        return []


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
    its modules already on the device (in the run's memory format), and the frozen runs it builds
    on (``bases``, by config field: ``LoadedRun``s on the device).

    ``images_seen()`` is the trainer's count at call time (restored on resume), for schedules
    inside a loss: KL warm-up, progressive growing. ``run_dir``: the run directory, for what a
    family keeps beside the trainer's checkpoint (progressive distillation's round students).
    """

    cfg: object
    dataset: object
    device: torch.device
    dist: Dist
    modules: dict[str, nn.Module]
    autocast: torch.dtype | None = None
    channels_last: bool = False
    images_seen: Callable[[], int] = lambda: 0
    bases: dict = field(default_factory=dict)
    run_dir: object = None

    def wrap(self, module: nn.Module) -> nn.Module:
        """``module`` as the phase trains it: under DDP broadcast from rank 0, gradients
        all-reduced during backward; the plain module on one process."""
        if not self.dist.enabled:
            return module
        return DistributedDataParallel(module, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                                       gradient_as_bucket_view=True)

    def to_device(self, batch: dict, keys=("x",), *, cond_keys=()) -> dict:
        """The ``keys`` of ``batch`` on the device, and of its ``cond`` the ``cond_keys`` (what
        the networks read); images (4-D) in the run's memory format."""
        out = {key: self._move(batch[key]) for key in keys}
        if "cond" in batch:
            out["cond"] = {k: self._move(v) for k, v in batch["cond"].items() if k in cond_keys}
        return out

    def _move(self, value):
        if isinstance(value, dict):
            return {k: self._move(v) for k, v in value.items()}
        value = value.to(self.device, non_blocking=True)
        if self.channels_last and value.ndim == 4:
            value = value.contiguous(memory_format=torch.channels_last)
        return value

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
    on the device, eval mode, no gradients), and the runs it builds on (``bases``)."""

    run_dir: object
    record: dict
    config: object
    modules: dict[str, nn.Module]
    device: torch.device
    bases: dict = field(default_factory=dict)

    @property
    def data_shape(self) -> tuple:
        return tuple(self.record["data_shape"])

    @property
    def class_names(self) -> tuple:
        return tuple(self.record.get("class_names", ()))


class PipelineBase:
    """Defaults of the pipeline contract (module docstring) that most families share."""

    family_name = "model"
    own_metrics: tuple = ()  # metrics of the registry this kind of model adds to the defaults

    def num_classes(self, **options) -> int | None:
        """The classes a sample can be asked for with these sample options (None: none)."""
        return self.net_num_classes

    def nll_settings(self, **given) -> dict:
        named = sorted(k for k, v in given.items() if v is not None)
        if named:
            raise ConfigError(f"{', '.join(named)} set(s) a likelihood this {self.family_name} does not have")
        return {}

    def reconstruction_scores(self, x, **options) -> dict:
        raise ConfigError(f"a {self.family_name} does not reconstruct images: psnr, rfd_cnn, latent_std and "
                          "code_usage apply to autoencoder runs (drop them from --metrics)")

    def nll_scores(self, x, **settings) -> dict:
        raise ConfigError(f"a {self.family_name} defines no likelihood: the nll metric does not apply "
                          "(drop it from --metrics)")

    @property
    def text_config(self):
        """The run's text section (``genmodels.data.text.TextConfig``); ``captions`` None: no text."""
        return self.config.text

    def text_conditioning(self, net, n: int, prompt, negative_prompt=None) -> tuple[dict, object]:
        """(``{"text": ...}`` for ``n`` samples of ``prompt`` (one for all, or one per sample; an
        empty prompt is the network's null text), the ``uncond`` of classifier-free guidance:
        ``None`` for the null text, or a function giving the ``negative_prompt``'s embedding)."""
        from ..cond import null_value, where
        from ..data.text import prompt_cond

        if self.text_config.captions is None or "text" not in getattr(net, "cond_keys", ()):
            raise ConfigError(f"'{getattr(self, 'run_dir', 'this run')}' is not a text-to-image run (it was trained "
                              "without text.captions); drop --prompt")
        prompts = [prompt] * n if isinstance(prompt, str) else list(prompt)
        if len(prompts) == 1:
            prompts = prompts * n
        if len(prompts) != n:
            raise ConfigError(f"give one prompt for all samples or one per sample ({n}), got {len(prompts)}")
        negative = [] if negative_prompt is None or not negative_prompt.strip() else [negative_prompt]
        # encoded together: the negative's token states have the prompts' length (guidance concatenates them)
        both, empty = prompt_cond(self.text_config, prompts + negative)
        text = {k: v[:n] for k, v in both.items()}
        if empty[:n].any():
            text = where(~empty[:n], {"text": text}, {"text": null_value(net, "text", text)})["text"]
        if not negative:
            return {"text": text}, None
        negative = {k: v[n:] for k, v in both.items()}

        def uncond(cond: dict) -> dict:
            first = next(iter(cond["text"].values()))
            return {**cond, "text": {k: v.to(first.device).expand(len(first), *v.shape[1:]) for k, v in negative.items()}}
        return {"text": text}, uncond


class Reconstructor:
    """A pipeline with an encoder and a decoder (VAE, autoencoder): ``inputs(x)`` (what the
    encoder sees of images ``x``), ``encode``, ``decode``, ``reconstruct(x)``; the CLI's
    ``reconstruct`` verb works on any of them."""

    def inputs(self, x):
        raise NotImplementedError

    def reconstruct(self, x):
        raise NotImplementedError


def check_labels(labels, n: int, num_classes: int | None) -> list | None:
    """``labels`` (one class for all, or one per sample) as a list of ``n``, checked against a
    model with ``num_classes`` classes (None: not class-conditional)."""
    if labels is None:
        return None
    if num_classes is None:
        raise ConfigError("this model is not class-conditional; drop the class labels")
    labels = [labels] * n if isinstance(labels, int) else list(labels)
    bad = [y for y in labels if not 0 <= int(y) < num_classes]
    if bad:
        raise ConfigError(f"class {bad[0]} is out of range: this model has classes 0..{num_classes - 1}")
    if len(labels) != n:
        raise ConfigError(f"got {len(labels)} labels for {n} samples")
    return labels


__all__ = ["FAMILIES", "Family", "LoadedRun", "PipelineBase", "RUN_REFERENCES", "Reconstructor", "SampleOption", "TrainContext",
           "TrainParts", "check_labels", "register"]
