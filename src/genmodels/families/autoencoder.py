"""The autoencoder family (``family: autoencoder``): the first stage of latent diffusion. A conv
encoder / decoder (``genmodels.nn.autoencoder``, KL or VQ) trained by two phases of the shared
trainer: the autoencoder step (reconstruction + perceptual + regulariser + the adaptive GAN term)
and, from ``ae.disc_start_images`` on, the PatchGAN discriminator step; an EMA of the autoencoder.

    >>> ae = genmodels.load("runs/emoji-ae")
    >>> z = ae.encode(images)                 # [N, 4, 16, 16] posterior means (64 px, f = 4)
    >>> x = ae.decode(z); ae.reconstruct(images)
    >>> ae.reconstruction_scores(test_images) # psnr, rfd_cnn, latent_std (+ code_usage for VQ)

A diffusion or flow run names it as ``latent.autoencoder: RUN_DIR`` (``genmodels.families.latent``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..build import fill_option
from ..config import register_section
from ..errors import ConfigError, DataError
from ..images import save_grid
from ..nn import build_from
from ..nn.autoencoder import KINDS, Autoencoder
from ..nn.gan import DISCRIMINATORS
from ..objectives.autoencoder import REC_LOSSES, AutoencoderObjective, FeatureMatching
from ..train.distributed import Dist
from ..train.trainer import Phase
from .base import Family, LoadedRun, PipelineBase, Reconstructor, TrainContext, TrainParts, register

PERCEPTUAL = ("auto", "feature_cnn", "discriminator", "none")


@dataclass
class AEConfig:
    """The autoencoder's losses and its discriminator (``genmodels.objectives.autoencoder``); its
    latent's shape is the ``latent`` section's ``channels`` and ``factor``."""

    kind: str = "kl"  # kl (diagonal Gaussian + KL, Stable Diffusion's) | vq (codebook, VQ-GAN's)
    rec_loss: str = "l1"  # l1 | l2
    kl_weight: float = 1e-6  # LDM's KL weight (KL summed over the latent, per pixel)
    # feature_cnn: distance in the dataset feature CNN's features | discriminator: in D's features
    # | none; auto: feature_cnn where the dataset has one (mnist, fashion, digits, emoji)
    perceptual: str = "auto"
    perceptual_weight: float = 1.0
    disc_weight: float = 0.5  # times the adaptive weight (Esser et al. 2021, Eq. 7)
    disc_start_images: int = 50_000  # the GAN terms switch on after this many training images
    adaptive_weight: bool = True
    disc_lr_scale: float = 1.0  # the discriminator's lr is train.lr times this
    codebook_size: int = 512  # vq
    beta: float = 0.25  # vq: commitment weight
    codebook_ema: bool = True  # vq: EMA codebook updates (else a codebook loss)
    discriminator: dict = field(default_factory=lambda: {"base_channels": 32})  # PatchGAN options

    CHOICES = {"kind": lambda: KINDS, "rec_loss": lambda: REC_LOSSES, "perceptual": lambda: PERCEPTUAL}
    POSITIVE = ("codebook_size", "disc_lr_scale")


register_section("ae", AEConfig)


def perceptual_module(cfg, D, device):
    """The perceptual distance ``ae.perceptual`` names: the frozen dataset feature CNN's features,
    D's own features (always available), or None."""
    from ..metrics.features import RECIPES, dataset_feature_cnn

    kind = cfg.ae.perceptual
    if kind == "auto":
        kind = "feature_cnn" if cfg.data.name in RECIPES else "discriminator"
    if kind == "none" or cfg.ae.perceptual_weight == 0:
        return None
    if kind == "discriminator":
        return FeatureMatching(D.net, name="discriminator features")
    if cfg.data.name not in RECIPES:
        raise ConfigError(f"ae.perceptual=feature_cnn needs a dataset with a feature CNN ({', '.join(RECIPES)}), "
                          f"not '{cfg.data.name}'; use ae.perceptual=discriminator")
    net, _ = dataset_feature_cnn(cfg.data.name)
    net = net.to(device).eval().requires_grad_(False)
    return FeatureMatching(net.body, name=f"{cfg.data.name} feature CNN", size=net.config["image_size"],
                           channels=net.config["in_channels"])


class AutoencoderFamily(Family):
    name = "autoencoder"
    frozen_sections = ("ae", "latent")

    def network_options(self, cfg, dataset) -> dict:
        if cfg.model.network != "autoencoder":
            raise ConfigError(f"family 'autoencoder' trains model.network=autoencoder, not '{cfg.model.network}'")
        if dataset.kind != "image":
            raise ConfigError(f"an autoencoder needs image data; '{cfg.data.name}' holds points")
        options, data = dict(cfg.model.options), f"dataset '{cfg.data.name}'"
        c, s, _ = dataset.shape
        fill_option(options, "channels", c, source=data)
        fill_option(options, "image_size", s, source=data)
        fill_option(options, "latent_channels", cfg.latent.channels, source="latent.channels")
        fill_option(options, "factor", cfg.latent.factor, source="latent.factor")
        fill_option(options, "kind", cfg.ae.kind, source="ae.kind")
        if cfg.ae.kind == "vq":
            for key in ("codebook_size", "beta", "codebook_ema"):
                fill_option(options, key, getattr(cfg.ae, key), source=f"ae.{key}")
        d = dict(cfg.ae.discriminator)
        for key, value in (("channels", c), ("image_size", s), ("cond_channels", 0)):
            fill_option(d, key, value, source=data, where="ae.discriminator")
        cfg.ae.discriminator = d
        return options

    def build(self, cfg, options: dict) -> dict:
        self.objective(cfg)  # a bad ae section fails before any weights are drawn
        return {"ae": build_from({"autoencoder": Autoencoder}, "autoencoder", options, what="model.network"),
                "D": build_from(DISCRIMINATORS, "patch", cfg.ae.discriminator, what="ae.discriminator")}

    @staticmethod
    def objective(cfg, **parts) -> AutoencoderObjective:
        a = cfg.ae
        return AutoencoderObjective(rec_loss=a.rec_loss, kl_weight=a.kl_weight, perceptual_weight=a.perceptual_weight,
                                    disc_weight=a.disc_weight, disc_start_images=a.disc_start_images,
                                    adaptive=a.adaptive_weight,
                                    codebook_size=a.codebook_size if a.kind == "vq" else 0, **parts)

    def training(self, ctx: TrainContext) -> TrainParts:
        cfg, t = ctx.cfg, ctx.cfg.train
        ae, D = ctx.modules["ae"], ctx.modules["D"]
        objective = self.objective(cfg, perceptual=perceptual_module(cfg, D, ctx.device),
                                   images_seen=lambda: ctx.images_seen())  # set after training()
        ae_train, D_train = ctx.wrap(ae), ctx.wrap(D)

        def ae_step(batch, generator):
            b = ctx.to_device(batch)
            with ctx.autocast_context():
                return objective.ae_loss(ae_train, D, b, generator=generator, last_layer=ae.last_layer)

        def d_step(batch, generator):
            b = ctx.to_device(batch)
            with ctx.autocast_context():
                return objective.d_loss(ae, D_train, b, generator=generator)

        clip = math.inf if t.grad_clip is None else t.grad_clip  # the norms are logged either way
        phases = [Phase("ae", ae_train, ae_step, ctx.adamw(ae.parameters()), clip),
                  Phase("D", D_train, d_step, ctx.adamw(D.parameters(), lr=t.lr * cfg.ae.disc_lr_scale), clip,
                        active=objective.gan_active)]
        ema = ctx.ema("ae")
        averaged = AutoencoderPipeline(None, cfg, ema.module, tuple(ctx.dataset.shape), (), ctx.device)

        def preview(png_path):
            """Rows: 8 training images, their reconstructions by the EMA weights."""
            x = ctx.dataset.x[:8].float().cpu()
            save_grid(torch.cat([x, averaged.reconstruct(x)]), png_path, nrow=8, scale=2)

        return TrainParts(phases, {"ae": ema}, preview=preview)

    def load(self, run: LoadedRun) -> AutoencoderPipeline:
        return AutoencoderPipeline(run.run_dir, run.config, run.modules["ae"], run.data_shape, run.class_names,
                                   run.device)


@dataclass
class AutoencoderPipeline(PipelineBase, Reconstructor):
    """A trained autoencoder: ``posterior`` / ``encode`` / ``decode`` / ``reconstruct`` (images
    [-1, 1] NCHW, on the CPU), ``codes`` (VQ), and ``sample(n)``: it has no prior, so its samples
    are the reconstructions of the first n held-out images (what ``genmodels eval`` scores:
    fd_cnn against the reference set; ``reconstruction_scores`` for PSNR and rFD)."""

    run_dir: Path | None
    config: object
    net: torch.nn.Module
    data_shape: tuple
    class_names: tuple
    device: torch.device
    family_name = "autoencoder"
    net_num_classes = None

    @property
    def own_metrics(self) -> tuple:
        return ("psnr", "rfd_cnn", "latent_std") + (("code_usage",) if self.net.quantizer is not None else ())

    @property
    def latent_shape(self) -> tuple:
        return tuple(self.net.latent_shape)

    @property
    def kind(self) -> str:
        return self.net.kind

    def _images(self, x) -> torch.Tensor:
        x = torch.as_tensor(x, dtype=torch.float32)
        if x.ndim == 3:
            x = x[None]
        if tuple(x.shape[1:]) != tuple(self.data_shape):
            raise DataError(f"images of shape {tuple(x.shape[1:])} do not fit this autoencoder's "
                            f"{tuple(self.data_shape)} (C, H, W)")
        return x

    @torch.inference_mode()
    def posterior(self, x, *, batch_size=256):
        """q(z | x) of images ``x``: ``Posterior(mean, logvar)`` on the CPU (logvar None for VQ)."""
        from ..nn.autoencoder import Posterior

        x = self._images(x)
        parts = [self.net.encode(x[i:i + batch_size].to(self.device)) for i in range(0, len(x), batch_size)]
        mean = torch.cat([p.mean.float().cpu() for p in parts])
        logvar = None if parts[0].logvar is None else torch.cat([p.logvar.float().cpu() for p in parts])
        return Posterior(mean, logvar)

    def encode(self, x) -> torch.Tensor:
        """Latents of images ``x``: the posterior means (VQ: the encoder outputs before quantization)."""
        return self.posterior(x).mean

    @torch.inference_mode()
    def codes(self, x) -> torch.Tensor:
        """VQ: the code indices [N, h, w] of images ``x``."""
        if self.net.quantizer is None:
            raise ConfigError("codes need a VQ autoencoder (ae.kind=vq); this one is KL")
        return self.net.quantizer(self.encode(x).to(self.device)).indices.cpu()

    @torch.inference_mode()
    def decode(self, z, *, batch_size=256) -> torch.Tensor:
        """Images for latents ``z`` [N, *latent_shape] (VQ: snapped to the codebook first), in
        [-1, 1] on the CPU."""
        z = torch.as_tensor(z, dtype=torch.float32)
        if z.ndim != 4 or tuple(z.shape[1:]) != self.latent_shape:
            raise ConfigError(f"latents must have shape [N, {', '.join(map(str, self.latent_shape))}], "
                              f"got {list(z.shape)}")
        out = []
        for i in range(0, len(z), batch_size):
            part = z[i:i + batch_size].to(self.device)
            if self.net.quantizer is not None:
                part = self.net.quantizer(part).z_q
            out.append(self.net.decode(part).float().cpu())
        return torch.cat(out).clamp(-1, 1)

    def inputs(self, x) -> torch.Tensor:
        return self._images(x)

    def reconstruct(self, x) -> torch.Tensor:
        return self.decode(self.encode(x))

    # ---- the pipeline contract -----------------------------------------------------------------
    def sample_settings(self, **given) -> dict:
        named = sorted(k for k, v in given.items() if v is not None)
        if named:
            raise ConfigError(f"an autoencoder reconstructs in one pass; {', '.join(named)} do(es) not apply")
        return {}

    def _test_images(self, n: int) -> torch.Tensor:
        from ..data import load_dataset

        data = self.config.data
        test = load_dataset(data.name, split="test", image_size=data.image_size, channels=data.channels)
        return test.x[torch.arange(n) % len(test)]

    def sample(self, n=64, *, seed=0, labels=None, cond=None, batch_size=64, progress=False, dist: Dist = Dist(),
               **options) -> torch.Tensor:
        """Reconstructions of the first ``n`` held-out images (an autoencoder has no prior;
        ``seed`` does not matter: the posterior mean is decoded)."""
        self.sample_settings(**options)
        if labels is not None or cond:
            raise ConfigError("an autoencoder reconstructs images; it takes no labels or conditioning")
        if n < 1:
            raise ConfigError(f"n must be >= 1, got {n}")
        x = self._test_images(n)
        return dist.map_batches(n, batch_size, lambda sl: self.reconstruct(x[sl]))

    def reconstruction_scores(self, x, *, features=None, progress=False) -> dict:
        """On held-out images ``x``: PSNR (dB, images in [0, 1]), L1, rFD (fd_cnn of the
        reconstructions against ``x`` in the dataset feature CNN, where there is one), the std
        of the latents and, for VQ, the share of the codebook used."""
        from ..metrics.features import RECIPES, feature_net
        from ..metrics.frechet import fd

        x = self._images(x)
        recon = self.reconstruct(x)
        scores = {"psnr": psnr(x, recon).mean().item(), "rec_l1": (x - recon).abs().mean().item(),
                  "latent_std": self.encode(x).std().item()}
        if self.net.quantizer is not None:
            scores["code_usage"] = torch.unique(self.codes(x)).numel() / self.net.quantizer.num_codes
        name = features or (self.config.data.name if self.config.data.name in RECIPES else None)
        if name is not None:
            net = feature_net(name, progress=progress)
            scores["rfd_cnn"] = fd(net.features(x, convert=True), net.features(recon, convert=True))
        return scores


def psnr(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio per image in dB, for images in [-1, 1] read as [0, 1]."""
    mse = ((x - y) / 2).square().flatten(1).mean(1)
    return 10 * torch.log10(1.0 / mse.clamp(min=1e-12))


register(AutoencoderFamily())
