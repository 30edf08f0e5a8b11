"""The image denoiser body: a DDPM/ADM-style U-Net (Ho et al. 2020; Dhariwal & Nichol 2021).

``UNet(x, c_noise, y)`` maps noisy images ``x [B, C, H, W]`` and their noise-level conditioning
``c_noise [B]`` (a DDPM timestep in [0, 1000) or any float the parameterization chooses) to a
tensor of the same spatial shape; what that output means (eps, x0, v, velocity) is decided by the
parameterization in ``genmodels.diffusion``, never here.

The defaults are ADM's layout at 1.4M parameters; the demo config uses a leaner, faster one
(timings of both against diffusers' UNet2DModel: docs/BENCHMARKS.md, benchmarks/nn_speed.py).
"""

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from genmodels.errors import ConfigError
from genmodels.nn.fused import group_norm_act, output_conv
from genmodels.nn.layers import (
    Downsample,
    ResBlock,
    SelfAttention2d,
    Upsample,
    timestep_embedding,
    zero_init,
)



class _Stage(nn.Module):
    """One residual block, followed by self-attention at the resolutions that ask for it."""

    def __init__(self, res: ResBlock, attn: SelfAttention2d | None):
        super().__init__()
        self.res = res
        self.attn = attn

    def forward(self, h: Tensor, emb: Tensor) -> Tensor:
        h = self.res(h, emb)
        return h if self.attn is None else self.attn(h)


class UNet(nn.Module):
    """ADM U-Net: ``len(channel_mult)`` levels of ``num_res_blocks`` residual blocks, halving the
    side length between levels; a middle block (res, attention, res) at the lowest resolution; an
    up path with ``num_res_blocks + 1`` blocks per level, each fed the matching down-path
    activation through a skip connection.

    ``extra_up_block=False`` drops ADM's extra up block per level (the one fed by the ``conv_in``
    and downsample outputs): the up path then mirrors the down path. On CPU this trains ~25 %
    more images per second at the same loss per image seen (docs/BENCHMARKS.md).

    ``attn_resolutions`` are feature-map side lengths (28 -> 14 -> 7 for 28x28 input and three
    levels). With ``num_classes`` set, a class embedding of ``num_classes + 1`` rows is added to
    the time embedding; row ``num_classes`` is the null class used by classifier-free guidance
    and by ``y=None``.
    """

    def __init__(self, *, in_channels: int = 1, out_channels: int | None = None, image_size: int = 28,
                 base_channels: int = 32, channel_mult: Sequence[int] = (1, 2, 2),
                 num_res_blocks: int = 1, attn_resolutions: Sequence[int] = (7,), num_heads: int = 4,
                 dropout: float = 0.0, num_classes: int | None = None, norm_groups: int = 8,
                 extra_up_block: bool = True):
        super().__init__()
        channel_mult = tuple(channel_mult)
        attn_resolutions = tuple(attn_resolutions)
        out_channels = in_channels if out_channels is None else out_channels
        _validate(in_channels=in_channels, out_channels=out_channels, image_size=image_size,
                  base_channels=base_channels, channel_mult=channel_mult,
                  num_res_blocks=num_res_blocks, attn_resolutions=attn_resolutions,
                  num_heads=num_heads, dropout=dropout, num_classes=num_classes,
                  norm_groups=norm_groups)
        self.in_channels, self.out_channels, self.image_size = in_channels, out_channels, image_size
        self.num_classes = num_classes
        self.extra_up_block = extra = bool(extra_up_block)

        # Time embedding: sinusoids, then a 2-layer MLP to 4x their width (ADM). ADM ties the
        # widths to base_channels; the floor keeps >= 32 frequencies when the first level is thin.
        self.freq_dim = max(base_channels, 64)
        emb_dim = 4 * self.freq_dim
        self.time_embed = nn.Sequential(
            nn.Linear(self.freq_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.class_embed = None if num_classes is None else nn.Embedding(num_classes + 1, emb_dim)

        block = dict(emb_dim=emb_dim, dropout=dropout, norm_groups=norm_groups)
        attn = dict(num_heads=num_heads, norm_groups=norm_groups)

        self.conv_in = nn.Conv2d(in_channels, base_channels, 3, padding=1)
        self.down = nn.ModuleList()
        skip_channels = [base_channels] if extra else []
        ch, res = base_channels, image_size
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                self.down.append(_Stage(ResBlock(ch, base_channels * mult, **block),
                                        SelfAttention2d(base_channels * mult, **attn)
                                        if res in attn_resolutions else None))
                ch = base_channels * mult
                skip_channels.append(ch)
            if level < len(channel_mult) - 1:
                self.down.append(Downsample(ch))
                if extra:
                    skip_channels.append(ch)
                res //= 2

        self.mid = nn.ModuleList([ResBlock(ch, ch, **block), SelfAttention2d(ch, **attn),
                                  ResBlock(ch, ch, **block)])

        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for _ in range(num_res_blocks + extra):
                self.up.append(_Stage(ResBlock(ch + skip_channels.pop(), base_channels * mult, **block),
                                      SelfAttention2d(base_channels * mult, **attn)
                                      if res in attn_resolutions else None))
                ch = base_channels * mult
            if level > 0:
                self.up.append(Upsample(ch, base_channels * channel_mult[level - 1]))
                ch = base_channels * channel_mult[level - 1]
                res *= 2

        self.norm_out = nn.GroupNorm(norm_groups, ch)
        self.conv_out = zero_init(nn.Conv2d(ch, out_channels, 3, padding=1))

    def forward(self, x: Tensor, c_noise: Tensor, y: Tensor | None = None) -> Tensor:
        expected = (self.in_channels, self.image_size, self.image_size)
        if x.ndim != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(f"UNet expected input of shape [B, {', '.join(map(str, expected))}], "
                             f"got {list(x.shape)}; check in_channels / image_size of the network "
                             f"against the data")
        emb = self.time_embed(timestep_embedding(_per_sample(c_noise, x.shape[0]), self.freq_dim))
        emb = emb + _class_embedding(self.class_embed, self.num_classes, y, x.shape[0], x.device)

        h = self.conv_in(x)
        hs = [h] if self.extra_up_block else []
        for module in self.down:
            h = module(h, emb)
            if self.extra_up_block or isinstance(module, _Stage):
                hs.append(h)
        for module in self.mid:
            h = module(h, emb)
        for module in self.up:
            if not isinstance(module, Upsample):
                h = torch.cat([h, hs.pop()], dim=1)
            h = module(h, emb)
        return output_conv(group_norm_act(h, self.norm_out), self.conv_out)


def _per_sample(c_noise: Tensor | float, batch: int) -> Tensor:
    """Accept one c_noise per image, or one shared scalar (broadcast)."""
    c_noise = torch.as_tensor(c_noise)
    if c_noise.ndim == 0:
        return c_noise.expand(batch)
    if tuple(c_noise.shape) != (batch,):
        raise ValueError(f"c_noise must have shape [{batch}] (one value per image) or be a scalar, "
                         f"got {list(c_noise.shape)}")
    return c_noise


def _class_embedding(table: nn.Embedding | None, num_classes: int | None, y: Tensor | None,
                     batch: int, device: torch.device) -> Tensor | float:
    """Embedding of the class labels ``y [B]``; ``y=None`` selects the null class ``num_classes``."""
    if table is None:
        if y is not None:
            raise ValueError("class labels y were given but the network is unconditional; "
                             "build it with num_classes=<number of classes> or pass y=None")
        return 0.0
    if y is None:
        y = torch.full((batch,), num_classes, dtype=torch.long, device=device)
    elif tuple(y.shape) != (batch,) or y.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"y must be an integer tensor of shape [{batch}], "
                         f"got {y.dtype} of shape {list(y.shape)}")
    return table(y)


def _validate(*, in_channels, out_channels, image_size, base_channels, channel_mult,
              num_res_blocks, attn_resolutions, num_heads, dropout, num_classes, norm_groups):
    """Check the constructor arguments eagerly, so a bad config fails with advice, not deep inside
    torch at the first forward pass."""
    for name, value in [("in_channels", in_channels), ("out_channels", out_channels),
                        ("image_size", image_size), ("base_channels", base_channels),
                        ("num_res_blocks", num_res_blocks), ("num_heads", num_heads),
                        ("norm_groups", norm_groups)]:
        if not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    if not channel_mult or not all(isinstance(m, int) and m >= 1 for m in channel_mult):
        raise ConfigError(f"channel_mult must be a non-empty list of positive integers, "
                          f"got {list(channel_mult)}")
    if not 0.0 <= dropout < 1.0:
        raise ConfigError(f"dropout must be in [0, 1), got {dropout}")
    if num_classes is not None and (not isinstance(num_classes, int) or num_classes < 1):
        raise ConfigError(f"num_classes must be a positive integer or None, got {num_classes!r}")

    levels = len(channel_mult)
    factor = 2 ** (levels - 1)
    if image_size % factor:
        lower, upper = image_size // factor * factor, (image_size // factor + 1) * factor
        use = f"{lower} or {upper}" if lower > 0 else str(upper)
        raise ConfigError(
            f"image_size {image_size} is not divisible by {factor}, the UNet's downsampling factor "
            f"(2**{levels - 1} for channel_mult of length {levels}); use {use}")

    for mult in sorted(set(channel_mult)) + [1]:  # [1]: conv_in's base_channels
        channels = base_channels * mult
        if channels % norm_groups:
            raise ConfigError(
                f"{channels} channels (base_channels {base_channels} x channel_mult {mult}) are not "
                f"divisible by norm_groups {norm_groups}; pick base_channels as a multiple of "
                f"{norm_groups} or change norm_groups")

    resolutions = [image_size // 2**level for level in range(levels)]
    missing = [r for r in attn_resolutions if r not in resolutions]
    if missing:
        raise ConfigError(f"attn_resolutions {missing} never occur in this UNet; the feature-map "
                          f"side lengths are {resolutions}")
    attn_channels = [base_channels * m for m, r in zip(channel_mult, resolutions) if r in attn_resolutions]
    for channels in attn_channels + [base_channels * channel_mult[-1]]:  # + the middle block
        if channels % num_heads:
            raise ConfigError(f"{channels} attention channels are not divisible by num_heads "
                              f"{num_heads}; change num_heads or base_channels")
