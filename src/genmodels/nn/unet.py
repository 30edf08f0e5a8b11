"""The image denoiser body: a DDPM/ADM-style U-Net (Ho et al. 2020; Dhariwal & Nichol 2021).

``UNet(x, c_noise, cond)`` maps noisy images ``x [B, C, H, W]``, their noise-level conditioning
``c_noise [B]`` (a DDPM timestep in [0, 1000) or any float the parameterization chooses) and a
conditioning dict (``genmodels.cond``) to a tensor of the same spatial shape; what that output
means (eps, x0, v, velocity) is decided by the parameterization in ``genmodels.diffusion``,
never here. The network reads these keys of ``cond``, each only when built for it (``cond_keys``):

- ``y`` (``num_classes``): a class embedding added to the time embedding;
- ``text`` (``context_dim``, ``cross_attn_resolutions``): cross-attention over the token states
  at those resolutions, and the pooled vector projected into the time embedding (Rombach et al.
  2022);
- the keys in ``concat_cond`` (e.g. ``["mask", "masked"]``, the Stable Diffusion inpainting
  recipe): extra input channels concatenated to ``x``;
- the keys in ``embed_cond`` (e.g. ``["guidance"]``, a guidance-distilled net's w): each key's
  vector embedding (``genmodels.nn.cond_embed``) added to the time embedding.

``forward(..., residuals={"skips": [...], "mid": h})`` adds tensors to the skip connections and
the middle block's output (what a ControlNet injects; ``skip_channels`` and ``skip_resolutions``
give their shapes). ``forward`` is ``embed`` (checks, embeddings, concatenated inputs) ->
``encode`` (conv_in, down path, middle; ``hint=`` is added after conv_in) -> ``decode`` (up
path, output): a ControlNet runs the first two on its trainable copy (``nn.controlnet``). With every option off the network, its weights' names and its speed are
those of the plain U-Net.

The defaults are ADM's layout at 1.4M parameters; the demo config uses a leaner, faster one
(timings of both against diffusers' UNet2DModel: docs/BENCHMARKS.md, benchmarks/nn_speed.py).
"""

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from genmodels.cond import check_keys, check_reads, embedders
from genmodels.nn.cond_embed import CondEmbeddings
from genmodels.errors import ConfigError
from genmodels.nn.fused import group_norm_act, output_conv
from genmodels.nn.layers import (
    CrossAttention2d,
    Downsample,
    ResBlock,
    SelfAttention2d,
    Upsample,
    timestep_embedding,
    zero_init,
)

# Channels a concatenated condition brings, per key: the mask is one channel, image-like keys
# have the data's channels (``in_channels``). ``concat_channels`` overrides these.
_CONCAT_CHANNELS = {"mask": lambda data_channels: 1}


class _Stage(nn.Module):
    """One residual block, followed by self-attention and cross-attention at the resolutions that
    ask for them."""

    def __init__(self, res: ResBlock, attn: SelfAttention2d | None, cross: CrossAttention2d | None = None):
        super().__init__()
        self.res = res
        self.attn = attn
        if cross is not None:  # no attribute at all otherwise: state dicts stay those of the plain U-Net
            self.cross = cross

    def forward(self, h: Tensor, emb: Tensor, context=None) -> Tensor:
        h = self.res(h, emb)
        if self.attn is not None:
            h = self.attn(h)
        cross = self._modules.get("cross")
        return h if cross is None else cross(h, *context)


class UNet(nn.Module):
    """ADM U-Net: ``len(channel_mult)`` levels of ``num_res_blocks`` residual blocks, halving the
    side length between levels; a middle block (res, attention, res) at the lowest resolution; an
    up path with ``num_res_blocks + 1`` blocks per level, each fed the matching down-path
    activation through a skip connection.

    ``extra_up_block=False`` drops ADM's extra up block per level (the one fed by the ``conv_in``
    and downsample outputs): the up path then mirrors the down path. On CPU this trains ~25 %
    more images per second at the same loss per image seen (docs/BENCHMARKS.md).

    ``attn_resolutions`` and ``cross_attn_resolutions`` are feature-map side lengths (28 -> 14
    -> 7 for 28x28 input and three levels); a resolution's cross-attention also runs in the
    middle block when it is the lowest. With ``num_classes`` set, a class embedding of
    ``num_classes + 1`` rows is added to the time embedding; row ``num_classes`` is the null
    class, used by classifier-free guidance and when ``cond`` has no ``y``. A text-conditional
    net learns a null text (one token and a pooled vector), read when ``cond`` has no ``text``.
    """

    def __init__(self, *, in_channels: int = 1, out_channels: int | None = None, image_size: int = 28,
                 base_channels: int = 32, channel_mult: Sequence[int] = (1, 2, 2),
                 num_res_blocks: int = 1, attn_resolutions: Sequence[int] = (7,), num_heads: int = 4,
                 dropout: float = 0.0, num_classes: int | None = None, norm_groups: int = 8,
                 extra_up_block: bool = True, context_dim: int | None = None,
                 cross_attn_resolutions: Sequence[int] = (), concat_cond: Sequence[str] = (),
                 concat_channels: Sequence[int] | None = None, text_encoder_layers: int = 0,
                 embed_cond: Sequence[str] = ()):
        super().__init__()
        channel_mult = tuple(channel_mult)
        attn_resolutions = tuple(attn_resolutions)
        cross_attn_resolutions = tuple(cross_attn_resolutions)
        out_channels = in_channels if out_channels is None else out_channels
        _validate(in_channels=in_channels, out_channels=out_channels, image_size=image_size,
                  base_channels=base_channels, channel_mult=channel_mult,
                  num_res_blocks=num_res_blocks, attn_resolutions=attn_resolutions,
                  num_heads=num_heads, dropout=dropout, num_classes=num_classes,
                  norm_groups=norm_groups, context_dim=context_dim,
                  cross_attn_resolutions=cross_attn_resolutions)
        self.in_channels, self.out_channels, self.image_size = in_channels, out_channels, image_size
        self.num_classes = num_classes
        self.extra_up_block = extra = bool(extra_up_block)
        self.concat_cond, self.concat_channels = _concat_layout(concat_cond, concat_channels, in_channels)
        self.context_dim = context_dim
        embeds = embedders(tuple(embed_cond), where="model.embed_cond")
        self.cond_keys = frozenset((["y"] if num_classes is not None else []) + (["text"] if context_dim else [])
                                   + list(self.concat_cond) + list(embeds))

        # Time embedding: sinusoids, then a 2-layer MLP to 4x their width (ADM). ADM ties the
        # widths to base_channels; the floor keeps >= 32 frequencies when the first level is thin.
        self.freq_dim = max(base_channels, 64)
        emb_dim = 4 * self.freq_dim
        self.time_embed = nn.Sequential(
            nn.Linear(self.freq_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.class_embed = None if num_classes is None else nn.Embedding(num_classes + 1, emb_dim)
        if embeds:  # absent otherwise: the plain net's weight names are unchanged
            self.cond_embed = CondEmbeddings(embeds, emb_dim)
        if context_dim:
            self.text_embed = nn.Linear(context_dim, emb_dim)  # the pooled text vector, beside the class
            self.null_text_token = nn.Parameter(torch.zeros(context_dim))
            self.null_text_pooled = nn.Parameter(torch.zeros(context_dim))
        if text_encoder_layers:  # a text encoder learned from scratch with the net (Imagen's baseline)
            if not context_dim:
                raise ConfigError("model.text_encoder_layers needs text conditioning (model.context_dim)")
            from genmodels.nn.text_encoder import LearnedTextEncoder

            self.text_encoder = LearnedTextEncoder(dim=context_dim, layers=text_encoder_layers)

        block = dict(emb_dim=emb_dim, dropout=dropout, norm_groups=norm_groups)
        attn = dict(num_heads=num_heads, norm_groups=norm_groups)

        def stage(c_in, c_out, res):
            return _Stage(ResBlock(c_in, c_out, **block),
                          SelfAttention2d(c_out, **attn) if res in attn_resolutions else None,
                          CrossAttention2d(c_out, context_dim, **attn) if res in cross_attn_resolutions else None)

        self.conv_in = nn.Conv2d(in_channels + sum(self.concat_channels), base_channels, 3, padding=1)
        self.down = nn.ModuleList()
        skips = [(base_channels, image_size)] if extra else []  # (channels, side) of each skip, in order
        ch, res = base_channels, image_size
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                self.down.append(stage(ch, base_channels * mult, res))
                ch = base_channels * mult
                skips.append((ch, res))
            if level < len(channel_mult) - 1:
                self.down.append(Downsample(ch))
                res //= 2
                if extra:
                    skips.append((ch, res))
        self.skip_channels = tuple(c for c, _ in skips)
        self.skip_resolutions = tuple(r for _, r in skips)
        self.mid_channels = ch

        self.mid = nn.ModuleList([ResBlock(ch, ch, **block), SelfAttention2d(ch, **attn),
                                  ResBlock(ch, ch, **block)])
        if res in cross_attn_resolutions:
            self.mid_cross = CrossAttention2d(ch, context_dim, **attn)

        self.up = nn.ModuleList()
        skip_channels = list(self.skip_channels)
        for level, mult in reversed(list(enumerate(channel_mult))):
            for _ in range(num_res_blocks + extra):
                self.up.append(stage(ch + skip_channels.pop(), base_channels * mult, res))
                ch = base_channels * mult
            if level > 0:
                self.up.append(Upsample(ch, base_channels * channel_mult[level - 1]))
                ch = base_channels * channel_mult[level - 1]
                res *= 2

        self.norm_out = nn.GroupNorm(norm_groups, ch)
        self.conv_out = zero_init(nn.Conv2d(ch, out_channels, 3, padding=1))

    def forward(self, x: Tensor, c_noise: Tensor, cond: dict | None = None, *,
                residuals: dict | None = None) -> Tensor:
        x, emb, context = self.embed(x, c_noise, cond)
        hs, h = self.encode(x, emb, context)
        if residuals is not None:  # ControlNet's residuals (Zhang et al. 2023, Eq. 4): added, not replacing
            skips, mid = _check_residuals(residuals, self)
            hs = [s + r for s, r in zip(hs, skips)]
            h = h + mid
        return self.decode(h, hs, emb, context)

    def embed(self, x: Tensor, c_noise: Tensor, cond: dict | None) -> tuple[Tensor, Tensor, tuple | None]:
        """(the input with any concatenated conditions, the time + class + pooled-text embedding,
        the cross-attention context (states, mask) or None), after checking ``x`` and ``cond``."""
        expected = (self.in_channels, self.image_size, self.image_size)
        if x.ndim != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(f"UNet expected input of shape [B, {', '.join(map(str, expected))}], "
                             f"got {list(x.shape)}; check in_channels / image_size of the network "
                             f"against the data")
        cond = check_reads(cond, self.cond_keys, who="the UNet (model.num_classes, context_dim, concat_cond)")
        batch = x.shape[0]
        emb = self.time_embed(timestep_embedding(_per_sample(c_noise, batch), self.freq_dim))
        if self.class_embed is not None:
            emb = emb + _class_embedding(self.class_embed, self.num_classes, cond.get("y"), batch, x.device)
        if hasattr(self, "cond_embed"):
            emb = emb + self.cond_embed(cond, batch, x.device).to(emb.dtype)
        context = None
        if self.context_dim:
            text = cond.get("text") or self.null_text_for(batch, x.device)
            if "ids" in text:  # token ids for the learned encoder
                text = self._encode_ids(text)
            states, mask = _text_context(text, batch, self.context_dim)
            context = (states.to(x.dtype), mask)  # an encoder's fp16/fp64 states meet the net's dtype
            if text.get("pooled") is not None:
                emb = emb + self.text_embed(text["pooled"].to(emb.dtype))
        if self.concat_cond:
            x = torch.cat([x, *_concat_inputs(cond, self.concat_cond, self.concat_channels, x)], dim=1)
        return x, emb, context

    def encode(self, x: Tensor, emb: Tensor, context, *, hint: Tensor | None = None) -> tuple[list[Tensor], Tensor]:
        """The down path and the middle block: (the skip activations in order, the middle's
        output). ``hint`` (a ControlNet's encoded control image) is added after ``conv_in``."""
        h = self.conv_in(x)
        if hint is not None:
            h = h + hint
        hs = [h] if self.extra_up_block else []
        for module in self.down:
            h = module(h, emb, context) if isinstance(module, _Stage) else module(h, emb)
            if self.extra_up_block or isinstance(module, _Stage):
                hs.append(h)
        for module in self.mid:
            h = module(h, emb)
        mid_cross = self._modules.get("mid_cross")
        if mid_cross is not None:
            h = mid_cross(h, *context)
        return hs, h

    def decode(self, h: Tensor, hs: list[Tensor], emb: Tensor, context) -> Tensor:
        """The up path, fed the skips ``hs`` (consumed from the end), and the output layers."""
        hs = list(hs)
        for module in self.up:
            if isinstance(module, Upsample):
                h = module(h, emb)
            else:
                h = module(torch.cat([h, hs.pop()], dim=1), emb, context)
        return output_conv(group_norm_act(h, self.norm_out), self.conv_out)

    def null_text_for(self, batch: int, device) -> dict:
        """The learned null text (one token, its pooled vector) for ``batch`` images."""
        return {"states": self.null_text_token.view(1, 1, -1).expand(batch, 1, -1),
                "mask": torch.ones(batch, 1, dtype=torch.bool, device=device),
                "pooled": self.null_text_pooled.expand(batch, -1)}

    def _encode_ids(self, text: dict) -> dict:
        """``{"ids", "mask", "null"}`` -> the learned encoder's states, with the null text in the
        rows marked ``null`` (caption dropout, empty prompts)."""
        if self._modules.get("text_encoder") is None:
            raise ValueError("cond['text'] holds token ids but this UNet has no learned text encoder "
                             "(model.text_encoder_layers); give MiniLM states")
        emb = self.text_encoder(text["ids"], text["mask"].bool())
        out = {"states": emb.states, "mask": emb.mask, "pooled": emb.pooled}
        null = text.get("null")
        if null is not None and bool(null.any()):
            nulls = self.null_text(out)
            keep = ~null.bool()
            out = {k: torch.where(keep.view(-1, *[1] * (v.ndim - 1)), v, nulls[k].to(v.dtype)) for k, v in out.items()}
        return out

    def null_text(self, text: dict) -> dict:
        """The null of a ``text`` value, shaped like it (for classifier-free guidance): every
        position holds the learned null token and only the first is unmasked. Token ids (the
        learned encoder's input) are marked ``null`` instead, and replaced after encoding."""
        if "ids" in text:
            return {**text, "null": torch.ones_like(text["null"], dtype=torch.bool)}
        states = text["states"]
        batch, length = states.shape[:2]
        mask = torch.zeros(batch, length, dtype=torch.bool, device=states.device)
        mask[:, 0] = True
        out = {"states": self.null_text_token.to(states.dtype).view(1, 1, -1).expand(batch, length, -1),
               "mask": mask}
        if "pooled" in text:
            out["pooled"] = self.null_text_pooled.to(states.dtype).expand(batch, -1)
        return out


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
    """Embedding of the class labels ``y [B]``; ``y=None`` selects the null class ``num_classes``.
    (Labels for a net without a table never get here: ``check_reads`` refuses them first.)"""
    if table is None:
        return 0.0
    if y is None:
        y = torch.full((batch,), num_classes, dtype=torch.long, device=device)
    elif tuple(y.shape) != (batch,) or y.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"y must be an integer tensor of shape [{batch}], "
                         f"got {y.dtype} of shape {list(y.shape)}")
    return table(y)


def _concat_layout(keys, channels, data_channels) -> tuple[tuple, tuple]:
    """(keys, channels per key) of the conditions concatenated to the input."""
    keys = tuple(keys)
    if len(set(keys)) != len(keys):
        raise ConfigError(f"model.concat_cond lists a key twice: {list(keys)}")
    check_keys(keys, where="model.concat_cond")
    if channels is None:
        channels = [_CONCAT_CHANNELS.get(k, lambda c: c)(data_channels) for k in keys]
    channels = tuple(channels)
    if len(channels) != len(keys) or not all(isinstance(c, int) and c >= 1 for c in channels):
        raise ConfigError(f"model.concat_channels must give a positive channel count per model.concat_cond key "
                          f"({list(keys)}), got {list(channels)}")
    return keys, channels


def _concat_inputs(cond: dict, keys, channels, x: Tensor) -> list[Tensor]:
    """The concatenated conditions, checked against the input's batch and size."""
    missing = [k for k in keys if k not in cond]
    if missing:
        raise ValueError(f"the network concatenates conditioning {list(keys)} to its input but cond has no "
                         f"{missing}")
    out = []
    for key, c in zip(keys, channels):
        value = cond[key]
        want = (x.shape[0], c, *x.shape[2:])
        if tuple(value.shape) != want:
            raise ValueError(f"cond[{key!r}] must have shape {list(want)}, got {list(value.shape)}")
        out.append(value.to(x.dtype))
    return out


def _text_context(text: dict, batch: int, context_dim: int) -> tuple[Tensor, Tensor | None]:
    """(token states [B, L, D], mask [B, L] or None) of a ``text`` condition, checked."""
    if not isinstance(text, dict) or "states" not in text:
        raise ValueError("cond['text'] must be a dict with 'states' [B, L, D] (and optionally 'mask' [B, L], "
                         "'pooled' [B, D])")
    states, mask = text["states"], text.get("mask")
    if states.ndim != 3 or states.shape[0] != batch or states.shape[2] != context_dim:
        raise ValueError(f"cond['text']['states'] must have shape [{batch}, L, {context_dim}], got {list(states.shape)}")
    if mask is not None and tuple(mask.shape) != tuple(states.shape[:2]):
        raise ValueError(f"cond['text']['mask'] must have shape {list(states.shape[:2])}, got {list(mask.shape)}")
    return states, mask


def _check_residuals(residuals: dict, net: "UNet") -> tuple[list, Tensor]:
    """(skips, mid) of a ``residuals`` dict, one tensor per skip connection and one for the middle."""
    skips, mid = residuals.get("skips"), residuals.get("mid")
    if skips is None or mid is None or len(skips) != len(net.skip_channels):
        raise ValueError(f"residuals must be {{'skips': [{len(net.skip_channels)} tensors], 'mid': tensor}} "
                         f"(channels {list(net.skip_channels)}, middle {net.mid_channels})")
    return list(skips), mid


def _validate(*, in_channels, out_channels, image_size, base_channels, channel_mult,
              num_res_blocks, attn_resolutions, num_heads, dropout, num_classes, norm_groups,
              context_dim=None, cross_attn_resolutions=()):
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
    for name, asked in (("attn_resolutions", attn_resolutions), ("cross_attn_resolutions", cross_attn_resolutions)):
        missing = [r for r in asked if r not in resolutions]
        if missing:
            raise ConfigError(f"{name} {missing} never occur in this UNet; the feature-map "
                              f"side lengths are {resolutions}")
    if context_dim is not None and (not isinstance(context_dim, int) or context_dim < 1):
        raise ConfigError(f"context_dim must be a positive integer (the text encoder's width) or None, got {context_dim!r}")
    if bool(context_dim) != bool(cross_attn_resolutions):
        raise ConfigError("model.context_dim and model.cross_attn_resolutions go together: text conditioning needs "
                          "both (e.g. context_dim: 384, cross_attn_resolutions: [14, 7])")
    attn_channels = [base_channels * m for m, r in zip(channel_mult, resolutions)
                     if r in attn_resolutions or r in cross_attn_resolutions]
    for channels in attn_channels + [base_channels * channel_mult[-1]]:  # + the middle block
        if channels % num_heads:
            raise ConfigError(f"{channels} attention channels are not divisible by num_heads "
                              f"{num_heads}; change num_heads or base_channels")
