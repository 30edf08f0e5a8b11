"""Run configuration: dataclasses loaded from YAML, overridable as ``key.sub=value``.

Every field is validated eagerly, and a bad field is reported by its dotted name with the allowed
values, so a typo fails before any data is loaded:

    >>> load_config("configs/mnist-ddpm.yaml", ["train.lr=1e-3", "model.base_channels=48"])
"""

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .errors import ConfigError


@dataclass
class DataConfig:
    name: str = "mnist"  # mnist | fashion | digits | 8gaussians | ... | folder:PATH
    image_size: int | None = None  # None: the dataset's own size
    channels: int | None = None  # folder datasets: 1 (grayscale) or 3 (RGB)
    skip_bad: bool = False  # skip unreadable image files with a warning instead of failing
    n_points: int = 20000  # toy 2-D sets: how many points to draw


@dataclass
class ModelConfig:
    """``network`` picks the class in genmodels.nn; every other key is passed to it."""

    network: str = "unet"
    options: dict = field(default_factory=dict)


@dataclass
class DiffusionConfig:
    path: str = "ddpm"  # ddpm (discrete, T steps) | vp, ve (continuous SDEs) | rectified_flow (x_t = (1-t) x0 + t noise)
    schedule: str = "linear"  # ddpm beta schedule: linear | cosine
    timesteps: int = 1000
    beta_start: float = 1e-4  # linear ddpm schedule
    beta_end: float = 0.02
    beta_min: float = 0.1  # continuous vp path
    beta_max: float = 20.0
    sigma_min: float = 0.01  # ve path: sigma(t) = sigma_min (sigma_max / sigma_min)^t
    sigma_max: float = 50.0  # ve path: about the largest distance between data points
    prediction: str = "eps"  # what the network predicts: eps | x0 | v | score | edm | velocity (rectified flow)
    sigma_data: float = 0.5  # edm preconditioning: the data's standard deviation
    # training times: uniform | logit_normal, max (rectified flow) | log_normal (vp, ve: EDM's sigma density)
    t_sampling: str = "uniform"
    p_mean: float = -1.2  # log_normal: ln sigma ~ N(p_mean, p_std^2)
    p_std: float = 1.2
    coupling: str = "independent"  # noise-data pairing per batch: independent | ot (exact) | sinkhorn
    min_snr_gamma: float | None = None  # Min-SNR-gamma loss weighting (Hang et al. 2023); None = plain MSE
    label_dropout: float = 0.0  # class-conditional nets: P(label -> null class), for classifier-free guidance


@dataclass
class VAEConfig:
    """The VAE family's objective (genmodels.objectives.vae); the nets are model.network
    vae_mlp | vae_conv with latent_dim, hidden, ..."""

    likelihood: str = "bernoulli"  # bernoulli (binarized pixels) | gaussian (dequantized density) | logistic | discretized_gaussian (8-bit bins)
    binarize: str = "stochastic"  # bernoulli: stochastic (fresh draw per batch, fixed draw for eval) | threshold (> 1/2)
    beta: float = 1.0  # weight of the KL term (beta-VAE); 1 = the ELBO
    kl_warmup_images: int = 0  # KL weight ramps linearly 0 -> beta over this many training images
    free_bits: float = 0.0  # nats per latent unit the KL term never asks below (0 = off)


@dataclass
class GANConfig:
    """The GAN family's losses and regularisers (genmodels.objectives.gan) and its discriminator."""

    loss: str = "non_saturating"  # minimax (saturating) | non_saturating | lsgan | wgan | hinge
    z_dim: int = 64
    n_critic: int = 1  # discriminator steps per generator step (WGAN-GP: 5)
    gp_weight: float = 0.0  # WGAN-GP's lambda (Gulrajani et al.: 10)
    r1_gamma: float = 0.0  # R1 penalty gamma / 2 * |grad D(real)|^2 (Mescheder et al. 2018)
    diffaugment: str = ""  # comma-separated DiffAugment policy: color,translation,cutout
    style_mixing: float = 0.0  # StyleGAN: probability of a style-mixed batch (0.9 in the paper)
    l1_weight: float = 0.0  # Pix2Pix: weight of |G(cond) - x|_1 (100 in the paper)
    d_lr_scale: float = 1.0  # the discriminator's learning rate is train.lr times this (TTUR)
    grow_images: int | None = None  # progressive growing: images per fade-in and per stable stage
    discriminator: dict = field(default_factory=lambda: {"network": "dcgan"})  # network + its options


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


@dataclass
class Config:
    family: str = "diffusion"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    vae: VAEConfig = field(default_factory=VAEConfig)
    gan: GANConfig = field(default_factory=GANConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)


# Closed sets of values, checked when a config is built. Names of samplers and networks are
# checked by their own registries, which know the full list.
CHOICES = {
    "family": ("diffusion", "classifier", "vae", "gan"),
    "diffusion.path": ("ddpm", "vp", "ve", "rectified_flow"),
    "diffusion.t_sampling": ("uniform", "logit_normal", "max", "log_normal"),
    "diffusion.coupling": ("independent", "ot", "sinkhorn"),
    "diffusion.schedule": ("linear", "cosine"),
    "diffusion.prediction": ("eps", "x0", "v", "score", "edm", "velocity"),
    "vae.likelihood": ("bernoulli", "gaussian", "logistic", "discretized_gaussian"),
    "vae.binarize": ("stochastic", "threshold"),
    "gan.loss": ("minimax", "non_saturating", "lsgan", "wgan", "hinge"),
    "train.device": ("auto", "cpu", "cuda"),
    "train.precision": ("auto", "fp32", "bf16"),
}
POSITIVE = {
    "diffusion.timesteps", "diffusion.sigma_min", "diffusion.sigma_max", "diffusion.sigma_data",
    "diffusion.p_std", "train.batch_size", "train.grad_accum", "train.lr", "train.images",
    "train.log_every_images", "train.sample_every_images", "train.checkpoint_every_images",
    "train.eval_every_images", "train.eval_n",
    "sample.steps", "sample.n", "data.n_points", "gan.z_dim", "gan.n_critic", "gan.grow_images",
    "gan.d_lr_scale",
}


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
    else:  # pragma: no cover - a field type this module does not know is a programming error
        raise TypeError(f"unsupported config type {annotation} for {key}")
    kind = getattr(annotation, "__name__", str(annotation))
    raise ConfigError(f"config field '{key}' must be {kind}, got {value!r}")


def _build(cls, values: dict, prefix: str):
    """Build dataclass ``cls`` from a dict, naming unknown keys and bad values by dotted path."""
    if not isinstance(values, dict):
        raise ConfigError(f"config section '{prefix.rstrip('.')}' must be a mapping, got {values!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    if cls is ModelConfig:  # every key but 'network' is an option of the network class
        values = dict(values)
        return ModelConfig(network=_coerce(values.pop("network", "unet"), str, prefix + "network"),
                           options=values)
    kwargs = {}
    for key, value in values.items():
        dotted = prefix + key
        if key not in names:
            raise ConfigError(f"unknown config key '{dotted}'; allowed keys in "
                              f"'{prefix.rstrip('.') or 'the top level'}': {', '.join(names)}")
        if dataclasses.is_dataclass(hints[key]):
            kwargs[key] = _build(hints[key], value or {}, dotted + ".")
        else:
            kwargs[key] = _coerce(value, hints[key], dotted)
    return cls(**kwargs)


def validate(cfg: Config) -> Config:
    flat = to_dict(cfg)
    for key, allowed in CHOICES.items():
        value = _lookup(flat, key)
        if value not in allowed:
            raise ConfigError(f"config field '{key}' is {value!r}; allowed values: {', '.join(allowed)}")
    for key in POSITIVE:
        value = _lookup(flat, key)
        if value is not None and value <= 0:
            raise ConfigError(f"config field '{key}' must be positive, got {value!r}")
    if cfg.train.minutes is not None and cfg.train.minutes <= 0:
        raise ConfigError(f"config field 'train.minutes' must be positive, got {cfg.train.minutes!r}")
    if cfg.data.channels not in (None, 1, 3):
        raise ConfigError(f"config field 'data.channels' is {cfg.data.channels!r}; allowed values: 1, 3")
    for key in ("beta", "kl_warmup_images", "free_bits"):
        if getattr(cfg.vae, key) < 0:
            raise ConfigError(f"config field 'vae.{key}' must be >= 0, got {getattr(cfg.vae, key)!r}")
    if not 0.0 <= cfg.sample.eta <= 1.0:
        raise ConfigError(f"config field 'sample.eta' must lie in [0, 1], got {cfg.sample.eta!r}")
    return cfg


def _lookup(flat: dict, dotted: str):
    node = flat
    for part in dotted.split("."):
        node = node[part]
    return node


def to_dict(cfg: Config) -> dict:
    """Plain nested dict, with the model options flattened next to 'network' as in YAML."""
    out = dataclasses.asdict(cfg)
    model = out.pop("model")
    out["model"] = {"network": model["network"], **model["options"]}
    return out


def from_dict(values: dict) -> Config:
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
