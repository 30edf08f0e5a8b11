"""DCGAN (Radford et al. 2016) for 28x28-like images, with class or text conditioning (conditional
batch norm in G, projection D: Miyato & Koyama 2018), spectral normalisation, minibatch standard
deviation, equalized learning rate and progressive growing with fade-in (ProGAN, Karras et al.
2018) over 7 -> 14 -> 28."""

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm as _spectral_norm

from genmodels.errors import ConfigError
from genmodels.cond import as_cond
from genmodels.nn.gan.common import (MinibatchStd, _Progressive, _TextConditional, _apply_norm, _check_image,
                                     _check_labels, _conv, _cond_keys, _levels, _linear, _norm, _positive)


class DCGenerator(_Progressive, _TextConditional):
    """z -> Linear -> [4c, s/4, s/4] -> up, conv -> [2c, s/2, s/2] -> up, conv -> [c, s, s] -> RGB, tanh.

    ``norm``: batch (DCGAN) | pixel (ProGAN) | none; with ``num_classes`` every norm is a
    conditional batch norm. With ``text_dim`` (the text encoder's width, 384 for MiniLM) the
    pooled sentence vector t becomes e = MLP(t) [text_embed_dim], which gives every norm's scale
    and shift (as BigGAN's shared embedding, Brock et al. 2019, App. B). e is not concatenated to
    z: on the 8x8 digits that made G ignore z (one image per prompt).
    ``progressive``: one toRGB per level; below the top level the image
    is made at the current level, blended with the previous level's while ``alpha`` < 1, and
    upsampled (nearest) to ``image_size``, so data and D always see one shape.
    """

    def __init__(self, *, z_dim: int = 64, channels: int = 1, image_size: int = 28, base_channels: int = 64,
                 num_classes: int | None = None, norm: str = "batch", equalized_lr: bool = False,
                 progressive: bool = False, text_dim: int | None = None, text_embed_dim: int = 128):
        super().__init__()
        _positive("z_dim", z_dim), _positive("channels", channels), _positive("base_channels", base_channels)
        _positive("text_embed_dim", text_embed_dim)
        if norm not in ("batch", "pixel", "none"):
            raise ConfigError(f"generator norm {norm!r}; allowed: batch, pixel, none")
        if num_classes is not None:
            _positive("num_classes", num_classes)
        self.levels = _levels(image_size)
        self.z_dim, self.channels, self.image_size, self.num_classes = z_dim, channels, image_size, num_classes
        self.cond_keys = _cond_keys(num_classes, text_dim)
        self._init_text(text_dim)
        e = text_embed_dim if text_dim is not None else None  # the text embedding's width
        widths = [4 * base_channels, 2 * base_channels, base_channels]
        s0, eq = self.levels[0], equalized_lr
        self.fc = _linear(z_dim, widths[0] * s0 * s0, equalized=eq)
        self.norm0 = _norm(norm, widths[0], num_classes, e)
        self.convs = nn.ModuleList([_conv(widths[i - 1], widths[i], 3, equalized=eq) for i in (1, 2)])
        self.norms = nn.ModuleList([_norm(norm, widths[i], num_classes, e) for i in (1, 2)])
        to_rgb = range(3) if progressive else (2,)
        self.to_rgb = nn.ModuleDict({str(i): _conv(widths[i], channels, 1, equalized=eq) for i in to_rgb})
        self._init_progress(progressive, 3)
        if text_dim is not None:
            self.text_embed = nn.Sequential(nn.Linear(text_dim, e), nn.LeakyReLU(0.2), nn.Linear(e, e))
            # training captions' pooled vectors, which the batch-norm statistics are re-estimated on
            # after training (genmodels.families.gan fills them): a loaded run needs no data for it
            self.register_buffer("recalibration_text", torch.zeros(256, text_dim))

    def forward(self, z, cond=None):
        if z.ndim != 2 or z.shape[1] != self.z_dim:
            raise ValueError(f"DCGenerator expected z [B, {self.z_dim}], got {list(z.shape)}")
        y = _check_labels(self, cond, z.shape[0])  # what the norms read: labels, or the text embedding
        if self.text_dim is not None:
            y = self.text_embed(self.pooled_text(as_cond(cond), z.shape[0]))
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


class DCDiscriminator(_Progressive, _TextConditional):
    """x -> fromRGB [c, s, s] -> conv s2 -> [2c, s/2] -> conv s2 -> [4c, s/4] -> [minibatch std]
    -> conv -> sum over positions -> h = phi(x) -> Linear -> logit, plus the projection term
    (Miyato & Koyama 2018, Eq. 3): <embed(y), h> when class conditional, <W t, h> on the pooled
    sentence vector t when text conditional (``text_dim``; W linear, the null text is W's input
    for "no text"). LeakyReLU(0.2), no batch norm (keeps gradient
    penalties per-sample). ``progressive``: the input is average-pooled to the current level and
    enters through that level's fromRGB, blended with the lower level's while ``alpha`` < 1.
    """

    def __init__(self, *, channels: int = 1, image_size: int = 28, base_channels: int = 64,
                 num_classes: int | None = None, spectral_norm: bool = False, minibatch_std: bool = False,
                 equalized_lr: bool = False, progressive: bool = False, text_dim: int | None = None):
        super().__init__()
        _positive("channels", channels), _positive("base_channels", base_channels)
        if num_classes is not None:
            _positive("num_classes", num_classes)
        self.levels = _levels(image_size)
        self.channels, self.image_size, self.num_classes = channels, image_size, num_classes
        self.cond_keys = _cond_keys(num_classes, text_dim)
        self._init_text(text_dim)
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
        if text_dim is not None:
            self.text_proj = nn.Linear(text_dim, widths[0], bias=False)
            if spectral_norm:
                self.text_proj = _spectral_norm(self.text_proj)

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

    def forward(self, x, cond=None):
        _check_image(self, x, self.channels, self.image_size)
        y = _check_labels(self, cond, x.shape[0])
        h = self.features(x)
        logit = self.out(h).squeeze(1)
        if self.embed is not None:
            logit = logit + (self.embed(y) * h).sum(1)
        if self.text_dim is not None:
            logit = logit + (self.text_proj(self.pooled_text(as_cond(cond), x.shape[0])) * h).sum(1)
        return logit
