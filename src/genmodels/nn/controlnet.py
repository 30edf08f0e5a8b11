"""ControlNet (Zhang et al. 2023): steer a frozen U-Net with a control image.

``ControlNet`` is a trainable copy of a base ``UNet``'s input side (time/class/text embeddings,
``conv_in``, the down path and the middle block), started from the base's weights
(``copy_from``), plus

- a small conditioning-image encoder (``hint``): 3x3 convs, one stride-2 conv per factor of two
  between the control image and the net's input (latent runs), its last conv zero-initialised,
  whose output is added to the copy's ``conv_in`` output;
- zero-initialised 1x1 convs, one per skip connection and one for the middle block, whose outputs
  are the residuals the base adds to its skips and middle (``UNet.forward(residuals=)``).

Zero convs make the untrained ControlNet's residuals exactly zero: at initialisation the
controlled model is the base, bit for bit.

``ControlledUNet(base, controls, scales)`` is the network a controlled run samples with: it reads
the base's conditioning keys and ``image`` (the control images of every net, concatenated along
channels in the nets' order), and adds ``scale_k * residuals_k`` of each net to the frozen base.
``guess_mode`` (ControlNet's "guess mode", for no prompt): the copies see no class or text, and
the residuals are scaled from 0.1 at the shallowest skip to 1 at the middle block (log-spaced).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..cond import null_value
from ..errors import ConfigError
from .layers import zero_init
from .unet import UNet

DECODER_MODULES = ("up", "norm_out", "conv_out")  # what the copy drops: the base decodes


class HintEncoder(nn.Module):
    """Control image [B, C, H, W] -> features [B, out_channels, H / factor, W / factor]: a 3x3 conv
    per width in ``widths`` (SiLU between), stride 2 while the factor is not reached, then a
    zero-initialised 3x3 conv to the net's width."""

    def __init__(self, in_channels: int, out_channels: int, *, widths: Sequence[int] = (16, 32), factor: int = 1):
        super().__init__()
        if factor < 1 or factor & (factor - 1):
            raise ConfigError(f"the control image must be the net's input size times a power of two, got factor {factor}")
        downsamples = factor.bit_length() - 1
        widths = list(widths)
        if len(widths) < downsamples:  # one stride-2 conv per halving
            widths += [widths[-1]] * (downsamples - len(widths))
        layers, c = [], in_channels
        for i, w in enumerate(widths):
            layers += [nn.Conv2d(c, w, 3, padding=1, stride=2 if i < downsamples else 1), nn.SiLU()]
            c = w
        layers.append(zero_init(nn.Conv2d(c, out_channels, 3, padding=1)))
        self.layers = nn.Sequential(*layers)

    def forward(self, image: Tensor) -> Tensor:
        return self.layers(image)


class ControlNet(nn.Module):
    """A trainable copy of a U-Net's encoder (built from the base's ``unet_options``), a hint
    encoder for ``control_channels``-channel control images ``factor`` times the net's input
    size, and the zero convs (module docstring)."""

    def __init__(self, *, unet_options: dict, control_channels: int, hint_channels: Sequence[int] = (16, 32),
                 factor: int = 1):
        super().__init__()
        copy = UNet(**unet_options)
        for name in DECODER_MODULES:
            delattr(copy, name)
        self.copy = copy
        self.control_channels, self.factor = control_channels, factor
        self.hint = HintEncoder(control_channels, copy.conv_in.out_channels, widths=hint_channels, factor=factor)
        self.zero_skips = nn.ModuleList(zero_init(nn.Conv2d(c, c, 1)) for c in copy.skip_channels)
        self.zero_mid = zero_init(nn.Conv2d(copy.mid_channels, copy.mid_channels, 1))

    @property
    def num_skips(self) -> int:
        return len(self.zero_skips)

    def zero_conv_parameters(self) -> list[nn.Parameter]:
        """The zero convs' parameters (and the hint encoder's last, zero-initialised conv): the
        ones a higher learning rate can wake sooner."""
        return [*self.zero_skips.parameters(), *self.zero_mid.parameters(), *self.hint.layers[-1].parameters()]

    @torch.no_grad()
    def copy_from(self, base: UNet) -> None:
        """Set the copy's weights to the base's (every encoder weight; the base's decoder is not
        copied). Refuses a base of another layout."""
        own = self.copy.state_dict()
        theirs = {k: v for k, v in base.state_dict().items() if k.split(".", 1)[0] not in DECODER_MODULES}
        if set(own) != set(theirs) or any(own[k].shape != theirs[k].shape for k in own):
            raise ConfigError("the ControlNet's copy does not match the base U-Net's layout (was the base retrained "
                              "with other model options?)")
        self.copy.load_state_dict(theirs)

    def forward(self, x: Tensor, c_noise: Tensor, cond: dict | None, image: Tensor) -> dict:
        """The residuals ``{"skips": [...], "mid": h}`` for the base, from noisy ``x``, the noise
        level, the base's conditioning (no ``image``) and this net's control ``image``."""
        want = (self.control_channels, x.shape[2] * self.factor, x.shape[3] * self.factor)
        if image.ndim != 4 or tuple(image.shape[1:]) != want or len(image) != len(x):
            raise ValueError(f"the control image must have shape [{len(x)}, {', '.join(map(str, want))}], "
                             f"got {list(image.shape)}")
        h, emb, context = self.copy.embed(x, c_noise, cond)
        hs, mid = self.copy.encode(h, emb, context, hint=self.hint(image.to(x.dtype)))
        return {"skips": [zero(s) for zero, s in zip(self.zero_skips, hs)], "mid": self.zero_mid(mid)}


def guess_mode_scales(num_skips: int) -> list[float]:
    """Guess mode's per-residual scales: log-spaced from 0.1 (the shallowest skip) to 1 (the
    middle block), ``num_skips + 1`` of them (diffusers' ``torch.logspace(-1, 0, n + 1)``)."""
    return torch.logspace(-1, 0, num_skips + 1).tolist()


class ControlledUNet(nn.Module):
    """A frozen base U-Net steered by ControlNets (module docstring). ``scales``: one per net."""

    def __init__(self, base: UNet, controls: Sequence[ControlNet], scales: Sequence[float] | None = None, *,
                 guess_mode: bool = False):
        super().__init__()
        self.base, self.controls = base, nn.ModuleList(controls)
        scales = [1.0] * len(controls) if scales is None else [float(s) for s in scales]
        if len(scales) != len(controls):
            raise ConfigError(f"give one control scale per ControlNet ({len(controls)}), got {len(scales)}")
        self.scales, self.guess_mode = scales, guess_mode
        self.cond_keys = frozenset(base.cond_keys) | {"image"}
        self.num_classes = base.num_classes  # what the null of "y" reads (genmodels.cond)
        self.control_channels = [c.control_channels for c in controls]
        # each net's per-residual factors (skips, then the middle), computed once, not per step
        self.depth_scales = [guess_mode_scales(c.num_skips) if guess_mode else [1.0] * (c.num_skips + 1)
                             for c in controls]

    def null_cond(self, key, value):
        """The base's null of each key it reads (a learned null text); ``image``: zeros (the
        registry's), what condition dropout trains as "no control"."""
        return None if key == "image" else null_value(self.base, key, value)

    def null_text(self, text):
        return self.base.null_text(text)

    def forward(self, x: Tensor, c_noise: Tensor, cond: dict | None = None) -> Tensor:
        cond = dict(cond or {})
        image = cond.pop("image", None)
        if image is None:
            raise ValueError("a controlled U-Net needs cond['image'], the control image(s)")
        if image.shape[1] != sum(self.control_channels):
            raise ValueError(f"cond['image'] must hold {sum(self.control_channels)} channels (the control images of "
                             f"{len(self.controls)} ControlNet(s), concatenated), got {image.shape[1]}")
        active = [(net, s, part, depth) for net, s, part, depth in
                  zip(self.controls, self.scales, image.split(self.control_channels, dim=1), self.depth_scales) if s != 0]
        if not active:  # scale 0: the base alone, bit for bit
            return self.base(x, c_noise, cond)
        copy_cond = {k: v for k, v in cond.items() if k not in ("y", "text")} if self.guess_mode else cond
        total = None
        for net, scale, part, depth in active:
            r = net(x, c_noise, copy_cond, part)
            skips = [s * (scale * d) for s, d in zip(r["skips"], depth)]
            mid = r["mid"] * (scale * depth[-1])
            total = {"skips": skips, "mid": mid} if total is None else \
                {"skips": [a + b for a, b in zip(total["skips"], skips)], "mid": total["mid"] + mid}
        return self.base(x, c_noise, cond, residuals=total)


__all__ = ["ControlNet", "ControlledUNet", "HintEncoder", "guess_mode_scales"]
