"""Generators and discriminators of the GAN family.

Signatures the GAN objective relies on:
  generator ``G(z [B, z_dim], y=None) -> x``; discriminator ``D(x, y=None) -> logits [B]``;
  Pix2Pix: ``UNetGenerator(cond) -> x`` and ``PatchDiscriminator(x, cond) -> logits [B, 1, h, w]``.

- ``MLPGenerator`` / ``MLPDiscriminator``: 2-D toys.
- ``DCGenerator`` / ``DCDiscriminator`` (DCGAN, Radford et al. 2016) for 28x28-like images, with
  options: class conditioning (conditional batch norm in G, projection D: Miyato & Koyama 2018),
  spectral normalisation (Miyato et al. 2018), minibatch standard deviation (ProGAN, Karras et al.
  2018, sec. 3), equalized learning rate (ProGAN sec. 4.1) and progressive growing with fade-in
  (ProGAN sec. 2) over 7 -> 14 -> 28.
- ``StyleGenerator`` (StyleGAN2, Karras et al. 2020): mapping z -> w, modulated/demodulated
  convolutions, per-layer noise, style mixing and truncation in w around a tracked w_avg.
- ``UNetGenerator`` and ``PatchDiscriminator`` (Pix2Pix, Isola et al. 2017).

Upsampling is nearest + 3x3 conv everywhere (no checkerboard artefacts of transposed convs).
"""

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm as _spectral_norm

from genmodels.errors import ConfigError

__all__ = [
    "EqualLinear", "EqualConv2d", "MinibatchStd", "ConditionalBatchNorm2d", "ModulatedConv2d",
    "MLPGenerator", "MLPDiscriminator", "DCGenerator", "DCDiscriminator", "StyleGenerator",
    "UNetGenerator", "PatchDiscriminator", "GENERATORS", "DISCRIMINATORS",
]


def _positive(name, value):
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")


def _check_image(net, x: Tensor, channels: int, size: int):
    if x.ndim != 4 or x.shape[1] != channels or x.shape[2] != size or x.shape[3] != size:
        raise ValueError(f"{type(net).__name__} expected images [B, {channels}, {size}, {size}], got "
                         f"{list(x.shape)}; check model.channels/image_size against the data")


# ---- layers ---------------------------------------------------------------------------------
class EqualLinear(nn.Module):
    """Equalized learning rate (ProGAN sec. 4.1): weights drawn N(0, 1) and scaled by
    gain / sqrt(fan_in) at run time, so Adam's per-parameter step is the same for every layer.
    ``lr_mul`` slows a layer down (StyleGAN's mapping network uses 0.01)."""

    def __init__(self, in_features, out_features, *, bias=True, bias_init=0.0, lr_mul=1.0, gain=1.0):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_mul)
        self.bias = nn.Parameter(torch.full((out_features,), float(bias_init) / lr_mul)) if bias else None
        self.scale, self.lr_mul = gain * lr_mul / math.sqrt(in_features), lr_mul

    def forward(self, x):
        bias = None if self.bias is None else self.bias * self.lr_mul
        return F.linear(x, self.weight * self.scale, bias)


class EqualConv2d(nn.Module):
    """Conv2d with the equalized-learning-rate scaling of ``EqualLinear``."""

    def __init__(self, in_channels, out_channels, kernel_size, *, stride=1, padding=0, bias=True, gain=1.0):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.scale = gain / math.sqrt(in_channels * kernel_size * kernel_size)
        self.stride, self.padding = stride, padding

    def forward(self, x):
        return F.conv2d(x, self.weight * self.scale, self.bias, stride=self.stride, padding=self.padding)


def _linear(i, o, *, equalized=False, sn=False):
    layer = EqualLinear(i, o) if equalized else nn.Linear(i, o)
    return _spectral_norm(layer) if sn else layer


def _conv(i, o, k, *, stride=1, padding=None, equalized=False, sn=False):
    padding = (k - 1) // 2 if padding is None else padding
    layer = (EqualConv2d(i, o, k, stride=stride, padding=padding) if equalized
             else nn.Conv2d(i, o, k, stride=stride, padding=padding))
    return _spectral_norm(layer) if sn else layer


class MinibatchStd(nn.Module):
    """ProGAN sec. 3: append the standard deviation of each feature over a group of samples,
    averaged to one map, so D can see (and punish) a batch with too little variety.
    The group is the largest divisor of the batch not above ``group_size``."""

    def __init__(self, group_size: int = 4):
        super().__init__()
        self.group_size = group_size

    def forward(self, x):
        B, C, H, W = x.shape
        g = max(d for d in range(1, min(self.group_size, B) + 1) if B % d == 0)
        y = x.reshape(g, B // g, C, H, W)
        std = (y.var(0, unbiased=False) + 1e-8).sqrt().mean((1, 2, 3))  # [B // g]
        std = std.reshape(1, B // g, 1, 1, 1).expand(g, B // g, 1, H, W).reshape(B, 1, H, W)
        return torch.cat([x, std], 1)


class PixelNorm(nn.Module):
    """ProGAN sec. 4.2: normalise each pixel's feature vector to unit RMS (G without batch norm)."""

    def forward(self, x):
        return x * torch.rsqrt(x.square().mean(1, keepdim=True) + 1e-8)


class ConditionalBatchNorm2d(nn.Module):
    """Batch norm whose scale and shift are looked up per class (de Vries et al. 2017; used by
    the SN-GAN/projection and BigGAN generators): gamma starts at 1, beta at 0."""

    def __init__(self, channels: int, num_classes: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(channels, affine=False)
        self.gamma = nn.Embedding(num_classes, channels)
        self.beta = nn.Embedding(num_classes, channels)
        nn.init.ones_(self.gamma.weight)
        nn.init.zeros_(self.beta.weight)

    def forward(self, x, y):
        return self.bn(x) * self.gamma(y)[:, :, None, None] + self.beta(y)[:, :, None, None]


def _norm(kind, channels, num_classes):
    if num_classes is not None:
        return ConditionalBatchNorm2d(channels, num_classes)
    return {"batch": lambda: nn.BatchNorm2d(channels), "pixel": PixelNorm, "none": nn.Identity}[kind]()


def _apply_norm(norm, h, y):
    return norm(h, y) if isinstance(norm, ConditionalBatchNorm2d) else norm(h)


def _check_labels(net, y, batch):
    if net.num_classes is None:
        if y is not None:
            raise ValueError(f"{type(net).__name__} is unconditional but got labels; build it with num_classes")
        return None
    if y is None or y.shape != (batch,):
        raise ValueError(f"class-conditional {type(net).__name__} needs labels y of shape [{batch}], got "
                         f"{None if y is None else list(y.shape)}")
    return y


# ---- 2-D toys -------------------------------------------------------------------------------
class MLPGenerator(nn.Module):
    """z [B, z_dim] -> points [B, dim]: ``depth`` ReLU layers of width ``hidden``."""

    def __init__(self, *, z_dim: int = 2, dim: int = 2, hidden: int = 128, depth: int = 3):
        super().__init__()
        for name, v in [("z_dim", z_dim), ("dim", dim), ("hidden", hidden), ("depth", depth)]:
            _positive(f"generator {name}", v)
        self.z_dim, self.dim, self.num_classes = z_dim, dim, None
        layers, width = [], z_dim
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), nn.ReLU()]
            width = hidden
        self.net = nn.Sequential(*layers, nn.Linear(width, dim))

    def forward(self, z, y=None):
        _check_labels(self, y, z.shape[0])
        return self.net(z)


class MLPDiscriminator(nn.Module):
    """points [B, dim] -> logits [B]; LeakyReLU(0.2), optional spectral normalisation."""

    def __init__(self, *, dim: int = 2, hidden: int = 128, depth: int = 3, spectral_norm: bool = False):
        super().__init__()
        for name, v in [("dim", dim), ("hidden", hidden), ("depth", depth)]:
            _positive(f"discriminator {name}", v)
        self.dim, self.num_classes = dim, None
        layers, width = [], dim
        for _ in range(depth):
            layers += [_linear(width, hidden, sn=spectral_norm), nn.LeakyReLU(0.2)]
            width = hidden
        self.net = nn.Sequential(*layers, _linear(width, 1, sn=spectral_norm))

    def forward(self, x, y=None):
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"MLPDiscriminator expected points [B, {self.dim}], got {list(x.shape)}")
        _check_labels(self, y, x.shape[0])
        return self.net(x).squeeze(1)


# ---- DCGAN / ProGAN -------------------------------------------------------------------------
def _levels(image_size):
    """Resolutions 7 -> 14 -> 28 for a 28x28 image: image_size / 4, / 2, / 1."""
    if not isinstance(image_size, int) or image_size % 4 or image_size < 8:
        raise ConfigError(f"image_size {image_size!r} must be a multiple of 4 (>= 8): the GAN nets "
                          f"upsample twice, e.g. 7 -> 14 -> 28; use 28 or 32")
    return [image_size // 4, image_size // 2, image_size]


class _Progressive(nn.Module):
    """Progressive growing state (ProGAN sec. 2) shared by G and D: ``stage`` is the index of the
    current top resolution (0: 7x7 ... 2: 28x28), ``alpha`` in [0, 1] fades the new level in.
    Buffers, so a checkpoint restores where the growing was."""

    def _init_progress(self, progressive, n_stages):
        self.progressive, self.n_stages = progressive, n_stages
        self.register_buffer("stage", torch.tensor(n_stages - 1 if not progressive else 0))
        self.register_buffer("alpha", torch.tensor(1.0))

    def set_growth(self, stage: int, alpha: float) -> None:
        if not self.progressive:
            raise ValueError(f"{type(self).__name__} was built without progressive=True")
        if not 0 <= stage < self.n_stages or not 0.0 <= alpha <= 1.0:
            raise ValueError(f"stage must lie in [0, {self.n_stages}) and alpha in [0, 1], got {stage}, {alpha}")
        self.stage.fill_(stage)
        self.alpha.fill_(alpha)


class DCGenerator(_Progressive):
    """z -> Linear -> [4c, s/4, s/4] -> up, conv -> [2c, s/2, s/2] -> up, conv -> [c, s, s] -> RGB, tanh.

    ``norm``: batch (DCGAN) | pixel (ProGAN) | none; with ``num_classes`` every norm is a
    conditional batch norm. ``progressive``: one toRGB per level; below the top level the image
    is made at the current level, blended with the previous level's while ``alpha`` < 1, and
    upsampled (nearest) to ``image_size``, so data and D always see one shape.
    """

    def __init__(self, *, z_dim: int = 64, channels: int = 1, image_size: int = 28, base_channels: int = 64,
                 num_classes: int | None = None, norm: str = "batch", equalized_lr: bool = False,
                 progressive: bool = False):
        super().__init__()
        _positive("z_dim", z_dim), _positive("channels", channels), _positive("base_channels", base_channels)
        if norm not in ("batch", "pixel", "none"):
            raise ConfigError(f"generator norm {norm!r}; allowed: batch, pixel, none")
        if num_classes is not None:
            _positive("num_classes", num_classes)
        self.levels = _levels(image_size)
        self.z_dim, self.channels, self.image_size, self.num_classes = z_dim, channels, image_size, num_classes
        widths = [4 * base_channels, 2 * base_channels, base_channels]
        s0, eq = self.levels[0], equalized_lr
        self.fc = _linear(z_dim, widths[0] * s0 * s0, equalized=eq)
        self.norm0 = _norm(norm, widths[0], num_classes)
        self.convs = nn.ModuleList([_conv(widths[i - 1], widths[i], 3, equalized=eq) for i in (1, 2)])
        self.norms = nn.ModuleList([_norm(norm, widths[i], num_classes) for i in (1, 2)])
        to_rgb = range(3) if progressive else (2,)
        self.to_rgb = nn.ModuleDict({str(i): _conv(widths[i], channels, 1, equalized=eq) for i in to_rgb})
        self._init_progress(progressive, 3)

    def forward(self, z, y=None):
        if z.ndim != 2 or z.shape[1] != self.z_dim:
            raise ValueError(f"DCGenerator expected z [B, {self.z_dim}], got {list(z.shape)}")
        y = _check_labels(self, y, z.shape[0])
        s0 = self.levels[0]
        h = F.relu(_apply_norm(self.norm0, self.fc(z).view(z.shape[0], -1, s0, s0), y))
        stage, alpha = int(self.stage), float(self.alpha)
        previous = None
        for i in range(1, stage + 1):
            previous = h
            h = F.interpolate(h, scale_factor=2.0, mode="nearest")
            h = F.relu(_apply_norm(self.norms[i - 1], self.convs[i - 1](h), y))
        x = self.to_rgb[str(stage)](h)
        if alpha < 1 and previous is not None:  # fade-in: the old level's image, upsampled
            low = F.interpolate(self.to_rgb[str(stage - 1)](previous), scale_factor=2.0, mode="nearest")
            x = torch.lerp(low, x, alpha)
        x = torch.tanh(x)
        if x.shape[-1] != self.image_size:
            x = F.interpolate(x, size=self.image_size, mode="nearest")
        return x


class DCDiscriminator(_Progressive):
    """x -> fromRGB [c, s, s] -> conv s2 -> [2c, s/2] -> conv s2 -> [4c, s/4] -> [minibatch std]
    -> conv -> sum over positions -> Linear -> logit (+ projection <embed(y), h> when class
    conditional: Miyato & Koyama 2018, Eq. 3). LeakyReLU(0.2), no batch norm (keeps gradient
    penalties per-sample). ``progressive``: the input is average-pooled to the current level and
    enters through that level's fromRGB, blended with the lower level's while ``alpha`` < 1.
    """

    def __init__(self, *, channels: int = 1, image_size: int = 28, base_channels: int = 64,
                 num_classes: int | None = None, spectral_norm: bool = False, minibatch_std: bool = False,
                 equalized_lr: bool = False, progressive: bool = False):
        super().__init__()
        _positive("channels", channels), _positive("base_channels", base_channels)
        if num_classes is not None:
            _positive("num_classes", num_classes)
        self.levels = _levels(image_size)
        self.channels, self.image_size, self.num_classes = channels, image_size, num_classes
        widths = [4 * base_channels, 2 * base_channels, base_channels]  # by level, 7 -> 28
        kw = dict(equalized=equalized_lr, sn=spectral_norm)
        from_rgb = range(3) if progressive else (2,)
        self.from_rgb = nn.ModuleDict({str(i): _conv(channels, widths[i], 1, **kw) for i in from_rgb})
        # down[i-1] takes level i to level i-1
        self.down = nn.ModuleList([_conv(widths[i], widths[i - 1], 4, stride=2, padding=1, **kw) for i in (1, 2)])
        self.mbstd = MinibatchStd() if minibatch_std else None
        self.conv = _conv(widths[0] + int(minibatch_std), widths[0], 3, **kw)
        self.out = _linear(widths[0], 1, **kw)
        self.embed = None
        if num_classes is not None:
            self.embed = nn.Embedding(num_classes, widths[0])
            if spectral_norm:
                self.embed = _spectral_norm(self.embed)
        self._init_progress(progressive, 3)

    def features(self, x):
        stage, alpha = int(self.stage), float(self.alpha)
        size = self.levels[stage]
        if x.shape[-1] != size:
            x = F.adaptive_avg_pool2d(x, size)
        h = F.leaky_relu(self.from_rgb[str(stage)](x), 0.2)
        for i in range(stage, 0, -1):
            h = F.leaky_relu(self.down[i - 1](h), 0.2)
            if i == stage and alpha < 1:  # fade-in: the lower level's path on the pooled image
                low = F.leaky_relu(self.from_rgb[str(stage - 1)](F.avg_pool2d(x, 2)), 0.2)
                h = torch.lerp(low, h, alpha)
        if self.mbstd is not None:
            h = self.mbstd(h)
        return F.leaky_relu(self.conv(h), 0.2).sum((2, 3))

    def forward(self, x, y=None):
        _check_image(self, x, self.channels, self.image_size)
        y = _check_labels(self, y, x.shape[0])
        h = self.features(x)
        logit = self.out(h).squeeze(1)
        if self.embed is not None:
            logit = logit + (self.embed(y) * h).sum(1)
        return logit


# ---- StyleGAN2 ------------------------------------------------------------------------------
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


class StyleGenerator(nn.Module):
    """StyleGAN2-style generator for small images.

    mapping: z -> normalise -> ``mapping_layers`` EqualLinear (lr x 0.01) -> w; synthesis: a
    learned constant at s/4, two StyleLayers per level (7, 14, 28), skip-architecture toRGB
    (modulated, not demodulated) summed over levels. ``num_ws`` = one w per StyleLayer and toRGB.

    - style mixing: ``forward(z, z2=..., crossover=k)`` uses w(z) for layers < k, w(z2) after;
    - truncation: ``psi`` pulls w towards ``w_avg`` (tracked during training, decay 0.995);
    - noise: one map per StyleLayer, ``noise_shapes(batch)``; drawn from the global RNG if None.
    """

    def __init__(self, *, z_dim: int = 64, w_dim: int = 64, mapping_layers: int = 4, channels: int = 1,
                 image_size: int = 28, base_channels: int = 32, num_classes: int | None = None,
                 w_avg_beta: float = 0.995):
        super().__init__()
        for name, v in [("z_dim", z_dim), ("w_dim", w_dim), ("mapping_layers", mapping_layers),
                        ("channels", channels), ("base_channels", base_channels)]:
            _positive(name, v)
        if num_classes is not None:
            raise ConfigError("StyleGenerator is unconditional here; remove model.generator.num_classes")
        self.levels = _levels(image_size)
        self.z_dim, self.w_dim, self.channels, self.image_size, self.num_classes = \
            z_dim, w_dim, channels, image_size, None
        self.w_avg_beta = w_avg_beta
        layers = []
        for i in range(mapping_layers):
            layers += [EqualLinear(z_dim if i == 0 else w_dim, w_dim, lr_mul=0.01), nn.LeakyReLU(0.2)]
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

    def noise_shapes(self, batch: int):
        return [(batch, 1, s, s) for s in self.levels for _ in range(2)]

    def map(self, z, *, psi: float = 1.0):
        """w [B, w_dim] for z; truncation w_avg + psi (w - w_avg) (StyleGAN sec. 2.2 / App. B)."""
        z = z * torch.rsqrt(z.square().mean(1, keepdim=True) + 1e-8)
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

    def forward(self, z, y=None, *, psi: float = 1.0, z2=None, crossover: int | None = None, noise=None):
        if z.ndim != 2 or z.shape[1] != self.z_dim:
            raise ValueError(f"StyleGenerator expected z [B, {self.z_dim}], got {list(z.shape)}")
        _check_labels(self, y, z.shape[0])
        w = self.map(z, psi=psi)
        ws = w[:, None].expand(-1, self.num_ws, -1)
        if z2 is not None:
            # coarse styles (early layers) from z, fine ones from z2 (StyleGAN sec. 3.1)
            if crossover is None or not 0 < crossover < len(self.layers):
                raise ValueError(f"crossover must lie in [1, {len(self.layers)}), got {crossover}")
            w2 = self.map(z2, psi=psi)
            mask = torch.tensor([d >= crossover for d in self.w_positions()], device=z.device)
            ws = torch.where(mask[None, :, None], w2[:, None], ws)
        return self.synthesis(ws, noise)


# ---- Pix2Pix --------------------------------------------------------------------------------
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
        _check_image(self, cond, self.in_channels, self.image_size)
        drop = self.dropout if (self.training or self.dropout_at_sampling) else 0.0
        n = self.norms
        e0 = F.leaky_relu(self.enc0(cond), 0.2)
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
    handles the low frequencies, D the local sharpness)."""

    def __init__(self, *, channels: int = 1, cond_channels: int = 1, image_size: int = 28,
                 base_channels: int = 32, spectral_norm: bool = False):
        super().__init__()
        _positive("channels", channels), _positive("cond_channels", cond_channels), _positive("base_channels", base_channels)
        _levels(image_size)
        self.channels, self.cond_channels, self.image_size, self.num_classes = channels, cond_channels, image_size, None
        c, sn = base_channels, spectral_norm
        self.net = nn.Sequential(
            _conv(channels + cond_channels, c, 4, stride=2, padding=1, sn=sn), nn.LeakyReLU(0.2),
            _conv(c, 2 * c, 4, stride=2, padding=1, sn=sn), nn.LeakyReLU(0.2),
            _conv(2 * c, 2 * c, 3, sn=sn), nn.LeakyReLU(0.2),
            _conv(2 * c, 1, 3, sn=sn))

    def forward(self, x, cond):
        _check_image(self, x, self.channels, self.image_size)
        _check_image(self, cond, self.cond_channels, self.image_size)
        return self.net(torch.cat([x, cond], 1))


GENERATORS = {"mlp": MLPGenerator, "dcgan": DCGenerator, "stylegan": StyleGenerator, "unet": UNetGenerator}
DISCRIMINATORS = {"mlp": MLPDiscriminator, "dcgan": DCDiscriminator, "patch": PatchDiscriminator}
