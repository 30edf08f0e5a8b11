"""The autoencoder of latent diffusion (Rombach et al. 2022; Esser et al. 2021): a conv encoder to
a latent of ``latent_channels`` at 1/``factor`` of the image side, and a decoder back.

``kind="kl"``: the encoder gives a diagonal Gaussian (mean, log-variance) and a small KL term
keeps the latent near N(0, I) in scale (the "KL-f4" / "KL-f8" autoencoders of Stable Diffusion);
``kind="vq"``: the encoder output is snapped to the nearest of ``codebook_size`` codes
(``genmodels.nn.quantize``, VQ-GAN), which a token model (VAR) can read.

    ae = Autoencoder(channels=3, image_size=64, latent_channels=4, factor=4)
    out = ae(x, generator=g)          # AEOutput: recon, reg [B] (KL or commitment), z, mean, logvar
    z = ae.encode(x).mean; x_hat = ae.decode(z)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from genmodels.errors import ConfigError
from genmodels.nn.layers import group_norm_act, zero_init

KINDS = ("kl", "vq")
LOGVAR_RANGE = (-30.0, 20.0)  # as in LDM's DiagonalGaussianDistribution: exp() stays finite


class Block(nn.Module):
    """GroupNorm-SiLU-conv3x3 twice with a residual path (the ResnetBlock of LDM's autoencoder,
    without the time embedding); the second conv starts at zero so each block starts as identity."""

    def __init__(self, c_in: int, c_out: int, *, groups: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(min(groups, c_in), c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.norm2 = nn.GroupNorm(min(groups, c_out), c_out)
        self.conv2 = zero_init(nn.Conv2d(c_out, c_out, 3, padding=1))
        self.skip = nn.Identity() if c_in == c_out else nn.Conv2d(c_in, c_out, 1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(group_norm_act(x, self.norm1))
        return self.skip(x) + self.conv2(group_norm_act(h, self.norm2))


@dataclass
class Posterior:
    """q(z | x) of a KL autoencoder (``logvar`` None for VQ: the code is deterministic)."""

    mean: Tensor
    logvar: Tensor | None = None

    @property
    def std(self) -> Tensor:
        return torch.exp(0.5 * self.logvar)

    def sample(self, generator=None) -> Tensor:
        """z = mean + std * eps: the reparameterization trick (Kingma & Welling 2014)."""
        if self.logvar is None:
            return self.mean
        eps = torch.randn(self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype)
        return self.mean + self.std * eps

    def kl(self) -> Tensor:
        """KL(q || N(0, I)) per sample [B], summed over the latent's elements (closed form)."""
        return 0.5 * (self.mean.square() + self.logvar.exp() - 1.0 - self.logvar).flatten(1).sum(1)


@dataclass
class AEOutput:
    recon: Tensor  # [B, C, H, W]
    reg: Tensor  # [B]: the KL (kl) or the quantizer's commitment (+ codebook) loss (vq)
    z: Tensor  # the latent the decoder saw
    posterior: Posterior
    quantized: object = None  # vq: the quantizer's output (indices, perplexity)


class Autoencoder(nn.Module):
    """Encoder: conv_in, then per level ``blocks`` Blocks and a stride-2 conv (log2 ``factor``
    levels), a middle Block, GroupNorm-SiLU, conv to 2 ``latent_channels`` (kl: mean, logvar) or
    ``latent_channels`` (vq). The decoder mirrors it with nearest-neighbour upsampling."""

    def __init__(self, *, channels: int = 3, image_size: int = 64, latent_channels: int = 4, factor: int = 4,
                 kind: str = "kl", base_channels: int = 32, channel_mult: tuple = (1, 2, 2), blocks: int = 1,
                 norm_groups: int = 8, codebook_size: int = 512, beta: float = 0.25, codebook_ema: bool = True):
        super().__init__()
        if kind not in KINDS:
            raise ConfigError(f"autoencoder kind must be one of {', '.join(KINDS)}, got {kind!r}")
        levels = int(math.log2(factor)) if factor >= 1 else -1
        if factor < 1 or 2**levels != factor:
            raise ConfigError(f"latent.factor must be a power of two (1, 2, 4, 8), got {factor}")
        if image_size % factor:
            raise ConfigError(f"image size {image_size} is not divisible by latent.factor {factor}")
        mult = tuple(channel_mult)
        if len(mult) != levels + 1:
            mult = tuple(mult[min(i, len(mult) - 1)] for i in range(levels + 1))  # one width per level
        self.channels, self.image_size, self.latent_channels = channels, image_size, latent_channels
        self.factor, self.kind = factor, kind
        self.latent_shape = (latent_channels, image_size // factor, image_size // factor)
        widths = [base_channels * m for m in mult]
        g = norm_groups

        enc = [nn.Conv2d(channels, widths[0], 3, padding=1)]
        for i in range(levels + 1):
            c_prev = widths[max(i - 1, 0)]
            enc += [Block(c_prev if b == 0 else widths[i], widths[i], groups=g) for b in range(blocks)]
            if i < levels:
                enc.append(nn.Conv2d(widths[i], widths[i], 3, stride=2, padding=1))
        enc.append(Block(widths[-1], widths[-1], groups=g))
        self.encoder = nn.Sequential(*enc)
        self.enc_norm = nn.GroupNorm(min(g, widths[-1]), widths[-1])
        self.enc_out = nn.Conv2d(widths[-1], latent_channels * (2 if kind == "kl" else 1), 3, padding=1)

        dec = [nn.Conv2d(latent_channels, widths[-1], 3, padding=1), Block(widths[-1], widths[-1], groups=g)]
        for i in reversed(range(levels + 1)):
            c_in = widths[min(i + 1, levels)]
            dec += [Block(c_in if b == 0 else widths[i], widths[i], groups=g) for b in range(blocks)]
            if i > 0:
                dec += [nn.Upsample(scale_factor=2.0, mode="nearest"), nn.Conv2d(widths[i], widths[i], 3, padding=1)]
        self.decoder = nn.Sequential(*dec)
        self.dec_norm = nn.GroupNorm(min(g, widths[0]), widths[0])
        self.dec_out = nn.Conv2d(widths[0], channels, 3, padding=1)  # the adaptive GAN weight's layer

        self.quantizer = None
        if kind == "vq":
            from genmodels.nn.quantize import VectorQuantizer

            self.quantizer = VectorQuantizer(num_codes=codebook_size, dim=latent_channels, beta=beta,
                                             ema=codebook_ema)

    @property
    def last_layer(self) -> nn.Parameter:
        """The decoder's last weight: Esser et al.'s adaptive weight compares gradient norms here."""
        return self.dec_out.weight

    def _check(self, x: Tensor) -> None:
        want = (self.channels, self.image_size, self.image_size)
        if x.ndim != 4 or tuple(x.shape[1:]) != want:
            raise ValueError(f"Autoencoder expected images [B, {', '.join(map(str, want))}], got {list(x.shape)}")

    def encode(self, x: Tensor) -> Posterior:
        """q(z | x): the Gaussian's mean and log-variance (kl), or the encoder's output before
        quantization as ``mean`` (vq)."""
        self._check(x)
        h = self.enc_out(group_norm_act(self.encoder(x), self.enc_norm))
        if self.kind == "vq":
            return Posterior(h)
        mean, logvar = h.chunk(2, dim=1)
        return Posterior(mean, logvar.clamp(*LOGVAR_RANGE))

    def quantize(self, z: Tensor):
        """vq: the quantizer's output for encoder outputs ``z`` (identity for kl: None)."""
        return None if self.quantizer is None else self.quantizer(z)

    def decode(self, z: Tensor) -> Tensor:
        """Images for latents ``z`` [B, latent_channels, h, w] (vq: already quantized codes)."""
        if z.ndim != 4 or tuple(z.shape[1:]) != self.latent_shape:
            raise ValueError(f"Autoencoder.decode expected latents [B, {', '.join(map(str, self.latent_shape))}], "
                             f"got {list(z.shape)}")
        return self.dec_out(group_norm_act(self.decoder(z), self.dec_norm))

    def forward(self, x: Tensor, *, generator=None) -> AEOutput:
        """Encode, draw z (kl) or quantize (vq), decode: the whole pass, so DDP syncs its gradients."""
        posterior = self.encode(x)
        if self.kind == "kl":
            z = posterior.sample(generator)
            return AEOutput(self.decode(z), posterior.kl(), z, posterior)
        q = self.quantizer(posterior.mean)
        return AEOutput(self.decode(q.z_q), q.loss, q.z_q, posterior, q)
