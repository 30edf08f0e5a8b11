"""Run configuration: dataclasses loaded from YAML, overridable as ``key.sub=value``.

Every field is validated eagerly, and a bad field is reported by its dotted name with the allowed
values, so a typo fails before any data is loaded:

    >>> load_config("configs/mnist-ddpm.yaml", ["train.lr=1e-3", "model.base_channels=48"])

The core sections (family, data, model, train, sample) live here; every other section belongs to
the code that reads it and is registered with ``register_section`` (the diffusion, vae and gan
sections by their families). A section is a dataclass; its class attributes ``CHOICES``
(field -> callable giving the allowed values, usually a registry's keys), ``POSITIVE`` (fields
that must be > 0) and an optional ``validate(self)`` method check it. ``CHOICES`` here is built
from those and from ``register_choices`` (the family names come from the family registry).
"""

import dataclasses
import importlib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import yaml

from .errors import ConfigError


@dataclass
class DataConfig:
    name: str = "mnist"  # mnist | fashion | digits | 8gaussians | ... | folder:PATH
    image_size: int | None = None  # None: the dataset's own size
    channels: int | None = None  # folder datasets: 1 (grayscale) or 3 (RGB)
    skip_bad: bool = False  # skip unreadable image files with a warning instead of failing
    n_points: int = 20000  # toy 2-D sets: how many points to draw
    # class indices left out of the training split (held-out classes, e.g. anomaly detection)
    exclude_classes: list[int] = field(default_factory=list)


@dataclass
class ModelConfig:
    """``network`` picks the class in genmodels.nn; every other key is passed to it, except
    ``base``: a run directory whose frozen modules this model builds on (ControlNet, LoRA), recorded
    with its weights' sha256 in config.json (a composed run)."""

    network: str = "unet"
    base: str | None = None
    options: dict = field(default_factory=dict)


@dataclass
class TrainConfig:
    batch_size: int = 64  # the global batch: images per optimizer step over all processes
    grad_accum: int = 1  # micro-batches per step and process (batch_size / (processes x grad_accum) each)
    lr: float = 2e-4
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    warmup_images: int = 0  # linear learning-rate warm-up
    grad_clip: float | None = 1.0  # max global gradient norm; None = no clipping
    init_from: str | None = None  # start from these weights (a run directory's EMA, or a .safetensors file)
    ema_halflife_images: float = 50_000.0  # EMA half-life counted in training images (EDM)
    ema_rampup: float | None = 0.05  # half-life <= rampup * images seen, so early EMA is not stale
    images: int = 1_000_000  # stop after this many training images ...
    minutes: float | None = None  # ... or after this much wall-clock time, whichever comes first
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    channels_last: bool = True
    precision: str = "auto"  # auto (bf16 autocast on CUDA, fp32 on the CPU, where bf16 measured slower) | fp32 | bf16
    log_every_images: int = 3200
    sample_every_images: int = 50_000
    checkpoint_every_images: int = 50_000
    eval_every_images: int | None = None  # "proxy" fd_cnn/KID (toy: W2/MMD) rows in metrics.jsonl; None = off
    eval_n: int = 500  # samples per proxy evaluation


@dataclass
class SampleConfig:
    """Defaults for the grids the trainer and the demo draw."""

    sampler: str = "ddim"
    steps: int = 50
    eta: float = 0.0
    n: int = 64
    spacing: str | None = None  # the noise grid (None: the path's default); a distilled run's is the one it learned


SECTIONS: dict[str, type] = {}  # section name -> dataclass, filled by register_section
# Modules that register the built-in sections, families and choices; imported on first use, so
# this module stays below them (they import it, it never imports them).
PLUGINS = ["genmodels.families"]


def register_section(name: str, cls: type) -> type:
    """Make ``name`` a config section built from dataclass ``cls`` (its defaults when absent)."""
    if name in ("family", "data", "model", "train", "sample", "sections"):
        raise ValueError(f"'{name}' is a core config section")
    SECTIONS[name] = cls
    return cls


def _load_plugins() -> None:
    for module in PLUGINS:
        importlib.import_module(module)


@dataclass
class Config:
    """A run's configuration: the core sections, and ``sections`` (one instance per registered
    section, reachable as attributes: ``cfg.diffusion``)."""

    family: str = "diffusion"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    sections: dict = field(default_factory=dict)

    def __post_init__(self):
        _load_plugins()
        for name, cls in SECTIONS.items():
            self.sections.setdefault(name, cls())

    def __getattr__(self, name):  # only reached when normal lookup fails: the registered sections
        sections = self.__dict__.get("sections", {})
        if name in sections:
            return sections[name]
        raise AttributeError(f"config has no section '{name}'; sections: {', '.join(sections)}")


CORE_CHOICES = {
    "train.device": lambda: ("auto", "cpu", "cuda"),
    "train.precision": lambda: ("auto", "fp32", "bf16"),
}
_CHOICE_PROVIDERS: dict[str, Callable[[], tuple]] = {}
CORE_POSITIVE = {
    "train.batch_size", "train.grad_accum", "train.lr", "train.images", "train.log_every_images",
    "train.sample_every_images", "train.checkpoint_every_images", "train.eval_every_images", "train.eval_n",
    "sample.steps", "sample.n", "data.n_points",
}


class _Choices(Mapping):
    """``CHOICES["family"]``: a read-only view of ``choices()``, computed when read, so a family,
    path or loss registered later is included."""

    def __getitem__(self, key):
        return choices()[key]

    def __iter__(self):
        return iter(choices())

    def __len__(self):
        return len(choices())


def register_choices(key: str, provider: Callable[[], tuple]) -> None:
    """The allowed values of dotted field ``key`` come from ``provider()`` (e.g. a registry's keys)."""
    _CHOICE_PROVIDERS[key] = provider


def choices() -> dict[str, tuple]:
    """Every closed set of values a config is checked against, by dotted field name: the core
    ones, those registered, and each section's ``CHOICES``."""
    _load_plugins()
    out = {k: tuple(f()) for k, f in {**CORE_CHOICES, **_CHOICE_PROVIDERS}.items()}
    for name, cls in SECTIONS.items():
        out.update({f"{name}.{k}": tuple(f()) for k, f in getattr(cls, "CHOICES", {}).items()})
    return out


def positive_fields() -> set[str]:
    _load_plugins()
    return CORE_POSITIVE | {f"{name}.{k}" for name, cls in SECTIONS.items() for k in getattr(cls, "POSITIVE", ())}


CHOICES = _Choices()


def _coerce(value, annotation, key):
    """Check ``value`` against a field's type annotation, converting int -> float where natural."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(annotation)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0])
    if annotation is bool:
        if isinstance(value, bool):
            return value
    elif annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif annotation is str:
        if isinstance(value, str):
            return value
    elif annotation is dict or origin is dict:
        if isinstance(value, dict):
            return value
    elif annotation is list or origin is list:
        if isinstance(value, (list, tuple)):
            args = typing.get_args(annotation)
            if not args:  # a bare list: any items
                return list(value)
            return [_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
    else:  # pragma: no cover - a field type this module does not know is a programming error
        raise TypeError(f"unsupported config type {annotation} for {key}")
    kind = getattr(annotation, "__name__", str(annotation))
    raise ConfigError(f"config field '{key}' must be {kind}, got {value!r}")


def _build(cls, values: dict, prefix: str):
    """Build dataclass ``cls`` from a dict, naming unknown keys and bad values by dotted path."""
    if not isinstance(values, dict):
        raise ConfigError(f"config section '{prefix.rstrip('.')}' must be a mapping, got {values!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.name != "sections"]
    if cls is ModelConfig:  # every key but 'network' and 'base' is an option of the network class
        values = dict(values)
        return ModelConfig(network=_coerce(values.pop("network", "unet"), str, prefix + "network"),
                           base=_coerce(values.pop("base", None), str | None, prefix + "base"), options=values)
    sections = SECTIONS if cls is Config else {}
    kwargs, built = {}, {}
    for key, value in values.items():
        dotted = prefix + key
        if key in sections:
            built[key] = _build(sections[key], value or {}, dotted + ".")
            continue
        if key not in names:
            allowed = names + list(sections)
            raise ConfigError(f"unknown config key '{dotted}'; allowed keys in "
                              f"'{prefix.rstrip('.') or 'the top level'}': {', '.join(allowed)}")
        if dataclasses.is_dataclass(hints[key]):
            kwargs[key] = _build(hints[key], value or {}, dotted + ".")
        else:
            kwargs[key] = _coerce(value, hints[key], dotted)
    if cls is Config:
        kwargs["sections"] = built
    return cls(**kwargs)


def validate(cfg: Config) -> Config:
    flat = to_dict(cfg)
    for key, allowed in choices().items():
        value = _lookup(flat, key)
        if value not in allowed:
            raise ConfigError(f"config field '{key}' is {value!r}; allowed values: {', '.join(allowed)}")
    for key in positive_fields():
        value = _lookup(flat, key)
        if value is not None and value <= 0:
            raise ConfigError(f"config field '{key}' must be positive, got {value!r}")
    if cfg.train.minutes is not None and cfg.train.minutes <= 0:
        raise ConfigError(f"config field 'train.minutes' must be positive, got {cfg.train.minutes!r}")
    if cfg.data.channels not in (None, 1, 3):
        raise ConfigError(f"config field 'data.channels' is {cfg.data.channels!r}; allowed values: 1, 3")
    if any(k < 0 for k in cfg.data.exclude_classes):
        raise ConfigError(f"config field 'data.exclude_classes' holds a negative class: {cfg.data.exclude_classes}")
    if not 0.0 <= cfg.sample.eta <= 1.0:
        raise ConfigError(f"config field 'sample.eta' must lie in [0, 1], got {cfg.sample.eta!r}")
    for section in cfg.sections.values():
        if hasattr(section, "validate"):
            section.validate()
    return cfg


def _lookup(flat: dict, dotted: str):
    node = flat
    for part in dotted.split("."):
        node = node[part]
    return node


def to_dict(cfg: Config) -> dict:
    """Plain nested dict, with the model options flattened next to 'network' as in YAML, and the
    registered sections between the model and train sections."""
    model = dataclasses.asdict(cfg.model)
    out = {"family": cfg.family, "data": dataclasses.asdict(cfg.data),
           "model": {"network": model["network"], **({"base": model["base"]} if model["base"] else {}),
                     **model["options"]}}
    out.update({name: dataclasses.asdict(section) for name, section in cfg.sections.items()})
    out.update(train=dataclasses.asdict(cfg.train), sample=dataclasses.asdict(cfg.sample))
    return out


def from_dict(values: dict) -> Config:
    _load_plugins()  # the registered sections must be known before the values are read
    return validate(_build(Config, values, ""))


def parse_override(text: str) -> tuple[list[str], object]:
    """``train.lr=1e-3`` -> (["train", "lr"], 0.001); values are read as YAML scalars/lists."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' is not of the form key.sub=value, e.g. train.lr=1e-3")
    key, raw = text.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"override '{text}' has an empty key part")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"override '{text}': value is not valid YAML ({e.problem})") from None
    return parts, value


def apply_overrides(values: dict, overrides: list[str]) -> dict:
    values = _deep_copy(values)
    for text in overrides:
        parts, value = parse_override(text)
        node = values
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{text}': '{part}' is not a section")
        node[parts[-1]] = value
    return values


def _deep_copy(values: dict) -> dict:
    return {k: _deep_copy(v) if isinstance(v, dict) else v for k, v in values.items()}


CONFIG_DIR = Path(__file__).parent / "configs"


def resolve_config_path(name_or_path: str) -> Path:
    """A YAML path, or the name of a bundled config such as ``mnist-ddpm``."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    bundled = CONFIG_DIR / f"{path.stem}.yaml"
    if path.suffix in ("", ".yaml", ".yml") and bundled.is_file() and len(path.parts) == 1:
        return bundled
    names = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")))
    raise ConfigError(f"config file '{name_or_path}' not found; bundled configs: {names}")


def load_config(name_or_path: str | None, overrides: list[str] = ()) -> Config:
    values = {}
    if name_or_path is not None:
        path = resolve_config_path(name_or_path)
        try:
            values = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from None
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections")
    return from_dict(apply_overrides(values, list(overrides)))
