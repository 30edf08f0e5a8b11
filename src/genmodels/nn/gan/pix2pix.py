"""Pix2Pix (Isola et al. 2017): the U-Net generator and the PatchGAN discriminator, both reading
the input image ``cond["image"]``."""

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genmodels.cond import check_reads
from genmodels.nn.gan.common import _check_image, _conv, _levels, _positive


class UNetGenerator(nn.Module):
    """Pix2Pix's U-Net (Isola et al. 2017, sec. 3.2.1) for small images: encoder convs stride 2
    (s -> s/2 -> s/4), a bottleneck, decoder (nearest up + conv) with skip connections. Dropout
    in the decoder is the only noise (Pix2Pix found a z input ignored); it stays on at sampling
    when ``dropout_at_sampling``."""

    def __init__(self, *, in_channels: int = 1, channels: int = 1, image_size: int = 28,
                 base_channels: int = 32, dropout: float = 0.5, dropout_at_sampling: bool = False):
        super().__init__()
        _positive("in_channels", in_channels), _positive("channels", channels), _positive("base_channels", base_channels)
        _levels(image_size)
        self.in_channels, self.channels, self.image_size, self.num_classes = in_channels, channels, image_size, None
        self.cond_keys = frozenset(["image"])
        c = base_channels
        self.enc0 = nn.Conv2d(in_channels, c, 3, padding=1)
        self.enc1 = nn.Conv2d(c, 2 * c, 4, stride=2, padding=1)
        self.enc2 = nn.Conv2d(2 * c, 4 * c, 4, stride=2, padding=1)
        self.mid = nn.Conv2d(4 * c, 4 * c, 3, padding=1)
        self.dec2 = nn.Conv2d(8 * c, 2 * c, 3, padding=1)
        self.dec1 = nn.Conv2d(4 * c, c, 3, padding=1)
        self.out = nn.Conv2d(2 * c, channels, 3, padding=1)
        self.norms = nn.ModuleList([nn.BatchNorm2d(n) for n in (2 * c, 4 * c, 4 * c, 2 * c, c)])
        self.dropout, self.dropout_at_sampling = dropout, dropout_at_sampling

    def forward(self, cond):
        image = _input_image(self, cond)
        _check_image(self, image, self.in_channels, self.image_size)
        drop = self.dropout if (self.training or self.dropout_at_sampling) else 0.0
        n = self.norms
        e0 = F.leaky_relu(self.enc0(image), 0.2)
        e1 = F.leaky_relu(n[0](self.enc1(e0)), 0.2)
        e2 = F.leaky_relu(n[1](self.enc2(e1)), 0.2)
        h = F.dropout(F.relu(n[2](self.mid(e2))), drop, training=drop > 0)
        h = F.interpolate(torch.cat([h, e2], 1), scale_factor=2.0, mode="nearest")
        h = F.dropout(F.relu(n[3](self.dec2(h))), drop, training=drop > 0)
        h = F.interpolate(torch.cat([h, e1], 1), scale_factor=2.0, mode="nearest")
        h = F.relu(n[4](self.dec1(h)))
        return torch.tanh(self.out(torch.cat([h, e0], 1)))


class PatchDiscriminator(nn.Module):
    """PatchGAN (Pix2Pix sec. 3.2.2): D(x, cond) sees the pair stacked on channels and returns one
    logit per overlapping patch, [B, 1, s/4, s/4] (receptive field 16 px at 28x28: the L1 term
    handles the low frequencies, D the local sharpness). ``cond_channels=0``: unconditional,
    D(x) (the autoencoder family's discriminator, as in VQ-GAN)."""

    def __init__(self, *, channels: int = 1, cond_channels: int = 1, image_size: int = 28,
                 base_channels: int = 32, spectral_norm: bool = False):
        super().__init__()
        _positive("channels", channels), _positive("base_channels", base_channels)
        if cond_channels:
            _positive("cond_channels", cond_channels)
        _levels(image_size)
        self.channels, self.cond_channels, self.image_size, self.num_classes = channels, cond_channels, image_size, None
        self.cond_keys = frozenset(["image"] if cond_channels else [])
        c, sn = base_channels, spectral_norm
        self.net = nn.Sequential(
            _conv(channels + cond_channels, c, 4, stride=2, padding=1, sn=sn), nn.LeakyReLU(0.2),
            _conv(c, 2 * c, 4, stride=2, padding=1, sn=sn), nn.LeakyReLU(0.2),
            _conv(2 * c, 2 * c, 3, sn=sn), nn.LeakyReLU(0.2),
            _conv(2 * c, 1, 3, sn=sn))

    def forward(self, x, cond=None):
        _check_image(self, x, self.channels, self.image_size)
        if not self.cond_channels:
            check_reads(cond, self.cond_keys, who=type(self).__name__)
            return self.net(x)
        image = _input_image(self, cond)
        _check_image(self, image, self.cond_channels, self.image_size)
        return self.net(torch.cat([x, image], 1))


def _input_image(net, cond) -> Tensor:
    """Pix2Pix's input image, ``cond["image"]``."""
    cond = check_reads(cond, net.cond_keys, who=type(net).__name__)
    if "image" not in cond:
        raise ValueError(f"{type(net).__name__} translates cond['image'] (the input image); cond has {sorted(cond)}")
    return cond["image"]
