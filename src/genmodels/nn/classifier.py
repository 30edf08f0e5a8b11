"""A noise-aware classifier for classifier guidance (Dhariwal & Nichol 2021, Sec. 4): the UNet's
down path (residual blocks conditioned on the noise level), global average pooling, a linear head.
It sees what the denoiser sees: x_t and c_noise."""

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from genmodels.errors import ConfigError
from genmodels.nn.fused import group_norm_act
from genmodels.nn.layers import Downsample, ResBlock, timestep_embedding


class NoisyClassifier(nn.Module):
    def __init__(self, *, num_classes: int, in_channels: int = 1, image_size: int = 28,
                 base_channels: int = 32, channel_mult: Sequence[int] = (1, 2, 2), norm_groups: int = 8):
        super().__init__()
        if not isinstance(num_classes, int) or num_classes < 2:
            raise ConfigError(f"a classifier needs num_classes >= 2 (model.num_classes=auto takes the "
                              f"dataset's), got {num_classes!r}")
        if base_channels % norm_groups:
            raise ConfigError(f"model.base_channels ({base_channels}) must be a multiple of "
                              f"norm_groups ({norm_groups})")
        self.in_channels, self.image_size, self.num_classes = in_channels, image_size, num_classes
        self.freq_dim = max(base_channels, 64)
        emb_dim = 4 * self.freq_dim
        self.time_embed = nn.Sequential(nn.Linear(self.freq_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.conv_in = nn.Conv2d(in_channels, base_channels, 3, padding=1)
        blocks, ch = [], base_channels
        for level, mult in enumerate(channel_mult):
            blocks.append(ResBlock(ch, base_channels * mult, emb_dim=emb_dim, norm_groups=norm_groups))
            ch = base_channels * mult
            if level < len(channel_mult) - 1:
                blocks.append(Downsample(ch))
        self.blocks = nn.ModuleList(blocks)
        self.norm_out = nn.GroupNorm(norm_groups, ch)
        self.head = nn.Linear(ch, num_classes)

    def forward(self, x: Tensor, c_noise: Tensor) -> Tensor:
        c_noise = torch.as_tensor(c_noise, device=x.device)
        if c_noise.ndim == 0:
            c_noise = c_noise.expand(x.shape[0])
        emb = self.time_embed(timestep_embedding(c_noise, self.freq_dim))
        h = self.conv_in(x)
        for block in self.blocks:
            h = block(h, emb)
        return self.head(group_norm_act(h, self.norm_out).mean(dim=(2, 3)))
