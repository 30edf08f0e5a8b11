"""Latent diffusion (Rombach et al. 2022): a diffusion or flow run that trains and samples in the
latent space of a frozen autoencoder run, ``latent.autoencoder: RUN_DIR``.

- The latent section: ``channels`` and ``factor`` shape an autoencoder run's latent; a diffusion
  run names its ``autoencoder`` (a composed run: config.json records its path and weights'
  sha256, loading checks both), whether it trains on the posterior ``mean`` or a fresh
  ``posterior`` draw each time an item is served, and the ``scale_factor``: 1 / std of the
  training latents over the **whole** training set (not a first batch), computed once and
  recorded in config.json so the latents the network sees have unit std.
- ``latent_training_data``: the training set as latents, encoded once by the frozen encoder and
  cached under $GENMODELS_CACHE/latents (keyed by the encoder's weights and the data), so training
  never runs the encoder per step.
- ``LatentSpace``: encode images to scaled latents and decode back; the diffusion pipeline decodes
  at the end of sampling and encodes ``init_images``, so every sampler, guidance wrapper and
  editing tool works on latents unchanged.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..config import register_section
from ..errors import ConfigError
from ..paths import cache_dir
from .base import RUN_REFERENCES

LATENT_MODES = ("mean", "posterior")
REQUIRED = "required"  # what a shipped latent config holds in latent.autoencoder
CACHE_VERSION = 1


@dataclass
class LatentConfig:
    """The latent space: an autoencoder run's shape (``channels``, ``factor``); a latent
    diffusion run's frozen ``autoencoder`` and how it reads it."""

    channels: int = 4  # autoencoder runs: latent channels
    factor: int = 4  # autoencoder runs: downsampling factor f (2, 4, 8): 64 px -> 16x16 at f = 4
    autoencoder: str | None = None  # diffusion / flow runs: the frozen autoencoder run to diffuse in
    sample: str = "mean"  # mean: the posterior mean | posterior: a fresh reparameterised draw per item served
    scale_factor: float | None = None  # filled in at training: 1 / std of the training latents

    CHOICES = {"sample": lambda: LATENT_MODES}
    POSITIVE = ("channels", "factor")

    def validate(self):
        if self.autoencoder == REQUIRED:  # a latent config as shipped: it names no autoencoder run yet
            raise ConfigError("latent.autoencoder is required: this config diffuses in the latent space of an "
                              "autoencoder run; train one first (e.g. genmodels train emoji-ae --out runs/emoji-ae) "
                              "and pass latent.autoencoder=runs/emoji-ae")
        if self.scale_factor is not None and not self.scale_factor > 0:
            raise ConfigError(f"latent.scale_factor must be > 0, got {self.scale_factor!r}")


register_section("latent", LatentConfig)
RUN_REFERENCES.append("latent.autoencoder")
BASE_FIELD = "latent.autoencoder"


@dataclass
class LatentSpace:
    """A frozen autoencoder pipeline and the scale that gives its latents unit std:
    ``encode(images) -> scale * mean`` (or a posterior draw), ``decode(z) -> images``."""

    autoencoder: object  # an AutoencoderPipeline
    scale: float

    @property
    def shape(self) -> tuple:
        return tuple(self.autoencoder.latent_shape)

    def encode(self, images, *, sample=False, generator=None) -> torch.Tensor:
        posterior = self.autoencoder.posterior(images)
        z = posterior.sample(generator) if sample else posterior.mean
        return z * self.scale

    def decode(self, z, *, batch_size=256) -> torch.Tensor:
        z = torch.as_tensor(z, dtype=torch.float32)
        return torch.cat([self.autoencoder.decode(z[i:i + batch_size] / self.scale)
                          for i in range(0, len(z), batch_size)])


def latent_space(cfg, bases: dict) -> LatentSpace | None:
    """The run's latent space from its loaded base runs (None for a pixel-space run)."""
    if not cfg.latent.autoencoder:
        return None
    if cfg.latent.scale_factor is None:
        raise ConfigError("latent.scale_factor is missing: this run's config.json was not written by training")
    return _space(cfg, bases[BASE_FIELD], cfg.latent.scale_factor)


def _space(cfg, base, scale) -> LatentSpace:
    from .loading import get_family

    if base.config.family != "autoencoder":
        raise ConfigError(f"latent.autoencoder '{cfg.latent.autoencoder}' is a {base.config.family} run; it must be "
                          "an autoencoder run (family: autoencoder, e.g. config emoji-ae)")
    return LatentSpace(get_family("autoencoder").load(base), float(scale))


def _cache_path(base, dataset) -> Path:
    """One cache file per (encoder weights, data): a retrained autoencoder or other data miss it."""
    h = hashlib.sha256()
    h.update(f"v{CACHE_VERSION}".encode())
    for value in base.modules.values():
        for key, t in sorted(value.state_dict().items()):
            h.update(key.encode())
            h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    h.update(dataset.x.contiguous().numpy().tobytes())
    return cache_dir() / "latents" / f"{h.hexdigest()[:32]}.safetensors"


@torch.inference_mode()
def encode_dataset(space: LatentSpace, dataset, base, *, progress=True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(mean, logvar) of the unscaled posterior of every item (logvar None for VQ), from the cache
    of ``base`` (the autoencoder's LoadedRun) and this data, or encoded and cached."""
    from safetensors import SafetensorError

    from ..progress import progress_bar
    from ..train.checkpoint import atomic_write

    path = _cache_path(base, dataset)
    if path.is_file():
        try:
            cached = load_file(str(path))
            return cached["mean"], cached.get("logvar")
        except (SafetensorError, OSError, KeyError):  # a damaged cache file costs only a re-encode
            pass
    means, logvars = [], []
    x = dataset.x.cpu()
    for start in progress_bar(range(0, len(x), 256), desc="encoding the training set to latents",
                              disable=not progress, leave=False):
        posterior = space.autoencoder.posterior(x[start:start + 256])
        means.append(posterior.mean.float().cpu())
        if posterior.logvar is not None:
            logvars.append(posterior.logvar.float().cpu())
    mean = torch.cat(means)
    logvar = torch.cat(logvars) if logvars else None
    tensors = {"mean": mean.contiguous(), **({"logvar": logvar.contiguous()} if logvar is not None else {})}
    try:
        atomic_write(path, lambda tmp: save_file(tensors, tmp))
    except OSError:  # an unwritable cache only costs encoding again next time
        pass
    return mean, logvar


def latent_std(mean: torch.Tensor, logvar: torch.Tensor | None, mode: str) -> float:
    """The std of what training sees: the means, or posterior draws, whose variance is the means'
    variance plus the average posterior variance (law of total variance; no sampling noise)."""
    var = mean.double().var()
    if mode == "posterior" and logvar is not None:
        var = var + logvar.double().exp().mean()
    return float(var.sqrt())


def latent_training_data(cfg, dataset, bases: dict, *, progress=True):
    """The training set as scaled latents (a Dataset of the latent shape, the labels and other
    conditioning kept), with ``cfg.latent.scale_factor`` filled in when unset; the pixel set when
    ``latent.autoencoder`` is unset."""
    if not cfg.latent.autoencoder:
        return dataset
    if dataset.kind != "image":
        raise ConfigError(f"latent diffusion needs an image dataset; '{cfg.data.name}' holds points")
    base = bases[BASE_FIELD]
    want = tuple(base.record["data_shape"])
    if tuple(dataset.shape) != want:
        raise ConfigError(f"latent.autoencoder '{cfg.latent.autoencoder}' was trained on images of shape {want}, "
                          f"but data '{cfg.data.name}' gives {tuple(dataset.shape)}; set data.image_size / "
                          "data.channels to match")
    scale = cfg.latent.scale_factor
    space = _space(cfg, base, 1.0)
    mean, logvar = encode_dataset(space, dataset, base, progress=progress)
    if scale is None:
        scale = 1.0 / latent_std(mean, logvar, cfg.latent.sample)
        cfg.latent.scale_factor = scale
    std = None
    if cfg.latent.sample == "posterior" and logvar is not None:
        std = (0.5 * logvar).exp() * scale
    return dataclasses.replace(dataset, x=(mean * scale).contiguous(), x_std=std, name=f"{dataset.name} latents")
