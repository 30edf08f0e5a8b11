"""Layers and checks shared by the GAN nets: equalized learning rate (ProGAN sec. 4.1), spectral
normalisation (Miyato et al. 2018), minibatch standard deviation (ProGAN sec. 3), pixel norm,
conditional batch norm (on a class, or on a vector: the text), text conditioning on the pooled
sentence vector with a learned null, progressive-growing state, and the input checks."""

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm as _spectral_norm

from genmodels.cond import check_reads
from genmodels.errors import ConfigError


def _positive(name, value):
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")


def _check_image(net, x: Tensor, channels: int, size: int):
    if x.ndim != 4 or x.shape[1] != channels or x.shape[2] != size or x.shape[3] != size:
        raise ValueError(f"{type(net).__name__} expected images [B, {channels}, {size}, {size}], got "
                         f"{list(x.shape)}; check model.channels/image_size against the data")


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


class VectorConditionalBatchNorm2d(nn.Module):
    """Batch norm whose scale and shift are linear maps of a condition vector e [B, cond_dim]
    (BigGAN's conditional batch norm on a shared embedding, Brock et al. 2019, App. B):
    gamma = 1 + W_gamma e, beta = W_beta e."""

    def __init__(self, channels: int, cond_dim: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(channels, affine=False)
        self.gamma = nn.Linear(cond_dim, channels)
        self.beta = nn.Linear(cond_dim, channels)
        nn.init.zeros_(self.gamma.bias)
        nn.init.zeros_(self.beta.bias)

    def forward(self, x, e):
        return self.bn(x) * (1 + self.gamma(e)[:, :, None, None]) + self.beta(e)[:, :, None, None]


def _norm(kind, channels, num_classes, cond_dim=None):
    if num_classes is not None:
        return ConditionalBatchNorm2d(channels, num_classes)
    if cond_dim is not None:
        return VectorConditionalBatchNorm2d(channels, cond_dim)
    return {"batch": lambda: nn.BatchNorm2d(channels), "pixel": PixelNorm, "none": nn.Identity}[kind]()


def _apply_norm(norm, h, c):
    """``norm(h)``, or ``norm(h, c)`` for a conditional one (c: labels, or a condition vector)."""
    return norm(h, c) if isinstance(norm, (ConditionalBatchNorm2d, VectorConditionalBatchNorm2d)) else norm(h)


def _cond_keys(num_classes, text_dim=None):
    """The cond keys of a net built with ``num_classes`` (labels "y") or ``text_dim`` ("text")."""
    if num_classes is not None and text_dim is not None:
        raise ConfigError("the GAN nets are class- or text-conditional, not both: drop model.num_classes "
                          "(a text run's captions name the class) or text.captions")
    return frozenset(["y"] if num_classes is not None else ["text"] if text_dim is not None else [])


class _TextConditional:
    """Text conditioning of a GAN net on the pooled sentence vector ``cond["text"]["pooled"]``
    [B, text_dim] (the token states are not read), with a learned null vector for "no text":
    read when ``cond`` has no ``text`` (an unconditional draw), and put in place of an empty
    prompt or a dropped caption by ``null_text`` (``genmodels.cond.null_value``).

    MiniLM's vector is L2-normalised (entries ~ 1/sqrt(text_dim)); the nets read it times
    sqrt(text_dim), unit second moment, the scale PyTorch's default init expects. Unscaled, the
    text enters G's norms and D's projection ~20x weaker at the start: on the 8x8 digits a
    text GAN then read the requested digit 43 % of the time after 64k images, against 97 %
    after 32k images scaled."""

    def _init_text(self, text_dim):
        self.text_dim = text_dim
        if text_dim is not None:
            _positive("text_dim", text_dim)
            self.null_text_pooled = nn.Parameter(torch.zeros(text_dim))

    def pooled_text(self, cond: dict, batch: int) -> Tensor:
        """[batch, text_dim]: the condition's pooled vector (or the null vector without one),
        times sqrt(text_dim)."""
        text = cond.get("text")
        if text is None:
            pooled = self.null_text_pooled.expand(batch, -1)
        else:
            pooled = text.get("pooled") if isinstance(text, dict) else None
            if pooled is None or tuple(pooled.shape) != (batch, self.text_dim):
                got = "no 'pooled'" if pooled is None else list(pooled.shape)
                raise ValueError(f"text-conditional {type(self).__name__} reads cond['text']['pooled'] of shape "
                                 f"[{batch}, {self.text_dim}], got {got}")
        return pooled.to(self.null_text_pooled.dtype) * math.sqrt(self.text_dim)

    def null_text(self, text: dict) -> dict:
        """The null of a ``text`` value, shaped like it: the learned null pooled vector (what the
        net reads); token states zeroed and only the first token unmasked, as the UNet's."""
        out = {}
        for key, value in text.items():
            if key == "pooled":
                out[key] = self.null_text_pooled.to(value.dtype).expand(len(value), -1)
            elif key == "mask":
                out[key] = torch.zeros_like(value)
                out[key][:, :1] = True
            else:
                out[key] = torch.zeros_like(value)
        return out


def _check_labels(net, cond, batch):
    """The labels ``cond["y"]`` a class-conditional net needs (None for an unconditional one)."""
    cond = check_reads(cond, net.cond_keys, who=type(net).__name__)
    y = cond.get("y")
    if net.num_classes is None:
        return None
    if y is None or y.shape != (batch,):
        raise ValueError(f"class-conditional {type(net).__name__} needs labels y of shape [{batch}], got "
                         f"{None if y is None else list(y.shape)}")
    return y


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
