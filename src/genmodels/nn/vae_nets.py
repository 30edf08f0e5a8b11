"""VAE bodies: a Gaussian encoder q(z|x) = N(mu, diag exp(logvar)) and a decoder whose output
holds the likelihood's parameters (Kingma & Welling 2014).

Both nets share the interface the VAE family and, later, latent diffusion rely on:
``encode(x) -> (mu, logvar)`` with x [B, C, H, W] in [-1, 1] and mu, logvar [B, latent_dim];
``decode(z) -> params`` [B, params_per_channel * C, H, W], the likelihood's parameters stacked
along the channels (Bernoulli: logits; Gaussian / logistic: means, then log-scales).
``forward(x, generator=)`` runs both with one reparameterized sample between them, so that
DistributedDataParallel, which syncs gradients through ``forward``, sees the whole pass.
"""

import torch
from torch import Tensor, nn

from genmodels.errors import ConfigError


def _check_positive(cls, **values):
    for name, value in values.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"{cls} {name} must be a positive integer, got {value!r}")


class _VAE(nn.Module):
    def _check_input(self, x: Tensor) -> None:
        if tuple(x.shape[1:]) != self.image_shape:
            raise ValueError(f"{type(self).__name__} expected images of shape [B, {', '.join(map(str, self.image_shape))}], "
                             f"got {list(x.shape)}")

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        self._check_input(x)
        mu, logvar = self.encoder(x).chunk(2, dim=1)
        return mu, logvar

    def decode(self, z: Tensor) -> Tensor:
        if z.ndim != 2 or z.shape[1] != self.latent_dim:
            raise ValueError(f"{type(self).__name__}.decode expected latents of shape [B, {self.latent_dim}], "
                             f"got {list(z.shape)}")
        return self.decoder(z)

    def forward(self, x: Tensor, *, generator=None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(mu, logvar, z, decoder params) with z = mu + exp(logvar / 2) * eps, eps ~ N(0, I):
        the reparameterization trick (Kingma & Welling 2014, Sec. 2.4)."""
        mu, logvar = self.encode(x)
        eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        z = mu + torch.exp(0.5 * logvar) * eps
        return mu, logvar, z, self.decode(z)


class MLPVAE(_VAE):
    """Fully connected encoder and decoder, ``depth`` hidden layers of width ``hidden`` with
    SiLU units (the architecture family of Kingma & Welling 2014 and Burda et al. 2016)."""

    def __init__(self, *, in_channels: int = 1, image_size: int = 28, latent_dim: int = 16,
                 hidden: int = 512, depth: int = 2, params_per_channel: int = 1):
        super().__init__()
        _check_positive("MLPVAE", in_channels=in_channels, image_size=image_size, latent_dim=latent_dim,
                        hidden=hidden, depth=depth, params_per_channel=params_per_channel)
        self.image_shape = (in_channels, image_size, image_size)
        self.latent_dim = latent_dim
        d = in_channels * image_size * image_size

        def stack(n_in, n_out):
            layers, width = [], n_in
            for _ in range(depth):
                layers += [nn.Linear(width, hidden), nn.SiLU()]
                width = hidden
            return layers + [nn.Linear(width, n_out)]

        self.encoder = nn.Sequential(nn.Flatten(), *stack(d, 2 * latent_dim))
        self.decoder = nn.Sequential(*stack(latent_dim, params_per_channel * d),
                                     nn.Unflatten(1, (params_per_channel * in_channels, image_size, image_size)))


class ConvVAE(_VAE):
    """Two stride-2 convolutions down (28 -> 14 -> 7), a linear layer to (mu, logvar), and the
    mirror image up with transposed convolutions; ``base_channels`` then twice that."""

    def __init__(self, *, in_channels: int = 1, image_size: int = 28, latent_dim: int = 16,
                 base_channels: int = 32, hidden: int = 256, params_per_channel: int = 1):
        super().__init__()
        _check_positive("ConvVAE", in_channels=in_channels, image_size=image_size, latent_dim=latent_dim,
                        base_channels=base_channels, hidden=hidden, params_per_channel=params_per_channel)
        if image_size % 4:
            raise ConfigError(f"ConvVAE image_size {image_size} is not divisible by 4, its downsampling "
                              f"factor; use data.image_size={image_size - image_size % 4 or 4}")
        self.image_shape = (in_channels, image_size, image_size)
        self.latent_dim = latent_dim
        c, s = base_channels, image_size // 4
        act = nn.SiLU
        self.encoder = nn.Sequential(
            nn.Conv2d(in_channels, c, 4, stride=2, padding=1), act(),
            nn.Conv2d(c, 2 * c, 4, stride=2, padding=1), act(),
            nn.Flatten(), nn.Linear(2 * c * s * s, hidden), act(), nn.Linear(hidden, 2 * latent_dim))
        self.decoder = nn.Sequential(
            nn.Linear(latent_dim, hidden), act(), nn.Linear(hidden, 2 * c * s * s), act(),
            nn.Unflatten(1, (2 * c, s, s)),
            nn.ConvTranspose2d(2 * c, c, 4, stride=2, padding=1), act(),
            nn.ConvTranspose2d(c, params_per_channel * in_channels, 4, stride=2, padding=1))
