"""Build the pieces of a run from its config: device, network, path, parameterization, objective.

Shared by training and loading (``genmodels.families``) so a run directory rebuilds exactly what
was trained.
"""

import torch

from .diffusion import NetDenoiser, build_path, get_parameterization
from .errors import ConfigError
from .nn import build_network
from .objectives import DiffusionObjective, NoisyClassifierObjective


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' was asked for but torch sees no CUDA GPU; use --device cpu")
    if name not in ("cpu", "cuda"):
        raise ConfigError(f"unknown device '{name}'; allowed: auto, cpu, cuda")
    return torch.device(name)


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``train.precision``, None for plain fp32. ``auto`` is bf16 on CUDA
    and fp32 on the CPU, where bf16 autocast trained 1.5-2.5x slower (docs/BENCHMARKS.md)."""
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    if precision not in ("fp32", "bf16"):
        raise ConfigError(f"unknown precision '{precision}'; allowed: auto, fp32, bf16")
    return torch.bfloat16 if precision == "bf16" else None


IMAGE_NETWORKS = ("unet", "noisy_classifier", "vae_mlp", "vae_conv")


def network_options(cfg, data_shape, num_classes: int) -> dict:
    """The model options with the data-dependent ones filled in (what config.json records)."""
    options = dict(cfg.model.options)
    if cfg.model.network in IMAGE_NETWORKS:
        if len(data_shape) != 3:
            raise ConfigError(f"network '{cfg.model.network}' needs image data, but dataset '{cfg.data.name}' has "
                              f"items of shape {tuple(data_shape)}; use model.network=mlp")
        source = f"dataset '{cfg.data.name}'"
        fill_option(options, "in_channels", data_shape[0], source=source)
        fill_option(options, "image_size", data_shape[1], source=source)
    elif cfg.model.network == "mlp":
        if len(data_shape) != 1:
            raise ConfigError(f"network 'mlp' needs vector data, but dataset '{cfg.data.name}' has "
                              f"items of shape {tuple(data_shape)}; use model.network=unet")
        fill_option(options, "dim", data_shape[0], source=f"dataset '{cfg.data.name}'")
    text = getattr(cfg, "text", None)
    if text is not None and text.captions and cfg.model.network == "unet":  # text-to-image
        fill_option(options, "context_dim", 384, source="the text section (MiniLM's width)")
        if text.encoder == "learned":
            fill_option(options, "text_encoder_layers", text.encoder_layers, source="text.encoder_layers")
    if options.get("num_classes") == "auto":  # class-conditional on the dataset's labels
        if not num_classes:
            raise ConfigError(f"model.num_classes=auto but dataset '{cfg.data.name}' has no labels")
        options["num_classes"] = num_classes
    return options


def fill_option(options: dict, key: str, value, *, source: str, where: str = "model") -> None:
    """Set ``options[key]`` to what ``source`` (the data, another config section) dictates; a
    different value the user gave under ``where`` is an error naming both."""
    given = options.setdefault(key, value)
    if given != value:
        raise ConfigError(f"{where}.{key} is {given!r} but {source} gives {value!r}; remove {where}.{key} "
                          f"or change {source} to match")


def cond_dropout(cfg) -> dict:
    """The diffusion section's per-key classifier-free-guidance dropout rates, with
    ``label_dropout`` as the rate of ``y``."""
    rates = dict(cfg.diffusion.cond_dropout)
    if cfg.diffusion.label_dropout:
        if "y" in rates:
            raise ConfigError("diffusion.label_dropout and diffusion.cond_dropout.y both set the label's rate; keep one")
        rates["y"] = cfg.diffusion.label_dropout
    return rates


def diffusion_parts(cfg, options: dict):
    """(path, param, objective) of a diffusion run, its config checked. The objective's ``null``
    is bound to the network by the family (it does not exist yet here)."""
    path = build_path(cfg.diffusion)
    # a consistency function's boundary is the path's smallest level, where samplers' grids end
    sigma_min = float(path.to_sigma(torch.tensor(path.t_min, dtype=torch.float64)))
    param = get_parameterization(cfg.diffusion.prediction, sigma_data=cfg.diffusion.sigma_data, sigma_min=sigma_min)
    rates = cond_dropout(cfg)  # the family checks them against the keys its network reads
    if param.name == "velocity" and cfg.diffusion.path != "rectified_flow":
        raise ConfigError("diffusion.prediction=velocity is the straight path's; use "
                          "diffusion.path=rectified_flow (or prediction eps | x0 | v)")
    objective = DiffusionObjective(path, param, cfg.diffusion.min_snr_gamma, rates, None, cfg.diffusion.coupling)
    return path, param, objective


def classifier_parts(cfg):
    """(path, None, objective) of a noise-aware classifier run: no parameterization."""
    if cfg.model.network != "noisy_classifier":
        raise ConfigError(f"family 'classifier' trains model.network=noisy_classifier, not "
                          f"'{cfg.model.network}'")
    path = build_path(cfg.diffusion)
    return path, None, NoisyClassifierObjective(path)


def build_diffusion(cfg, options: dict):
    """(net, path, param, objective) of a diffusion run; the net is built on the CPU."""
    net = build_network(cfg.model.network, **options)
    return (net, *diffusion_parts(cfg, options))


def make_denoiser(net, path, param) -> NetDenoiser:
    return NetDenoiser(net, path, param)
