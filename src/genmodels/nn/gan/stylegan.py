"""StyleGAN2 (Karras et al. 2020) for small images: mapping z -> w, modulated/demodulated
convolutions, per-layer noise, style mixing and truncation in w around a tracked w_avg."""

import math

import torch
import torch.nn.functional as F
from torch import nn

from genmodels.errors import ConfigError
from genmodels.cond import as_cond
from genmodels.nn.gan.common import EqualLinear, _check_labels, _cond_keys, _levels, _positive, _TextConditional


class ModulatedConv2d(nn.Module):
    """StyleGAN2 (Karras et al. 2020, Eq. 1-3): w'_ijk = s_i w_ijk (modulation by the style s of
    each input channel), then w''_ijk = w'_ijk / sqrt(sum_ik w'_ijk^2 + eps) (demodulation, which
    replaces AdaIN's instance norm). One grouped conv runs every sample with its own weight."""

    def __init__(self, in_channels, out_channels, kernel_size, *, w_dim, demodulate=True):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.scale = 1 / math.sqrt(in_channels * kernel_size * kernel_size)  # equalized lr
        self.affine = EqualLinear(w_dim, in_channels, bias_init=1.0)  # styles start at 1
        self.demodulate, self.padding = demodulate, kernel_size // 2

    def modulated_weight(self, w):
        """Per-sample weights [B, out, in, k, k] for styles from ``w`` [B, w_dim]."""
        style = self.affine(w)
        weight = self.scale * self.weight[None] * style[:, None, :, None, None]
        if self.demodulate:
            weight = weight * torch.rsqrt(weight.square().sum((2, 3, 4), keepdim=True) + 1e-8)
        return weight

    def forward(self, x, w):
        B, C, H, W = x.shape
        weight = self.modulated_weight(w)
        out = F.conv2d(x.reshape(1, B * C, H, W), weight.reshape(-1, *weight.shape[2:]),
                       padding=self.padding, groups=B)
        return out.reshape(B, -1, *out.shape[2:])


class StyleLayer(nn.Module):
    """Modulated conv, per-pixel noise with a learned per-layer strength (StyleGAN sec. 3.2;
    starts at 0), bias, LeakyReLU(0.2) scaled by sqrt(2) to keep unit variance."""

    def __init__(self, in_channels, out_channels, *, w_dim, upsample=False):
        super().__init__()
        self.conv = ModulatedConv2d(in_channels, out_channels, 3, w_dim=w_dim)
        self.noise_strength = nn.Parameter(torch.zeros(()))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.upsample = upsample

    def forward(self, x, w, noise):
        if self.upsample:
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        x = self.conv(x, w) + self.noise_strength * noise
        return F.leaky_relu(x + self.bias[:, None, None], 0.2) * math.sqrt(2)


def _normalize(v):
    """Unit second moment per sample (StyleGAN's normalisation of the mapping's input)."""
    return v * torch.rsqrt(v.square().mean(1, keepdim=True) + 1e-8)


class StyleGenerator(nn.Module, _TextConditional):
    """StyleGAN2-style generator for small images.

    mapping: z -> normalise -> ``mapping_layers`` EqualLinear (lr x 0.01) -> w; synthesis: a
    learned constant at s/4, two StyleLayers per level (7, 14, 28), skip-architecture toRGB
    (modulated, not demodulated) summed over levels. ``num_ws`` = one w per StyleLayer and toRGB.

    - style mixing: ``forward(z, z2=..., crossover=k)`` uses w(z) for layers < k, w(z2) after;
    - truncation: ``psi`` pulls w towards ``w_avg`` (tracked during training, decay 0.995);
    - noise: one map per StyleLayer, ``noise_shapes(batch)``; drawn from the global RNG if None;
    - text (``text_dim``): the pooled sentence vector, embedded to w_dim and normalised, is
      concatenated to the normalised z at the mapping's input (StyleGAN2-ADA's conditioning,
      Karras et al. 2020b), so every w, hence every style, depends on it (on the 8x8 digits:
      the prompted digit in 93 % of samples after 32k images).
    """

    def __init__(self, *, z_dim: int = 64, w_dim: int = 64, mapping_layers: int = 4, channels: int = 1,
                 image_size: int = 28, base_channels: int = 32, num_classes: int | None = None,
                 w_avg_beta: float = 0.995, text_dim: int | None = None):
        super().__init__()
        for name, v in [("z_dim", z_dim), ("w_dim", w_dim), ("mapping_layers", mapping_layers),
                        ("channels", channels), ("base_channels", base_channels)]:
            _positive(name, v)
        if num_classes is not None:
            raise ConfigError("StyleGenerator is unconditional here; remove model.generator.num_classes")
        self.levels = _levels(image_size)
        self.z_dim, self.w_dim, self.channels, self.image_size, self.num_classes = \
            z_dim, w_dim, channels, image_size, None
        self.cond_keys = _cond_keys(None, text_dim)
        self._init_text(text_dim)
        self.w_avg_beta = w_avg_beta
        layers, first = [], z_dim + (w_dim if text_dim is not None else 0)
        for i in range(mapping_layers):
            layers += [EqualLinear(first if i == 0 else w_dim, w_dim, lr_mul=0.01), nn.LeakyReLU(0.2)]
        self.mapping = nn.Sequential(*layers)
        self.register_buffer("w_avg", torch.zeros(w_dim))
        widths = [4 * base_channels, 2 * base_channels, base_channels]
        s0 = self.levels[0]
        self.const = nn.Parameter(torch.randn(widths[0], s0, s0))
        self.layers = nn.ModuleList()
        for i, width in enumerate(widths):
            self.layers.append(StyleLayer(widths[max(i - 1, 0)], width, w_dim=w_dim, upsample=i > 0))
            self.layers.append(StyleLayer(width, width, w_dim=w_dim))
        self.to_rgb = nn.ModuleList([ModulatedConv2d(w, channels, 1, w_dim=w_dim, demodulate=False) for w in widths])
        self.rgb_bias = nn.Parameter(torch.zeros(channels))
        self.num_ws = len(self.layers) + len(self.to_rgb)
        if text_dim is not None:
            self.text_embed = EqualLinear(text_dim, w_dim)

    def noise_shapes(self, batch: int):
        return [(batch, 1, s, s) for s in self.levels for _ in range(2)]

    def map(self, z, *, psi: float = 1.0, pooled=None):
        """w [B, w_dim] for z (and the pooled text vector, text-conditional nets); truncation
        w_avg + psi (w - w_avg) (StyleGAN sec. 2.2 / App. B)."""
        z = _normalize(z)
        if self.text_dim is not None:
            z = torch.cat([z, _normalize(self.text_embed(pooled)).to(z.dtype)], 1)
        w = self.mapping(z)
        if self.training and torch.is_grad_enabled():
            with torch.no_grad():
                self.w_avg.lerp_(w.detach().mean(0), 1 - self.w_avg_beta)
        if psi != 1:
            w = torch.lerp(self.w_avg.to(w.dtype), w, psi)
        return w

    def synthesis(self, ws, noise=None):
        """``ws`` [B, num_ws, w_dim]: one w per layer in the order StyleLayers..., toRGBs."""
        B = ws.shape[0]
        if noise is None:
            noise = [torch.randn(shape, device=ws.device, dtype=ws.dtype) for shape in self.noise_shapes(B)]
        h = self.const[None].expand(B, -1, -1, -1)
        n_layers, rgb = len(self.layers), None
        for level in range(3):
            for j in (2 * level, 2 * level + 1):
                h = self.layers[j](h, ws[:, j], noise[j])
            y = self.to_rgb[level](h, ws[:, n_layers + level])
            rgb = y if rgb is None else F.interpolate(rgb, scale_factor=2.0, mode="nearest") + y
        return torch.tanh(rgb + self.rgb_bias[:, None, None])

    def w_positions(self):
        """Each w slot's depth in the synthesis order: StyleLayer j is at j, the toRGB of a
        level sits with that level's last layer. Crossover k sends slots at depth >= k to z2."""
        return list(range(len(self.layers))) + [2 * level + 1 for level in range(len(self.to_rgb))]

    def forward(self, z, cond=None, *, psi: float = 1.0, z2=None, crossover: int | None = None, noise=None):
        if z.ndim != 2 or z.shape[1] != self.z_dim:
            raise ValueError(f"StyleGenerator expected z [B, {self.z_dim}], got {list(z.shape)}")
        _check_labels(self, cond, z.shape[0])
        pooled = self.pooled_text(as_cond(cond), z.shape[0]) if self.text_dim is not None else None
        w = self.map(z, psi=psi, pooled=pooled)
        ws = w[:, None].expand(-1, self.num_ws, -1)
        if z2 is not None:
            # coarse styles (early layers) from z, fine ones from z2 (StyleGAN sec. 3.1)
            if crossover is None or not 0 < crossover < len(self.layers):
                raise ValueError(f"crossover must lie in [1, {len(self.layers)}), got {crossover}")
            w2 = self.map(z2, psi=psi, pooled=pooled)
            mask = torch.tensor([d >= crossover for d in self.w_positions()], device=z.device)
            ws = torch.where(mask[None, :, None], w2[:, None], ws)
        return self.synthesis(ws, noise)
