"""The autoencoder's losses (Esser et al. 2021, VQ-GAN; Rombach et al. 2022, LDM's KL autoencoder):
a pixel reconstruction term, a perceptual term, the regulariser (KL or VQ commitment) and a
PatchGAN hinge term whose weight adapts to the ratio of gradient norms at the decoder's last layer.

Per sample, with every term a mean over pixels (so weights keep LDM's meaning):

    L_ae = |x - x_hat|_1 (or squared) + w_p P(x, x_hat) + kl_weight KL / (C H W)   [kl]
                                                       + commitment (+ codebook)     [vq]
           + disc_weight * lambda * (-D(x_hat))                  once images >= disc_start
    lambda = ||grad_L L_rec|| / (||grad_L L_G|| + 1e-4), clamped to [0, 1e4], no gradient
    L_D  = relu(1 - D(x)) + relu(1 + D(x_hat))                   (hinge), same start

Two known bugs of diffusers' AutoencoderKL training script are avoided and tested: the perceptual
term is computed with gradient (under no_grad it trains nothing), and the discriminator's own
optimizer steps in its own phase.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from .gan import d_loss as gan_d_loss
from .gan import g_loss as gan_g_loss

REC_LOSSES = ("l1", "l2")
ADAPTIVE_MAX = 1e4  # Esser et al.'s clamp: a vanishing GAN gradient must not blow the weight up


class FeatureMatching(nn.Module):
    """A perceptual distance in a frozen network's features (LPIPS's recipe without its learned
    weights, which are not available offline): the activations after every ReLU of ``layers`` (an
    ``nn.Sequential``, up to its first Flatten), each unit-normalised over channels, squared
    difference averaged over channels and positions, then over layers. [B].

    Inputs are resized (bilinear) to ``size`` and their channels matched to ``channels`` (grey
    <-> RGB) first, so a feature CNN of another resolution still applies. The network's weights
    never train here, but the distance is differentiable in its inputs."""

    def __init__(self, layers: nn.Sequential, *, name: str, size: int | None = None, channels: int | None = None):
        super().__init__()
        self.layers, self.name, self.size, self.channels = layers, name, size, channels

    def _prepare(self, x: Tensor) -> Tensor:
        if self.channels is not None and x.shape[1] != self.channels:
            x = x.mean(1, keepdim=True) if self.channels == 1 else x.expand(-1, self.channels, -1, -1)
        if self.size is not None and x.shape[-1] != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False, antialias=False)
        return x

    def features(self, x: Tensor) -> list[Tensor]:
        out, h = [], self._prepare(x)
        for layer in self.layers:
            if isinstance(layer, nn.Flatten):
                break
            h = layer(h)
            if isinstance(layer, (nn.ReLU, nn.LeakyReLU)):
                out.append(h)
        if not out:
            raise ConfigError(f"perceptual network {self.name} has no ReLU layer before its Flatten")
        return out

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        total = 0.0
        fx, fy = self.features(x), self.features(y)
        for a, b in zip(fx, fy):
            a = a / (a.square().sum(1, keepdim=True).sqrt() + 1e-10)
            b = b / (b.square().sum(1, keepdim=True).sqrt() + 1e-10)
            total = total + (a - b).square().flatten(1).mean(1)
        return total / len(fx)


def adaptive_weight(rec_loss: Tensor, gan_loss: Tensor, last_layer: Tensor) -> Tensor:
    """Esser et al. 2021, Eq. 7: ||grad rec|| / (||grad gan|| + 1e-4) at ``last_layer``, clamped and
    detached: the GAN term pulls about as hard as the reconstruction, whatever their scales."""
    (g_rec,) = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)
    (g_gan,) = torch.autograd.grad(gan_loss, last_layer, retain_graph=True)
    return (g_rec.norm() / (g_gan.norm() + 1e-4)).clamp(0.0, ADAPTIVE_MAX).detach()


@dataclass
class AutoencoderObjective:
    """The two phases' losses (module docstring). ``perceptual(x, x_hat) -> [B]`` or None;
    ``images_seen()`` switches the GAN terms on at ``disc_start_images``."""

    rec_loss: str = "l1"
    kl_weight: float = 1e-6
    perceptual: Callable | None = None
    perceptual_weight: float = 1.0
    disc_weight: float = 0.5
    disc_start_images: int = 0
    adaptive: bool = True
    codebook_size: int = 0  # vq: the share of it each batch uses is logged as code_usage
    images_seen: Callable[[], int] = lambda: 0

    def __post_init__(self):
        if self.rec_loss not in REC_LOSSES:
            raise ConfigError(f"ae.rec_loss must be one of {', '.join(REC_LOSSES)}, got {self.rec_loss!r}")
        for name in ("kl_weight", "perceptual_weight", "disc_weight", "disc_start_images"):
            if getattr(self, name) < 0:
                raise ConfigError(f"ae.{name} must be >= 0, got {getattr(self, name)}")

    def gan_active(self) -> bool:
        return self.disc_weight > 0 and self.images_seen() >= self.disc_start_images

    def reconstruction(self, x: Tensor, recon: Tensor) -> Tensor:
        diff = (x.float() - recon.float())
        return (diff.abs() if self.rec_loss == "l1" else diff.square()).flatten(1).mean(1)

    def ae_loss(self, ae, D, batch, *, generator, last_layer):
        """The autoencoder phase: (loss [B], logs). ``last_layer``: the decoder's last weight."""
        x = batch["x"]
        out = ae(x, generator=generator)
        rec = self.reconstruction(x, out.recon)
        logs = {"rec": rec.detach()}
        nll = rec
        if self.perceptual is not None and self.perceptual_weight > 0:
            p = self.perceptual(x, out.recon)
            nll = nll + self.perceptual_weight * p
            logs["perceptual"] = p.detach()
        if out.quantized is None:  # KL per latent element summed, over pixels: LDM's ratio
            reg = self.kl_weight * out.reg / x[0].numel()
            logs["kl"] = out.reg.detach()
        else:
            reg = out.reg
            logs.update(commit=out.reg.detach(), perplexity=out.quantized.perplexity.detach())
            if self.codebook_size:
                used = torch.unique(out.quantized.indices).numel() / self.codebook_size
                logs["code_usage"] = torch.tensor(used, device=x.device)
        loss = nll + reg
        logs["latent_std"] = out.posterior.mean.detach().float().std()
        if self.gan_active():
            D.requires_grad_(False)  # D is trained in its own phase; here it only passes gradient to x_hat
            try:
                g = gan_g_loss("hinge", D(out.recon))
            finally:
                D.requires_grad_(True)
            weight = adaptive_weight(nll.mean(), g.mean(), last_layer) if self.adaptive else torch.ones(())
            loss = loss + self.disc_weight * weight * g
            logs.update(g_loss=g.detach(), adaptive_weight=weight)
        return loss, logs

    def d_loss(self, ae, D, batch, *, generator):
        """The discriminator phase: hinge loss on real images and reconstructions (no AE gradient)."""
        x = batch["x"]
        with torch.no_grad():
            recon = ae(x, generator=generator).recon
        real, fake = D(x), D(recon.detach())
        loss = gan_d_loss("hinge", real, fake)
        return loss, {"d_loss": loss.detach(), "d_real": real.detach().flatten(1).mean(1),
                      "d_fake": fake.detach().flatten(1).mean(1)}
