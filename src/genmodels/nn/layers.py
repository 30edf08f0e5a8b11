"""Building blocks shared by the denoiser networks: noise-level embedding, residual block,
self-attention, cross-attention, down- and up-sampling.

Shapes: images are ``[B, C, H, W]``; ``emb`` is the per-image conditioning vector ``[B, emb_dim]``
(time embedding plus optional class embedding). Every block works in either memory format
(contiguous NCHW or ``torch.channels_last``) without forcing copies.
"""

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genmodels.nn.fused import group_norm_act
from genmodels.nn.upsample_conv import nearest_up_conv3x3


def timestep_embedding(c_noise: Tensor, dim: int, *, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding of the noise level, DDPM (Ho et al. 2020, sec. B) after the
    Transformer's positional encoding: ``[cos(c * f_i), sin(c * f_i)]`` with
    ``f_i = max_period ** (-i / half)``. Applied to ``c_noise [B]`` as given (a DDPM timestep in
    [0, T) or EDM's ``ln(sigma) / 4``; the caller picks the scale). Returns ``[B, dim]``.
    """
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=c_noise.device) / half
    )
    args = c_noise.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:  # odd dim: pad so the caller always gets the width it asked for
        emb = F.pad(emb, (0, 1))
    return emb


def zero_init(module: nn.Module) -> nn.Module:
    """Zero a layer's weights and bias, so the residual branch it closes starts as identity
    (ADM, Dhariwal & Nichol 2021; EDM): early training is faster and more stable."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    """ADM residual block: GroupNorm-SiLU-conv3x3, conditioning, GroupNorm-SiLU-dropout-conv3x3,
    plus a 1x1 conv on the skip path when the channel count changes.

    The conditioning is ADM's scale-shift (``use_scale_shift_norm``):
    ``h = GroupNorm(h) * (1 + scale) + shift`` with ``(scale, shift) = Linear(SiLU(emb))``;
    it modulates the normalised features instead of only biasing them.
    """

    def __init__(self, in_channels: int, out_channels: int, *, emb_dim: int, dropout: float = 0.0,
                 norm_groups: int = 8):
        super().__init__()
        self.norm1 = nn.GroupNorm(norm_groups, in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.emb_proj = nn.Linear(emb_dim, 2 * out_channels)
        self.norm2 = nn.GroupNorm(norm_groups, out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = zero_init(nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip = (nn.Identity() if in_channels == out_channels
                     else nn.Conv2d(in_channels, out_channels, 1))

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(group_norm_act(x, self.norm1))
        scale, shift = self.emb_proj(F.silu(emb)).chunk(2, dim=1)
        h = self.conv2(self.dropout(group_norm_act(h, self.norm2, scale, shift)))
        return self.skip(x) + h


class SelfAttention2d(nn.Module):
    """Multi-head self-attention over the H*W positions of a feature map, pre-GroupNorm and
    residual (DDPM/ADM). Works on tokens ``[B, HW, C]`` with Linear layers: for channels_last
    input the flatten/transpose is free, and at 7x7 (49 tokens) the whole block is a few small
    matmuls plus one fused ``scaled_dot_product_attention`` call.
    """

    def __init__(self, channels: int, *, num_heads: int = 4, norm_groups: int = 8):
        super().__init__()
        self.num_heads = num_heads
        self.norm = nn.GroupNorm(norm_groups, channels)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = zero_init(nn.Linear(channels, channels))

    def forward(self, x: Tensor, emb: Tensor | None = None) -> Tensor:
        B, C, H, W = x.shape
        tokens = group_norm_act(x, self.norm, silu=False).flatten(2).transpose(1, 2)  # [B, HW, C]
        q, k, v = self.qkv(tokens).view(B, H * W, 3, self.num_heads, C // self.num_heads).permute(
            2, 0, 3, 1, 4)  # each [B, heads, HW, d]
        h = F.scaled_dot_product_attention(q, k, v)
        h = self.proj(h.transpose(1, 2).reshape(B, H * W, C))
        return x + h.transpose(1, 2).view(B, C, H, W)


class CrossAttention2d(nn.Module):
    """Multi-head attention from the H*W positions of a feature map to a context sequence
    ``[B, L, context_dim]`` (text token states), pre-GroupNorm and residual, as in the latent
    diffusion U-Net (Rombach et al. 2022, Sec. 3.3): Q from the image tokens, K and V from the
    context; ``mask [B, L]`` (True = a real token) hides padding. The output projection starts at
    zero, so a new block leaves the network's function unchanged.
    """

    def __init__(self, channels: int, context_dim: int, *, num_heads: int = 4, norm_groups: int = 8):
        super().__init__()
        self.num_heads = num_heads
        self.norm = nn.GroupNorm(norm_groups, channels)
        self.q = nn.Linear(channels, channels)
        self.kv = nn.Linear(context_dim, 2 * channels)
        self.proj = zero_init(nn.Linear(channels, channels))

    def forward(self, x: Tensor, context: Tensor, mask: Tensor | None = None) -> Tensor:
        B, C, H, W = x.shape
        heads, d = self.num_heads, C // self.num_heads
        tokens = group_norm_act(x, self.norm, silu=False).flatten(2).transpose(1, 2)  # [B, HW, C]
        q = self.q(tokens).view(B, H * W, heads, d).transpose(1, 2)  # [B, heads, HW, d]
        k, v = self.kv(context).view(B, context.shape[1], 2, heads, d).permute(2, 0, 3, 1, 4)
        attn_mask = None if mask is None else mask.bool()[:, None, None, :]  # [B, 1, 1, L]
        h = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        h = self.proj(h.transpose(1, 2).reshape(B, H * W, C))
        return x + h.transpose(1, 2).view(B, C, H, W)


class Downsample(nn.Module):
    """Halve the spatial size with a stride-2 3x3 conv (learned, cheaper than conv + pool)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: Tensor, emb: Tensor | None = None) -> Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Double the spatial size: nearest-neighbour then 3x3 conv (no checkerboard artefacts of
    transposed convs; Odena et al. 2016). The conv already maps to the finer level's channel
    count: at full resolution this halves the most expensive conv of the network. It runs as four
    2x2 convs at the coarse resolution (``upsample_conv``): the same function, half the FLOPs."""

    def __init__(self, in_channels: int, out_channels: int | None = None):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels or in_channels, 3, padding=1)

    def forward(self, x: Tensor, emb: Tensor | None = None) -> Tensor:
        return nearest_up_conv3x3(x, self.conv.weight, self.conv.bias)
